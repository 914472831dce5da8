//! The attack suite: each case is a mutation of one good, signed command plus the typed reason
//! it must be rejected with, all run through one helper (`check`) that returns the code the
//! verifier really gave; the suite must reach every command rejection code of the protocol.
//! A rejection cannot record anything here: `verify_command` borrows the replay state and
//! returns a next state only inside `Ok` (pinned by
//! `a_rejection_cannot_return_or_change_a_replay_state`); that the agent does not consume
//! the sequence of a rejected command is checked by its own rejection test. Covers the TUF/Uptane attack list as it applies here: bad or missing
//! signatures, unknown, revoked and out-of-window keys, replay and rollback of sequence numbers,
//! freeze (expiry, bounded lifetime), mix-and-match (wrong device, group, model), endless data
//! (size caps, truncation, image bombs) and malformed encodings.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lethe_proto::envelope::{self, Kind, HEADER_LEN};
use lethe_proto::{
    sign_command, sign_receipt, sign_rotation, verify_command, ActionSpec, CommandSpec,
    DeviceContext, ForgetSpec, ModelContext, Receipt, Rejection, ReplayState, RotationSpec,
    SigningKey, TargetSpec, TrustStore, Verdict,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Cursor;

const NOW: u64 = 1_700_000_000;

struct Fx {
    alice: SigningKey,
    bob_revoked: SigningKey,
    carol_future: SigningKey,
    dave_expired: SigningKey,
    mallory: SigningKey,
    trust: TrustStore,
    device: DeviceContext,
    state: ReplayState,
    image: Vec<u8>,
}

fn png_of(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid PNG header declaring `w` x `h` pixels and carrying one pixel of data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut p = png_of(&image::RgbImage::new(1, 1));
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

impl Fx {
    fn new() -> Fx {
        let alice = SigningKey::generate("alice").unwrap();
        let bob_revoked = SigningKey::generate("bob").unwrap();
        let carol_future = SigningKey::generate("carol").unwrap();
        let dave_expired = SigningKey::generate("dave").unwrap();
        let mallory = SigningKey::generate("mallory").unwrap();
        let mut trust = TrustStore::new();
        trust
            .add(&alice.public(), None, Some(NOW + 86_400))
            .unwrap();
        trust.add(&bob_revoked.public(), None, None).unwrap();
        trust.revoke(bob_revoked.id()).unwrap();
        trust
            .add(&carol_future.public(), Some(NOW + 3600), None)
            .unwrap();
        trust
            .add(&dave_expired.public(), None, Some(NOW - 3600))
            .unwrap();
        let device = DeviceContext {
            device_id: "cam-01".into(),
            groups: vec!["lobby".into()],
            model: Some(ModelContext {
                id: "lethe-tiny".into(),
                version: Some("3".into()),
            }),
        };
        let state = ReplayState::new().check("alice", 10).unwrap();
        let image = png_of(&lethe_world::render_id(0, 1_000_123).unwrap());
        Fx {
            alice,
            bob_revoked,
            carol_future,
            dave_expired,
            mallory,
            trust,
            device,
            state,
            image,
        }
    }

    fn spec(&self) -> CommandSpec {
        CommandSpec {
            id: "cmd-0001".into(),
            issuer: "alice".into(),
            seq: 11,
            issued_at: NOW - 10,
            expires_at: NOW + 3600,
            target: TargetSpec::Device("cam-01".into()),
            model_id: "lethe-tiny".into(),
            model_version: Some("3".into()),
            action: ActionSpec::Forget(ForgetSpec {
                concept: "Albin Berg".into(),
                image: self.image.clone(),
                verify_images: vec![],
                method: None,
                steps: None,
            }),
        }
    }

    fn good(&self) -> Vec<u8> {
        sign_command(&self.spec(), &[&self.alice]).unwrap()
    }

    /// Signs a spec edited by `f` with alice (the signer's own checks apply).
    fn with(&self, f: impl FnOnce(&mut CommandSpec)) -> Vec<u8> {
        let mut s = self.spec();
        f(&mut s);
        sign_command(&s, &[&self.alice]).unwrap()
    }

    /// Signs a spec with another key, the issuer set to that key's name.
    fn signed_by(&self, k: &SigningKey) -> Vec<u8> {
        let mut s = self.spec();
        s.issuer = k.name().into();
        sign_command(&s, &[k]).unwrap()
    }

    /// Edits the good payload as JSON and signs the result with alice, bypassing the
    /// signer's checks: an authentic but hostile or broken payload.
    fn json(&self, f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&self.spec().to_payload().unwrap()).unwrap();
        f(&mut v);
        self.raw(&serde_json::to_vec(&v).unwrap())
    }

    /// Signs arbitrary payload bytes with alice.
    fn raw(&self, payload: &[u8]) -> Vec<u8> {
        envelope::sign(Kind::Command, payload, &[&self.alice]).unwrap()
    }

    /// Runs the verifier as the agent does; asserts a rejection with `code` and returns the
    /// code the verifier gave.
    fn check(&self, name: &str, bytes: &[u8], code: &str) -> &'static str {
        match verify_command(bytes, &self.trust, &self.device, &self.state, NOW) {
            Ok((cmd, next)) => panic!(
                "case {name:?}: accepted as {:?}; replay state would become {next:?}",
                cmd.id
            ),
            Err(e) => {
                assert_eq!(e.code(), code, "case {name:?}: {e}");
                e.code()
            }
        }
    }
}

/// Codes that `verify_command` cannot give: they belong to key files, trust-store files,
/// rotation statements and receipts, each tested in its own module.
const NOT_FROM_VERIFY_COMMAND: [&str; 6] = [
    "bad-key-file",
    "key-id-mismatch",
    "bad-trust-store",
    "key-already-trusted",
    "rotation-name-mismatch",
    "receipt-device-mismatch",
];

type Case = (&'static str, Vec<u8>, &'static str);

fn cases(fx: &Fx) -> Vec<Case> {
    let good = fx.good();
    let payload_at = HEADER_LEN + 5;
    let sig_at = good.len() - 5;
    let n = good.len();
    let flip = |i: usize| {
        let mut b = good.clone();
        b[i] ^= 0x01;
        b
    };
    let big_b64 = B64.encode(vec![0u8; 600 << 10]);
    let dup_seq = {
        let p = fx.spec().to_payload().unwrap();
        let s = String::from_utf8(p)
            .unwrap()
            .replacen('{', "{\"seq\":99,", 1);
        fx.raw(s.as_bytes())
    };
    let receipt = sign_receipt(
        &Receipt {
            v: 1,
            command_id: "cmd-0001".into(),
            device_id: "alice".into(),
            verdict: Verdict::Committed,
            reason: None,
            model_hash_before: "a".into(),
            model_hash_after: "b".into(),
            metrics: Default::default(),
            execution_provider: None,
            started_at: 1,
            finished_at: 2,
            undone_forgets: Vec::new(),
        },
        &fx.alice,
    )
    .unwrap();
    vec![
        // ---- signatures and keys ----
        ("bad signature", flip(sig_at), "bad-signature"),
        ("flipped payload byte", flip(payload_at), "bad-signature"),
        (
            "payload length beyond the input",
            {
                let mut b = good.clone();
                let len = u32::from_be_bytes([b[6], b[7], b[8], b[9]]) + 1000;
                b[6..10].copy_from_slice(&len.to_be_bytes());
                b
            },
            "truncated",
        ),
        ("flipped kind byte", flip(5), "wrong-kind"),
        ("flipped magic", flip(0), "bad-magic"),
        ("flipped envelope version", flip(4), "unsupported-envelope"),
        ("flipped key id", flip(n - 64 - 1), "unknown-key"),
        ("unknown key", fx.signed_by(&fx.mallory), "unknown-key"),
        ("revoked key", fx.signed_by(&fx.bob_revoked), "revoked-key"),
        (
            "key not yet valid",
            fx.signed_by(&fx.carol_future),
            "key-not-yet-valid",
        ),
        ("key expired", fx.signed_by(&fx.dave_expired), "key-expired"),
        (
            "one key signing twice",
            envelope::sign(
                Kind::Command,
                &fx.spec().to_payload().unwrap(),
                &[&fx.alice, &fx.alice],
            )
            .unwrap(),
            "duplicate-signer",
        ),
        (
            "issuer not a signer",
            fx.json(|v| v["issuer"] = "bob".into()),
            "issuer-mismatch",
        ),
        ("a receipt as a command", receipt, "wrong-kind"),
        (
            "no signatures",
            {
                let mut b = good[..n - 72].to_vec();
                let last = b.len() - 1;
                b[last] = 0;
                b
            },
            "signature-count",
        ),
        // ---- freshness ----
        (
            "expired",
            fx.with(|s| {
                s.issued_at = NOW - 7200;
                s.expires_at = NOW - 3600;
            }),
            "expired",
        ),
        (
            "not yet valid",
            fx.with(|s| {
                s.issued_at = NOW + 3600;
                s.expires_at = NOW + 7200;
            }),
            "not-yet-valid",
        ),
        (
            "thirty-day lifetime",
            fx.with(|s| s.expires_at = NOW + 30 * 86_400),
            "bad-validity-window",
        ),
        // ---- replay ----
        ("replayed sequence", fx.with(|s| s.seq = 10), "replayed-seq"),
        ("lower sequence", fx.with(|s| s.seq = 3), "stale-seq"),
        // ---- mix and match ----
        (
            "wrong device",
            fx.with(|s| s.target = TargetSpec::Device("cam-02".into())),
            "wrong-device",
        ),
        (
            "wrong group",
            fx.with(|s| s.target = TargetSpec::Group("garage".into())),
            "wrong-group",
        ),
        (
            "wrong model id",
            fx.with(|s| s.model_id = "other".into()),
            "wrong-model",
        ),
        (
            "wrong model version",
            fx.with(|s| s.model_version = Some("2".into())),
            "wrong-model-version",
        ),
        // ---- versions and actions ----
        (
            "unknown action",
            fx.json(|v| v["action"] = serde_json::json!({"wipe": {}})),
            "unknown-action",
        ),
        (
            "payload version 2",
            fx.json(|v| v["v"] = 2.into()),
            "unsupported-version",
        ),
        // ---- endless data and truncation ----
        (
            "oversized envelope",
            {
                let mut b = good.clone();
                b.resize((1 << 20) + 1, 0);
                b
            },
            "too-large",
        ),
        (
            "declared payload over the cap",
            {
                let mut b = good.clone();
                b[6..10].copy_from_slice(&(2u32 << 20).to_be_bytes());
                b
            },
            "too-large",
        ),
        (
            "truncated in the payload",
            good[..n / 2].to_vec(),
            "truncated",
        ),
        ("truncated in the header", good[..7].to_vec(), "truncated"),
        ("truncated signature", good[..n - 1].to_vec(), "truncated"),
        (
            "trailing bytes",
            {
                let mut b = good.clone();
                b.push(0);
                b
            },
            "trailing-bytes",
        ),
        // ---- malformed encodings ----
        ("not JSON", fx.raw(b"{not json"), "malformed-payload"),
        ("not UTF-8", fx.raw(b"{\"v\":1,\xff}"), "malformed-payload"),
        (
            "trailing JSON",
            fx.raw(b"{\"v\":1} {}"),
            "malformed-payload",
        ),
        ("JSON array", fx.raw(b"[1,2]"), "malformed-payload"),
        (
            "seq as a string",
            fx.json(|v| v["seq"] = "11".into()),
            "malformed-payload",
        ),
        (
            "missing expiry",
            fx.json(|v| {
                v.as_object_mut().unwrap().remove("expires_at");
            }),
            "malformed-payload",
        ),
        (
            "two targets",
            fx.json(|v| v["target"]["group"] = "lobby".into()),
            "malformed-payload",
        ),
        ("duplicate seq field", dup_seq, "duplicate-field"),
        (
            "duplicate field spelled with a unicode escape",
            {
                let p = String::from_utf8(fx.spec().to_payload().unwrap()).unwrap();
                fx.raw(p.replacen('{', "{\"s\\u0065q\":12,", 1).as_bytes())
            },
            "duplicate-field",
        ),
        (
            "unknown top-level field",
            fx.json(|v| v["priority"] = 1.into()),
            "unknown-field",
        ),
        (
            "unknown forget field",
            fx.json(|v| v["action"]["forget"]["lr"] = 1.0.into()),
            "unknown-field",
        ),
        (
            "unknown target field",
            fx.json(|v| v["target"]["fleet"] = "x".into()),
            "unknown-field",
        ),
        (
            "device id with a slash",
            fx.json(|v| v["target"]["device"] = "cam/01".into()),
            "invalid-field",
        ),
        (
            "concept over its cap",
            fx.json(|v| v["action"]["forget"]["concept"] = "x".repeat(129).into()),
            "field-too-long",
        ),
        (
            "steps beyond the safe bound",
            fx.json(|v| v["action"]["forget"]["steps"] = 10_000.into()),
            "invalid-field",
        ),
        (
            "unknown method",
            fx.json(|v| v["action"]["forget"]["method"] = "retrain".into()),
            "invalid-field",
        ),
        // ---- images ----
        (
            "image with absurd dimensions",
            fx.json(|v| {
                v["action"]["forget"]["image"] = B64.encode(png_claiming(100_000, 100_000)).into()
            }),
            "image-dimensions",
        ),
        (
            "verification image with absurd dimensions",
            fx.json(|v| {
                v["action"]["forget"]["verify_images"] =
                    serde_json::json!([B64.encode(png_claiming(1, 1 << 30))])
            }),
            "image-dimensions",
        ),
        (
            "image bytes that are not an image",
            fx.json(|v| v["action"]["forget"]["image"] = B64.encode(b"MZ\x90\0 not a PNG").into()),
            "not-an-image",
        ),
        (
            "a GIF",
            fx.json(|v| {
                v["action"]["forget"]["image"] = B64.encode(b"GIF89a\x01\0\x01\0\0\0\0").into()
            }),
            "not-an-image",
        ),
        (
            "image not base64",
            fx.json(|v| v["action"]["forget"]["image"] = "@@@@".into()),
            "invalid-field",
        ),
        (
            "image over the byte cap",
            fx.json(|v| v["action"]["forget"]["image"] = big_b64.clone().into()),
            "image-too-large",
        ),
        (
            "too many verification images",
            fx.json(|v| {
                v["action"]["forget"]["verify_images"] =
                    serde_json::json!(vec![B64.encode(&fx.image); 5])
            }),
            "too-many-images",
        ),
    ]
}

#[test]
fn the_good_command_is_accepted_and_records_its_sequence() {
    let fx = Fx::new();
    let (cmd, next) = verify_command(&fx.good(), &fx.trust, &fx.device, &fx.state, NOW).unwrap();
    assert_eq!(cmd.seq, 11);
    assert_eq!(cmd.signers(), &[fx.alice.id()]);
    assert_eq!(next.last("alice"), Some(11));
    // The same bytes again are a replay.
    assert_eq!(
        verify_command(&fx.good(), &fx.trust, &fx.device, &next, NOW)
            .unwrap_err()
            .code(),
        "replayed-seq"
    );
}

#[test]
fn every_attack_is_rejected_with_its_own_reason() {
    let fx = Fx::new();
    let all = cases(&fx);
    for (name, bytes, code) in &all {
        fx.check(name, bytes, code);
    }
    eprintln!("{} attack cases", all.len());
}

#[test]
fn the_attacks_reach_every_command_rejection_code_of_the_protocol() {
    let fx = Fx::new();
    // The codes the verifier returned, not the ones the table expects.
    let mut seen: BTreeSet<&str> = cases(&fx)
        .iter()
        .map(|(name, bytes, code)| fx.check(name, bytes, code))
        .collect();
    let mut two = Fx::new();
    require_two_of_n(&mut two);
    seen.insert(two.check(
        "one signer under 2-of-n",
        &two.good(),
        "insufficient-signatures",
    ));
    // Rejection::CODES is the whole vocabulary (a unit test holds it to PROTOCOL.md's table).
    for c in NOT_FROM_VERIFY_COMMAND {
        assert!(Rejection::CODES.contains(&c), "{c} is not a rejection code");
    }
    let want: BTreeSet<&str> = Rejection::CODES
        .iter()
        .copied()
        .filter(|c| !NOT_FROM_VERIFY_COMMAND.contains(c))
        .collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    let undocumented: Vec<_> = seen.difference(&want).collect();
    assert!(
        missing.is_empty() && undocumented.is_empty(),
        "no attack reaches {missing:?}; not a command code: {undocumented:?}"
    );
    eprintln!("{} distinct command rejection codes reached", seen.len());
}

/// Trusts a second operator, erin, and requires two signers; returns erin's key.
fn require_two_of_n(fx: &mut Fx) -> SigningKey {
    let erin = SigningKey::generate("erin").unwrap();
    fx.trust.add(&erin.public(), None, None).unwrap();
    fx.trust.set_threshold(2).unwrap();
    erin
}

/// "A rejection records nothing" is a property of the signature: the replay state is
/// borrowed, and a next state exists only inside `Ok`. This stops compiling if the verifier
/// ever takes the state mutably or hands back a state with its rejection.
#[test]
fn a_rejection_cannot_return_or_change_a_replay_state() {
    type Verify =
        fn(
            &[u8],
            &TrustStore,
            &DeviceContext,
            &ReplayState,
            u64,
        )
            -> Result<(lethe_proto::Verified<lethe_proto::Command>, ReplayState), Rejection>;
    let verify: Verify = verify_command;
    let fx = Fx::new();
    let err: Rejection = verify(
        &fx.signed_by(&fx.mallory),
        &fx.trust,
        &fx.device,
        &fx.state,
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.code(), "unknown-key");
}

#[test]
fn every_single_bit_flip_anywhere_in_the_envelope_is_rejected() {
    let fx = Fx::new();
    let good = fx.good();
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[i] ^= bit;
            let r = verify_command(&b, &fx.trust, &fx.device, &fx.state, NOW);
            assert!(r.is_err(), "flip of byte {i} bit {bit:#x} accepted");
        }
    }
}

#[test]
fn a_group_command_reaches_a_device_in_the_group() {
    let fx = Fx::new();
    let env = fx.with(|s| s.target = TargetSpec::Group("lobby".into()));
    assert!(verify_command(&env, &fx.trust, &fx.device, &fx.state, NOW).is_ok());
}

#[test]
fn two_of_n_requires_two_trusted_signers_on_the_command() {
    let mut fx = Fx::new();
    let erin = require_two_of_n(&mut fx);
    fx.check(
        "one signer under 2-of-n",
        &fx.good(),
        "insufficient-signatures",
    );
    let both = sign_command(&fx.spec(), &[&fx.alice, &erin]).unwrap();
    let (cmd, _) = verify_command(&both, &fx.trust, &fx.device, &fx.state, NOW).unwrap();
    assert_eq!(cmd.signers().len(), 2);
}

#[test]
fn after_rotation_the_new_key_continues_the_issuers_sequence_and_the_old_one_is_refused() {
    let mut fx = Fx::new();
    let alice2 = SigningKey::generate("alice").unwrap();
    let stmt = sign_rotation(
        &RotationSpec {
            new_key: alice2.public(),
            not_before: None,
            not_after: None,
            revoke_signers: true,
            issued_at: NOW,
            expires_at: NOW + 600,
        },
        &[&fx.alice],
    )
    .unwrap();
    fx.trust.apply_rotation(&stmt, NOW).unwrap();
    fx.check("old key after rotation", &fx.good(), "revoked-key");
    let mut s = fx.spec();
    s.seq = 10;
    let replay = sign_command(&s, &[&alice2]).unwrap();
    fx.check(
        "new key replaying the old sequence",
        &replay,
        "replayed-seq",
    );
    s.seq = 12;
    let env = sign_command(&s, &[&alice2]).unwrap();
    assert!(verify_command(&env, &fx.trust, &fx.device, &fx.state, NOW).is_ok());
}

#[test]
fn a_model_check_can_be_skipped_only_by_passing_no_model() {
    let mut fx = Fx::new();
    fx.device.model = None;
    let env = fx.with(|s| s.model_id = "other".into());
    assert!(verify_command(&env, &fx.trust, &fx.device, &fx.state, NOW).is_ok());
}

#[test]
fn the_signer_refuses_an_issuer_that_is_not_its_key() {
    let fx = Fx::new();
    let mut s = fx.spec();
    s.issuer = "bob".into();
    assert_eq!(
        sign_command(&s, &[&fx.alice]).unwrap_err(),
        Rejection::IssuerMismatch("bob".into())
    );
}

#[test]
fn the_fuzz_seed_payload_is_accepted_when_signed_so_the_fuzzer_starts_deep() {
    let fx = Fx::new();
    let seed = include_bytes!("../fuzz/seeds/payload-good.json");
    let env = fx.raw(seed);
    let mut device = fx.device.clone();
    device.model = Some(ModelContext {
        id: "lethe-tiny".into(),
        version: None,
    });
    let (cmd, _) = verify_command(&env, &fx.trust, &device, &fx.state, NOW).unwrap();
    assert_eq!(cmd.seq, 11);
}
