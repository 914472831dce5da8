//! Forged, tampered, replayed, expired and wrongly targeted commands over MQTT. What carries
//! no valid trusted signature is dropped unheard: no receipt, no journal record, no file,
//! only a counter in the status. Every authentic command that is refused gets its reason in
//! a signed receipt. The model is untouched either way, and
//! no refusal consumes a sequence number.

use crate::common::*;
use lethe_proto::{SigningKey, TargetSpec, Verdict};
use std::time::Duration;

fn env_name(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("env-{}", &hex::encode(Sha256::digest(bytes))[..16])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_are_dropped_unheard_and_authentic_bad_commands_are_rejected_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(&broker, FAST);
    // The device already accepted seq 10 from this operator.
    std::fs::create_dir_all(&f.state).unwrap();
    std::fs::write(f.state.join("replay.json"), r#"{"per_issuer":{"op":10}}"#).unwrap();
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;

    let forger = SigningKey::generate("op").unwrap(); // same name, untrusted key
    let now = now();
    let mut tampered = sign(&spec("t-1", 12, 3), &f.op);
    tampered[40] ^= 1;
    let forged: Vec<(&str, Vec<u8>)> = vec![
        ("unknown-key", sign(&spec("f-1", 11, 3), &forger)),
        ("bad-signature", tampered),
        ("bad-magic", b"not a lethe envelope".to_vec()),
    ];
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("replayed-seq", sign(&spec("r-1", 10, 3), &f.op)));
    cases.push(("stale-seq", sign(&spec("r-2", 4, 3), &f.op)));
    let mut s = spec("e-1", 13, 3);
    s.issued_at = now - 7200;
    s.expires_at = now - 3600;
    cases.push(("expired", sign(&s, &f.op)));
    let mut s = spec("w-1", 14, 3);
    s.target = TargetSpec::Device("cam-99".into());
    cases.push(("wrong-device", sign(&s, &f.op)));
    let mut s = spec("w-2", 15, 3);
    s.target = TargetSpec::Group("other".into());
    cases.push(("wrong-group", sign(&s, &f.op)));
    let mut s = spec("w-3", 16, 3);
    s.model_id = "another-model".into();
    cases.push(("wrong-model", sign(&s, &f.op)));

    // The forgeries first: by the time the last authentic case is answered, they were read.
    for (_, bytes) in forged.iter().chain(&cases) {
        op.push(bytes.clone()).await;
    }
    for (code, bytes) in &cases {
        let name = env_name(bytes);
        let r = op
            .receipt(&name, &f.device_pub, Duration::from_secs(60))
            .await;
        assert_eq!(r.verdict, Verdict::Rejected, "{code}: {r:?}");
        let reason = r.reason.clone().unwrap_or_default();
        assert!(reason.starts_with(code), "expected {code}, got {reason}");
        assert_eq!(r.model_hash_before, r.model_hash_after);
        assert!(
            op.events_of(&name).contains(&"rejected".to_string()),
            "{code}"
        );
        eprintln!("REJECTED {code:<14} -> {reason}");
    }
    assert_eq!(current_hash(&f.state), base_hash());
    let recs = journal(&f.state);
    assert!(
        recs.iter().all(|r| r["state"] != "accepted"),
        "nothing may be accepted"
    );
    assert_eq!(
        recs.iter().filter(|r| r["state"] == "rejected").count(),
        cases.len()
    );

    // The forgeries: counted in the status (within its 5 s reporting period), and nothing
    // else: no receipt, no event, no journal record, no stored envelope.
    let t0 = std::time::Instant::now();
    let channel = loop {
        let s = op.status.lock().unwrap().clone().unwrap_or_default();
        if s["channel"]["unauthenticated"] == forged.len() {
            break s["channel"].clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "status: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("REJECTED forgeries unheard; status channel: {channel}");
    assert_eq!(channel["last_unauthenticated"]["code"], "bad-magic");
    let total: usize = forged.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(channel["unauthenticated_bytes"], total);
    let envs: Vec<String> = recs.iter().map(|r| r["env"].to_string()).collect();
    for (code, bytes) in &forged {
        let name = env_name(bytes);
        assert!(!op.receipts.lock().unwrap().contains_key(&name), "{code}");
        assert!(op.events_of(&name).is_empty(), "{code}");
        assert!(!envs.iter().any(|e| e.contains(&name[4..])), "{code}");
    }
    let stored = std::fs::read_dir(f.state.join("commands")).unwrap().count();
    assert_eq!(stored, 0, "no envelope is kept once its command is settled");
    // And one log line for the three (the log is written every 5 s at most).
    while !agent_log(&f).contains("command channel: 3 unauthenticated message(s)") {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", agent_log(&f));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No rejection consumed a sequence number, in the journal or in the running agent: the
    // real operator's next command may still use 11, the lowest number the bad ones carried.
    op.push(sign(&spec("ok-11", 11, 3), &f.op)).await;
    op.wait_event("ok-11", "accepted", &f, Duration::from_secs(60))
        .await;
    agent.stop();
}
