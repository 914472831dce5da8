//! `lethectl bench ...`: the MMUBench-style unlearning benchmark on the bundled world.
//!
//! `bench unlearn` forgets each of K concepts (one training image each, seed < 1,000,000)
//! with every method from the same base, and measures on held-out seeds with tract.
//! `bench sequential` forgets K concepts one after another on the same model and reports how
//! specificity and fluency decay. Both print tables of mean and spread, side by side, and
//! step / forget times with ORT; `bench unlearn` also replays one forget's steps on tract
//! for a like-for-like step time.

use crate::cmd::forget::{options, progress_bar, show};
use anyhow::Result;
use clap::{Args, Subcommand};
use lethe_model::image::images_to_input;
use lethe_model::{Adapter, OrtEngine, Package, SessionOptions, TrainStep};
use lethe_probe::{TractEngine, TractTrainStep};
use lethe_siu::metrics::{evaluate, EvalSet, Metrics};
use lethe_siu::unlearn::language;
use lethe_siu::{forget, Method, Outcome};
use lethe_world::{identities, render, HELD_OUT_SEED_START};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Forget K concepts with each method from the same base; MMUBench-style table.
    Unlearn(UnlearnArgs),
    /// Forget K concepts one after another; how the model decays.
    Sequential(SequentialArgs),
    /// Push to receipt through the agent, against the same update called directly.
    Agent(super::bench_agent::AgentArgs),
}

#[derive(Args)]
pub struct Common {
    #[arg(long, default_value = "models/tiny-vlm")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub concepts: usize,
    /// Held-out images of the concept per forget.
    #[arg(long, default_value_t = 12)]
    pub heldout: u64,
    /// Held-out images per other identity.
    #[arg(long, default_value_t = 2)]
    pub others: u64,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct UnlearnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Comma-separated methods.
    #[arg(long, default_value = "siu,ga,ga-kl,po", value_delimiter = ',')]
    pub methods: Vec<Method>,
}

#[derive(Args)]
pub struct SequentialArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value = "siu")]
    pub method: Method,
}

/// Seed of the one training image of identity `id` (training split).
fn train_seed(id: u32) -> u64 {
    500_000 + id as u64
}

/// Concepts spread over the identities.
fn concepts(k: usize) -> Vec<u32> {
    let n = identities().len();
    (0..k.min(n)).map(|i| ((i * n) / k.min(n)) as u32).collect()
}

fn eval_set(id: u32, c: &Common, exclude: &[u32]) -> EvalSet {
    let me = &identities()[id as usize];
    let start = HELD_OUT_SEED_START + 10_000;
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
        train_image: images_to_input(&[render(me, train_seed(id))]),
        concept_images: images_to_input(&mine),
        other_images: images_to_input(&others),
        other_names: names,
        other_descriptions: descs,
    }
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
        quiet: bool,
    ) -> Result<Outcome> {
        let opts = options(method, c.steps, c.lr, 0);
        let pb = progress_bar(opts.max_steps, quiet);
        pb.set_prefix(format!("{} {}", method.name(), set.concept));
        let trainer = &mut self.trainer;
        let mut step = |s: &mut _, b: &_, lr, wc, wk| trainer.run(s, b, lr, wc, wk);
        let out = forget(
            &self.pkg,
            &mut self.ort,
            &mut step,
            from,
            set.train_image.view(),
            &set.concept,
            &opts,
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
}

/// The table's rows: (label, getter, scale, unit).
type Row = (&'static str, fn(&Metrics) -> f64, f64);
const ROWS: [Row; 10] = [
    ("efficacy %", |m| m.efficacy, 100.0),
    ("generality %", |m| m.generality, 100.0),
    ("  who %", |m| m.generality_who, 100.0),
    ("  is-this %", |m| m.generality_is_this, 100.0),
    ("C-Dis", |m| m.c_dis, 1.0),
    ("specificity drop pts", |m| m.specificity_drop_points, 1.0),
    ("factual retention %", |m| m.factual_retention, 100.0),
    (
        "text retention others %",
        |m| m.text_retention_others,
        100.0,
    ),
    ("fluency ppl increase %", |m| m.fluency_increase_pct, 1.0),
    ("diversity", |m| m.diversity, 1.0),
];

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

pub fn run(cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Unlearn(a) => unlearn(a),
        BenchCmd::Sequential(a) => sequential(a),
        BenchCmd::Agent(a) => super::bench_agent::run(a),
    }
}

fn unlearn(a: UnlearnArgs) -> Result<ExitCode> {
    let c = &a.common;
    let mut e = Engines::open(&c.model)?;
    let ids = concepts(c.concepts);
    let mut results: Vec<(Method, Vec<Metrics>, Vec<(usize, f64, f64, bool)>)> =
        a.methods.iter().map(|m| (*m, vec![], vec![])).collect();
    let mut tract_cmp = None;
    for &id in &ids {
        let set = eval_set(id, c, &[]);
        let base = e.base.clone();
        for r in results.iter_mut() {
            let out = e.forget(&base, &set, r.0, c, a.common.json)?;
            let m = e.measure(&base, &out.adapter, &set)?;
            let rep = &out.report;
            r.2.push((
                rep.steps.len(),
                rep.mean_step_ms,
                rep.total_ms,
                rep.forgotten,
            ));
            r.1.push(m);
            if tract_cmp.is_none() && r.0 == Method::Siu {
                tract_cmp = Some(replay_on_tract(&mut e, &base, &set, rep.steps.len(), c)?);
            }
        }
    }
    if a.common.json {
        let doc: Vec<_> = results
            .iter()
            .map(|(m, ms, t)| serde_json::json!({"method": m.name(), "metrics": ms, "runs": t.iter().map(|x| serde_json::json!({"steps": x.0, "ms_per_step": x.1, "forget_ms": x.2, "forgotten": x.3})).collect::<Vec<_>>()}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"concepts": ids, "methods": doc, "ort_vs_tract": tract_cmp.map(|t: TractCmp| serde_json::json!({"steps": t.steps, "ort_ms_per_step": t.ort_ms, "tract_ms_per_step": t.tract_ms, "ratio": t.tract_ms / t.ort_ms, "max_param_diff": t.max_diff}))})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("MMUBench-style results: {} concepts, one training image each, {} held-out images per concept, tract metrics", ids.len(), c.heldout);
    print!("{:<26}", "metric (mean ± sd)");
    for (m, _, _) in &results {
        print!("{:>18}", m.name());
    }
    println!();
    for (label, get, scale) in ROWS {
        print!("{label:<26}");
        for (_, ms, _) in &results {
            let v: Vec<f64> = ms.iter().map(|m| get(m) * scale).collect();
            let (mu, sd) = mean_sd(&v);
            print!("{:>18}", format!("{mu:.2} ± {sd:.2}"));
        }
        println!();
    }
    for (label, f) in [
        (
            "steps",
            (|t: &(usize, f64, f64, bool)| t.0 as f64) as fn(&(usize, f64, f64, bool)) -> f64,
        ),
        ("ms per step (ORT)", |t| t.1),
        ("ms per forget", |t| t.2),
        ("forgotten (rule) %", |t| if t.3 { 100.0 } else { 0.0 }),
    ] {
        print!("{label:<26}");
        for (_, _, ts) in &results {
            let v: Vec<f64> = ts.iter().map(f).collect();
            let (mu, sd) = mean_sd(&v);
            print!("{:>18}", format!("{mu:.1} ± {sd:.1}"));
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
    let mut opts = options(Method::Siu, Some(steps.max(1)), c.lr, 0);
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
            &mut |_| {},
        )
    };
    let trainer = &mut e.trainer;
    let o = run(&mut |s, b, lr, wc, wk| trainer.run(s, b, lr, wc, wk))?;
    let mut tt = TractTrainStep::new(&e.pkg)?;
    let t = run(&mut |s, b, lr, wc, wk| tt.run(s, b, lr, wc, wk))?;
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

fn sequential(a: SequentialArgs) -> Result<ExitCode> {
    let c = &a.common;
    let mut e = Engines::open(&c.model)?;
    let ids = concepts(c.concepts);
    let base = e.base.clone();
    let mut current = base.clone();
    let mut rows = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        let set = eval_set(id, c, &ids[..k]);
        let out = e.forget(&current, &set, a.method, c, c.json)?;
        current = out.adapter;
        // Measure against the ORIGINAL base on identities not yet forgotten.
        let m = e.measure(&base, &current, &set)?;
        // Do earlier forgets still hold?
        let mut held = 0;
        for &prev in &ids[..k] {
            let ps = eval_set(prev, c, &[]);
            let pm = e.measure(
                &base,
                &current,
                &EvalSet {
                    other_images: ps
                        .other_images
                        .slice(ndarray::s![0..0, .., .., ..])
                        .to_owned(),
                    other_names: vec![],
                    other_descriptions: vec![],
                    ..ps
                },
            )?;
            if pm.generality >= 0.95 {
                held += 1;
            }
        }
        rows.push((k + 1, set.concept.clone(), out.report.steps.len(), m, held));
    }
    if c.json {
        let doc: Vec<_> = rows.iter().map(|(k, n, s, m, h)| serde_json::json!({"k": k, "concept": n, "steps": s, "metrics": m, "earlier_still_forgotten": h})).collect();
        println!(
            "{}",
            serde_json::json!({"method": a.method.name(), "rows": doc})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("sequential forgetting with {} (each row: after forgetting k concepts; specificity on identities not yet forgotten, vs the original model)", a.method.name());
    println!(
        "{:>3} {:<18} {:>5} {:>11} {:>13} {:>13} {:>14} {:>12}",
        "k",
        "concept",
        "steps",
        "generality%",
        "specificity%",
        "spec drop pts",
        "ppl increase%",
        "earlier held"
    );
    for (k, n, s, m, h) in &rows {
        println!(
            "{k:>3} {n:<18} {s:>5} {:>11.1} {:>13.1} {:>13.1} {:>14.1} {:>9}/{}",
            100.0 * m.generality,
            100.0 * m.specificity_after,
            m.specificity_drop_points,
            m.fluency_increase_pct,
            h,
            k - 1
        );
    }
    Ok(ExitCode::SUCCESS)
}
