//! The signing CLI as scripts use it: runs the built `lethectl` through keygen -> trust add ->
//! sign -> verify -> replay -> tamper -> rotation -> revocation -> receipt verify, checking exit
//! codes (0 yes, 1 a definite no, 2 errors) and the first words of stdout.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn lethectl(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_lethectl"))
        .args(args)
        .output()
        .expect("running lethectl");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let o = lethectl(args);
    assert_eq!(
        o.code, 0,
        "{args:?}\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    o.stdout
}

#[track_caller]
fn no(args: &[&str], code: &str) {
    let o = lethectl(args);
    assert_eq!(
        o.code, 1,
        "{args:?}\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    let want = format!("rejected: {code}:");
    assert!(o.stdout.starts_with(&want), "{args:?}: {}", o.stdout);
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lethectl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_trust_sign_verify_replay_tamper_rotate_revoke_and_receipt() {
    let d = scratch("signing");
    let p = |n: &str| d.join(n);

    // Keys: an operator and a device.
    ok(&["keygen", "--out", s(&d), "--name", "alice"]);
    ok(&["keygen", "--out", s(&d), "--name", "cam-01"]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("alice.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private key mode");
    }
    // keygen refuses to overwrite.
    assert_eq!(
        lethectl(&["keygen", "--out", s(&d), "--name", "alice"]).code,
        2
    );

    let trust = p("trust.json");
    let out = ok(&[
        "trust",
        "add",
        "--store",
        s(&trust),
        "--pub",
        s(&p("alice.pub")),
        "--not-after",
        "+30d",
    ]);
    assert!(out.starts_with("trusted "), "{out}");
    no(
        &[
            "trust",
            "add",
            "--store",
            s(&trust),
            "--pub",
            s(&p("alice.pub")),
        ],
        "key-already-trusted",
    );

    let img = p("face.png");
    lethe_world::render_id(0, 1_000_123)
        .unwrap()
        .save(&img)
        .unwrap();

    let sign = |seq: &str, key: &Path, out: &Path| {
        ok(&[
            "sign",
            "--key",
            s(key),
            "--device",
            "cam-01",
            "--model-id",
            "lethe-tiny",
            "--concept",
            "Albin Berg",
            "--image",
            s(&img),
            "--seq",
            seq,
            "--expires-in",
            "10m",
            "--out",
            s(out),
        ])
    };
    let cmd = p("cmd1.bin");
    assert!(sign("1", &p("alice.key"), &cmd).starts_with("signed alice-1 "));

    // Accepted, without and with state; the replay is then rejected.
    let out = ok(&[
        "verify",
        "--trust",
        s(&trust),
        "--device",
        "cam-01",
        s(&cmd),
    ]);
    assert!(
        out.starts_with("accepted id=alice-1 issuer=alice seq=1"),
        "{out}"
    );
    let state = p("state.json");
    let v = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-01",
            "--state",
            s(&state),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let args = v(&["--model-id", "lethe-tiny", s(&cmd)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(recorded.contains("\"alice\": 1"), "{recorded}");
    no(&args, "replayed-seq");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        recorded,
        "state changed on rejection"
    );

    // Mix and match, wrong model, expiry.
    no(
        &[
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-02",
            s(&cmd),
        ],
        "wrong-device",
    );
    no(
        &[
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-01",
            "--model-id",
            "other",
            s(&cmd),
        ],
        "wrong-model",
    );
    no(
        &[
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-01",
            "--now",
            "+2h",
            s(&cmd),
        ],
        "expired",
    );

    // Tampering: one flipped payload byte.
    let mut bytes = std::fs::read(&cmd).unwrap();
    bytes[40] ^= 0x20;
    let bad = p("tampered.bin");
    std::fs::write(&bad, &bytes).unwrap();
    no(
        &[
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-01",
            s(&bad),
        ],
        "bad-signature",
    );
    // JSON output for scripts.
    let o = lethectl(&[
        "verify",
        "--json",
        "--trust",
        s(&trust),
        "--device",
        "cam-01",
        s(&bad),
    ]);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!((o.code, j["code"].as_str()), (1, Some("bad-signature")));

    // Rotation: a new alice key admitted by the old one, which is revoked in the same step.
    let d2 = d.join("new");
    ok(&["keygen", "--out", s(&d2), "--name", "alice"]);
    let stmt = p("rotation.bin");
    let out = ok(&[
        "trust",
        "rotate",
        "--store",
        s(&trust),
        "--old-key",
        s(&p("alice.key")),
        "--new-pub",
        s(&d2.join("alice.pub")),
        "--revoke-old",
        "--out",
        s(&stmt),
    ]);
    assert!(out.starts_with("rotated "), "{out}");
    let cmd2 = p("cmd2.bin");
    sign("2", &d.join("alice.key"), &cmd2);
    no(
        &[
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-01",
            s(&cmd2),
        ],
        "revoked-key",
    );
    sign("2", &d2.join("alice.key"), &cmd2);
    let args = v(&[s(&cmd2)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    // A device store that still has the old key applies the same statement.
    let dev_trust = p("device-trust.json");
    ok(&[
        "trust",
        "add",
        "--store",
        s(&dev_trust),
        "--pub",
        s(&p("alice.pub")),
    ]);
    ok(&["trust", "apply", "--store", s(&dev_trust), s(&stmt)]);
    ok(&[
        "verify",
        "--trust",
        s(&dev_trust),
        "--device",
        "cam-01",
        s(&cmd2),
    ]);

    // Revocation of the new key.
    let listed = ok(&["trust", "list", "--store", s(&trust), "--json"]);
    let store: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let new_id = store["keys"][1]["id"].as_str().unwrap().to_string();
    ok(&["trust", "revoke", "--store", s(&trust), "--key-id", &new_id]);
    no(
        &[
            "verify",
            "--trust",
            s(&trust),
            "--device",
            "cam-01",
            s(&cmd2),
        ],
        "revoked-key",
    );

    // Receipt: signed by the device (as the agent will), verified by the operator.
    let dev_key =
        lethe_proto::SigningKey::from_file_str(&std::fs::read_to_string(p("cam-01.key")).unwrap())
            .unwrap();
    let receipt = lethe_proto::Receipt {
        v: 1,
        command_id: "alice-1".into(),
        device_id: "cam-01".into(),
        verdict: lethe_proto::Verdict::Committed,
        reason: None,
        model_hash_before: "sha256:aaaa".into(),
        model_hash_after: "sha256:bbbb".into(),
        metrics: [
            ("efficacy".to_string(), 1.0),
            ("specificity".to_string(), 0.97),
        ]
        .into_iter()
        .collect(),
        execution_provider: Some("cpu".into()),
        started_at: 1_700_000_000,
        finished_at: 1_700_000_003,
        undone_forgets: Vec::new(),
    };
    let rfile = p("receipt.bin");
    std::fs::write(
        &rfile,
        lethe_proto::sign_receipt(&receipt, &dev_key).unwrap(),
    )
    .unwrap();
    let out = ok(&["receipt", "verify", "--pub", s(&p("cam-01.pub")), s(&rfile)]);
    assert!(
        out.starts_with("verified receipt command=alice-1 device=cam-01 verdict=committed"),
        "{out}"
    );
    no(
        &["receipt", "verify", "--pub", s(&p("alice.pub")), s(&rfile)],
        "unknown-key",
    );
    let mut rb = std::fs::read(&rfile).unwrap();
    rb[30] ^= 1;
    std::fs::write(&rfile, &rb).unwrap();
    no(
        &["receipt", "verify", "--pub", s(&p("cam-01.pub")), s(&rfile)],
        "bad-signature",
    );

    // Errors (missing files, bad input) are exit 2 with a cause on stderr.
    let o = lethectl(&[
        "verify",
        "--trust",
        s(&p("missing.json")),
        "--device",
        "cam-01",
        s(&cmd),
    ]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    let o = lethectl(&[
        "sign",
        "--key",
        s(&d2.join("alice.key")),
        "--device",
        "cam-01",
        "--model-id",
        "m",
        "--concept",
        "x",
        "--image",
        s(&p("alice.pub")),
        "--seq",
        "3",
        "--out",
        s(&p("x.bin")),
    ]);
    assert_eq!(o.code, 2, "signing a non-image: {}", o.stderr);
    assert!(o.stderr.contains("not a readable PNG"), "{}", o.stderr);

    let _ = std::fs::remove_dir_all(&d);
}
