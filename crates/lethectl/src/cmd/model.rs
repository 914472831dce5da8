//! `lethectl model ...`: ask the bundled model a question, evaluate it on rendered world
//! images, and self-check a package (retained probes with both engines, ORT-vs-tract parity).
//! Glue only: packages, tokenizer, generation and engines come from lethe-model (ONNX
//! Runtime) and lethe-probe (tract). Every bad input (missing or tampered package, unreadable
//! or oversized image, word outside the vocabulary, unknown engine) is an error with a
//! one-line cause, exit 2.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lethe_model::generate::{self, Query};
use lethe_model::{Engine, OrtEngine, Package, SessionOptions};
use lethe_probe::TractEngine;
use lethe_world::{identities, render, Split};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Ask one question, about an image or text-only; prints the answer.
    Ask(AskArgs),
    /// Accuracy per task on every identity rendered at the given seeds.
    Eval(EvalArgs),
    /// Retained-probe accuracy with both engines and their parity (exit 1 if they disagree).
    Selfcheck(SelfcheckArgs),
}

#[derive(Args)]
pub struct AskArgs {
    /// Model package folder.
    #[arg(long)]
    model: PathBuf,
    /// Image file (PNG or JPEG); omit for a text-only question.
    #[arg(long)]
    image: Option<PathBuf>,
    /// The question, in the model's vocabulary.
    #[arg(long)]
    prompt: String,
    /// ort or tract.
    #[arg(long, default_value = "ort")]
    engine: String,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// Seeds A..B (B exclusive); held-out seeds start at 1000000.
    #[arg(long, value_parser = super::world::parse_range)]
    seeds: (u64, u64),
    #[arg(long, default_value = "ort")]
    engine: String,
    /// Also print "who" accuracy per identity (which people the model still names).
    #[arg(long)]
    per_identity: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SelfcheckArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ModelCmd) -> Result<ExitCode> {
    match cmd {
        ModelCmd::Ask(a) => ask(a),
        ModelCmd::Eval(a) => eval(a),
        ModelCmd::Selfcheck(a) => selfcheck(a),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EngineKind {
    Ort,
    Tract,
}

fn engine_kind(name: &str) -> Result<EngineKind> {
    match name {
        "ort" => Ok(EngineKind::Ort),
        "tract" => Ok(EngineKind::Tract),
        other => bail!("unknown engine {other:?} (expected ort or tract)"),
    }
}

fn open_package(dir: &PathBuf) -> Result<Package> {
    Package::open(dir).with_context(|| format!("cannot use model package {}", dir.display()))
}

fn make_engine(kind: EngineKind, pkg: &Package) -> Result<Box<dyn Engine>> {
    Ok(match kind {
        EngineKind::Ort => Box::new(OrtEngine::new(pkg, &SessionOptions::default())?),
        EngineKind::Tract => Box::new(TractEngine::new(pkg)?),
    })
}

fn ask(a: AskArgs) -> Result<ExitCode> {
    let kind = engine_kind(&a.engine)?;
    let pkg = open_package(&a.model)?;
    let tok = pkg.tokenizer();
    // Check the words and the image before starting an engine.
    tok.prompt(&a.prompt)?;
    let image = a
        .image
        .as_ref()
        .map(|p| lethe_model::image::load_image(p))
        .transpose()?;
    let mut engine = make_engine(kind, &pkg)?;
    let adapter = pkg.adapter()?;
    let (features, query) = match image {
        Some(img) => (
            engine.features(img.view())?,
            Query::about(a.prompt.clone(), 0),
        ),
        None => (
            ndarray::Array3::zeros((0, pkg.n_image_tokens(), pkg.feature_dim())),
            Query::text(a.prompt.clone()),
        ),
    };
    let answers = generate::answer(
        engine.as_mut(),
        adapter.as_slice(),
        &tok,
        features.view(),
        &[query],
    )?;
    println!("{}", answers[0]);
    Ok(ExitCode::SUCCESS)
}

/// Correct and total answers of one task.
#[derive(Serialize, Default, Clone, Copy)]
struct Tally {
    correct: usize,
    total: usize,
    accuracy: f64,
}

#[derive(Serialize)]
struct EvalReport {
    model_id: String,
    adapter_version: String,
    engine: &'static str,
    seeds: (u64, u64),
    split: &'static str,
    images: usize,
    tasks: BTreeMap<&'static str, Tally>,
    overall: Tally,
    /// "who" answers per identity, in the world's order.
    who_per_identity: Vec<(String, Tally)>,
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    let kind = engine_kind(&a.engine)?;
    let pkg = open_package(&a.model)?;
    let tok = pkg.tokenizer();
    let prompts = pkg.manifest().prompts.clone();
    let ids = identities();
    let (s0, s1) = a.seeds;
    let split = match (Split::of(s0), Split::of(s1 - 1)) {
        (Split::Train, Split::Train) => "train",
        (Split::HeldOut, Split::HeldOut) => "held-out",
        _ => "mixed",
    };

    // Images: identity-major, seed-minor.
    let mut imgs = Vec::new();
    for ident in ids {
        for seed in s0..s1 {
            imgs.push(render(ident, seed));
        }
    }
    let images = lethe_model::image::images_to_input(&imgs);
    let per_id = (s1 - s0) as usize;

    // (task, identity index, query, expected answer)
    let mut items: Vec<(&'static str, usize, Query, String)> = Vec::new();
    for (k, ident) in ids.iter().enumerate() {
        let name = ident.name();
        let desc = ident.attributes.describe();
        for j in 0..per_id {
            let img = k * per_id + j;
            let seed = s0 + j as u64;
            for q in &prompts.who {
                let expect = prompts.who_answer.replace("{name}", &name);
                items.push(("who", k, Query::about(q.clone(), img), expect));
            }
            for (t, q) in prompts.is_this.iter().enumerate() {
                // Balanced: the true name, and another identity's name (varied by seed).
                let other = &ids[(k + 1 + ((seed as usize + t) % (ids.len() - 1))) % ids.len()];
                items.push((
                    "is_this_yes",
                    k,
                    Query::about(q.replace("{name}", &name), img),
                    prompts.yes.clone(),
                ));
                items.push((
                    "is_this_no",
                    k,
                    Query::about(q.replace("{name}", &other.name()), img),
                    prompts.no.clone(),
                ));
            }
            for q in &prompts.describe {
                items.push(("describe", k, Query::about(q.clone(), img), desc.clone()));
            }
        }
        for q in &prompts.fact {
            items.push((
                "facts",
                k,
                Query::text(q.replace("{name}", &name)),
                ident.fact(),
            ));
        }
        for q in &prompts.looks {
            items.push((
                "looks",
                k,
                Query::text(q.replace("{name}", &name)),
                desc.clone(),
            ));
        }
    }

    let mut engine = make_engine(kind, &pkg)?;
    let adapter = pkg.adapter()?;
    let features = generate::encode_images(engine.as_mut(), images.view())?;
    let queries: Vec<Query> = items.iter().map(|(_, _, q, _)| q.clone()).collect();
    let answers = generate::answer(
        engine.as_mut(),
        adapter.as_slice(),
        &tok,
        features.view(),
        &queries,
    )?;

    let mut tasks: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut overall = Tally::default();
    let mut per_identity = vec![Tally::default(); ids.len()];
    for ((task, k, _, expect), got) in items.iter().zip(&answers) {
        let t = tasks.entry(task).or_default();
        t.total += 1;
        overall.total += 1;
        let ok = got == expect;
        if ok {
            t.correct += 1;
            overall.correct += 1;
        }
        if *task == "who" {
            per_identity[*k].total += 1;
            per_identity[*k].correct += ok as usize;
        }
    }
    for t in tasks
        .values_mut()
        .chain(std::iter::once(&mut overall))
        .chain(per_identity.iter_mut())
    {
        t.accuracy = t.correct as f64 / t.total.max(1) as f64;
    }
    let report = EvalReport {
        model_id: pkg.manifest().model_id.clone(),
        adapter_version: pkg.manifest().adapter_version.clone(),
        engine: if kind == EngineKind::Ort {
            "ort"
        } else {
            "tract"
        },
        seeds: a.seeds,
        split,
        images: imgs.len(),
        tasks,
        overall,
        who_per_identity: ids.iter().map(|i| i.name()).zip(per_identity).collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} ({}) with {} on {} images, seeds {}..{} ({})",
            report.model_id, report.adapter_version, report.engine, report.images, s0, s1, split
        );
        println!(
            "{:<12} {:>8} {:>7} {:>7}",
            "task", "accuracy", "correct", "total"
        );
        for (name, t) in report
            .tasks
            .iter()
            .chain(std::iter::once((&"overall", &report.overall)))
        {
            println!(
                "{:<12} {:>8.3} {:>7} {:>7}",
                name, t.accuracy, t.correct, t.total
            );
        }
        if a.per_identity {
            println!(
                "\n{:<18} {:>8} {:>7} {:>7}",
                "who: identity", "accuracy", "correct", "total"
            );
            for (name, t) in &report.who_per_identity {
                println!(
                    "{:<18} {:>8.3} {:>7} {:>7}",
                    name, t.accuracy, t.correct, t.total
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct SelfcheckReport {
    probes: usize,
    ort_correct: usize,
    tract_correct: usize,
    answers_equal: usize,
    max_feature_diff: f32,
    max_logit_diff: f32,
    parity: bool,
}

fn selfcheck(a: SelfcheckArgs) -> Result<ExitCode> {
    let pkg = open_package(&a.model)?;
    let adapter = pkg.adapter()?;
    let mut ort = OrtEngine::new(&pkg, &SessionOptions::default())?;
    let mut tract = TractEngine::new(&pkg)?;
    let r = lethe_probe::probe_parity(&mut ort, &mut tract, &pkg, adapter.as_slice())?;
    let report = SelfcheckReport {
        probes: r.probes,
        ort_correct: r.a_correct,
        tract_correct: r.b_correct,
        answers_equal: r.agree,
        max_feature_diff: r.max_feature_diff,
        max_logit_diff: r.max_logit_diff,
        parity: r.all_agree(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let pct = |c: usize| 100.0 * c as f64 / r.probes.max(1) as f64;
        println!("retained probes: {}", r.probes);
        println!(
            "ort accuracy:    {} ({:.1}%)",
            r.a_correct,
            pct(r.a_correct)
        );
        println!(
            "tract accuracy:  {} ({:.1}%)",
            r.b_correct,
            pct(r.b_correct)
        );
        println!(
            "parity:          {}/{} answers equal, max |logit diff| {:.2e}, max |feature diff| {:.2e}",
            r.agree, r.probes, r.max_logit_diff, r.max_feature_diff
        );
        for m in &r.mismatches {
            println!(
                "  differs: {:?}: ort {:?}, tract {:?}",
                m.question, m.a, m.b
            );
        }
    }
    Ok(if report.parity {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
