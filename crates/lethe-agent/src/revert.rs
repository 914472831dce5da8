//! An operator's revert, decided against the adapter store: which version it goes to and
//! which forgets it undoes. Pure over the store's reads; the intake uses it to refuse a
//! revert at once (nothing changes, the sequence number is not consumed), and the worker
//! decides again when the job runs, because forgets queued before it may have committed.
//!
//! Invariants: a revert only goes to a version whose file is valid in the store, or to the
//! package's own adapter; a revert that would bring back a forgotten concept goes ahead
//! only when the signed command says `undo_forgets`, and then names every such forget.

use crate::store::{AdapterStore, ForgetRecord};
use lethe_proto::{Revert, RevertTo};

/// Where a revert goes and what it undoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The version that becomes current.
    pub target: String,
    /// The forgets the current version holds that the target does not, oldest first.
    pub undone: Vec<ForgetRecord>,
}

/// Why a revert is refused: a stable code and a reason for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

/// Decides revert `r` on `store`, whose package adapter has hash `original`.
pub fn plan(store: &AdapterStore, original: &str, r: &Revert) -> Result<Plan, Refusal> {
    let unknown = |what: String| Refusal {
        code: "unknown-version",
        reason: format!(
            "{what}; this device holds the package's original adapter and {}",
            held(store)
        ),
    };
    let target = match &r.to {
        RevertTo::Original => original.to_string(),
        RevertTo::Version(h) => {
            if !store.has(h) && h.as_str() != original {
                return Err(unknown(format!("adapter version {h} is not held")));
            }
            h.to_string()
        }
        RevertTo::Before(id) => {
            let Some((_, meta)) = store.made_by(id.as_str()) else {
                return Err(unknown(format!(
                    "no version made by command {} is held",
                    id.as_str()
                )));
            };
            match meta.base {
                Some(b) if store.has(&b) || b == original => b,
                Some(b) => {
                    return Err(unknown(format!(
                        "the version before command {} ({b}) is no longer held",
                        id.as_str()
                    )))
                }
                None => {
                    return Err(unknown(format!(
                        "the version command {} made does not record its base",
                        id.as_str()
                    )))
                }
            }
        }
    };
    let kept = store.meta(&target).forgets;
    let undone: Vec<ForgetRecord> = store
        .current_meta()
        .forgets
        .iter()
        .cloned()
        .filter(|f| !kept.iter().any(|k| k.concept == f.concept))
        .collect();
    if !undone.is_empty() && !r.undo_forgets {
        return Err(Refusal {
            code: "undoes-forgets",
            reason: format!(
                "reverting to {} would undo {} forget(s): {}; sign it again with \
                 undo_forgets to confirm (lethectl revert --undo-forgets)",
                r.to,
                undone.len(),
                describe(&undone)
            ),
        });
    }
    Ok(Plan { target, undone })
}

/// `concept (command), ...` for messages.
pub fn describe(forgets: &[ForgetRecord]) -> String {
    forgets
        .iter()
        .map(|f| {
            if f.command.is_empty() {
                format!("{:?}", f.concept)
            } else {
                format!("{:?} ({})", f.concept, f.command)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The versions a revert by hash can reach, for a refusal's reason.
fn held(store: &AdapterStore) -> String {
    let mut hs: Vec<&str> = store
        .history()
        .iter()
        .map(String::as_str)
        .filter(|h| store.has(h))
        .collect();
    hs.push(store.current_hash());
    format!(
        "{} stored version(s): {}",
        hs.len(),
        hs.iter()
            .map(|h| crate::state::short(h))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::VersionMeta;
    use lethe_model::Adapter;
    use lethe_proto::ident::Ident;

    fn a(x: f32) -> Adapter {
        Adapter(vec![x; 8])
    }

    fn rec(c: &str) -> ForgetRecord {
        ForgetRecord {
            command: format!("op-{c}"),
            concept: c.into(),
        }
    }

    /// A store at the package adapter `a(1.0)`, then "anna" forgotten (`a(2.0)`), then
    /// "boris" on top (`a(3.0)`); returns the store and the three hashes.
    fn two_forgets(dir: &std::path::Path) -> (AdapterStore, [String; 3]) {
        let mut s = AdapterStore::open(dir, &a(1.0)).unwrap();
        let h1 = s.current_hash().to_string();
        let h2 = s
            .put_version(
                &a(2.0),
                &VersionMeta {
                    forgets: vec![rec("anna")],
                    made_by: Some("op-anna".into()),
                    base: Some(h1.clone()),
                },
            )
            .unwrap();
        s.commit(&h2).unwrap();
        let h3 = s
            .put_version(
                &a(3.0),
                &VersionMeta {
                    forgets: vec![rec("anna"), rec("boris")],
                    made_by: Some("op-boris".into()),
                    base: Some(h2.clone()),
                },
            )
            .unwrap();
        s.commit(&h3).unwrap();
        (s, [h1, h2, h3])
    }

    fn revert(to: RevertTo, undo_forgets: bool) -> Revert {
        Revert { to, undo_forgets }
    }

    fn before(id: &str) -> RevertTo {
        RevertTo::Before(Ident::new("to", id).unwrap())
    }

    fn version(h: &str) -> RevertTo {
        RevertTo::Version(h.try_into().unwrap())
    }

    #[test]
    fn a_revert_to_the_original_undoes_every_forget_and_needs_the_confirmation() {
        let d = tempfile::tempdir().unwrap();
        let (s, [h1, ..]) = two_forgets(d.path());
        let err = plan(&s, &h1, &revert(RevertTo::Original, false)).unwrap_err();
        assert_eq!(err.code, "undoes-forgets");
        assert!(
            err.reason
                .contains("\"anna\" (op-anna), \"boris\" (op-boris)"),
            "{}",
            err.reason
        );
        let p = plan(&s, &h1, &revert(RevertTo::Original, true)).unwrap();
        assert_eq!(p.target, h1);
        assert_eq!(p.undone, vec![rec("anna"), rec("boris")]);
    }

    #[test]
    fn a_revert_to_before_a_command_undoes_that_forget_and_the_later_ones() {
        let d = tempfile::tempdir().unwrap();
        let (s, [h1, h2, _]) = two_forgets(d.path());
        let p = plan(&s, &h1, &revert(before("op-boris"), true)).unwrap();
        assert_eq!(
            (p.target.as_str(), p.undone.clone()),
            (h2.as_str(), vec![rec("boris")])
        );
        let p = plan(&s, &h1, &revert(before("op-anna"), true)).unwrap();
        assert_eq!(p.target, h1);
        assert_eq!(p.undone, vec![rec("anna"), rec("boris")]);
        let err = plan(&s, &h1, &revert(before("op-nobody"), true)).unwrap_err();
        assert_eq!(err.code, "unknown-version");
        assert!(err.reason.contains("op-nobody"), "{}", err.reason);
    }

    #[test]
    fn a_revert_by_hash_needs_a_version_the_device_holds() {
        let d = tempfile::tempdir().unwrap();
        let (s, [h1, h2, h3]) = two_forgets(d.path());
        let p = plan(&s, &h1, &revert(version(&h2), true)).unwrap();
        assert_eq!(p.target, h2);
        let unknown = "ab".repeat(32);
        let err = plan(&s, &h1, &revert(version(&unknown), true)).unwrap_err();
        assert_eq!(err.code, "unknown-version");
        assert!(err.reason.contains(&unknown), "{}", err.reason);
        assert!(err.reason.contains("3 stored version(s)"), "{}", err.reason);
        // Reverting to the current version undoes nothing and needs no confirmation.
        let p = plan(&s, &h1, &revert(version(&h3), false)).unwrap();
        assert_eq!((p.target, p.undone), (h3, vec![]));
    }

    #[test]
    fn before_a_command_needs_its_base_held_unless_it_is_the_package_adapter() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap().with_keep(1);
        let original = s.current_hash().to_string();
        let mut base = original.clone();
        let mut forgets = Vec::new();
        for (x, c) in [(2.0, "anna"), (3.0, "boris"), (4.0, "carl")] {
            forgets.push(rec(c));
            let meta = VersionMeta {
                forgets: forgets.clone(),
                made_by: Some(format!("op-{c}")),
                base: Some(base.clone()),
            };
            base = s.put_version(&a(x), &meta).unwrap();
            s.commit(&base).unwrap();
            s.prune().unwrap();
        }
        // Held: carl's version and boris's (the one before). Anna's and the package's are
        // pruned; boris's base is anna's version, gone.
        let p = plan(&s, &original, &revert(before("op-carl"), true)).unwrap();
        assert_eq!(p.target, a(3.0).sha256_hex());
        let err = plan(&s, &original, &revert(before("op-boris"), true)).unwrap_err();
        assert_eq!(err.code, "unknown-version");
        assert!(err.reason.contains("no longer held"), "{}", err.reason);
        // A command whose base is the package's adapter: reachable though pruned.
        let mut s = AdapterStore::open(&d.path().join("b"), &a(1.0))
            .unwrap()
            .with_keep(1);
        for (x, c, b) in [
            (2.0, "anna", original.clone()),
            (3.0, "boris", a(2.0).sha256_hex()),
        ] {
            let meta = VersionMeta {
                forgets: vec![rec(c)],
                made_by: Some(format!("op-{c}")),
                base: Some(b),
            };
            let h = s.put_version(&a(x), &meta).unwrap();
            s.commit(&h).unwrap();
            s.prune().unwrap();
        }
        assert!(!s.has(&original), "the package's adapter was pruned");
        let p = plan(&s, &original, &revert(before("op-anna"), true)).unwrap();
        assert_eq!(p.target, original);
    }

    #[test]
    fn a_revert_that_keeps_every_forget_needs_no_confirmation() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, [h1, h2, h3]) = two_forgets(d.path());
        s.commit(&h2).unwrap();
        // From anna's version back to the original needs it; forward to anna+boris not.
        assert_eq!(
            plan(&s, &h1, &revert(RevertTo::Original, false))
                .unwrap_err()
                .code,
            "undoes-forgets"
        );
        let p = plan(&s, &h1, &revert(version(&h3), false)).unwrap();
        assert!(p.undone.is_empty());
    }
}
