//! The agent as one device of a fleet: a full queue answers `busy` and the same command
//! resent later runs; a command for the device's group arrives on the group topic; the
//! self-check result is in the retained status, and a failing one is reported there.

use crate::common::*;
use lethe_proto::{TargetSpec, Verdict};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_and_the_same_command_resent_later_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(
        &broker,
        &format!(
            "queue_capacity = 1\n{}",
            FAST.replace(
                "allow_mismatch = true",
                "allow_mismatch = true\nstep_delay_ms = 300"
            )
        ),
    );
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    let (a, b, c) = (
        sign(&spec("q-1", 1, 1), &f.op),
        sign(&spec("q-2", 2, 2), &f.op),
        sign(&spec("q-3", 3, 3), &f.op),
    );
    op.push(a).await;
    // q-1 runs (the queue is empty again), q-2 waits in the queue of one, q-3 is refused.
    op.wait_event("q-1", "training", &f, Duration::from_secs(300))
        .await;
    op.push(b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    op.push(c.clone()).await;
    let busy = op
        .receipt("q-3", &f.device_pub, Duration::from_secs(60))
        .await;
    assert_eq!(busy.verdict, Verdict::Rejected, "{busy:?}");
    let why = busy.reason.clone().unwrap_or_default();
    assert!(why.starts_with("busy:"), "{why}");
    assert_eq!(busy.model_hash_before, busy.model_hash_after);
    for id in ["q-1", "q-2"] {
        let r = op
            .receipt(id, &f.device_pub, Duration::from_secs(600))
            .await;
        assert_eq!(r.verdict, Verdict::Committed, "{id}: {r:?}");
    }
    // The same bytes again, now that the agent is idle: decided again, and applied.
    op.receipts.lock().unwrap().remove("q-3");
    op.push(c).await;
    let r = op
        .receipt("q-3", &f.device_pub, Duration::from_secs(600))
        .await;
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}\n{}", agent_log(&f));
    assert_eq!(current_hash(&f.state), r.model_hash_after);
    let states: Vec<String> = journal(&f.state)
        .iter()
        .filter(|x| x["state"].is_string())
        .filter(|x| {
            journal(&f.state)
                .iter()
                .any(|y| y["env"] == x["env"] && y["id"] == "q-3")
        })
        .map(|x| x["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        &states[..3],
        ["received", "deferred", "accepted"],
        "{states:?}"
    );
    assert_eq!(states.last().unwrap(), "committed");
    eprintln!("QUEUE busy reason: {why}; q-3 journal: {states:?}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_the_group_arrives_on_the_group_topic() {
    let Online {
        mut agent,
        op,
        f,
        broker: _broker,
        tmp: _tmp,
    } = online(FAST).await;
    // The fixture's device is in group "lobby" and not in "garage".
    let mut lobby = spec("g-1", 1, 4);
    lobby.target = TargetSpec::Group("lobby".into());
    let mut garage = spec("g-2", 2, 5);
    garage.target = TargetSpec::Group("garage".into());
    op.push_to(
        &lethe_agent::mqtt::group_cmd(FLEET, "lobby"),
        sign(&lobby, &f.op),
    )
    .await;
    let r = op
        .receipt("g-1", &f.device_pub, Duration::from_secs(600))
        .await;
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}");
    // A group the device is not in, even on the device's own topic: refused, unchanged.
    let hash = current_hash(&f.state);
    op.push(sign(&garage, &f.op)).await;
    let (_, r) = op
        .any_receipt(&f.device_pub, Duration::from_secs(60), |r| {
            r.verdict == Verdict::Rejected
        })
        .await;
    assert!(
        r.reason.as_deref().unwrap_or("").starts_with("wrong-group"),
        "{r:?}"
    );
    assert_eq!(current_hash(&f.state), hash);
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_check_is_in_the_retained_status_and_a_failing_one_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(&broker, FAST);
    // Run on a copy of the package, so the test can damage it under the running agent.
    let pkg = f.dir.path().join("model");
    std::fs::create_dir_all(pkg.join("probes")).unwrap();
    for entry in walk(&model_dir()) {
        let rel = entry.strip_prefix(model_dir()).unwrap();
        std::fs::create_dir_all(pkg.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, pkg.join(rel)).unwrap();
    }
    let text = std::fs::read_to_string(&f.config).unwrap();
    let text = text
        .replace(
            &format!("model_dir = \"{}\"", model_dir().display()),
            "model_dir = \"model\"",
        )
        .replace("selfcheck_at_start = false", "selfcheck_at_start = true")
        .replace("selfcheck_interval_s = 0", "selfcheck_interval_s = 2");
    assert!(text.contains("model_dir = \"model\""));
    std::fs::write(&f.config, text).unwrap();
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    let check = wait_selfcheck(&op, |c| c["ok"].is_boolean()).await;
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["package_hashes_ok"], true);
    let probes = check["probes"].as_u64().unwrap();
    assert!(probes >= 100, "{check}");
    assert_eq!(check["probes_agree"].as_u64().unwrap(), probes, "{check}");
    // Damage one graph file of the package on disk: the next periodic check says so.
    let mut bytes = std::fs::read(pkg.join("decoder.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(pkg.join("decoder.onnx"), bytes).unwrap();
    let bad = wait_selfcheck(&op, |c| c["ok"] == false).await;
    assert_eq!(bad["package_hashes_ok"], false, "{bad}");
    let problems = bad["problems"].to_string();
    assert!(problems.contains("decoder.onnx"), "{problems}");
    let status = op.status.lock().unwrap().clone().unwrap();
    assert_eq!(
        status["state"], "online",
        "the agent keeps running: {status}"
    );
    eprintln!(
        "SELFCHECK ok: {} probes agree, max logit diff {}, {} ms; after damage: {problems}",
        probes, check["max_logit_diff"], check["ms"]
    );
    agent.stop();
}

async fn wait_selfcheck(
    op: &Operator,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let s = op.status.lock().unwrap().clone();
        if let Some(c) = s.as_ref().map(|s| s["selfcheck"].clone()) {
            if pred(&c) {
                return c;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no such self-check in the status: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY once online, WATCHDOG at half the
/// period while running, STOPPING on SIGTERM, on the socket systemd names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(&broker, FAST);
    let sock_path = tmp.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut agent = Agent::start_with(
        &f,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let recv = |sock: &UnixDatagram| {
        let mut buf = [0u8; 512];
        let k = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..k]).into_owned()
    };
    let first = recv(&sock);
    assert!(first.starts_with("READY=1\nSTATUS=online"), "{first}");
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        if recv(&sock) == "WATCHDOG=1" {
            pings += 1;
        }
    }
    // 1 s apart for a 2 s watchdog (plus the one at start).
    assert!((3..=6).contains(&pings), "{pings} watchdog pings in 3 s");
    agent.stop();
    let mut last = String::new();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while let Ok(m) = {
        let mut buf = [0u8; 512];
        sock.recv(&mut buf)
            .map(|k| String::from_utf8_lossy(&buf[..k]).into_owned())
    } {
        last = m;
        if last == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1");
}

/// `lethe-agent --check` (the unit's ExecStartPre) reads the files the configuration names:
/// a key named for another device or a damaged trust store fails there, before start-up.
#[test]
fn check_mode_parses_the_key_the_trust_store_and_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(&broker, FAST);
    let check = || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_lethe-agent"))
            .arg("--config")
            .arg(&f.config)
            .arg("--check")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    assert_eq!(check(), (0, "configuration ok\n".to_string()));
    let key = f.dir.path().join("device.key");
    let good = std::fs::read(&key).unwrap();
    let other = lethe_proto::SigningKey::generate("cam-99").unwrap();
    std::fs::write(&key, other.to_file_string()).unwrap();
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("device_key is named \"cam-99\""), "{out}");
    std::fs::write(&key, good).unwrap();
    std::fs::write(f.dir.path().join("trust.json"), "{\"v\": 1, \"keys\": [").unwrap();
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("trust_store"), "{out}");
}
