//! An operator's revert against a real broker: forget, then revert to the package's
//! original adapter. The model answers as before the forget on held-out images, the receipt
//! names the undone forget, the status lists the concept as no longer forgotten; a revert
//! that would undo a forget without the operator's confirmation, to a version the device
//! does not hold, or replayed, changes nothing; `kill -9` in the middle of a revert leaves a
//! valid adapter and one terminal record.

use crate::common::*;
use crate::crash::{assert_one_receipt, assert_one_terminal_record_per_command, version_valid};
use crate::e2e::names_share;
use lethe_model::generate::{answer, encode_images};
use lethe_model::{Adapter, Package, Query};
use lethe_probe::TractEngine;
use lethe_proto::{Receipt, Verdict};
use std::time::{Duration, Instant};

const WHO: u32 = 3;
const LONG: Duration = Duration::from_secs(600);

/// The model's answers to "who is this ?" on 12 held-out renders of `identity`.
fn answers(
    pkg: &Package,
    tract: &mut TractEngine,
    adapter: &Adapter,
    identity: u32,
) -> Vec<String> {
    let imgs: Vec<_> = (0..12)
        .map(|k| lethe_world::render_id(identity, 1_200_000 + k).unwrap())
        .collect();
    let feats = encode_images(tract, lethe_model::image::images_to_input(&imgs).view()).unwrap();
    let q: Vec<Query> = (0..12).map(|i| Query::about("who is this ?", i)).collect();
    answer(
        tract,
        adapter.as_slice(),
        &pkg.tokenizer(),
        feats.view(),
        &q,
    )
    .unwrap()
}

/// The adapter the store serves now (hash-checked by the test).
fn served(state: &std::path::Path, pkg: &Package) -> (String, Adapter) {
    let h = current_hash(state);
    assert!(version_valid(state, &h), "current version {h} is not valid");
    let bytes = std::fs::read(state.join(format!("adapters/versions/{h}.bin"))).unwrap();
    (h, Adapter::from_bytes(&bytes, pkg.adapter_len()).unwrap())
}

/// Forgets `WHO` as command `op-1` (seq 1); returns its receipt.
async fn forget_first(op: &Operator, f: &Fixture) -> Receipt {
    op.push(sign(&spec("op-1", 1, WHO), &f.op)).await;
    let r = op.receipt("op-1", &f.device_pub, LONG).await;
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}\n{}", agent_log(f));
    r
}

async fn wait_status(
    op: &Operator,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Some(s) = op.status.lock().unwrap().clone() {
            if pred(&s) {
                return s;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "status: {:?}",
            op.status.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_to_the_original_brings_the_answers_back_and_names_the_forget_it_undoes() {
    let Online {
        mut agent,
        op,
        f,
        broker: _broker,
        tmp: _tmp,
    } = online(FAST).await;
    let pkg = Package::open(model_dir()).unwrap();
    let mut tract = TractEngine::new(&pkg).unwrap();
    let original = pkg.adapter().unwrap();
    let before = answers(&pkg, &mut tract, &original, WHO);
    let concept = concept_name(WHO);

    let forgot = forget_first(&op, &f).await;
    let (h_forget, forgetting) = served(&f.state, &pkg);
    assert_eq!(h_forget, forgot.model_hash_after);
    assert_ne!(
        answers(&pkg, &mut tract, &forgetting, WHO),
        before,
        "the forget changed no answer on held-out images"
    );
    let s = wait_status(&op, |s| s["adapter_hash"] == h_forget.as_str()).await;
    assert_eq!(s["forgotten"], serde_json::json!([concept]), "{s}");

    // Without the operator's confirmation: refused, nothing changes, seq 2 not consumed.
    op.push(sign(&revert_spec("op-2", 2, "original", false), &f.op))
        .await;
    let (_, no) = op
        .any_receipt(&f.device_pub, LONG, |r| r.verdict == Verdict::Rejected)
        .await;
    let why = no.reason.clone().unwrap_or_default();
    assert!(why.starts_with("undoes-forgets"), "{why}");
    assert!(why.contains("op-1") && why.contains(&concept), "{why}");
    assert_eq!(current_hash(&f.state), h_forget);

    // To a version the device does not hold: refused with the versions it holds.
    op.receipts.lock().unwrap().clear();
    let unknown = "ab".repeat(32);
    op.push(sign(&revert_spec("op-3", 2, &unknown, true), &f.op))
        .await;
    let (_, no) = op
        .any_receipt(&f.device_pub, LONG, |r| r.verdict == Verdict::Rejected)
        .await;
    let why = no.reason.clone().unwrap_or_default();
    assert!(
        why.starts_with("unknown-version") && why.contains(&unknown),
        "{why}"
    );
    assert_eq!(current_hash(&f.state), h_forget);

    // Confirmed, with the same sequence number (the refusals did not consume it).
    let revert = sign(&revert_spec("op-4", 2, "original", true), &f.op);
    op.push(revert.clone()).await;
    let r = op.receipt("op-4", &f.device_pub, LONG).await;
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}\n{}", agent_log(&f));
    assert_eq!(r.model_hash_before, h_forget);
    assert_eq!(r.model_hash_after, base_hash());
    assert_eq!(r.undone_forgets.len(), 1, "{r:?}");
    assert_eq!(
        (
            r.undone_forgets[0].command_id.as_str(),
            r.undone_forgets[0].concept.as_str()
        ),
        ("op-1", concept.as_str())
    );
    assert_eq!(r.metrics.get("forgets_undone"), Some(&1.0), "{r:?}");
    let (h, now) = served(&f.state, &pkg);
    assert_eq!(h, base_hash());
    assert_eq!(
        answers(&pkg, &mut tract, &now, WHO),
        before,
        "answers as before the forget"
    );
    let s = wait_status(&op, |s| s["adapter_hash"] == base_hash().as_str()).await;
    assert_eq!(s["forgotten"], serde_json::json!([]), "{s}");
    let undone = &s["forgets_undone"];
    assert_eq!(undone[0]["concept"], concept.as_str(), "{s}");
    assert_eq!(undone[0]["command"], "op-1", "{s}");
    assert_eq!(undone[0]["undone_by"], "op-4", "{s}");
    assert!(
        names_share(&pkg, &mut tract, &now, WHO, &concept) > 0.0,
        "named again"
    );

    // Replayed: the same envelope is a duplicate (its receipt again), the same sequence
    // number under a new id is a replay; neither applies anything.
    op.receipts.lock().unwrap().clear();
    op.push(revert).await;
    let again = op
        .receipt("op-4", &f.device_pub, Duration::from_secs(30))
        .await;
    assert_eq!(again, r);
    op.push(sign(&revert_spec("op-5", 2, &h_forget, false), &f.op))
        .await;
    let (_, no) = op
        .any_receipt(&f.device_pub, LONG, |r| r.verdict == Verdict::Rejected)
        .await;
    assert!(
        no.reason.clone().unwrap_or_default().starts_with("replay"),
        "{no:?}"
    );
    assert_eq!(current_hash(&f.state), base_hash());
    let recs = journal(&f.state);
    assert_one_terminal_record_per_command(&recs, "after the replays");
    assert_one_receipt(&op, &recs, "op-4", "after the replays");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_revert_leaves_a_valid_adapter_and_one_terminal_record() {
    let Online {
        mut agent,
        op,
        f,
        broker: _broker,
        tmp: _tmp,
    } = online(FAST).await;
    let pkg = Package::open(model_dir()).unwrap();
    let forgot = forget_first(&op, &f).await;
    let h_forget = forgot.model_hash_after.clone();
    agent.stop();

    // Back to before op-1, then forward to op-1's version again (held by hash): each
    // revert's process dies at a point of the commit, a restart finishes it.
    let steps = [
        (
            "op-2",
            2,
            "before:op-1".to_string(),
            "before-pointer",
            base_hash(),
            1,
        ),
        (
            "op-3",
            3,
            h_forget.clone(),
            "after-pointer",
            h_forget.clone(),
            0,
        ),
    ];
    for (id, seq, to, point, want, undone) in steps {
        let mut dying = Agent::start_with(&f, &[("LETHE_TEST_CRASH_AT", point)]);
        op.push(sign(&revert_spec(id, seq, &to, true), &f.op)).await;
        let t0 = Instant::now();
        while dying.child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < LONG,
                "{id}: the agent did not die at {point}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(agent_log(&f).contains(&format!("LETHE_TEST_CRASH_AT={point}")));
        let h = current_hash(&f.state);
        assert!(
            version_valid(&f.state, &h),
            "{id}: after the kill, {h} is not valid"
        );
        let mut agent = Agent::start(&f);
        let r = op.receipt(id, &f.device_pub, LONG).await;
        assert_eq!(
            r.verdict,
            Verdict::Committed,
            "{id}: {r:?}\n{}",
            agent_log(&f)
        );
        assert_eq!(r.model_hash_after, want, "{id}");
        assert_eq!(r.undone_forgets.len(), undone, "{id}: {r:?}");
        let (h, _) = served(&f.state, &pkg);
        assert_eq!(h, want, "{id}");
        let recs = journal(&f.state);
        assert_one_terminal_record_per_command(&recs, id);
        assert_one_receipt(&op, &recs, id, id);
        agent.stop();
    }
    // Forgotten again: nothing is reported undone any more.
    let mut agent = Agent::start(&f);
    let s = wait_status(&op, |s| {
        s["adapter_hash"] == h_forget.as_str() && s["state"] == "online"
    })
    .await;
    assert_eq!(s["forgets_undone"], serde_json::json!([]), "{s}");
    assert_eq!(
        s["forgotten"],
        serde_json::json!([concept_name(WHO)]),
        "{s}"
    );
    agent.stop();
}
