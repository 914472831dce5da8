//! Throughput of the protocol's hot paths, printed as operations per second:
//! envelope framing parse, full command verification (signature, payload, image header,
//! freshness, target, replay), signing, and receipt verification. Plain `harness = false`
//! bench: `cargo bench -p lethe-proto`. The command carries one 64x64 PNG rendered by
//! lethe-world (about the size a camera frame crop would be).

use lethe_proto::envelope::{self, Kind};
use lethe_proto::{
    sign_command, sign_receipt, verify_command, verify_receipt, ActionSpec, CommandSpec,
    DeviceContext, ForgetSpec, ModelContext, Receipt, ReplayState, SigningKey, TargetSpec,
    TrustStore, Verdict,
};
use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

const NOW: u64 = 1_700_000_000;

/// Runs `f` repeatedly for about `budget` and returns operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..10 {
            f();
        }
        n += 10;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
    );
    let key = SigningKey::generate("alice").unwrap();
    let mut trust = TrustStore::new();
    trust.add(&key.public(), None, None).unwrap();
    let device = DeviceContext {
        device_id: "cam-01".into(),
        groups: vec![],
        model: Some(ModelContext {
            id: "lethe-tiny".into(),
            version: None,
        }),
    };
    let state = ReplayState::new();
    let mut image = Vec::new();
    lethe_world::render_id(0, 1_000_123)
        .unwrap()
        .write_to(&mut Cursor::new(&mut image), image::ImageFormat::Png)
        .unwrap();
    let image_bytes = image.len();
    let spec = CommandSpec {
        id: "cmd-1".into(),
        issuer: "alice".into(),
        seq: 1,
        issued_at: NOW,
        expires_at: NOW + 3600,
        target: TargetSpec::Device("cam-01".into()),
        model_id: "lethe-tiny".into(),
        model_version: None,
        action: ActionSpec::Forget(ForgetSpec {
            concept: "Albin Berg".into(),
            image,
            verify_images: vec![],
            method: None,
            steps: None,
        }),
    };
    let env = sign_command(&spec, &[&key]).unwrap();
    let payload = spec.to_payload().unwrap();
    let dev = SigningKey::generate("cam-01").unwrap();
    let receipt = sign_receipt(
        &Receipt {
            v: 1,
            command_id: "cmd-1".into(),
            device_id: "cam-01".into(),
            verdict: Verdict::Committed,
            reason: None,
            model_hash_before: "a".repeat(64),
            model_hash_after: "b".repeat(64),
            metrics: [("efficacy".to_string(), 1.0)].into_iter().collect(),
            execution_provider: Some("cpu".into()),
            started_at: NOW,
            finished_at: NOW + 2,
            undone_forgets: Vec::new(),
        },
        &dev,
    )
    .unwrap();

    println!(
        "lethe-proto throughput (command envelope {} bytes, one {}-byte PNG; {} ms per line)",
        env.len(),
        image_bytes,
        budget.as_millis()
    );
    let r = rate(budget, || {
        black_box(envelope::parse(black_box(&env), Kind::Command).unwrap());
    });
    println!("envelope parse:        {r:>12.0} /s");
    let r = rate(budget, || {
        black_box(verify_command(black_box(&env), &trust, &device, &state, NOW).unwrap());
    });
    println!("command verifications: {r:>12.0} /s");
    let r = rate(budget, || {
        black_box(envelope::sign(Kind::Command, black_box(&payload), &[&key]).unwrap());
    });
    println!("signings (raw payload):{r:>12.0} /s");
    let r = rate(budget, || {
        black_box(sign_command(black_box(&spec), &[&key]).unwrap());
    });
    println!("sign_command (checked):{r:>12.0} /s");
    let r = rate(budget, || {
        black_box(verify_receipt(black_box(&receipt), &dev.public()).unwrap());
    });
    println!("receipt verifications: {r:>12.0} /s");
}
