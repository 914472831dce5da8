//! The trust store: which operator keys may sign, when, how many must sign (k-of-n), and key
//! rotation by statements signed with currently trusted keys.
//!
//! File form (JSON, written by `lethectl trust ...`, read by the agent):
//! ```text
//! { "v": 1, "threshold": 1,
//!   "keys": [ { "id": "16 hex", "name": "alice", "public_key": "base64 (32 bytes)",
//!               "not_before": null | unix s, "not_after": null | unix s,
//!               "revoked": false, "admitted_by": null | "key id" } ],
//!   "rotations": [ { "new_key": id, "signed_by": [id], "applied_at": unix s,
//!                    "statement": "base64 envelope" } ] }
//! ```
//!
//! Invariants: every key's id is derived from its public key (checked on load); ids are unique;
//! `1 <= threshold <= MAX_SIGNATURES`. A signature check counts only distinct, unrevoked keys
//! inside their validity window, and any signature that fails makes the whole check fail.
//! A failed `add`, `revoke` or `apply_rotation` leaves the store unchanged.

use crate::envelope::{self, Envelope, Kind, MAX_SIGNATURES};
use crate::ident::Ident;
use crate::keys::{verify_raw, KeyId, PublicKey, SigningKey};
use crate::strict_json::{self, check_fields};
use crate::verify::check_freshness;
use crate::Rejection;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Most keys one store may hold.
pub const MAX_TRUSTED_KEYS: usize = 256;
/// Cap on the trust store file.
pub const MAX_TRUST_STORE_BYTES: usize = 1 << 20;

/// One operator key in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub id: KeyId,
    /// Operator name: the issuer name this key may sign for.
    pub name: Ident,
    pub public: [u8; 32],
    /// Valid from (unix seconds, inclusive); `None` = always.
    pub not_before: Option<u64>,
    /// Valid until (unix seconds, inclusive); `None` = no end.
    pub not_after: Option<u64>,
    pub revoked: bool,
    /// The key whose rotation statement admitted this one, if any.
    pub admitted_by: Option<KeyId>,
}

/// A rotation statement that was applied, kept for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationRecord {
    pub new_key: String,
    pub signed_by: Vec<String>,
    pub applied_at: u64,
    /// The statement envelope, base64.
    pub statement: String,
}

/// The operator keys a device (or the operator's own `verify`) trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustStore {
    threshold: usize,
    keys: Vec<TrustedKey>,
    rotations: Vec<RotationRecord>,
}

impl Default for TrustStore {
    fn default() -> Self {
        TrustStore::new()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    v: u32,
    #[serde(default = "one")]
    threshold: usize,
    keys: Vec<KeyFile>,
    #[serde(default)]
    rotations: Vec<RotationRecord>,
}

fn one() -> usize {
    1
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    name: String,
    public_key: String,
    not_before: Option<u64>,
    not_after: Option<u64>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    admitted_by: Option<String>,
}

fn bad_store(why: impl Into<String>) -> Rejection {
    Rejection::BadTrustStore(why.into())
}

impl TrustStore {
    /// An empty store with threshold 1.
    pub fn new() -> TrustStore {
        TrustStore {
            threshold: 1,
            keys: Vec::new(),
            rotations: Vec::new(),
        }
    }

    /// Reads the JSON file form, checking every invariant.
    pub fn from_json(bytes: &[u8]) -> Result<TrustStore, Rejection> {
        if bytes.len() > MAX_TRUST_STORE_BYTES {
            return Err(Rejection::TooLarge {
                len: bytes.len(),
                cap: MAX_TRUST_STORE_BYTES,
            });
        }
        let v = strict_json::parse(bytes)?;
        let file: StoreFile = strict_json::from_value(v).map_err(|e| match e {
            Rejection::MalformedPayload(m) => bad_store(m),
            other => other,
        })?;
        if file.v != 1 {
            return Err(bad_store(format!(
                "store version {} is not supported",
                file.v
            )));
        }
        if file.keys.len() > MAX_TRUSTED_KEYS {
            return Err(bad_store(format!("more than {MAX_TRUSTED_KEYS} keys")));
        }
        let mut store = TrustStore::new();
        store.set_threshold(file.threshold)?;
        for k in file.keys {
            let raw = B64
                .decode(&k.public_key)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    bad_store(format!(
                        "key {}: public_key is not 32 bytes of base64",
                        k.id
                    ))
                })?;
            let actual = KeyId::of(&raw);
            if KeyId::parse_hex(&k.id) != Some(actual) {
                return Err(Rejection::KeyIdMismatch {
                    claimed: k.id,
                    actual,
                });
            }
            if store.get(actual).is_some() {
                return Err(bad_store(format!("key {actual} appears twice")));
            }
            if let (Some(a), Some(b)) = (k.not_before, k.not_after) {
                if a > b {
                    return Err(bad_store(format!(
                        "key {actual}: not_before after not_after"
                    )));
                }
            }
            let admitted_by = match k.admitted_by {
                Some(s) => Some(
                    KeyId::parse_hex(&s)
                        .ok_or_else(|| bad_store(format!("key {actual}: bad admitted_by")))?,
                ),
                None => None,
            };
            store.keys.push(TrustedKey {
                id: actual,
                name: Ident::new("key name", &k.name)?,
                public: raw,
                not_before: k.not_before,
                not_after: k.not_after,
                revoked: k.revoked,
                admitted_by,
            });
        }
        store.rotations = file.rotations;
        Ok(store)
    }

    /// The JSON file form (pretty-printed, newline-terminated).
    pub fn to_json(&self) -> String {
        let file = StoreFile {
            v: 1,
            threshold: self.threshold,
            keys: self
                .keys
                .iter()
                .map(|k| KeyFile {
                    id: k.id.to_string(),
                    name: k.name.to_string(),
                    public_key: B64.encode(k.public),
                    not_before: k.not_before,
                    not_after: k.not_after,
                    revoked: k.revoked,
                    admitted_by: k.admitted_by.map(|i| i.to_string()),
                })
                .collect(),
            rotations: self.rotations.clone(),
        };
        // Cannot fail: plain strings and integers.
        let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Sets k of k-of-n (1..=MAX_SIGNATURES).
    pub fn set_threshold(&mut self, k: usize) -> Result<(), Rejection> {
        if k == 0 || k > MAX_SIGNATURES {
            return Err(bad_store(format!(
                "threshold {k} outside 1..={MAX_SIGNATURES}"
            )));
        }
        self.threshold = k;
        Ok(())
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    pub fn rotations(&self) -> &[RotationRecord] {
        &self.rotations
    }

    pub fn get(&self, id: KeyId) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Trusts a public key under its name, optionally within a validity window.
    pub fn add(
        &mut self,
        key: &PublicKey,
        not_before: Option<u64>,
        not_after: Option<u64>,
    ) -> Result<KeyId, Rejection> {
        self.insert(key, not_before, not_after, None)
    }

    fn insert(
        &mut self,
        key: &PublicKey,
        not_before: Option<u64>,
        not_after: Option<u64>,
        admitted_by: Option<KeyId>,
    ) -> Result<KeyId, Rejection> {
        let id = key.id();
        if self.get(id).is_some() {
            return Err(Rejection::KeyAlreadyTrusted(id));
        }
        if self.keys.len() >= MAX_TRUSTED_KEYS {
            return Err(bad_store(format!("more than {MAX_TRUSTED_KEYS} keys")));
        }
        if let (Some(a), Some(b)) = (not_before, not_after) {
            if a > b {
                return Err(Rejection::BadValidityWindow("not_before after not_after"));
            }
        }
        self.keys.push(TrustedKey {
            id,
            name: Ident::new("key name", key.name())?,
            public: *key.raw(),
            not_before,
            not_after,
            revoked: false,
            admitted_by,
        });
        Ok(id)
    }

    /// Revokes a key for good (it stays listed, marked revoked).
    pub fn revoke(&mut self, id: KeyId) -> Result<(), Rejection> {
        let k = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or(Rejection::UnknownKey(id))?;
        k.revoked = true;
        Ok(())
    }

    /// Checks every signature of `env` at time `now` and the k-of-n threshold; returns the
    /// signing keys. Any unknown, revoked, out-of-window, repeated or failing signature
    /// rejects the whole envelope.
    pub fn check_signatures<'s>(
        &'s self,
        env: &Envelope<'_>,
        now: u64,
    ) -> Result<heapless::Vec<&'s TrustedKey, MAX_SIGNATURES>, Rejection> {
        let mut signers: heapless::Vec<&TrustedKey, MAX_SIGNATURES> = heapless::Vec::new();
        for s in &env.signatures {
            let key = self.get(s.key_id).ok_or(Rejection::UnknownKey(s.key_id))?;
            if key.revoked {
                return Err(Rejection::RevokedKey(key.id));
            }
            if let Some(nb) = key.not_before {
                if now < nb {
                    return Err(Rejection::KeyNotYetValid {
                        id: key.id,
                        not_before: nb,
                    });
                }
            }
            if let Some(na) = key.not_after {
                if now > na {
                    return Err(Rejection::KeyExpired {
                        id: key.id,
                        not_after: na,
                    });
                }
            }
            if signers.iter().any(|k| k.id == key.id) {
                return Err(Rejection::DuplicateSigner(key.id));
            }
            if !verify_raw(&key.public, env.signed, &s.signature) {
                return Err(Rejection::BadSignature(key.id));
            }
            // Cannot overflow: the envelope holds at most MAX_SIGNATURES entries.
            let _ = signers.push(key);
        }
        if signers.len() < self.threshold {
            return Err(Rejection::InsufficientSignatures {
                got: signers.len(),
                need: self.threshold,
            });
        }
        Ok(signers)
    }

    /// Verifies a rotation statement (signed by currently trusted keys, meeting the threshold,
    /// fresh at `now`) and admits the new key it names; returns the new key's id.
    pub fn apply_rotation(&mut self, statement: &[u8], now: u64) -> Result<KeyId, Rejection> {
        let env = envelope::parse(statement, Kind::Rotation)?;
        let (signer_ids, signer_names): (Vec<KeyId>, Vec<Ident>) = self
            .check_signatures(&env, now)?
            .iter()
            .map(|k| (k.id, k.name.clone()))
            .unzip();
        let rot = parse_rotation(env.payload)?;
        check_freshness(rot.issued_at, rot.expires_at, now)?;
        if !signer_names
            .iter()
            .any(|n| n.as_str() == rot.new_key.name())
        {
            return Err(Rejection::RotationNameMismatch(
                rot.new_key.name().to_string(),
            ));
        }
        let mut next = self.clone();
        let id = next.insert(
            &rot.new_key,
            rot.not_before,
            rot.not_after,
            signer_ids.first().copied(),
        )?;
        if rot.revoke_signers {
            for s in &signer_ids {
                next.revoke(*s)?;
            }
        }
        next.rotations.push(RotationRecord {
            new_key: id.to_string(),
            signed_by: signer_ids.iter().map(|i| i.to_string()).collect(),
            applied_at: now,
            statement: B64.encode(statement),
        });
        *self = next;
        Ok(id)
    }
}

/// A rotation: admit `new_key` (named as one of the signers), optionally revoking the signers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationSpec {
    pub new_key: PublicKey,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub revoke_signers: bool,
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRotation {
    v: u64,
    new_key: WireNewKey,
    revoke_signers: bool,
    issued_at: u64,
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireNewKey {
    name: String,
    public_key: String,
    #[serde(default)]
    not_before: Option<u64>,
    #[serde(default)]
    not_after: Option<u64>,
}

/// Signs a rotation statement with the current key(s).
pub fn sign_rotation(spec: &RotationSpec, keys: &[&SigningKey]) -> Result<Vec<u8>, Rejection> {
    let wire = WireRotation {
        v: 1,
        new_key: WireNewKey {
            name: spec.new_key.name().to_string(),
            public_key: B64.encode(spec.new_key.raw()),
            not_before: spec.not_before,
            not_after: spec.not_after,
        },
        revoke_signers: spec.revoke_signers,
        issued_at: spec.issued_at,
        expires_at: spec.expires_at,
    };
    let payload =
        serde_json::to_vec(&wire).map_err(|e| Rejection::MalformedPayload(e.to_string()))?;
    parse_rotation(&payload)?;
    envelope::sign(Kind::Rotation, &payload, keys)
}

fn parse_rotation(payload: &[u8]) -> Result<RotationSpec, Rejection> {
    let v = strict_json::parse(payload)?;
    {
        let obj = v
            .as_object()
            .ok_or_else(|| Rejection::MalformedPayload("not an object".into()))?;
        match obj.get("v").and_then(serde_json::Value::as_u64) {
            Some(1) => {}
            Some(other) => return Err(Rejection::UnsupportedVersion(other)),
            None => return Err(Rejection::MalformedPayload("missing or bad `v`".into())),
        }
        check_fields(
            obj,
            &["v", "new_key", "revoke_signers", "issued_at", "expires_at"],
        )?;
        if let Some(k) = obj.get("new_key").and_then(serde_json::Value::as_object) {
            check_fields(k, &["name", "public_key", "not_before", "not_after"])?;
        }
    }
    let w: WireRotation = strict_json::from_value(v)?;
    let raw = B64
        .decode(&w.new_key.public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(Rejection::InvalidField {
            field: "new_key.public_key",
            why: "not 32 bytes of base64",
        })?;
    Ok(RotationSpec {
        new_key: PublicKey::new(&w.new_key.name, raw)?,
        not_before: w.new_key.not_before,
        not_after: w.new_key.not_after,
        revoke_signers: w.revoke_signers,
        issued_at: w.issued_at,
        expires_at: w.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(keys: &[&SigningKey]) -> TrustStore {
        let mut s = TrustStore::new();
        for k in keys {
            s.add(&k.public(), None, None).unwrap();
        }
        s
    }

    #[test]
    fn the_store_round_trips_through_its_json_form() {
        let a = SigningKey::generate("alice").unwrap();
        let mut s = store_with(&[&a]);
        s.set_threshold(1).unwrap();
        s.revoke(a.id()).unwrap();
        let back = TrustStore::from_json(s.to_json().as_bytes()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_store_whose_key_id_is_not_derived_from_the_key_is_refused() {
        let a = SigningKey::generate("alice").unwrap();
        let json = store_with(&[&a])
            .to_json()
            .replace(&a.id().to_string(), "0000000000000000");
        assert_eq!(
            TrustStore::from_json(json.as_bytes()).unwrap_err().code(),
            "key-id-mismatch"
        );
    }

    /// A store file from JSON text, with `keys` and the top-level fields in `extra`.
    fn store_json(keys: &[serde_json::Value], extra: &str) -> String {
        alloc::format!(
            r#"{{"v":1,"keys":{}{extra}}}"#,
            serde_json::Value::Array(keys.to_vec())
        )
    }

    fn key_entry(
        k: &SigningKey,
        not_before: Option<u64>,
        not_after: Option<u64>,
    ) -> serde_json::Value {
        serde_json::json!({
            "id": k.id().to_string(), "name": k.name(), "public_key": B64.encode(k.public().raw()),
            "not_before": not_before, "not_after": not_after
        })
    }

    #[test]
    fn a_store_file_without_a_threshold_requires_one_signature() {
        let a = SigningKey::generate("alice").unwrap();
        let s =
            TrustStore::from_json(store_json(&[key_entry(&a, None, None)], "").as_bytes()).unwrap();
        assert_eq!(s.threshold(), 1);
        assert_eq!(s.keys().len(), 1);
        assert_eq!(s.keys()[0].name.as_str(), "alice");
    }

    #[test]
    fn the_threshold_is_one_to_eight() {
        let mut s = TrustStore::new();
        for k in [1, 2, MAX_SIGNATURES] {
            s.set_threshold(k).unwrap();
            assert_eq!(s.threshold(), k);
        }
        for k in [0, MAX_SIGNATURES + 1] {
            assert_eq!(s.set_threshold(k).unwrap_err().code(), "bad-trust-store");
            assert_eq!(s.threshold(), MAX_SIGNATURES, "unchanged by a refusal");
        }
        let back = TrustStore::from_json(s.to_json().as_bytes()).unwrap();
        assert_eq!(back.threshold(), MAX_SIGNATURES);
    }

    #[test]
    fn a_store_file_up_to_its_caps_loads_and_one_more_is_refused() {
        let keys: Vec<SigningKey> = (0..=MAX_TRUSTED_KEYS)
            .map(|i| SigningKey::generate(&alloc::format!("k{i}")).unwrap())
            .collect();
        let entries: Vec<_> = keys.iter().map(|k| key_entry(k, None, None)).collect();
        let full = store_json(&entries[..MAX_TRUSTED_KEYS], "");
        assert_eq!(
            TrustStore::from_json(full.as_bytes()).unwrap().keys().len(),
            MAX_TRUSTED_KEYS
        );
        let over = store_json(&entries, "");
        assert_eq!(
            TrustStore::from_json(over.as_bytes()).unwrap_err(),
            Rejection::BadTrustStore(alloc::format!("more than {MAX_TRUSTED_KEYS} keys"))
        );
        // The byte cap: padded with spaces to exactly the cap, then one byte more.
        let mut padded = full;
        padded.push_str(&" ".repeat(MAX_TRUST_STORE_BYTES - padded.len()));
        assert!(TrustStore::from_json(padded.as_bytes()).is_ok());
        padded.push(' ');
        assert_eq!(
            TrustStore::from_json(padded.as_bytes()).unwrap_err(),
            Rejection::TooLarge {
                len: MAX_TRUST_STORE_BYTES + 1,
                cap: MAX_TRUST_STORE_BYTES
            }
        );
    }

    #[test]
    fn a_key_window_may_be_one_second_long_but_not_reversed() {
        let a = SigningKey::generate("alice").unwrap();
        for (nb, na) in [(5, 5), (4, 5)] {
            let json = store_json(&[key_entry(&a, Some(nb), Some(na))], "");
            assert!(TrustStore::from_json(json.as_bytes()).is_ok(), "{nb}..{na}");
            assert!(TrustStore::new()
                .add(&a.public(), Some(nb), Some(na))
                .is_ok());
        }
        let json = store_json(&[key_entry(&a, Some(6), Some(5))], "");
        assert_eq!(
            TrustStore::from_json(json.as_bytes()).unwrap_err(),
            Rejection::BadTrustStore(alloc::format!("key {}: not_before after not_after", a.id()))
        );
        assert_eq!(
            TrustStore::new()
                .add(&a.public(), Some(6), Some(5))
                .unwrap_err(),
            Rejection::BadValidityWindow("not_before after not_after")
        );
    }

    #[test]
    fn a_key_signs_from_its_first_to_its_last_second_inclusive() {
        let a = SigningKey::generate("alice").unwrap();
        let mut s = TrustStore::new();
        s.add(&a.public(), Some(100), Some(200)).unwrap();
        let env = envelope::sign(Kind::Command, b"{}", &[&a]).unwrap();
        let e = envelope::parse(&env, Kind::Command).unwrap();
        for now in [100, 200] {
            assert_eq!(s.check_signatures(&e, now).unwrap().len(), 1, "at {now}");
        }
        assert_eq!(
            s.check_signatures(&e, 99).unwrap_err().code(),
            "key-not-yet-valid"
        );
        assert_eq!(
            s.check_signatures(&e, 201).unwrap_err().code(),
            "key-expired"
        );
    }

    #[test]
    fn adding_the_same_key_twice_is_refused() {
        let a = SigningKey::generate("alice").unwrap();
        let mut s = store_with(&[&a]);
        assert_eq!(
            s.add(&a.public(), None, None).unwrap_err(),
            Rejection::KeyAlreadyTrusted(a.id())
        );
    }

    #[test]
    fn two_of_three_needs_two_distinct_trusted_signers() {
        let (a, b, c) = (
            SigningKey::generate("alice").unwrap(),
            SigningKey::generate("bob").unwrap(),
            SigningKey::generate("carol").unwrap(),
        );
        let mut s = store_with(&[&a, &b, &c]);
        s.set_threshold(2).unwrap();
        let one = envelope::sign(Kind::Command, b"{}", &[&a]).unwrap();
        let e = envelope::parse(&one, Kind::Command).unwrap();
        assert_eq!(
            s.check_signatures(&e, 0).unwrap_err(),
            Rejection::InsufficientSignatures { got: 1, need: 2 }
        );
        let same = envelope::sign(Kind::Command, b"{}", &[&a, &a]).unwrap();
        let e = envelope::parse(&same, Kind::Command).unwrap();
        assert_eq!(
            s.check_signatures(&e, 0).unwrap_err(),
            Rejection::DuplicateSigner(a.id())
        );
        let two = envelope::sign(Kind::Command, b"{}", &[&a, &c]).unwrap();
        let e = envelope::parse(&two, Kind::Command).unwrap();
        assert_eq!(s.check_signatures(&e, 0).unwrap().len(), 2);
    }

    fn rotation(old: &SigningKey, new: &SigningKey, revoke: bool) -> Vec<u8> {
        sign_rotation(
            &RotationSpec {
                new_key: new.public(),
                not_before: None,
                not_after: None,
                revoke_signers: revoke,
                issued_at: 100,
                expires_at: 200,
            },
            &[old],
        )
        .unwrap()
    }

    #[test]
    fn a_rotation_signed_by_a_trusted_key_admits_the_new_key_and_can_revoke_the_old() {
        let old = SigningKey::generate("alice").unwrap();
        let new = SigningKey::generate("alice").unwrap();
        let mut s = store_with(&[&old]);
        let id = s.apply_rotation(&rotation(&old, &new, true), 150).unwrap();
        assert_eq!(id, new.id());
        assert_eq!(s.get(new.id()).unwrap().admitted_by, Some(old.id()));
        assert!(s.get(old.id()).unwrap().revoked);
        assert_eq!(s.rotations().len(), 1);
        // Applying it again changes nothing: the old key is now revoked.
        let before = s.clone();
        assert_eq!(
            s.apply_rotation(&rotation(&old, &new, true), 150)
                .unwrap_err()
                .code(),
            "revoked-key"
        );
        assert_eq!(s, before);
    }

    #[test]
    fn a_rotation_by_an_untrusted_key_or_to_another_name_changes_nothing() {
        let old = SigningKey::generate("alice").unwrap();
        let mallory = SigningKey::generate("alice").unwrap();
        let bob = SigningKey::generate("bob").unwrap();
        let mut s = store_with(&[&old]);
        let before = s.clone();
        assert_eq!(
            s.apply_rotation(&rotation(&mallory, &bob, false), 150)
                .unwrap_err(),
            Rejection::UnknownKey(mallory.id())
        );
        assert_eq!(
            s.apply_rotation(&rotation(&old, &bob, false), 150)
                .unwrap_err(),
            Rejection::RotationNameMismatch("bob".into())
        );
        assert_eq!(
            s.apply_rotation(&rotation(&old, &mallory, false), 5000)
                .unwrap_err()
                .code(),
            "expired"
        );
        assert_eq!(s, before);
    }
}
