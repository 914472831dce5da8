//! `lethectl bench agent`: time from push to signed receipt on the bundled model, through
//! the real pipeline (in-process broker, agent with journal, SIU on ONNX Runtime, tract
//! verification, atomic commit, signed receipt), and the process's peak memory. The
//! reference, side by side: the same updates (`lethe_agent::update::run`, same config, same
//! commands, chained from the same adapters) called directly, without MQTT, journal, commit
//! or signing. The ratio is what the agent's plumbing costs on top of the work itself; the
//! update is deterministic, so the reference must also reproduce the agent's adapters (checked
//! and printed). The cost curve: `--queued N` pushes N commands back to back (each row's
//! push->receipt then counts from the group's first push), `--verify-images K` adds K
//! verification images to each command.

use super::local::LocalDevice;
use super::procstat::peak_rss_mib;
use anyhow::{Context, Result};
use clap::Args;
use lethe_agent::update::{self, Engines, Job};
use lethe_agent::AgentHandle;
use lethe_model::Package;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(Args)]
pub struct AgentArgs {
    #[arg(long, default_value = "models/tiny-vlm")]
    pub model: PathBuf,
    /// Forgets pushed one after another (different identities).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Step budget of each update.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Commands pushed back to back before waiting (the agent queues them).
    #[arg(long, default_value_t = 1)]
    pub queued: usize,
    /// Verification images carried by each command (renders of the person).
    #[arg(long, default_value_t = 0)]
    pub verify_images: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Run {
    identity: u32,
    verdict: String,
    push_to_receipt_s: f64,
    update_s: f64,
    train_s: f64,
    verify_s: f64,
    reference_s: f64,
    /// The agent's adapter after this command, and whether the direct run made the same.
    after: String,
    same_adapter: bool,
}

/// Mean, median, min, max.
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        k if k % 2 == 1 => sorted[k / 2],
        k => 0.5 * (sorted[k / 2 - 1] + sorted[k / 2]),
    };
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (mean, median, min, max)
}

pub fn run(a: AgentArgs) -> Result<ExitCode> {
    anyhow::ensure!(a.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!((1..=64).contains(&a.queued), "--queued must be 1 to 64");
    let pkg = Package::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let n = lethe_world::identities().len();
    let ids: Vec<u32> = (0..a.runs).map(|i| ((i * 7 + 3) % n) as u32).collect();
    let mut dev = LocalDevice::new(
        &a.model,
        &pkg.manifest().model_id,
        &format!(
            "queue_capacity = {}\n[update]\nmax_steps = {}\nallow_mismatch = true\n",
            a.queued.max(4),
            a.steps
        ),
    )?;
    let rss_before = peak_rss_mib();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    let (load_s, provider) = rt.block_on(async {
        let t0 = Instant::now();
        let agent = AgentHandle::spawn(dev.cfg.clone());
        let status = dev.wait_online().await?;
        let load_s = t0.elapsed().as_secs_f64();
        for (g, group) in ids.chunks(a.queued).enumerate() {
            let mut cmds = Vec::new();
            for (j, &id) in group.iter().enumerate() {
                let name = format!("bench-{}", g * a.queued + j);
                let bytes = dev.forget_command(&name, id, a.verify_images)?;
                cmds.push((name, bytes));
            }
            for ((w, took), &id) in dev.push_many(cmds, a.json).await?.into_iter().zip(group) {
                let m = &w.receipt.metrics;
                let ms = |key: &str| m.get(key).copied().unwrap_or(f64::NAN) / 1000.0;
                runs.push(Run {
                    identity: id,
                    verdict: w.receipt.verdict.name().to_string(),
                    push_to_receipt_s: took.as_secs_f64(),
                    update_s: ms("update_ms"),
                    train_s: ms("train_ms"),
                    verify_s: ms("verify_ms"),
                    reference_s: f64::NAN,
                    after: w.receipt.model_hash_after.clone(),
                    same_adapter: false,
                });
            }
        }
        agent.stop().await?;
        let provider = status["execution_provider"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        Ok::<_, anyhow::Error>((load_s, provider))
    })?;
    let rss_agent = peak_rss_mib();

    // Reference: the same updates called directly, in the same order, each from the
    // adapter the previous one produced (as the agent's commits chain).
    let mut eng = Engines::load(&dev.cfg)?;
    let mut base = eng.pkg.adapter()?;
    let mut forgotten: Vec<String> = Vec::new();
    let cancel = AtomicBool::new(false);
    for (k, r) in runs.iter_mut().enumerate() {
        let bytes = super::local::png(r.identity, 500_000 + u64::from(r.identity))?;
        let concept = lethe_world::identity(r.identity)
            .context("no such identity")?
            .name();
        let verify = super::local::verify_pngs(r.identity, a.verify_images)?;
        let job = Job {
            concept: &concept,
            image: &bytes,
            verify_images: verify.iter().map(Vec::as_slice).collect(),
            method: None,
            steps: None,
            forgotten: forgotten.clone(),
        };
        let t0 = Instant::now();
        let out = update::run(&mut eng, &dev.cfg, &job, &base, &cancel, &mut |_| {})
            .with_context(|| format!("reference run {k}"))?;
        r.reference_s = t0.elapsed().as_secs_f64();
        if out.failed.is_none() {
            base = out.adapter;
            forgotten.push(concept.clone());
        }
        r.same_adapter = base.sha256_hex() == r.after;
    }

    let p2r: Vec<f64> = runs.iter().map(|r| r.push_to_receipt_s).collect();
    let refs: Vec<f64> = runs.iter().map(|r| r.reference_s).collect();
    let (pm, pmed, pmin, pmax) = stats(&p2r);
    let (rm, rmed, rmin, rmax) = stats(&refs);
    let part = |f: fn(&Run) -> f64| stats(&runs.iter().map(f).collect::<Vec<_>>()).1;
    let (um, tm, vm) = (
        part(|r| r.update_s),
        part(|r| r.train_s),
        part(|r| r.verify_s),
    );
    if a.json {
        let rows: Vec<_> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "identity": r.identity, "verdict": r.verdict,
                    "push_to_receipt_s": r.push_to_receipt_s, "update_s": r.update_s,
                    "train_s": r.train_s, "verify_s": r.verify_s, "reference_s": r.reference_s,
                    "same_adapter_as_agent": r.same_adapter,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "steps": a.steps, "provider": provider, "queued": a.queued,
                "verify_images": a.verify_images,
                "agent_start_s": load_s, "runs": rows,
                "push_to_receipt_mean_s": pm, "push_to_receipt_median_s": pmed,
                "update_median_s": um, "train_median_s": tm, "verify_median_s": vm,
                "reference_mean_s": rm, "reference_median_s": rmed, "ratio": pm / rm,
                "peak_rss_mib_before_agent": rss_before, "peak_rss_mib": rss_agent,
            }))?
        );
    } else {
        println!(
            "agent benchmark: {} forgets of {} steps, {} queued at a time, {} verification images each, provider {provider}, agent start (model load, ORT + tract) {load_s:.1} s",
            a.runs, a.steps, a.queued, a.verify_images
        );
        println!(
            "{:>3} {:>9} {:>10} | {:>14} {:>8} {:>8} {:>8} | {:>11} {:>7} {:>5}",
            "#",
            "identity",
            "verdict",
            "push->receipt",
            "update",
            "train",
            "verify",
            "reference",
            "ratio",
            "same"
        );
        for (k, r) in runs.iter().enumerate() {
            println!(
                "{:>3} {:>9} {:>10} | {:>12.2} s {:>6.2} s {:>6.2} s {:>6.2} s | {:>9.2} s {:>6.2}x {:>5}",
                k,
                r.identity,
                r.verdict,
                r.push_to_receipt_s,
                r.update_s,
                r.train_s,
                r.verify_s,
                r.reference_s,
                r.push_to_receipt_s / r.reference_s,
                if r.same_adapter { "yes" } else { "NO" }
            );
        }
        println!(
            "push->receipt median {pmed:.2} s, mean {pm:.2} s (min {pmin:.2}, max {pmax:.2}); of which median update {um:.2} s (train {tm:.2} s), verify {vm:.2} s"
        );
        println!(
            "reference (update::run direct) median {rmed:.2} s, mean {rm:.2} s (min {rmin:.2}, max {rmax:.2}); ratio of means {:.3}x",
            pm / rm
        );
        let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0} MiB"));
        println!(
            "peak RSS of this process: {} before the agent started, {} after the agent's runs (agent + in-process broker + operator client)",
            f(rss_before),
            f(rss_agent)
        );
    }
    // The direct runs must reproduce the agent's adapters: anything else is a bug.
    Ok(if runs.iter().all(|r| r.same_adapter) {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the direct update made other adapters than the agent");
        ExitCode::from(1)
    })
}
