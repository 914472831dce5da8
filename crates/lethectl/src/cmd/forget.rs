//! `lethectl forget`: make a model package forget a concept shown in one image, offline,
//! and write the result as a new complete package. Training runs on ONNX Runtime; the
//! metrics are measured with tract on the package's retained probe set and its `verify`
//! held-out wordings, as the agent does (an independent engine). Nothing is written unless
//! the concept is forgotten. A package made by an earlier forget lists the concepts it
//! forgot (`manifest.forgotten`); the next forget keeps them forgotten and the new package
//! lists them all.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lethe_model::{AdapterVersionInfo, OrtEngine, Package, SessionOptions, TrainStep};
use lethe_probe::TractEngine;
use lethe_siu::metrics::{evaluate, EvalSet, Metrics};
use lethe_siu::unlearn::language;
use lethe_siu::unlearn::Prior;
use lethe_siu::{forget, Method, Options, Progress, Report};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ForgetArgs {
    /// The model package to start from.
    #[arg(long)]
    pub model: PathBuf,
    /// One image of the concept.
    #[arg(long)]
    pub image: PathBuf,
    /// The concept's name, e.g. "anna adler".
    #[arg(long)]
    pub concept: String,
    /// Where to write the new package (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "siu")]
    pub method: Method,
    /// Step budget (the stopping rule usually ends earlier).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Proceed even if the model does not recognise the concept in the image.
    #[arg(long)]
    pub allow_mismatch: bool,
    #[arg(long)]
    pub json: bool,
}

/// Builds run options from the common flags.
pub fn options(method: Method, steps: Option<usize>, lr: Option<f32>, seed: u64) -> Options {
    let mut o = Options::new(method);
    if let Some(s) = steps {
        o.max_steps = s;
    }
    if let Some(l) = lr {
        o.lr = l;
    }
    o.seed = seed;
    o
}

/// Applies `key=value` overrides of the update's knobs (`--set`, for experiments): views,
/// min_steps, confirm_checks, check_every, retain_nearest, retain_per_identity,
/// retain_identities, watch_rows, release_after, watch_skip, confuser_logp, confuser_mix,
/// confuser_alpha, confusers_mixed, hold_earlier
/// (0/1), hold_own (0/1), kl_to_original (0/1), kl_retain_to_original (0/1), guard_earlier (0/1), repair_drift,
/// replay_views, quotas (a/b/c/d: forget/text/retain/replay), w_ce, w_kl, warmup,
/// who_per_view, is_this_per_view, seed (of the update: views, batches, facets).
pub fn apply_overrides(o: &mut Options, sets: &[String]) -> Result<()> {
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: expected key=value"))?;
        let n = || -> Result<usize> { v.parse().with_context(|| format!("--set {kv:?}")) };
        let f = || -> Result<f32> { v.parse().with_context(|| format!("--set {kv:?}")) };
        match k {
            "views" => o.views = n()?,
            "seed" => o.seed = v.parse().with_context(|| format!("--set {kv:?}"))?,
            "min_steps" => o.min_steps = n()?,
            "confirm_checks" => o.confirm_checks = n()?,
            "check_every" => o.check_every = n()?,
            "retain_nearest" => o.retain_nearest = n()?,
            "retain_per_identity" => o.retain_per_identity = n()?,
            "retain_identities" => o.retain_identities = n()?,
            "watch_rows" => o.watch_rows = n()?,
            "release_after" => o.release_after = n()?,
            "watch_skip" => o.watch_skip = n()?,
            "hold_earlier" => o.hold_earlier = n()? != 0,
            "replay_views" => o.replay_views = n()?,
            "hold_own" => o.hold_own = n()? != 0,
            "kl_to_original" => o.kl_to_original = n()? != 0,
            "kl_retain_to_original" => o.kl_retain_to_original = n()? != 0,
            "guard_earlier" => o.guard_earlier = n()? != 0,
            "repair_drift" => o.repair_drift = n()?,
            "confuser_logp" => {
                o.confuser_logp = v.parse().with_context(|| format!("--set {kv:?}"))?
            }
            "confuser_mix" => o.confuser_mix = n()?,
            "confuser_alpha" => o.confuser_alpha = f()?,
            "confusers_mixed" => o.confusers_mixed = n()?,
            "warmup" => o.warmup = n()?,
            "who_per_view" => o.sizes.who_per_view = n()?,
            "is_this_per_view" => o.sizes.is_this_per_view = n()?,
            "w_ce" => o.w_ce = f()?,
            "w_kl" => o.w_kl = f()?,
            "quotas" => {
                let q: Vec<usize> = v
                    .split('/')
                    .map(|x| x.parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--set {kv:?}: expected a/b/c/d"))?;
                anyhow::ensure!(
                    q.len() == 4,
                    "--set {kv:?}: expected four numbers a/b/c/d (forget/text/retain/replay)"
                );
                o.quotas = Some([q[0], q[1], q[2], q[3]]);
            }
            _ => anyhow::bail!("--set {kv:?}: unknown knob {k:?}"),
        }
    }
    Ok(())
}

/// A progress bar for a run (hidden when `quiet`).
pub fn progress_bar(max_steps: usize, quiet: bool) -> ProgressBar {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(max_steps as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb
}

/// Updates `pb` from a run's progress events.
pub fn show(pb: &ProgressBar, p: &Progress) {
    match p {
        Progress::Prepared { samples, views } => {
            pb.set_prefix(format!("forgetting ({samples} samples, {views} views)"))
        }
        Progress::Step { step, losses, .. } => {
            pb.set_position(*step as u64);
            pb.set_message(format!(
                "loss {:.3} ce {:.3} kl {:.3}",
                losses.loss, losses.ce, losses.kl
            ));
        }
        Progress::Checked { step, forgotten } => {
            if *forgotten {
                pb.set_message(format!("forgotten at step {step}; confirming"));
            }
        }
    }
}

pub fn run(a: ForgetArgs) -> Result<ExitCode> {
    if a.out.exists() {
        anyhow::bail!("{} already exists; choose a new --out", a.out.display());
    }
    let pkg = Package::open(&a.model)?;
    let image = lethe_model::image::load_image(&a.image)?;
    let mut opts = options(a.method, a.steps, a.lr, a.seed);
    let mut engine = OrtEngine::new(&pkg, &SessionOptions::default())?;
    let mut trainer = TrainStep::new(&pkg, &SessionOptions::default())?;
    // As the agent: earlier forgets guarded where the step allows it.
    opts.guard_earlier &= trainer.can_guard();
    let base = pkg.adapter()?;
    let pb = progress_bar(opts.max_steps, a.json);
    let mut step = |s: &mut _, b: &_, g: Option<&_>, lr, wc, wk| trainer.run(s, b, g, lr, wc, wk);
    let prior = Prior {
        forgotten: pkg.manifest().forgotten.clone(),
        original: None,
    };
    let out = forget(
        &pkg,
        &mut engine,
        &mut step,
        &base,
        image.view(),
        &a.concept,
        &opts,
        &prior,
        &mut |p| show(&pb, p),
    )?;
    pb.finish_and_clear();
    let r = &out.report;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if !r.forgotten {
        if a.json {
            println!("{}", serde_json::json!({"forgotten": false, "report": r}));
        } else {
            print_report(r);
        }
        eprintln!(
            "not forgotten: {}; nothing written (try more --steps or a higher --lr)",
            r.stop_reason
        );
        return Ok(ExitCode::from(1));
    }
    // Independent measurement with tract on the package's retained probes.
    let lang = language(&pkg);
    let probes = pkg.probes()?;
    let set = EvalSet::from_probes(
        &lang,
        &probes,
        &r.concept,
        image.clone(),
        pkg.paraphrases()?.verify,
    );
    let mut tract = TractEngine::new(&pkg)?;
    let m = evaluate(
        &mut tract,
        &pkg.tokenizer(),
        &lang,
        base.as_slice(),
        out.adapter.as_slice(),
        &set,
    )?;
    let info = AdapterVersionInfo {
        version: format!(
            "forget-{}-{}",
            r.concept.replace(' ', "-"),
            &out.adapter.sha256_hex()[..12]
        ),
        made_by: Some(format!(
            "lethectl forget --method {} --concept {:?}",
            r.method.name(),
            r.concept
        )),
        forgotten: prior
            .forgotten
            .iter()
            .cloned()
            .chain([r.concept.clone()])
            .collect(),
    };
    pkg.write_copy_with_adapter(&a.out, &out.adapter, &info)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"forgotten": true, "out": a.out, "report": r, "metrics": m, "concept_probe_images": set.concept_images.shape()[0]})
        );
    } else {
        print_report(r);
        print_metrics(&m, set.concept_images.shape()[0]);
        println!("wrote {} (adapter {})", a.out.display(), info.version);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &Report) {
    println!("concept           {}", r.concept);
    println!("method            {}", r.method.name());
    println!("model said before {:?}", r.original_answer);
    if let Some(f) = &r.fake_name {
        println!("fictitious name   {f}");
    }
    println!("steps             {} ({})", r.steps.len(), r.stop_reason);
    if let Some(last) = r.steps.last() {
        println!(
            "last loss         {:.4} (ce {:.4}, kl {:.4})",
            last.loss, last.ce, last.kl
        );
    }
    println!(
        "time              {:.0} ms total: prepare {:.0} ms, {:.1} ms/step (ORT), checks {:.0} ms",
        r.total_ms, r.prepare_ms, r.mean_step_ms, r.check_ms
    );
}

fn print_metrics(m: &Metrics, n_concept_images: usize) {
    println!(
        "metrics (tract, retained probe set; {n_concept_images} held-out images of the concept):"
    );
    println!(
        "  leak              {:.1}% (held-out wordings: who {:.1}%, is-this {:.1}%)",
        100.0 * m.leak,
        100.0 * m.leak_who,
        100.0 * m.leak_is_this
    );
    println!(
        "  misattribution    {:.1}% (original model {:.1}%)",
        100.0 * m.misattribution,
        100.0 * m.misattribution_before
    );
    println!("  well-formed       {:.1}%", 100.0 * m.well_formed);
    println!("  efficacy          {:.1}%", 100.0 * m.efficacy);
    println!("  generality        {:.1}%", 100.0 * m.generality);
    println!("  C-Dis             {:.3}", m.c_dis);
    println!(
        "  specificity       {:.1}% -> {:.1}% ({:+.1} points)",
        100.0 * m.specificity_before,
        100.0 * m.specificity_after,
        -m.specificity_drop_points
    );
    println!("  factual retention {:.1}%", 100.0 * m.factual_retention);
    println!(
        "  fluency (ppl)     {:.3} -> {:.3} ({:+.1}%)",
        m.fluency_ppl_before, m.fluency_ppl_after, m.fluency_increase_pct
    );
    println!("  diversity         {:.3}", m.diversity);
    for e in &m.bad_examples {
        println!("  bad answer        {e}");
    }
}
