//! Crash loop: `kill -9` the agent at random points of a forget, many times. After each
//! restart the model is a valid old or new version (hash-checked), never corrupt, never
//! applied twice, and the command reaches exactly one terminal state, reported by one
//! receipt.
//!
//! Each random kill must interrupt unfinished work: the phase it landed in (the command's
//! last journal record once the process is dead) is asserted, so a run whose kills hit
//! finished commands fails. The delays come from a seed printed at the start;
//! `LETHE_TEST_SEED=<seed>` replays them.

use crate::common::*;
use lethe_proto::Verdict;
use lethe_world::rng::Rng;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub(crate) fn version_valid(state: &std::path::Path, hash: &str) -> bool {
    use sha2::{Digest, Sha256};
    std::fs::read(state.join(format!("adapters/versions/{hash}.bin")))
        .map(|b| hex::encode(Sha256::digest(&b)) == hash)
        .unwrap_or(false)
}

/// The phases the random kills aim at, in the order an update goes through them.
const PHASES: [&str; 3] = ["preparing", "training", "verifying"];
/// Every non-terminal phase after `accepted`, in order (a kill may land a phase late).
const RUNNING: [&str; 4] = ["preparing", "training", "verifying", "committing"];
const TERMINAL: [&str; 4] = ["committed", "rolled_back", "failed", "rejected"];
/// The kill delay is drawn from this share of the shortest measured length of its phase:
/// on a shared machine a phase is faster some runs than others, so the draw keeps clear of
/// its end.
const WINDOW_SHARE: f64 = 0.6;

/// The journal records of command `id` (those of its envelope), in order.
fn records_of(recs: &[Value], id: &str) -> Vec<Value> {
    let Some(env) = recs
        .iter()
        .find(|x| x["id"] == id)
        .map(|x| x["env"].clone())
    else {
        return Vec::new();
    };
    recs.iter().filter(|x| x["env"] == env).cloned().collect()
}

/// The last journaled state of command `id` (None before it is accepted).
fn phase_of(state: &std::path::Path, id: &str) -> Option<String> {
    records_of(&journal(state), id)
        .last()
        .and_then(|x| x["state"].as_str().map(str::to_string))
}

/// Seconds each of `PHASES` lasted in the last run of command `id`, from the journal's
/// timestamps (each phase ends where the next begins).
fn phase_lengths(recs: &[Value], id: &str) -> Option<[f64; 3]> {
    let mine = records_of(recs, id);
    let start = mine.iter().rposition(|x| x["state"] == "preparing")?;
    let t_of = |state: &str| {
        mine[start..]
            .iter()
            .find(|x| x["state"] == state)
            .and_then(|x| x["t"].as_u64())
    };
    let t: Vec<u64> = ["preparing", "training", "verifying", "committing"]
        .iter()
        .map(|s| t_of(s))
        .collect::<Option<_>>()?;
    Some([0, 1, 2].map(|k| t[k + 1].saturating_sub(t[k]) as f64 / 1e3))
}

/// Checks the whole journal: no command has two terminal records, and every accepted
/// command has exactly one.
pub(crate) fn assert_one_terminal_record_per_command(recs: &[Value], context: &str) {
    let mut terminal: BTreeMap<String, usize> = BTreeMap::new();
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    for r in recs {
        let env = r["env"].as_str().unwrap_or("").to_string();
        let state = r["state"].as_str().unwrap_or("");
        if TERMINAL.contains(&state) {
            *terminal.entry(env.clone()).or_default() += 1;
        }
        if state == "accepted" {
            accepted.insert(env);
        }
    }
    for (env, n) in &terminal {
        assert_eq!(*n, 1, "{context}: command {env} has {n} terminal records");
    }
    for env in &accepted {
        assert!(
            terminal.contains_key(env),
            "{context}: accepted command {env} never reached a terminal state"
        );
    }
}

/// Checks that every receipt publication of `id` is the one signed receipt its terminal
/// journal record holds (re-publications of it are fine, a second receipt is not).
pub(crate) fn assert_one_receipt(op: &Operator, recs: &[Value], id: &str, context: &str) {
    let mine = records_of(recs, id);
    let terminal: Vec<&Value> = mine
        .iter()
        .filter(|x| TERMINAL.contains(&x["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(terminal.len(), 1, "{context}: {id}: {terminal:?}");
    let journaled = hex::decode(terminal[0]["receipt"].as_str().unwrap_or("")).unwrap();
    let published: BTreeSet<Vec<u8>> = op.receipts_of(id).into_iter().collect();
    assert!(
        published.len() == 1 && published.contains(&journaled),
        "{context}: {id}: {} distinct receipts published, the journaled one among them: {}",
        published.len(),
        published.contains(&journaled)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_leaves_a_valid_model_and_one_terminal_state() {
    let iters: usize = std::env::var("LETHE_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed = test_seed("crash loop");
    let mut rng = Rng::from_keys(&[seed]);
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
    let mut killed_in: BTreeMap<String, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    // The shortest length seen of each phase (s), from the runs the forced crashes let
    // finish their update.
    let mut shortest = [f64::INFINITY; 3];
    // Two deterministic crashes inside the commit, then `iters` at random delays.
    let forced = ["before-pointer", "after-pointer"];
    for i in 0..iters + forced.len() {
        let context = format!("iteration {i} (seed {seed})");
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
        let (delay, aim) = match fault {
            Some(p) => {
                // The agent aborts itself at the fault point.
                let t = Instant::now();
                while agent.child.try_wait().unwrap().is_none() {
                    assert!(
                        t.elapsed() < Duration::from_secs(600),
                        "{context}: fault point not reached\n{}",
                        agent_log(&f)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (t.elapsed().as_secs_f64(), format!("abort {p}"))
            }
            None => {
                // Cycle through the phases of an update, and kill at a random point inside
                // the chosen one (its length differs by orders of magnitude, so a uniform
                // delay over the whole job would almost never hit the short ones).
                let k = i % PHASES.len();
                let want = PHASES[k];
                let t = Instant::now();
                loop {
                    // The phase aimed at, or (if it was too short to be seen) a later one.
                    let p = phase_of(&f.state, &id);
                    let seen = p
                        .as_deref()
                        .and_then(|p| RUNNING.iter().position(|r| *r == p));
                    if seen.is_some_and(|s| s >= k) {
                        break;
                    }
                    assert!(
                        p.as_deref().is_none_or(|p| !TERMINAL.contains(&p)),
                        "{context}: the command finished before it was seen in {want}"
                    );
                    assert!(
                        t.elapsed() < Duration::from_secs(600),
                        "{context}: phase {want} not reached\n{}",
                        agent_log(&f)
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let d = f64::from(rng.unit()) * WINDOW_SHARE * shortest[k];
                tokio::time::sleep(Duration::from_secs_f64(d)).await;
                (d, want.to_string())
            }
        };
        agent.kill9();
        // Where the kill landed: the command's last record, now that nothing writes.
        let landed = phase_of(&f.state, &id).unwrap_or_else(|| "(not accepted)".into());
        if fault.is_none() {
            assert!(
                RUNNING.contains(&landed.as_str()),
                "{context}: the kill aimed at {aim} landed in {landed:?}: it interrupted no \
                 update (replay with {}={seed})",
                lethe_testkit::SEED_VAR
            );
        }
        *killed_in.entry(landed.clone()).or_default() += 1;
        // Right after the crash: the current version is the old one or a new one, valid.
        let cur = current_hash(&f.state);
        assert!(
            version_valid(&f.state, &cur),
            "{context}: current adapter {cur} is corrupt"
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
            "{context}: corrupt after restart"
        );
        match r.verdict {
            Verdict::Committed => {
                assert_eq!(
                    r.model_hash_before, before,
                    "{context}: not started from its base"
                );
                assert_eq!(cur, r.model_hash_after);
            }
            _ => assert_eq!(cur, before, "{context}: {r:?}"),
        }
        let recs = journal(&f.state);
        let mine = records_of(&recs, &id);
        assert!(!mine.is_empty(), "{context}: no journal record has id {id}");
        let restarts = mine.iter().filter(|x| x["state"] == "restarted").count();
        assert!(restarts <= 1, "{context}: restarted {restarts} times");
        assert_one_terminal_record_per_command(&recs, &context);
        assert_one_receipt(&op, &recs, &id, &context);
        if fault.is_some() {
            let lengths = phase_lengths(&recs, &id).unwrap_or_else(|| {
                panic!("{context}: the forced run did not go through {PHASES:?}: {mine:?}")
            });
            for (s, l) in shortest.iter_mut().zip(lengths) {
                *s = s.min(l);
            }
        }
        eprintln!(
            "CRASH iteration {i}: killed after {delay:.2} s aimed at {aim}, landed in {landed}; \
             outcome {} in {took:.1} s{}",
            r.verdict.name(),
            r.reason
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
        agent.stop();
    }
    // Every command of the run, once more at the end: later restarts re-publish receipts.
    let recs = journal(&f.state);
    assert_one_terminal_record_per_command(&recs, "end of the loop");
    for i in 0..iters + forced.len() {
        assert_one_receipt(&op, &recs, &format!("crash-{i}"), "end of the loop");
    }
    eprintln!(
        "CRASH LOOP {} iterations (seed {seed}): phase lengths at least {shortest:.2?} s; \
         killed in {killed_in:?}; outcomes {outcomes:?}",
        iters + forced.len()
    );
}
