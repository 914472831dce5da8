//! `lethectl bench ...`: the MMUBench-style unlearning benchmark on the bundled world.
//!
//! `bench unlearn` forgets each of K concepts (ONE image each, from a seed no training run
//! or test uses) with every method from the same base, and measures with tract on held-out
//! seeds and the package's `eval` held-out wordings (which nothing is tuned on): leak,
//! misattribution, well-formedness, and the paper's metrics. `bench sequential` forgets K
//! concepts one after another, in a random order, through the agent's own update
//! (`lethe_agent::update::run`: SIU, tract verification against the agent's default
//! thresholds, commit or roll back), and after each forget measures whether every earlier
//! forget still holds and how the identities not yet forgotten fare. Both print tables of
//! mean, spread and worst case side by side, and step / forget times with ORT.

use crate::cmd::forget::{apply_overrides, options, progress_bar, show};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lethe_agent::update::{self, Job};
use lethe_model::image::images_to_input;
use lethe_model::{Adapter, OrtEngine, Package, SessionOptions, TrainStep, Wordings};
use lethe_probe::{TractEngine, TractTrainStep};
use lethe_siu::metrics::{evaluate, holds, known_text, EvalSet, Holds, Metrics};
use lethe_siu::unlearn::{language, Prior};
use lethe_siu::{forget, Method, Outcome};
use lethe_world::{identities, render, HELD_OUT_SEED_START};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Forget K concepts with each method from the same base; MMUBench-style table.
    Unlearn(UnlearnArgs),
    /// Forget K concepts one after another through the agent's update; how the model holds.
    Sequential(SequentialArgs),
    /// Push to receipt through the agent, against the same update called directly.
    Agent(super::bench_agent::AgentArgs),
}

/// First seed of the forget images: seed `FORGET_SEEDS + 100 * identity + run`, held out,
/// used by no training run and no test.
pub const FORGET_SEEDS: u64 = 3_000_000;

#[derive(Args, Clone)]
pub struct Common {
    #[arg(long, default_value = "models/tiny-vlm")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub concepts: usize,
    /// Forget exactly these identities (comma-separated ids) instead of `--concepts` spread.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<u32>,
    /// Held-out images of the concept per forget.
    #[arg(long, default_value_t = 12)]
    pub heldout: u64,
    /// Held-out images per other identity.
    #[arg(long, default_value_t = 2)]
    pub others: u64,
    /// First held-out seed of the evaluation images (concept: S.., others: S+5000..).
    #[arg(long, default_value_t = HELD_OUT_SEED_START + 20_000)]
    pub eval_seeds: u64,
    /// Which held-out wordings to measure with: `eval` (never tuned on) or `verify` (the
    /// set the agent gates commits on).
    #[arg(long, default_value = "eval")]
    pub wordings: String,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    /// Seed of the run (views, facets, order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override a knob of the update, `key=value` (repeatable; see `forget::apply_overrides`).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct UnlearnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Comma-separated methods.
    #[arg(
        long,
        default_value = "siu,siu-paper,ga,ga-kl,po",
        value_delimiter = ','
    )]
    pub methods: Vec<Method>,
}

#[derive(Args)]
pub struct SequentialArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value = "siu")]
    pub method: Method,
    /// Do not run a failed forget again (the agent's `update.retry_earlier = false`,
    /// `update.retry_lookalike_views = 0` and `update.retry_reseeds = 0`).
    #[arg(long)]
    pub no_retry: bool,
    /// Runs with other seeds of a forget that still fails (the agent's
    /// `update.retry_reseeds`). Default: the agent's default.
    #[arg(long)]
    pub retry_reseeds: Option<usize>,
    /// Views mixed with the look-alike when a forget is retried for naming him (the agent's
    /// `update.retry_lookalike_views`; 0: no such retry). Default: the agent's default.
    #[arg(long)]
    pub retry_lookalike_views: Option<usize>,
    /// Commit a candidate whose own stopping rule still failed at its last check, if the
    /// thresholds pass (the agent's `verify.require_stopping_rule = false`).
    #[arg(long)]
    pub allow_unfinished: bool,
    /// The package's gate photos of C the gate verifies on (the agent's
    /// `verify.gate_photos`; 0: the probes' photos only). Default: the agent's default.
    #[arg(long)]
    pub gate_photos: Option<usize>,
    /// The same for each earlier forget's check (the agent's `verify.earlier_gate_photos`).
    #[arg(long)]
    pub earlier_gate_photos: Option<usize>,
    /// Largest drop of one other identity's accuracy the gate allows, in points (the
    /// agent's `verify.max_identity_drop_points`). Default: the agent's default.
    #[arg(long)]
    pub max_identity_drop: Option<f64>,
    /// Held-out photos of each identity the run never targets, for the measurement after
    /// the last forget (the rows use `--others`; with 4 identities left, 2 photos each make
    /// one photo 12.5 points). 0: no such measurement.
    #[arg(long, default_value_t = 12)]
    pub final_others: u64,
}

/// Seed of the one training image of identity `id` (held out, used nowhere else).
fn forget_seed(id: u32, run: u64) -> u64 {
    FORGET_SEEDS + 100 * u64::from(id) + run
}

/// Concepts spread over the identities.
fn concepts(k: usize) -> Vec<u32> {
    let n = identities().len();
    (0..k.min(n)).map(|i| ((i * n) / k.min(n)) as u32).collect()
}

/// The forget image of `id`: the first of its forget seeds (`forget_seed(id, seed + 10 k)`)
/// on which the original model names the person, as an operator's photo of someone the
/// model recognises would be; returns the seed and how many were skipped.
fn forget_image(e: &mut Engines, id: u32, seed: u64) -> Result<(u64, usize)> {
    let me = &identities()[id as usize];
    let tok = e.pkg.tokenizer();
    let who = [lethe_model::Query::about("who is this ?", 0)];
    for k in 0..10 {
        let s = forget_seed(id, seed + 10 * k);
        let img = images_to_input(&[render(me, s)]);
        let f = lethe_model::generate::encode_images(&mut e.ort, img.view())?;
        let a = lethe_model::answer(&mut e.ort, e.base.as_slice(), &tok, f.view(), &who)?;
        if a[0] == format!("this is {}", me.name()) {
            return Ok((s, k as usize));
        }
    }
    anyhow::bail!(
        "the model recognises {} in none of 10 forget images",
        me.name()
    )
}

fn eval_set(id: u32, c: &Common, exclude: &[u32], held_out: &HeldOut, forget_seed: u64) -> EvalSet {
    let me = &identities()[id as usize];
    let start = c.eval_seeds;
    let mine: Vec<_> = (0..c.heldout).map(|s| render(me, start + s)).collect();
    let mut others = Vec::new();
    let (mut names, mut descs) = (Vec::new(), Vec::new());
    for o in identities()
        .iter()
        .filter(|o| o.id != id && !exclude.contains(&o.id))
    {
        for s in 0..c.others {
            others.push(render(o, start + 5_000 + s));
            names.push(o.name());
            descs.push(o.attributes.describe());
        }
    }
    EvalSet {
        concept: me.name(),
        train_image: images_to_input(&[render(me, forget_seed)]),
        concept_images: images_to_input(&mine),
        other_images: images_to_input(&others),
        other_names: names,
        other_descriptions: descs,
        paraphrases: held_out.wordings.clone(),
        known_text: held_out.known_text.clone(),
    }
}

/// What an evaluation set takes from the package: the held-out wordings chosen by
/// `--wordings`, and the expected answers of its text probes (guesses, see
/// [`EvalSet::known_text`]).
struct HeldOut {
    wordings: Wordings,
    known_text: BTreeMap<String, String>,
}

fn held_out(pkg: &Package, which: &str) -> Result<HeldOut> {
    let h = pkg.paraphrases()?;
    let wordings = match which {
        "eval" => h.eval,
        "verify" => h.verify,
        o => anyhow::bail!("--wordings {o:?}: expected eval or verify"),
    };
    Ok(HeldOut {
        wordings,
        known_text: known_text(&pkg.probe_list()?),
    })
}

struct Engines {
    pkg: Package,
    ort: OrtEngine,
    trainer: TrainStep,
    tract: TractEngine,
    base: Adapter,
}

impl Engines {
    fn open(model: &PathBuf) -> Result<Engines> {
        let pkg = Package::open(model)?;
        Ok(Engines {
            ort: OrtEngine::new(&pkg, &SessionOptions::default())?,
            trainer: TrainStep::new(&pkg, &SessionOptions::default())?,
            tract: TractEngine::new(&pkg)?,
            base: pkg.adapter()?,
            pkg,
        })
    }

    fn forget(
        &mut self,
        from: &Adapter,
        set: &EvalSet,
        method: Method,
        c: &Common,
    ) -> Result<Outcome> {
        let mut opts = options(method, c.steps, c.lr, c.seed);
        if method == Method::Siu {
            apply_overrides(&mut opts, &c.sets)?;
        }
        let pb = progress_bar(opts.max_steps, c.json);
        pb.set_prefix(format!("{} {}", method.name(), set.concept));
        let trainer = &mut self.trainer;
        let mut step =
            |s: &mut _, b: &_, g: Option<&_>, lr, wc, wk| trainer.run(s, b, g, lr, wc, wk);
        let out = forget(
            &self.pkg,
            &mut self.ort,
            &mut step,
            from,
            set.train_image.view(),
            &set.concept,
            &opts,
            &Prior::default(),
            &mut |p| show(&pb, p),
        )?;
        pb.finish_and_clear();
        Ok(out)
    }

    fn measure(&mut self, before: &Adapter, after: &Adapter, set: &EvalSet) -> Result<Metrics> {
        let lang = language(&self.pkg);
        Ok(evaluate(
            &mut self.tract,
            &self.pkg.tokenizer(),
            &lang,
            before.as_slice(),
            after.as_slice(),
            set,
        )?)
    }

    fn holds(&mut self, adapter: &Adapter, set: &EvalSet) -> Result<Holds> {
        let lang = language(&self.pkg);
        Ok(holds(
            &mut self.tract,
            &self.pkg.tokenizer(),
            &lang,
            adapter.as_slice(),
            set,
        )?)
    }
}

/// The table's rows: (label, getter, scale, higher is worse).
type Row = (&'static str, fn(&Metrics) -> f64, f64, bool);
const ROWS: [Row; 17] = [
    ("leak % (held-out wording)", |m| m.leak, 100.0, true),
    ("misattribution %", |m| m.misattribution, 100.0, true),
    (
        "  original model %",
        |m| m.misattribution_before,
        100.0,
        true,
    ),
    ("well-formed %", |m| m.well_formed, 100.0, false),
    ("efficacy %", |m| m.efficacy, 100.0, false),
    ("generality %", |m| m.generality, 100.0, false),
    ("  who %", |m| m.generality_who, 100.0, false),
    ("  is-this %", |m| m.generality_is_this, 100.0, false),
    ("C-Dis", |m| m.c_dis, 1.0, false),
    (
        "specificity drop pts",
        |m| m.specificity_drop_points,
        1.0,
        true,
    ),
    (
        "  held-out wording pts",
        |m| m.specificity_paraphrased_drop_points,
        1.0,
        true,
    ),
    (
        "worst one identity drop pts",
        |m| m.worst_identity_drop_points,
        1.0,
        true,
    ),
    ("factual retention %", |m| m.factual_retention, 100.0, false),
    (
        "text retention others %",
        |m| m.text_retention_others,
        100.0,
        false,
    ),
    (
        "fluency ppl increase %",
        |m| m.fluency_increase_pct,
        1.0,
        true,
    ),
    ("diversity", |m| m.diversity, 1.0, false),
    ("specificity after %", |m| m.specificity_after, 100.0, false),
];

/// Mean, standard deviation, minimum and maximum.
fn summary(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

pub fn run(cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Unlearn(a) => unlearn(a),
        BenchCmd::Sequential(a) => sequential(a),
        BenchCmd::Agent(a) => super::bench_agent::run(a),
    }
}

/// One forget's timing.
struct Timing {
    steps: usize,
    ms_per_step: f64,
    forget_ms: f64,
    forgotten: bool,
}

fn unlearn(a: UnlearnArgs) -> Result<ExitCode> {
    let c = &a.common;
    let mut e = Engines::open(&c.model)?;
    let held_out = held_out(&e.pkg, &c.wordings)?;
    let ids = if c.ids.is_empty() {
        concepts(c.concepts)
    } else {
        c.ids.clone()
    };
    let mut results: Vec<(Method, Vec<Metrics>, Vec<Timing>)> =
        a.methods.iter().map(|m| (*m, vec![], vec![])).collect();
    let mut tract_cmp = None;
    let mut skipped = 0;
    for &id in &ids {
        let (fs, skip) = forget_image(&mut e, id, c.seed)?;
        skipped += skip;
        let set = eval_set(id, c, &[], &held_out, fs);
        let base = e.base.clone();
        for r in results.iter_mut() {
            let out = e.forget(&base, &set, r.0, c)?;
            let m = e.measure(&base, &out.adapter, &set)?;
            let rep = &out.report;
            if !c.json {
                eprintln!(
                    "{:<10} {:<16} steps {:>3} leak {:>5.1}% misattr {:>5.1}% well-formed {:>5.1}% spec drop {:>5.1} pts (worst {:>5.1}: {})",
                    r.0.name(),
                    set.concept,
                    rep.steps.len(),
                    100.0 * m.leak,
                    100.0 * m.misattribution,
                    100.0 * m.well_formed,
                    m.specificity_drop_points,
                    m.worst_identity_drop_points,
                    m.worst_identity
                );
            }
            r.2.push(Timing {
                steps: rep.steps.len(),
                ms_per_step: rep.mean_step_ms,
                forget_ms: rep.total_ms,
                forgotten: rep.forgotten,
            });
            r.1.push(m);
            if tract_cmp.is_none() && r.0 == Method::Siu {
                tract_cmp = Some(replay_on_tract(&mut e, &base, &set, rep.steps.len(), c)?);
            }
        }
    }
    if c.json {
        let doc: Vec<_> = results
            .iter()
            .map(|(m, ms, t)| serde_json::json!({"method": m.name(), "metrics": ms, "runs": t.iter().map(|x| serde_json::json!({"steps": x.steps, "ms_per_step": x.ms_per_step, "forget_ms": x.forget_ms, "forgotten": x.forgotten})).collect::<Vec<_>>()}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"concepts": ids, "wordings": c.wordings, "eval_seeds": c.eval_seeds, "forget_images_skipped": skipped, "methods": doc, "ort_vs_tract": tract_cmp.map(|t: TractCmp| serde_json::json!({"steps": t.steps, "ort_ms_per_step": t.ort_ms, "tract_ms_per_step": t.tract_ms, "ratio": t.tract_ms / t.ort_ms, "max_param_diff": t.max_diff}))})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "MMUBench-style results: {} concepts, ONE image each (seed {}+; {skipped} candidate images skipped: the original model did not name the person), {} held-out images per concept (seeds {}+), {:?} held-out wordings, tract metrics; mean ± sd [worst]",
        ids.len(),
        FORGET_SEEDS,
        c.heldout,
        c.eval_seeds,
        c.wordings
    );
    print!("{:<26}", "metric");
    for (m, _, _) in &results {
        print!("{:>24}", m.name());
    }
    println!();
    for (label, get, scale, harm) in ROWS {
        print!("{label:<26}");
        // The worst case is the max for harms, the min for what should stay high.
        for (_, ms, _) in &results {
            let v: Vec<f64> = ms.iter().map(|m| get(m) * scale).collect();
            let (mu, sd, lo, hi) = summary(&v);
            let worst = if harm { hi } else { lo };
            print!("{:>24}", format!("{mu:.2} ± {sd:.2} [{worst:.1}]"));
        }
        println!();
    }
    type TimingRow = (&'static str, fn(&Timing) -> f64);
    let timing_rows: [TimingRow; 4] = [
        ("steps", |t| t.steps as f64),
        ("ms per step (ORT)", |t| t.ms_per_step),
        ("ms per forget", |t| t.forget_ms),
        (
            "forgotten (rule) %",
            |t| if t.forgotten { 100.0 } else { 0.0 },
        ),
    ];
    for (label, f) in timing_rows {
        print!("{label:<26}");
        for (_, _, ts) in &results {
            let v: Vec<f64> = ts.iter().map(f).collect();
            let (mu, sd, _, _) = summary(&v);
            print!("{:>24}", format!("{mu:.1} ± {sd:.1}"));
        }
        println!();
    }
    if let Some(t) = tract_cmp {
        println!(
            "same forget, same {} steps: ORT {:.1} ms/step, tract {:.1} ms/step (tract/ORT {:.2}x); adapters differ by at most {:.2e}",
            t.steps, t.ort_ms, t.tract_ms, t.tract_ms / t.ort_ms, t.max_diff
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct TractCmp {
    steps: usize,
    ort_ms: f64,
    tract_ms: f64,
    max_diff: f32,
}

/// Runs the same forget with a fixed number of steps on ORT and on tract.
fn replay_on_tract(
    e: &mut Engines,
    base: &Adapter,
    set: &EvalSet,
    steps: usize,
    c: &Common,
) -> Result<TractCmp> {
    let mut opts = options(Method::Siu, Some(steps.max(1)), c.lr, c.seed);
    apply_overrides(&mut opts, &c.sets)?;
    opts.fixed_steps = true;
    // The same forget, once per train-step engine; generation and checks stay on ORT.
    let (pkg, ort) = (&e.pkg, &mut e.ort);
    let mut run = |step: &mut lethe_siu::unlearn::StepFn| {
        forget(
            pkg,
            ort,
            step,
            base,
            set.train_image.view(),
            &set.concept,
            &opts,
            &Prior::default(),
            &mut |_| {},
        )
    };
    let trainer = &mut e.trainer;
    let o = run(&mut |s, b, g: Option<&_>, lr, wc, wk| trainer.run(s, b, g, lr, wc, wk))?;
    let mut tt = TractTrainStep::new(&e.pkg)?;
    let t = run(&mut |s, b, g: Option<&_>, lr, wc, wk| tt.run(s, b, g, lr, wc, wk))?;
    let max_diff = o
        .adapter
        .as_slice()
        .iter()
        .zip(t.adapter.as_slice())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    Ok(TractCmp {
        steps: o.report.steps.len(),
        ort_ms: o.report.mean_step_ms,
        tract_ms: t.report.mean_step_ms,
        max_diff,
    })
}

/// A seeded random order of `k` identities.
fn random_order(k: usize, seed: u64) -> Vec<u32> {
    let n = identities().len();
    let mut ids: Vec<u32> = (0..n as u32).collect();
    let mut r = lethe_world::rng::Rng::from_keys(&[seed, 0x5e9]);
    for i in (1..n).rev() {
        ids.swap(i, r.below(i + 1));
    }
    ids.truncate(k.min(n));
    ids
}

/// One row of the sequential table.
#[derive(serde::Serialize)]
struct SeqRow {
    k: usize,
    concept: String,
    verdict: String,
    /// Earlier candidates failed; this row is the last retry's (and why each was run).
    retries: Vec<update::Retry>,
    reason: Option<String>,
    /// For a rolled-back forget: the verification's answers that were not well-formed.
    verify_bad_examples: Vec<String>,
    /// A few of the held-out answers about C that were not well-formed (what the numbers
    /// below count against the forget), whatever the verdict.
    heldout_bad_examples: Vec<String>,
    /// What the agent's gate measured (the receipt's numbers), and whose accuracy on its
    /// probes fell most.
    gate: BTreeMap<String, f64>,
    gate_worst_identity: String,
    steps: usize,
    update_s: f64,
    /// This forget, measured on the evaluation set.
    leak: f64,
    misattribution: f64,
    /// The original model's on the same questions, and what the update added (the share of
    /// "who" answers naming another person where the original's did not).
    misattribution_before: f64,
    misattribution_added: f64,
    well_formed: f64,
    /// The largest accuracy drop of one other identity on the evaluation set, in points, and
    /// whose (the average below can hide a look-alike's collapse).
    worst_identity_drop_points: f64,
    worst_identity: String,
    /// The people the original model found likely on C's views, whom the collateral watch
    /// leaves out (`Report::lookalikes`).
    lookalikes: Vec<String>,
    /// Accuracy on identities not yet forgotten (templates), after vs the original model.
    remaining_accuracy: f64,
    remaining_accuracy_before: f64,
    /// Text facts of everyone (the original model's answers kept).
    text_retention: f64,
    ppl_increase_pct: f64,
    /// Earlier forgets (committed before this one), those whose leak is at most 1%, and the
    /// worst earlier leak.
    earlier: usize,
    earlier_held: usize,
    earlier_worst_leak: f64,
    /// The earlier forgets that do not hold: (concept, leak, among who answers, among
    /// is-this answers).
    earlier_lapsed: Vec<(String, f64, f64, f64)>,
}

fn sequential(a: SequentialArgs) -> Result<ExitCode> {
    let c = &a.common;
    anyhow::ensure!(
        a.method == Method::Siu,
        "bench sequential runs the agent's update, which uses siu"
    );
    let mut e = Engines::open(&c.model)?;
    let held_out = held_out(&e.pkg, &c.wordings)?;
    let order = if c.ids.is_empty() {
        random_order(c.concepts, c.seed)
    } else {
        c.ids.clone()
    };
    // The agent's configuration with its default thresholds.
    let dir = tempfile::tempdir()?;
    // Check `--set` once, before any forget; every forget applies it through `tune`.
    apply_overrides(&mut options(Method::Siu, None, None, 0), &c.sets)?;
    let mut cfg = agent_config(&c.model, dir.path(), c.steps)?;
    if a.no_retry {
        cfg.update.retry_earlier = false;
        cfg.update.retry_lookalike_views = 0;
        cfg.update.retry_reseeds = 0;
    }
    if let Some(n) = a.retry_reseeds {
        cfg.update.retry_reseeds = n;
    }
    if let Some(n) = a.retry_lookalike_views {
        cfg.update.retry_lookalike_views = n;
    }
    cfg.verify.require_stopping_rule = !a.allow_unfinished;
    if let Some(n) = a.gate_photos {
        cfg.verify.gate_photos = n;
    }
    if let Some(n) = a.earlier_gate_photos {
        cfg.verify.earlier_gate_photos = n;
    }
    if let Some(p) = a.max_identity_drop {
        cfg.verify.max_identity_drop_points = p;
    }
    let mut eng = update::Engines::load(&cfg)?;
    let base = e.base.clone();
    let mut current = base.clone();
    let mut forgotten_ids: Vec<u32> = Vec::new();
    let mut forgotten: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let cancel = AtomicBool::new(false);
    for (k, &id) in order.iter().enumerate() {
        let concept = identities()[id as usize].name();
        let (fs, _) = forget_image(&mut e, id, c.seed)?;
        let png = super::local::png(id, fs)?;
        let job = Job {
            concept: &concept,
            image: &png,
            verify_images: vec![],
            method: None,
            steps: None,
            forgotten: forgotten.clone(),
        };
        let t0 = Instant::now();
        // `--set` knobs were checked before the first forget (above), so this cannot fail.
        let tune = |o: &mut lethe_siu::unlearn::Options| {
            apply_overrides(o, &c.sets).expect("checked before the run")
        };
        // A command whose image the current model does not name C on is refused, as the
        // agent refuses it (earlier forgets can take a look-alike's photo to someone else).
        let (out, refused) =
            match update::run_tuned(&mut eng, &cfg, &job, &current, &cancel, &mut |_| {}, &tune) {
                Ok(out) => (Some(out), None),
                Err(e @ update::UpdateError::Siu(lethe_siu::SiuError::NotRecognised { .. })) => {
                    (None, Some(format!("refused: {e}")))
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("forget {} ({concept})", k + 1));
                }
            };
        let update_s = t0.elapsed().as_secs_f64();
        let committed = out.as_ref().is_some_and(|o| o.failed.is_none());
        let candidate = out.as_ref().map_or(&current, |o| &o.adapter).clone();
        if committed {
            current = candidate.clone();
            forgotten.push(concept.clone());
            forgotten_ids.push(id);
        }
        // This forget, on held-out images and wordings, against the original model; others =
        // identities not yet forgotten.
        let set = eval_set(id, c, &forgotten_ids, &held_out, fs);
        let m = e.measure(&base, &candidate, &set)?;
        let (mut earlier, mut held) = (0, 0);
        let mut worst: f64 = 0.0;
        let mut lapsed = Vec::new();
        for &prev in forgotten_ids.iter().filter(|&&p| p != id) {
            let h = e.holds(&current, &eval_set(prev, c, &[], &held_out, 0))?;
            worst = worst.max(h.leak);
            earlier += 1;
            if h.leak <= 0.01 {
                held += 1;
            } else {
                let name = identities()[prev as usize].name();
                lapsed.push((name, h.leak, h.leak_who, h.leak_is_this));
            }
        }
        let row = SeqRow {
            k: k + 1,
            concept,
            verdict: match (&out, committed) {
                (None, _) => "refused",
                (Some(_), true) => "committed",
                (Some(_), false) => "rolled back",
            }
            .into(),
            retries: out.as_ref().map(|o| o.retries.clone()).unwrap_or_default(),
            reason: out.as_ref().map_or(refused, |o| o.failed.clone()),
            verify_bad_examples: match &out {
                Some(o) if !committed => o.metrics.bad_examples.clone(),
                _ => Vec::new(),
            },
            heldout_bad_examples: m.bad_examples.clone(),
            gate: out
                .as_ref()
                .map(|o| o.receipt_metrics())
                .unwrap_or_default(),
            gate_worst_identity: out
                .as_ref()
                .map(|o| o.metrics.worst_identity.clone())
                .unwrap_or_default(),
            steps: out.as_ref().map_or(0, |o| o.report.steps.len()),
            update_s,
            leak: m.leak,
            misattribution: m.misattribution,
            misattribution_before: m.misattribution_before,
            misattribution_added: m.misattribution_added,
            well_formed: m.well_formed,
            worst_identity_drop_points: m.worst_identity_drop_points,
            worst_identity: m.worst_identity.clone(),
            lookalikes: out
                .as_ref()
                .map(|o| o.report.lookalikes.clone())
                .unwrap_or_default(),
            remaining_accuracy: m.specificity_after,
            remaining_accuracy_before: m.specificity_before,
            text_retention: m.text_retention_others,
            ppl_increase_pct: m.fluency_increase_pct,
            earlier,
            earlier_held: held,
            earlier_worst_leak: worst,
            earlier_lapsed: lapsed,
        };
        if !c.json {
            print_seq_row(&row, k == 0);
        }
        rows.push(row);
    }
    let end = match (order.last(), a.final_others) {
        (Some(&last), n) if n > 0 && order.len() < identities().len() => Some(never_targeted(
            &mut e, c, n, last, &order, &held_out, &base, &current,
        )?),
        _ => None,
    };
    let committed = rows.iter().filter(|r| r.verdict == "committed").count();
    let retries = |why: update::Retry| {
        let of: Vec<_> = rows.iter().filter(|r| r.retries.contains(&why)).collect();
        let committed = of.iter().filter(|r| r.verdict == "committed").count();
        (of.len(), committed)
    };
    let (retried, retried_committed) = retries(update::Retry::Earlier);
    let (lookalike, lookalike_committed) = retries(update::Retry::Lookalike);
    let (reseeded, reseeded_committed) = retries(update::Retry::Reseeded);
    if c.json {
        println!(
            "{}",
            serde_json::json!({"method": a.method.name(), "order": order, "committed": committed, "rows": rows, "never_targeted": end})
        );
    } else {
        let last = rows.last();
        println!(
            "{committed} of {} committed ({retried} retried after bringing back an earlier forget, {retried_committed} of them committed; {lookalike} retried with a look-alike, {lookalike_committed} of them committed; {reseeded} retried with another seed, {reseeded_committed} of them committed); after the last forget: remaining identities {:.1}% (original {:.1}%), text facts kept {:.1}%, perplexity {:+.1}%, earlier forgets holding {}/{} (worst leak {:.1}%)",
            rows.len(),
            last.map_or(0.0, |r| 100.0 * r.remaining_accuracy),
            last.map_or(0.0, |r| 100.0 * r.remaining_accuracy_before),
            last.map_or(0.0, |r| 100.0 * r.text_retention),
            last.map_or(0.0, |r| r.ppl_increase_pct),
            last.map_or(0, |r| r.earlier_held),
            last.map_or(0, |r| r.earlier),
            last.map_or(0.0, |r| 100.0 * r.earlier_worst_leak),
        );
        if let Some(f) = &end {
            println!(
                "identities never targeted ({}), {} held-out photos each: accuracy {:.1}% (original {:.1}%), drop {:.1} points; text facts kept {:.1}%",
                f.identities.join(", "),
                f.photos_each,
                100.0 * f.accuracy,
                100.0 * f.accuracy_before,
                f.drop_points,
                100.0 * f.text_retention,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The identities a sequential run never targeted, measured after its last forget on more
/// photos than each row uses: the "remaining identities" of the 20-in-a-row bar.
#[derive(serde::Serialize)]
struct NeverTargeted {
    identities: Vec<String>,
    photos_each: u64,
    accuracy: f64,
    accuracy_before: f64,
    drop_points: f64,
    text_retention: f64,
}

#[allow(clippy::too_many_arguments)]
fn never_targeted(
    e: &mut Engines,
    c: &Common,
    photos_each: u64,
    last: u32,
    order: &[u32],
    held_out: &HeldOut,
    base: &Adapter,
    current: &Adapter,
) -> Result<NeverTargeted> {
    let mut wide = c.clone();
    wide.others = photos_each;
    // The concept's side of the set is not what this measures: one photo of it.
    wide.heldout = 1;
    let set = eval_set(last, &wide, order, held_out, 0);
    let m = e.measure(base, current, &set)?;
    Ok(NeverTargeted {
        identities: identities()
            .iter()
            .filter(|o| !order.contains(&o.id))
            .map(|o| o.name())
            .collect(),
        photos_each,
        accuracy: m.specificity_after,
        accuracy_before: m.specificity_before,
        drop_points: m.specificity_drop_points,
        text_retention: m.text_retention_others,
    })
}

fn print_seq_row(r: &SeqRow, header: bool) {
    if header {
        println!(
            "{:>3} {:<17} {:<11} {:>5} {:>7} | {:>6} {:>7} {:>6} | {:>14} {:>6} {:>7} | {:>13}",
            "k",
            "concept",
            "verdict",
            "steps",
            "update",
            "leak%",
            "misatt%",
            "wform%",
            "remaining acc%",
            "text%",
            "ppl +%",
            "earlier held"
        );
    }
    println!(
        "{:>3} {:<17} {:<11} {:>5} {:>6.1}s | {:>6.1} {:>7.1} {:>6.1} | {:>6.1} ({:>5.1}) {:>6.1} {:>+7.1} | {:>6}/{:<2} {:>4.1}%",
        r.k,
        r.concept,
        r.verdict,
        r.steps,
        r.update_s,
        100.0 * r.leak,
        100.0 * r.misattribution,
        100.0 * r.well_formed,
        100.0 * r.remaining_accuracy,
        100.0 * r.remaining_accuracy_before,
        100.0 * r.text_retention,
        r.ppl_increase_pct,
        r.earlier_held,
        r.earlier,
        100.0 * r.earlier_worst_leak
    );
    if !r.earlier_lapsed.is_empty() {
        let l: Vec<String> = r
            .earlier_lapsed
            .iter()
            .map(|(n, l, w, i)| {
                format!(
                    "{n} {:.1}% (who {:.1}, is-this {:.1})",
                    100.0 * l,
                    100.0 * w,
                    100.0 * i
                )
            })
            .collect();
        println!("      earlier forgets leaking: {}", l.join(", "));
    }
    if !r.retries.is_empty() {
        let why: Vec<String> = r.retries.iter().map(|w| format!("{w:?}")).collect();
        println!(
            "      retried ({}): {}",
            why.join(", then ").to_lowercase(),
            r.retries[0]
                .why()
                .replace("the candidate", "the first candidate")
        );
    }
    if let Some(why) = &r.reason {
        println!("      {why}");
    }
    for e in &r.verify_bad_examples {
        println!("        {e}");
    }
}

/// The agent's configuration (default thresholds) for the model, in a scratch folder.
fn agent_config(
    model: &std::path::Path,
    dir: &std::path::Path,
    steps: Option<usize>,
) -> Result<lethe_agent::Config> {
    let model_dir = std::fs::canonicalize(model)?;
    let key = lethe_proto::SigningKey::generate("bench")?;
    std::fs::write(dir.join("device.key"), key.to_file_string())?;
    std::fs::write(
        dir.join("trust.json"),
        lethe_proto::TrustStore::new().to_json(),
    )?;
    let update = steps.map_or(String::new(), |s| format!("[update]\nmax_steps = {s}\n"));
    let toml = format!(
        "device_id = \"bench\"\nfleet = \"bench\"\ndevice_key = \"device.key\"\ntrust_store = \"trust.json\"\nmodel_dir = \"{}\"\nstate_dir = \"state\"\nbroker = \"mqtt://127.0.0.1:1\"\n{update}",
        model_dir.display()
    );
    Ok(lethe_agent::Config::from_toml(
        &toml,
        dir,
        &lethe_agent::Overrides::default(),
    )?)
}
