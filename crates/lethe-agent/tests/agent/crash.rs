//! Crash loop: `kill -9` the agent at random points of a forget, many times. After each
//! restart the model is a valid old or new version (hash-checked), never corrupt, never
//! applied twice, and the command reaches a terminal state that is reported.

use crate::common::*;
use lethe_proto::Verdict;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn version_valid(state: &std::path::Path, hash: &str) -> bool {
    use sha2::{Digest, Sha256};
    std::fs::read(state.join(format!("adapters/versions/{hash}.bin")))
        .map(|b| hex::encode(Sha256::digest(&b)) == hash)
        .unwrap_or(false)
}

/// Phases the random kills aim at, with how long after entering one to kill (at most, s).
const PHASES: [(&str, f64); 3] = [("preparing", 0.5), ("training", 2.5), ("verifying", 10.0)];
const TERMINAL: [&str; 4] = ["committed", "rolled_back", "failed", "rejected"];

/// The last journaled state of command `id` (None before it is accepted).
fn phase_of(state: &std::path::Path, id: &str) -> Option<String> {
    let recs = journal(state);
    let env = recs.iter().find(|x| x["id"] == id)?["env"].clone();
    recs.iter()
        .rev()
        .find(|x| x["env"] == env && x["state"].is_string())
        .map(|x| x["state"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_leaves_a_valid_model_and_one_terminal_state() {
    let iters: usize = std::env::var("LETHE_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(
        &broker,
        &FAST.replace(
            "allow_mismatch = true",
            "allow_mismatch = true\nstep_delay_ms = 150",
        ),
    );
    let op = Operator::connect(broker.port).await;
    let mut seed =
        Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()) ^ now();
    let mut rand = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut killed_in: BTreeMap<String, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    // Two deterministic crashes inside the commit, then `iters` at random delays.
    let forced = ["before-pointer", "after-pointer"];
    for i in 0..iters + forced.len() {
        let before = if f.state.join("adapters/current").exists() {
            current_hash(&f.state)
        } else {
            base_hash()
        };
        let fault = forced.get(i).copied();
        let mut agent = match fault {
            Some(p) => Agent::start_with(&f, &[("LETHE_TEST_CRASH_AT", p)]),
            None => Agent::start(&f),
        };
        op.wait_online(Duration::from_secs(120)).await;
        *op.status.lock().unwrap() = None;
        let id = format!("crash-{i}");
        let t0 = Instant::now();
        op.push(sign(&spec(&id, i as u64 + 1, (i % 24) as u32), &f.op))
            .await;
        let delay = match fault {
            Some(_) => {
                // The agent aborts itself at the fault point.
                let t = Instant::now();
                while agent.child.try_wait().unwrap().is_none() {
                    assert!(
                        t.elapsed() < Duration::from_secs(600),
                        "fault point not reached\n{}",
                        agent_log(&f)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                t.elapsed().as_secs_f64()
            }
            None => {
                // Cycle through the phases of an update, and kill at a random point inside
                // the chosen one (its length differs by orders of magnitude, so a uniform
                // delay over the whole job would almost never hit the short ones).
                let (want, window) = PHASES[i % PHASES.len()];
                let t = Instant::now();
                loop {
                    let p = phase_of(&f.state, &id);
                    if p.as_deref() == Some(want)
                        || p.as_deref().is_some_and(|p| TERMINAL.contains(&p))
                    {
                        break;
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(600),
                        "phase {want} not reached\n{}",
                        agent_log(&f)
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let d = rand() * window;
                tokio::time::sleep(Duration::from_secs_f64(d)).await;
                t.elapsed().as_secs_f64()
            }
        };
        let phase = journal(&f.state)
            .iter()
            .rev()
            .find(|r| r.get("state").is_some())
            .map(|r| r["state"].as_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "none".into());
        agent.kill9();
        let phase = match fault {
            Some(p) => format!("{phase} (abort {p})"),
            None => phase,
        };
        *killed_in.entry(phase.clone()).or_default() += 1;
        // Right after the crash: the current version is the old one or a new one, valid.
        let cur = current_hash(&f.state);
        assert!(
            version_valid(&f.state, &cur),
            "iteration {i}: current adapter {cur} is corrupt"
        );
        // Restart and let it finish.
        let mut agent = Agent::start(&f);
        let r = op
            .receipt(&id, &f.device_pub, Duration::from_secs(600))
            .await;
        let took = t0.elapsed().as_secs_f64();
        *outcomes.entry(r.verdict.name().to_string()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cur = current_hash(&f.state);
        assert!(
            version_valid(&f.state, &cur),
            "iteration {i}: corrupt after restart"
        );
        match r.verdict {
            Verdict::Committed => {
                assert_eq!(
                    r.model_hash_before, before,
                    "iteration {i}: not started from its base"
                );
                assert_eq!(cur, r.model_hash_after);
            }
            _ => assert_eq!(cur, before, "iteration {i}: {r:?}"),
        }
        let recs = journal(&f.state);
        let env = recs
            .iter()
            .find(|x| x["id"] == id.as_str())
            .map(|x| x["env"].clone());
        if let Some(env) = env {
            let mine: Vec<_> = recs.iter().filter(|x| x["env"] == env).collect();
            let terminal = mine
                .iter()
                .filter(|x| TERMINAL.contains(&x["state"].as_str().unwrap_or("")))
                .count();
            assert_eq!(terminal, 1, "iteration {i}: {terminal} terminal records");
            let restarts = mine.iter().filter(|x| x["state"] == "restarted").count();
            assert!(restarts <= 1, "iteration {i}: restarted {restarts} times");
            assert!(mine.iter().filter(|x| x["state"] == "committed").count() <= 1);
        }
        eprintln!(
            "CRASH iteration {i}: killed after {delay:.2} s in phase {phase}; outcome {} in {took:.1} s{}",
            r.verdict.name(),
            r.reason.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
        );
        agent.stop();
    }
    eprintln!(
        "CRASH LOOP {} iterations: killed in {killed_in:?}; outcomes {outcomes:?}",
        iters + forced.len()
    );
}
