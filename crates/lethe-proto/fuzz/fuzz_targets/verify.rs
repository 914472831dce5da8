//! Fuzz target: arbitrary bytes through every entry point that reads untrusted input, against a
//! fixed trust store and device. Three paths per input:
//! 1. the bytes as a command envelope (framing, caps, key lookup, signature check);
//! 2. the bytes as a PAYLOAD, signed with the trusted key and then verified, so the fuzzer
//!    reaches the strict JSON reader, the field checks, the image header checks, freshness,
//!    targeting and replay (what a holder of a trusted key could send);
//! 3. the bytes as a receipt, a rotation statement and a trust store file.
//!
//! Invariant checked: no panic, no crash, no unbounded allocation; and nothing but the signed
//! path can be accepted.
#![no_main]

use lethe_proto::{
    envelope, verify_command, verify_receipt, DeviceContext, ModelContext, ReplayState, SigningKey,
    TrustStore,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: u64 = 1_700_000_000;

struct Fixture {
    key: SigningKey,
    trust: TrustStore,
    device: DeviceContext,
    state: ReplayState,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = SigningKey::generate("alice").unwrap();
        let mut trust = TrustStore::new();
        trust.add(&key.public(), None, None).unwrap();
        Fixture {
            key,
            trust,
            device: DeviceContext {
                device_id: "cam-01".into(),
                groups: vec!["lobby".into()],
                model: Some(ModelContext {
                    id: "lethe-tiny".into(),
                    version: None,
                }),
            },
            state: ReplayState::new().check("alice", 10).unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // 1. Raw envelope: a forged signature must never pass.
    if verify_command(data, &f.trust, &f.device, &f.state, NOW).is_ok() {
        panic!("unsigned input accepted");
    }
    // 2. Authentic payload.
    if let Ok(env) = envelope::sign(envelope::Kind::Command, data, &[&f.key]) {
        if let Ok((cmd, next)) = verify_command(&env, &f.trust, &f.device, &f.state, NOW) {
            // Only the trusted issuer, only a higher sequence, and the new state records it.
            assert_eq!(cmd.issuer.as_str(), "alice");
            assert!(cmd.seq > 10);
            assert_eq!(next.last("alice"), Some(cmd.seq));
        }
    }
    // 3. Other readers of untrusted bytes.
    let _ = verify_receipt(data, &f.key.public());
    let _ = f.trust.clone().apply_rotation(data, NOW);
    let _ = TrustStore::from_json(data);
});
