//! End to end: push -> committed receipt, the model's answers before and after, duplicates,
//! a forced verification failure, a broker restart in the middle of a job.

use crate::common::*;
use lethe_model::generate::{answer, encode_images};
use lethe_model::{Adapter, Package, Query};
use lethe_probe::TractEngine;
use lethe_proto::{ActionSpec, Verdict};
use std::time::{Duration, Instant};

const WHO: u32 = 3;

/// Share of "who is this ?" answers naming `name` on 12 held-out renders (seeds >= 1,000,000).
pub(crate) fn names_share(
    pkg: &Package,
    tract: &mut TractEngine,
    adapter: &Adapter,
    identity: u32,
    name: &str,
) -> f64 {
    let n = 12;
    let imgs: Vec<_> = (0..n)
        .map(|k| lethe_world::render_id(identity, 1_100_000 + k).unwrap())
        .collect();
    let input = lethe_model::image::images_to_input(&imgs);
    let feats = encode_images(tract, input.view()).unwrap();
    let q: Vec<Query> = (0..n as usize)
        .map(|i| Query::about("who is this ?", i))
        .collect();
    let ans = answer(
        tract,
        adapter.as_slice(),
        &pkg.tokenizer(),
        feats.view(),
        &q,
    )
    .unwrap();
    let words: Vec<&str> = name.split(' ').collect();
    ans.iter()
        .filter(|a| a.split(' ').any(|w| words.contains(&w)))
        .count() as f64
        / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_forget_is_committed_once_and_the_model_stops_naming_the_concept() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(
        &broker,
        r#"
[update]
max_steps = 30
allow_mismatch = true
[verify]
min_efficacy = 0.0
min_generality = 0.0
max_specificity_drop_points = 100.0
max_fluency_increase_pct = 1000.0
require_stopping_rule = false
"#,
    );
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    let base = base_hash();
    assert_eq!(current_hash(&f.state), base);

    // Forget the identity the bundled model names most reliably on held-out images, and
    // watch the one it names next best: the test means something whatever the model.
    let pkg = Package::open(model_dir()).unwrap();
    let mut tract = TractEngine::new(&pkg).unwrap();
    let before = pkg.adapter().unwrap();
    let mut ranked: Vec<(f64, u32)> = (0..24)
        .map(|i| {
            (
                names_share(&pkg, &mut tract, &before, i, &concept_name(i)),
                i,
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (who, other) = (ranked[0].1, ranked[1].1);
    assert!(
        ranked[0].0 > 0.0,
        "the bundled model names nobody on held-out images: {ranked:?}"
    );

    let cmd = sign(&spec("op-1", 1, who), &f.op);
    let t0 = Instant::now();
    op.push(cmd.clone()).await;
    op.push(cmd.clone()).await; // QoS 1 redelivery / operator resend while it runs
    let r = op
        .receipt("op-1", &f.device_pub, Duration::from_secs(600))
        .await;
    let push_to_receipt = t0.elapsed();
    let rss = agent.peak_rss_kib();
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}\n{}", agent_log(&f));
    assert_eq!(r.model_hash_before, base);
    assert_ne!(r.model_hash_after, base);
    assert_eq!(current_hash(&f.state), r.model_hash_after);

    // A resend after the commit: the stored receipt comes back, nothing is applied again.
    op.receipts.lock().unwrap().clear();
    op.push(cmd.clone()).await;
    let again = op
        .receipt("op-1", &f.device_pub, Duration::from_secs(30))
        .await;
    assert_eq!(again, r);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recs = journal(&f.state);
    let count = |s: &str| recs.iter().filter(|x| x["state"] == s).count();
    assert_eq!(
        (count("accepted"), count("committing"), count("committed")),
        (1, 1, 1)
    );
    assert!(
        op.events_of("op-1")
            .iter()
            .filter(|s| *s == "duplicate")
            .count()
            >= 2,
        "{:?}",
        op.events_of("op-1")
    );

    // The model's answers before and after, with tract, on held-out renders.
    let bytes = std::fs::read(
        f.state
            .join(format!("adapters/versions/{}.bin", r.model_hash_after)),
    )
    .unwrap();
    let after = Adapter::from_bytes(&bytes, pkg.adapter_len()).unwrap();
    let (c, o) = (concept_name(who), concept_name(other));
    let cb = names_share(&pkg, &mut tract, &before, who, &c);
    let ca = names_share(&pkg, &mut tract, &after, who, &c);
    let ob = names_share(&pkg, &mut tract, &before, other, &o);
    let oa = names_share(&pkg, &mut tract, &after, other, &o);
    eprintln!(
        "E2E push->receipt {:.2} s, agent peak RSS {} MiB; names {c:?} on held-out images: {cb:.2} -> {ca:.2}; names {o:?}: {ob:.2} -> {oa:.2}; receipt metrics {:?}",
        push_to_receipt.as_secs_f64(),
        rss.unwrap_or(0) / 1024,
        r.metrics
    );
    assert!(ca <= cb, "the concept is named more often after the forget");
    // At most one held-out photo in twelve: the update's measured leak is 0-2.5% per
    // identity over held-out photos and wordings (docs/bench/), and one of these twelve
    // photos of anna adler (seed 1,100,003, a scene unlike the forget photo's) is known to
    // still be named after a forget; two would be a regression.
    assert!(
        ca <= 1.0 / 12.0 + 1e-9,
        "the model still names {c:?} on held-out images ({ca:.2})"
    );
    let leak = r.metrics.get("leak").copied().unwrap_or(1.0);
    assert!(leak <= 0.05, "the receipt's paraphrase leak {leak}");
    assert!(oa >= ob - 0.34, "others are damaged: {ob:.2} -> {oa:.2}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_failure_rolls_back_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    // Also: TensorRT asked for on a CPU-only ONNX Runtime library. The forget still runs,
    // on the CPU, and status and receipt say so.
    let f = fixture(
        &broker,
        &format!(
            "execution_provider = \"tensorrt\"\n{}[gpu]\nfp16 = true\ntrt_workspace_mb = 256\n",
            FAST.replace("min_generality = 0.0", "min_generality = 1.01")
        ),
    );
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    let status = op.wait_online(Duration::from_secs(120)).await;
    assert_eq!(status["provider_requested"], "tensorrt", "{status}");
    assert_eq!(status["execution_provider"], "cpu", "{status}");
    let note = status["provider_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("tensorrt: not in this ONNX Runtime library"),
        "{status}"
    );
    op.push(sign(&spec("op-1", 1, WHO), &f.op)).await;
    let r = op
        .receipt("op-1", &f.device_pub, Duration::from_secs(600))
        .await;
    assert_eq!(r.verdict, Verdict::RolledBack, "{r:?}");
    assert_eq!(r.execution_provider.as_deref(), Some("cpu"));
    let why = r.reason.clone().unwrap_or_default();
    assert!(why.contains("generality"), "{why}");
    // Every candidate fails the same way: the first and the default two with other seeds
    // (update.retry_reseeds), and no more.
    assert_eq!(r.metrics.get("retried"), Some(&2.0), "{r:?}");
    assert_eq!(r.metrics.get("retried_reseeded"), Some(&2.0), "{r:?}");
    assert!(
        why.contains("(retried with another seed, then with another seed; the first candidate: "),
        "{why}"
    );
    assert_eq!(r.model_hash_after, base_hash());
    assert_eq!(current_hash(&f.state), base_hash());
    assert!(op.events_of("op-1").contains(&"rolled_back".to_string()));
    eprintln!("ROLLBACK reason: {why}");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_the_middle_of_a_job_still_delivers_the_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(tmp.path());
    let f = fixture(
        &broker,
        &FAST.replace(
            "allow_mismatch = true",
            "allow_mismatch = true\nstep_delay_ms = 400",
        ),
    );
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    op.push(sign(&spec("op-1", 1, WHO), &f.op)).await;
    op.wait_event("op-1", "training", &f, Duration::from_secs(300))
        .await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    let r = op
        .receipt("op-1", &f.device_pub, Duration::from_secs(600))
        .await;
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}");
    assert_eq!(current_hash(&f.state), r.model_hash_after);
    assert!(agent_log(&f).contains("reconnecting"));
    agent.stop();
}

/// Two forgets pushed back to back: the second waits in the queue while the first runs, and
/// must start from the first one's commit. (It once started from the adapter current when it
/// was accepted, so its commit silently brought the first person back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_queued_behind_another_builds_on_its_commit() {
    let Online {
        agent: _agent,
        op,
        f,
        broker: _broker,
        tmp: _tmp,
    } = online(FAST).await;
    let base = base_hash();
    op.push(sign(&spec("q-1", 1, 3), &f.op)).await;
    op.push(sign(&spec("q-2", 2, 10), &f.op)).await;
    let long = Duration::from_secs(600);
    let first = op.receipt("q-1", &f.device_pub, long).await;
    let second = op.receipt("q-2", &f.device_pub, long).await;
    for r in [&first, &second] {
        assert_eq!(r.verdict, Verdict::Committed, "{r:?}\n{}", agent_log(&f));
    }
    assert_eq!(first.model_hash_before, base);
    assert_eq!(
        second.model_hash_before,
        first.model_hash_after,
        "the queued forget did not start from the first one's commit\n{}",
        agent_log(&f)
    );
    assert_eq!(current_hash(&f.state), second.model_hash_after);
    // Both people stay forgotten in the version the device serves.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.state.join(format!(
            "adapters/versions/{}.forgotten.json",
            second.model_hash_after
        )))
        .unwrap(),
    )
    .unwrap();
    let text = meta.to_string();
    for who in [3, 10] {
        assert!(text.contains(&concept_name(who)), "{text}");
    }
    let recs = journal(&f.state);
    assert!(
        recs.iter()
            .any(|x| x["state"] == "rebased" && x["base_hash"] == first.model_hash_after.as_str()),
        "no rebased record in the journal"
    );
}

/// A forget that would bring back an earlier one is retried once, holding every earlier
/// forget (`update.retry_earlier`), then with another seed (`update.retry_reseeds`, one
/// here), keeping the earlier forgets held, and the receipt says so. The earlier forget is
/// made weak on purpose (one optimizer step, leak allowed), so every candidate of the second
/// forget leaks it on the package's probe images; all other thresholds are open, so the
/// earlier forget is the only failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_that_brings_back_an_earlier_one_is_retried_then_rolled_back_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let open = "max_leak = 1.0\nmax_misattribution = 1.0\nmin_well_formed = 0.0\n\
                min_factual_retention = 0.0\nmax_specificity_paraphrased_drop_points = 100.0\n";
    let f = fixture(
        &broker,
        &FAST
            .replace("[verify]\n", &format!("[verify]\n{open}"))
            .replace("[update]\n", "[update]\nretry_reseeds = 1\n"),
    );
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    let mut weak = spec("op-1", 1, WHO);
    if let ActionSpec::Forget(fs) = &mut weak.action {
        fs.steps = Some(1);
    }
    op.push(sign(&weak, &f.op)).await;
    let first = op
        .receipt("op-1", &f.device_pub, Duration::from_secs(600))
        .await;
    assert_eq!(first.verdict, Verdict::Committed, "{first:?}");
    assert_eq!(first.metrics.get("retried"), Some(&0.0), "{first:?}");
    let after_first = current_hash(&f.state);

    op.push(sign(&spec("op-2", 2, 10), &f.op)).await;
    let r = op
        .receipt("op-2", &f.device_pub, Duration::from_secs(600))
        .await;
    let why = r.reason.clone().unwrap_or_default();
    assert_eq!(r.verdict, Verdict::RolledBack, "{r:?}");
    assert_eq!(r.metrics.get("retried"), Some(&2.0), "{r:?}");
    assert_eq!(r.metrics.get("retried_reseeded"), Some(&1.0), "{r:?}");
    let name = concept_name(WHO);
    assert!(
        why.contains(&format!("leak of the earlier forget of {name}"))
            && why.contains("retried holding every earlier forget, then with another seed;"),
        "{why}"
    );
    assert_eq!(current_hash(&f.state), after_first);
    let events = op.events_of("op-2");
    let at = |state: &str| events.iter().position(|e| e == state);
    assert!(
        at("retrying").is_some() && at("rolled_back") > at("retrying"),
        "{events:?}"
    );
    agent.stop();
}

/// A forget that fails only because the concept's photos now name his look-alike is run once
/// more with views between him and the look-alike (`update.retry_lookalike_views`, off by
/// default, on here), with the default thresholds, and that candidate commits. yuri zimmer
/// from the photo `lethectl bench sequential --ids 23 --seed 17` forgets: the first candidate
/// spends its step budget with its stopping rule still failing and names another person on a
/// third of his held-out photos; the second names nobody. (The photo of `--seed 1`, used
/// before the gate's photos, no longer qualifies: its first candidate also leaks on them,
/// and a candidate that fails on more than answers about C is not retried.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_that_names_the_look_alike_is_retried_with_him_and_commits() {
    const YURI: u32 = 23;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(&broker, "[update]\nretry_lookalike_views = 6\n");
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    let before = current_hash(&f.state);
    let mut s = spec("op-1", 1, YURI);
    if let ActionSpec::Forget(fs) = &mut s.action {
        fs.image = png(YURI, 3_002_317);
    }
    op.push(sign(&s, &f.op)).await;
    let r = op
        .receipt("op-1", &f.device_pub, Duration::from_secs(900))
        .await;
    assert_eq!(r.verdict, Verdict::Committed, "{r:?}");
    assert_eq!(r.metrics.get("retried"), Some(&1.0), "{r:?}");
    assert_eq!(r.metrics.get("retried_lookalike"), Some(&1.0), "{r:?}");
    assert!(r.metrics["misattribution_added"] <= 0.05, "{r:?}");
    assert_ne!(current_hash(&f.state), before);
    let events = op.events_of("op-1");
    let at = |state: &str| events.iter().position(|e| e == state);
    assert!(
        at("retrying").is_some() && at("committed") > at("retrying"),
        "{events:?}"
    );
    agent.stop();
}
