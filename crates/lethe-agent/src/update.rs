//! The update itself, synchronous (it runs on a blocking thread): SIU through lethe-siu on
//! ONNX Runtime, then verification of the candidate with tract (lethe-probe), an engine that
//! did not train it, against the thresholds in the configuration.
//!
//! Verification set: the command's image (efficacy); held-out images of the concept: the
//! package's retained probe images of it and its gate photos of it (`verify.gate_photos`;
//! photos no forget trains on or stops by), the command's verification images and augmented
//! views of the command's image made with a seed the training did not use (leak,
//! misattribution, well-formedness under the package's `verify` held-out wordings;
//! generality); the retained probes of everyone else (specificity, fluency); the retained
//! probes of each person forgotten before (their leak, which must stay at most
//! `max_earlier_leak`).
//! The update respects earlier forgets (`Job::forgotten`): their names stay masked, the
//! package's retain images of them replay their forget (from a pool of their own, lapsed
//! images first), and the collateral watch protects what the package's original adapter
//! named. Verification then checks that every earlier forget still holds on the package's
//! probe images of that person (`verify.max_earlier_leak`): a forget that would bring
//! someone back is rolled back.
//! Invariant: nothing here writes a file or touches the adapter store; the caller commits.
//! Nothing of the person outlives the call: the image, its views and features are dropped
//! when it returns.

use crate::config::{Config, VerifyConfig};
use lethe_model::{Adapter, ModelError, OrtEngine, Package, SessionOptions, TrainStep};
use lethe_probe::TractEngine;
use lethe_siu::metrics::{evaluate_with, holds, AnswerMemo, EvalSet, Metrics};
use lethe_siu::unlearn::language;
use lethe_siu::unlearn::Prior;
use lethe_siu::{forget, Method, Options, Progress, Report, SiuError};
use ndarray::{concatenate, s, Array4, Axis};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("update: {0}")]
    Siu(#[from] SiuError),
    #[error("image {index}: {reason}")]
    Image { index: usize, reason: String },
    #[error("stopped by shutdown between optimizer steps")]
    Cancelled,
}

/// The package and both engines, loaded once.
pub struct Engines {
    pub pkg: Package,
    pub ort: OrtEngine,
    pub train: TrainStep,
    pub tract: TractEngine,
    /// Verification's answers of the current adapter and of the last candidate, so the next
    /// verification does not ask them again (`metrics::AnswerMemo`).
    pub memo: AnswerMemo,
    /// The execution provider actually used.
    pub provider: String,
    /// Why the configured provider was not used, if it was not.
    pub provider_note: Option<String>,
}

impl Engines {
    /// Opens (and hash-checks) the package and builds the ORT and tract engines.
    pub fn load(cfg: &Config) -> Result<Engines, UpdateError> {
        let pkg = Package::open(&cfg.model_dir)?;
        let mut so = SessionOptions::default();
        so.provider(cfg.provider()).gpu(cfg.gpu_options());
        let ort = OrtEngine::new(&pkg, &so)?;
        let train = if cfg.update.split_train_step {
            TrainStep::new(&pkg, &so)?
        } else {
            TrainStep::serial(&pkg, &so)?
        };
        let tract = TractEngine::new(&pkg)?;
        // The update's optimizer steps run on the train-step session: its provider is the
        // one status and receipts report.
        let report = train.provider().clone();
        Ok(Engines {
            pkg,
            ort,
            train,
            tract,
            memo: AnswerMemo::default(),
            provider: report.used.name().to_string(),
            provider_note: report.note(),
        })
    }
}

/// What the update is asked to do (from a verified command).
pub struct Job<'a> {
    pub concept: &'a str,
    pub image: &'a [u8],
    pub verify_images: Vec<&'a [u8]>,
    pub method: Option<Method>,
    pub steps: Option<usize>,
    /// Concepts the adapter this job starts from has forgotten, oldest first.
    pub forgotten: Vec<String>,
}

/// Progress of an update, for the journal and the events.
#[derive(Debug, Clone)]
pub enum UpdateEvent {
    Training {
        step: usize,
        of: usize,
        loss: f32,
    },
    Verifying,
    /// The candidate failed in a way a second, different run may mend ([`Retry`]): the
    /// update runs once more, and training and verifying events follow again.
    Retrying(Retry),
}

/// Why a forget was run again, from the same base (`Earlier` and `Lookalike` at most once
/// per job, `Reseeded` up to `update.retry_reseeds` times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retry {
    /// The first candidate failed only by bringing back an earlier forget
    /// (`update.retry_earlier`): the second holds every earlier forget in its stopping rule.
    Earlier,
    /// The first candidate failed only on answers about the concept that name another
    /// known person or are ill-formed, or on its own stopping rule (`Outcome::unfinished`),
    /// and the original model finds a look-alike likely on the concept's views
    /// (`update.retry_lookalike_views`): the second also trains views between the concept and
    /// its look-alikes.
    Lookalike,
    /// The candidate failed verification and neither retry above applies (or it was tried):
    /// the next runs with another seed (`update.retry_reseeds`), so other views of the
    /// image, other batches and another made-up name.
    Reseeded,
}

impl Retry {
    /// What the failed candidate did, for events, reports and logs.
    pub fn why(self) -> &'static str {
        match self {
            Retry::Earlier => "the candidate brought back an earlier forget",
            Retry::Lookalike => {
                "the candidate named another person, answered ill-formed, or did not stop"
            }
            Retry::Reseeded => "the candidate failed verification",
        }
    }
}

/// The verdict of verification.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub adapter: Adapter,
    pub report: Report,
    pub metrics: Metrics,
    /// Each earlier forget (`Job::forgotten`) and the candidate's leak on the package's
    /// probe images of that person (held-out wordings).
    pub earlier: Vec<(String, f64)>,
    /// `None` = passed; `Some(why)` = failed the thresholds.
    pub failed: Option<String>,
    /// The update's stopping rule still failed at its last check, and
    /// `verify.require_stopping_rule` made that a failure: what that check saw.
    pub unfinished: Option<String>,
    /// Earlier candidates failed and this is a later one: why each retry was run, in order
    /// (empty: this is the first candidate).
    pub retries: Vec<Retry>,
    pub verify_ms: f64,
}

impl Outcome {
    /// Numbers for the receipt (at most 32, identifier names).
    pub fn receipt_metrics(&self) -> BTreeMap<String, f64> {
        let m = &self.metrics;
        let mut out = BTreeMap::new();
        let mut put = |k: &str, v: f64| {
            if v.is_finite() {
                out.insert(k.to_string(), v);
            }
        };
        put("leak", m.leak);
        let count = |r: Retry| self.retries.iter().filter(|&&x| x == r).count() as f64;
        put("retried", self.retries.len() as f64);
        put("retried_lookalike", count(Retry::Lookalike));
        put("retried_reseeded", count(Retry::Reseeded));
        put("misattribution", m.misattribution);
        put("misattribution_before", m.misattribution_before);
        put("misattribution_added", m.misattribution_added);
        put("well_formed_where_known", m.well_formed_where_known);
        put("well_formed", m.well_formed);
        put("efficacy", m.efficacy);
        put("generality", m.generality);
        put("c_dis", m.c_dis);
        put("specificity_before", m.specificity_before);
        put("specificity_after", m.specificity_after);
        put(
            "specificity_paraphrased_after",
            m.specificity_paraphrased_after,
        );
        put("worst_identity_drop_points", m.worst_identity_drop_points);
        put("factual_retention", m.factual_retention);
        put("fluency_ppl_before", m.fluency_ppl_before);
        put("fluency_ppl_after", m.fluency_ppl_after);
        if let Some(worst) = self.earlier.iter().map(|e| e.1).reduce(f64::max) {
            put("earlier_leak", worst);
        }
        put("steps", self.report.steps.len() as f64);
        put("train_ms", self.report.train_ms);
        put("update_ms", self.report.total_ms);
        put("verify_ms", self.verify_ms);
        out
    }
}

fn decode(bytes: &[u8], index: usize) -> Result<Array4<f32>, UpdateError> {
    lethe_model::image::decode_image(bytes, Path::new(&format!("command image {index}"))).map_err(
        |e| UpdateError::Image {
            index,
            reason: e.to_string(),
        },
    )
}

/// The update's options for `job` under the configuration (`can_guard`: the train step
/// can run the earlier-forget guard).
fn options(u: &crate::config::UpdateConfig, job: &Job, can_guard: bool) -> Options {
    let mut opts = Options::new(job.method.unwrap_or(Method::Siu));
    opts.max_steps = job.steps.map_or(u.max_steps, |s| s.min(u.max_steps)).max(1);
    opts.min_steps = u.min_steps.min(opts.max_steps);
    opts.seed = u.seed;
    opts.views = u.views;
    opts.lr = u.lr;
    opts.allow_mismatch = u.allow_mismatch;
    opts.guard_earlier = u.guard_earlier && can_guard;
    opts
}

/// Runs SIU from `base`, then verifies the candidate with tract.
pub fn run(
    eng: &mut Engines,
    cfg: &Config,
    job: &Job,
    base: &Adapter,
    cancel: &AtomicBool,
    on: &mut dyn FnMut(UpdateEvent),
) -> Result<Outcome, UpdateError> {
    run_tuned(eng, cfg, job, base, cancel, on, &|_| {})
}

/// [`run`], with `tune` applied to the update's options last (benchmarks try knobs the
/// configuration does not expose through it).
///
/// A candidate that fails verification may be run again from the same base, and each later
/// candidate is verified the same way (the outcome says whether, and why):
/// - it fails only because it brings back an earlier forget (`verify.max_earlier_leak`) and
///   `update.retry_earlier` is on: every earlier forget is held in the next's stopping
///   rule (`hold_earlier`: a stopping check counts only while every replayed image is
///   refused);
/// - it fails only on misattribution, well-formedness or its own stopping rule
///   (`verify.require_stopping_rule`), the original model finds a look-alike likely on the
///   concept's views (`Report::lookalikes`), and
///   `update.retry_lookalike_views` is not 0: the next trains that many views between the
///   concept and its look-alikes besides the concept's own (`confuser_mix`);
/// - otherwise, up to `update.retry_reseeds` times: the next runs with another seed (the
///   update's seed + 1, + 2, ...), keeping what the retries above changed.
///
/// Only a failed candidate is retried, and every candidate passes the same gate, so a retry
/// can only turn a rollback into a commit. The retries are bounded: each of the first two
/// kinds runs at most once (it changes an option that then stays changed), the reseeds at
/// most `update.retry_reseeds` times.
pub fn run_tuned(
    eng: &mut Engines,
    cfg: &Config,
    job: &Job,
    base: &Adapter,
    cancel: &AtomicBool,
    on: &mut dyn FnMut(UpdateEvent),
    tune: &dyn Fn(&mut Options),
) -> Result<Outcome, UpdateError> {
    let image = decode(job.image, 0)?;
    let mut extra = Vec::new();
    for (i, b) in job.verify_images.iter().enumerate() {
        extra.push(decode(b, i + 1)?);
    }
    let u = &cfg.update;
    let mut opts = options(u, job, eng.train.can_guard());
    tune(&mut opts);
    let seed = opts.seed;
    let prior = Prior {
        forgotten: job.forgotten.clone(),
        original: Some(eng.pkg.adapter()?),
    };
    let out = train(eng, cfg, job, base, &image, &opts, &prior, cancel, on)?;
    on(UpdateEvent::Verifying);
    // The verification sets do not depend on the candidate: built once per job, after the
    // first candidate (a command refused before training reads none of them).
    let t0 = Instant::now();
    let checks = Checks::new(&eng.pkg, cfg, job, &image, extra)?;
    let mut last = verify(eng, cfg, base, &checks, out)?;
    // Building the sets counts as verification, as it did when each attempt built them.
    last.verify_ms = t0.elapsed().as_secs_f64() * 1e3;
    let first_why = last.failed.clone();
    let mut retries = Vec::new();
    let mut reseeds = 0u64;
    while last.failed.is_some() {
        let (m, earlier, v) = (&last.metrics, &last.earlier, &cfg.verify);
        let unfinished = last.unfinished.as_deref();
        let retry = if u.retry_earlier
            && !opts.hold_earlier
            && fails_only_on_earlier(m, earlier, unfinished, v)
        {
            opts.hold_earlier = true;
            Retry::Earlier
        } else if u.retry_lookalike_views > 0
            && opts.confuser_mix == 0
            && !last.report.lookalikes.is_empty()
            && fails_only_on_answers_about_c(m, earlier, unfinished, v)
        {
            opts.confuser_mix = u.retry_lookalike_views;
            Retry::Lookalike
        } else if reseeds < u.retry_reseeds as u64 {
            reseeds += 1;
            opts.seed = seed.wrapping_add(reseeds);
            Retry::Reseeded
        } else {
            break;
        };
        on(UpdateEvent::Retrying(retry));
        retries.push(retry);
        let out = train(eng, cfg, job, base, &image, &opts, &prior, cancel, on)?;
        on(UpdateEvent::Verifying);
        let mut next = verify(eng, cfg, base, &checks, out)?;
        next.verify_ms += last.verify_ms;
        last = next;
    }
    if let (Some(why), Some(first_why)) = (&mut last.failed, &first_why) {
        if !retries.is_empty() {
            let how: Vec<String> = retries
                .iter()
                .map(|r| match r {
                    Retry::Earlier => "holding every earlier forget".to_string(),
                    Retry::Lookalike => format!(
                        "with views mixed with {}",
                        last.report.confusers.join(" and ")
                    ),
                    Retry::Reseeded => "with another seed".to_string(),
                })
                .collect();
            *why = format!(
                "{why} (retried {}; the first candidate: {})",
                how.join(", then "),
                first_why.trim_start_matches("verification failed: ")
            );
        }
    }
    last.retries = retries;
    Ok(last)
}

/// The verification sets of a job: the concept's (the command's image, the package's probe
/// images of C and its gate photos of C, the command's verification images and augmented
/// views of its image; everyone else's probes) and each earlier forget's (the package's
/// probe images of that person).
struct Checks {
    lang: lethe_siu::facets::Language,
    tok: lethe_model::Tokenizer,
    set: EvalSet,
    earlier: Vec<(String, EvalSet)>,
}

impl Checks {
    fn new(
        pkg: &Package,
        cfg: &Config,
        job: &Job,
        image: &Array4<f32>,
        extra: Vec<Array4<f32>>,
    ) -> Result<Checks, UpdateError> {
        let lang = language(pkg);
        let probes = pkg.probes()?;
        let concept = lethe_siu::unlearn::normalise(job.concept);
        let mut set = EvalSet::from_probes(
            &lang,
            &probes,
            &concept,
            image.clone(),
            pkg.paraphrases()?.verify,
        );
        let v = &cfg.verify;
        let views = lethe_siu::augment::views_at(
            image.slice(s![0, .., .., ..]),
            v.augmented_views + 1,
            cfg.update.seed.wrapping_add(0x5eed),
            lethe_siu::augment::Strength::Camera,
        );
        let gate = match v.gate_photos.max(v.earlier_gate_photos) {
            0 => None,
            _ => pkg.gate_photos()?,
        };
        let mut held = vec![set.concept_images.clone()];
        held.extend(
            gate.as_ref()
                .and_then(|g| g.images_of(&concept, v.gate_photos)),
        );
        held.extend(extra);
        for view in views.into_iter().skip(1) {
            held.push(view.insert_axis(Axis(0)));
        }
        let refs: Vec<_> = held.iter().map(|a| a.view()).collect();
        set.concept_images = concatenate(Axis(0), &refs).expect("images share [64,64,3]");
        if v.max_other_images > 0 && set.other_images.shape()[0] > v.max_other_images {
            let n = v.max_other_images;
            set.other_images = set.other_images.slice(s![..n, .., .., ..]).to_owned();
            set.other_names.truncate(n);
            set.other_descriptions.truncate(n);
        }
        let earlier = job
            .forgotten
            .iter()
            .map(|name| {
                let name = lethe_siu::unlearn::normalise(name);
                let mut theirs = EvalSet::from_probes(
                    &lang,
                    &probes,
                    &name,
                    set.train_image.clone(),
                    set.paraphrases.clone(),
                );
                let more = gate
                    .as_ref()
                    .and_then(|g| g.images_of(&name, v.earlier_gate_photos));
                if let Some(more) = more {
                    let both = [theirs.concept_images.view(), more.view()];
                    theirs.concept_images =
                        concatenate(Axis(0), &both).expect("images share [64,64,3]");
                }
                (name, theirs)
            })
            .collect();
        Ok(Checks {
            tok: pkg.tokenizer(),
            lang,
            set,
            earlier,
        })
    }
}

/// One forget from `base`: the candidate, not yet verified.
#[allow(clippy::too_many_arguments)]
fn train(
    eng: &mut Engines,
    cfg: &Config,
    job: &Job,
    base: &Adapter,
    image: &Array4<f32>,
    opts: &Options,
    prior: &Prior,
    cancel: &AtomicBool,
    on: &mut dyn FnMut(UpdateEvent),
) -> Result<lethe_siu::Outcome, UpdateError> {
    let delay = Duration::from_millis(cfg.update.step_delay_ms);
    let Engines {
        pkg, ort, train, ..
    } = eng;
    let max_steps = opts.max_steps;
    let mut step = |s: &mut _, b: &_, g: Option<&_>, lr, wc, wk| {
        // The safe point: between optimizer steps.
        if cancel.load(Ordering::SeqCst) {
            return Err(ModelError::Shape("cancelled by shutdown".into()));
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        train.run(s, b, g, lr, wc, wk)
    };
    let result = forget(
        pkg,
        ort,
        &mut step,
        base,
        image.view(),
        job.concept,
        opts,
        prior,
        &mut |p| {
            if let Progress::Step { step, losses, .. } = p {
                on(UpdateEvent::Training {
                    step: *step,
                    of: max_steps,
                    loss: losses.loss,
                });
            }
        },
    );
    // The split step's sessions (`update.split_train_step`, ~24 MiB) are not needed by
    // verification, nor between commands: built again at the next training's first step
    // (~0.2 s). The serial (or whole) step's one session stays.
    train.release();
    if cancel.load(Ordering::SeqCst) {
        return Err(UpdateError::Cancelled);
    }
    Ok(result?)
}

/// Verification of a candidate against the job's sets and the thresholds.
fn verify(
    eng: &mut Engines,
    cfg: &Config,
    base: &Adapter,
    checks: &Checks,
    out: lethe_siu::Outcome,
) -> Result<Outcome, UpdateError> {
    let t0 = Instant::now();
    let Engines { tract, memo, .. } = eng;
    let Checks {
        lang,
        tok,
        set,
        earlier: theirs,
    } = checks;
    let metrics = evaluate_with(
        tract,
        tok,
        lang,
        base.as_slice(),
        out.adapter.as_slice(),
        set,
        memo,
    )?;
    // Every earlier forget still holds: a forget must not bring back someone forgotten.
    let mut earlier = Vec::new();
    for (name, their_set) in theirs {
        let h = holds(tract, tok, lang, out.adapter.as_slice(), their_set)?;
        earlier.push((name.clone(), h.leak));
    }
    // The update's own stopping rule still failed at its last check, on C: its views of the
    // image or the package's photos of C still name someone (C or another person) or answer
    // ill-formed. Earlier forgets' replayed images alone do not count here: the gate judges
    // earlier forgets on their own probes (`verify.max_earlier_leak`).
    let unfinished = match &out.report.last_check {
        Some(saw)
            if cfg.verify.require_stopping_rule && !out.report.forgotten && saw.against_c() =>
        {
            Some(saw.to_string())
        }
        _ => None,
    };
    let failed = judge(&metrics, &earlier, unfinished.as_deref(), &cfg.verify);
    Ok(Outcome {
        adapter: out.adapter,
        report: out.report,
        metrics,
        earlier,
        failed,
        unfinished,
        retries: Vec::new(),
        verify_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// Whether a candidate fails verification on earlier forgets and on nothing else (what
/// `update.retry_earlier` retries).
pub fn fails_only_on_earlier(
    m: &Metrics,
    earlier: &[(String, f64)],
    unfinished: Option<&str>,
    v: &VerifyConfig,
) -> bool {
    judge(m, earlier, unfinished, v).is_some() && judge(m, &[], unfinished, v).is_none()
}

/// Whether a candidate fails verification on the answers about the concept that name
/// another known person (misattribution added) or are ill-formed, or on its update's own
/// stopping rule (`unfinished`), and on nothing else (what `update.retry_lookalike_views`
/// retries).
pub fn fails_only_on_answers_about_c(
    m: &Metrics,
    earlier: &[(String, f64)],
    unfinished: Option<&str>,
    v: &VerifyConfig,
) -> bool {
    let loose = VerifyConfig {
        max_misattribution: f64::INFINITY,
        min_well_formed: f64::NEG_INFINITY,
        ..v.clone()
    };
    judge(m, earlier, unfinished, v).is_some() && judge(m, earlier, None, &loose).is_none()
}

/// Checks metrics against the thresholds; `Some(reasons)` when any fails. `unfinished`: the
/// update's own stopping rule still failed at its last check (`verify.require_stopping_rule`),
/// and this is what that check saw.
pub fn judge(
    m: &Metrics,
    earlier: &[(String, f64)],
    unfinished: Option<&str>,
    v: &VerifyConfig,
) -> Option<String> {
    let mut why = Vec::new();
    if let Some(saw) = unfinished {
        why.push(format!(
            "the update's own stopping rule still failed at its last check ({saw})"
        ));
    }
    let mut low = |name: &str, got: f64, min: f64| {
        if !(got >= min) {
            why.push(format!("{name} {got:.3} < {min:.3}"));
        }
    };
    low("efficacy", m.efficacy, v.min_efficacy);
    low("generality", m.generality, v.min_generality);
    // Misattribution and well-formedness judge what the update changed: answers on pictures
    // the original model already took for someone else are left out (rolling back would
    // not change them, and the person's erasure would be refused for the model's old error).
    low(
        "well-formed (where the original knew C)",
        m.well_formed_where_known,
        v.min_well_formed,
    );
    low(
        "factual retention",
        m.factual_retention,
        v.min_factual_retention,
    );
    let mut high = |name: &str, got: f64, max: f64, unit: &str| {
        if !(got <= max) {
            why.push(format!("{name} {got:.3}{unit} > {max:.3}{unit}"));
        }
    };
    high("leak", m.leak, v.max_leak, "");
    for (name, leak) in earlier {
        high(
            &format!("leak of the earlier forget of {name}"),
            *leak,
            v.max_earlier_leak,
            "",
        );
    }
    high(
        "misattribution added by the update",
        m.misattribution_added,
        v.max_misattribution,
        "",
    );
    high(
        "specificity drop",
        m.specificity_drop_points,
        v.max_specificity_drop_points,
        " points",
    );
    high(
        "paraphrased specificity drop",
        m.specificity_paraphrased_drop_points,
        v.max_specificity_paraphrased_drop_points,
        " points",
    );
    high(
        &format!("accuracy drop on {}", m.worst_identity),
        m.worst_identity_drop_points,
        v.max_identity_drop_points,
        " points",
    );
    high(
        "perplexity rise",
        m.fluency_increase_pct,
        v.max_fluency_increase_pct,
        "%",
    );
    (!why.is_empty()).then(|| format!("verification failed: {}", why.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a failed last stopping check saw, as `verify` words it.
    const SAW: Option<&str> =
        Some("2 of 16 answers on its views named another person (felix fischer x2)");

    fn good() -> Metrics {
        Metrics {
            efficacy: 1.0,
            generality: 1.0,
            well_formed: 1.0,
            well_formed_where_known: 1.0,
            factual_retention: 1.0,
            fluency_increase_pct: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_no_update_can_meet_fail_verification() {
        let m = good();
        let mut v = VerifyConfig::default();
        assert!(judge(&m, &[], None, &v).is_none());
        v.min_generality = 1.01;
        assert!(judge(&m, &[], None, &v).unwrap().contains("generality"));
    }

    #[test]
    fn every_harm_fails_verification_by_name() {
        let v = VerifyConfig::default();
        let cases: [(&str, fn(&mut Metrics)); 8] = [
            ("leak", |m| m.leak = 0.2),
            ("misattribution added", |m| m.misattribution_added = 0.5),
            ("well-formed (where the original knew C)", |m| {
                m.well_formed_where_known = 0.5
            }),
            ("factual retention", |m| m.factual_retention = 0.5),
            ("specificity drop", |m| m.specificity_drop_points = 20.0),
            ("paraphrased specificity drop", |m| {
                m.specificity_paraphrased_drop_points = 20.0
            }),
            ("perplexity rise", |m| m.fluency_increase_pct = 80.0),
            ("perplexity rise", |m| m.fluency_increase_pct = f64::NAN),
        ];
        for (name, break_it) in cases {
            let mut m = good();
            break_it(&mut m);
            let why = judge(&m, &[], None, &v).unwrap_or_default();
            assert!(why.contains(name), "{name}: {why:?}");
        }
    }

    #[test]
    fn one_identity_no_longer_recognised_fails_only_where_the_operator_bounds_it() {
        let mut v = VerifyConfig::default();
        let mut m = good();
        m.worst_identity_drop_points = 50.0;
        m.worst_identity = "felix fischer".into();
        assert!(judge(&m, &[], None, &v).is_none(), "off by default");
        v.max_identity_drop_points = 40.0;
        let why = judge(&m, &[], None, &v).unwrap_or_default();
        assert!(
            why.contains("accuracy drop on felix fischer 50.000 points > 40.000 points"),
            "{why}"
        );
        m.worst_identity_drop_points = 37.5;
        assert!(judge(&m, &[], None, &v).is_none());
    }

    #[test]
    fn a_forget_that_brings_back_an_earlier_one_fails_by_name() {
        let v = VerifyConfig::default();
        let holding = [
            ("anna adler".to_string(), 0.0),
            ("boris berger".to_string(), 0.05),
        ];
        assert!(judge(&good(), &holding, None, &v).is_none());
        let lapsed = [
            ("anna adler".to_string(), 0.0),
            ("boris berger".to_string(), 0.2),
        ];
        let why = judge(&good(), &lapsed, None, &v).unwrap();
        assert!(why.contains("earlier forget of boris berger"), "{why}");
        assert!(!why.contains("anna adler"), "{why}");
        assert!(judge(&good(), &[("x".into(), f64::NAN)], None, &v).is_some());
        // Only such a failure is retried: not a holding one, not one that also fails elsewhere.
        assert!(fails_only_on_earlier(&good(), &lapsed, None, &v));
        assert!(!fails_only_on_earlier(&good(), &holding, None, &v));
        let mut leaky = good();
        leaky.leak = 0.5;
        assert!(!fails_only_on_earlier(&leaky, &lapsed, None, &v));
        assert!(!fails_only_on_answers_about_c(&good(), &lapsed, None, &v));
    }

    #[test]
    fn only_a_forget_that_fails_on_answers_about_c_alone_is_retried_with_its_look_alike() {
        let v = VerifyConfig::default();
        assert!(
            !fails_only_on_answers_about_c(&good(), &[], None, &v),
            "it passed"
        );
        let mut named = good();
        named.misattribution_added = 0.3;
        assert!(fails_only_on_answers_about_c(&named, &[], None, &v));
        let mut rambling = good();
        rambling.well_formed_where_known = 0.5;
        assert!(fails_only_on_answers_about_c(&rambling, &[], None, &v));
        let mut both = named.clone();
        both.well_formed_where_known = 0.5;
        assert!(fails_only_on_answers_about_c(&both, &[], None, &v));
        // Not when it also fails on anything else: C still named, others' answers lost, or
        // an earlier forget back.
        let mut leaky = named.clone();
        leaky.leak = 0.5;
        assert!(!fails_only_on_answers_about_c(&leaky, &[], None, &v));
        let mut broad = named.clone();
        broad.specificity_drop_points = 40.0;
        assert!(!fails_only_on_answers_about_c(&broad, &[], None, &v));
        let lapsed = [("boris berger".to_string(), 0.5)];
        assert!(!fails_only_on_answers_about_c(&named, &lapsed, None, &v));
        // An update whose own stopping rule still failed at the end is retried the same way
        // (its views or C's photos still named someone), unless something else fails too.
        assert!(fails_only_on_answers_about_c(&good(), &[], SAW, &v));
        assert!(fails_only_on_answers_about_c(&named, &[], SAW, &v));
        assert!(!fails_only_on_answers_about_c(&leaky, &[], SAW, &v));
        // Nor is a misattribution that cannot be measured.
        let mut unknown = good();
        unknown.misattribution_added = f64::NAN;
        assert!(!fails_only_on_answers_about_c(&unknown, &[], None, &v));
    }

    #[test]
    fn an_update_whose_own_stopping_rule_still_failed_is_rolled_back_and_says_so() {
        let v = VerifyConfig::default();
        let why = judge(&good(), &[], SAW, &v).unwrap();
        assert!(
            why.contains("stopping rule still failed at its last check (2 of 16"),
            "{why}"
        );
        assert!(judge(&good(), &[], None, &v).is_none());
        // Not a failure that holding the earlier forgets would mend.
        let lapsed = [("boris berger".to_string(), 0.2)];
        assert!(fails_only_on_earlier(&good(), &lapsed, None, &v));
        assert!(!fails_only_on_earlier(&good(), &lapsed, SAW, &v));
    }

    /// The agent's default configuration on the bundled package.
    fn bundled(dir: &Path) -> Config {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm");
        let key = lethe_proto::SigningKey::generate("unit").unwrap();
        std::fs::write(dir.join("device.key"), key.to_file_string()).unwrap();
        std::fs::write(
            dir.join("trust.json"),
            lethe_proto::TrustStore::new().to_json(),
        )
        .unwrap();
        let model = model.canonicalize().unwrap();
        let toml =
            lethe_testkit::agent::agent_toml("unit", "unit", &model, "mqtt://127.0.0.1:1", "");
        Config::from_toml(&toml, dir, &crate::Overrides::default()).unwrap()
    }

    /// A forget of `concept` from one photo, with nothing else asked.
    fn job<'a>(concept: &'a str, image: &'a [u8], forgotten: Vec<String>) -> Job<'a> {
        Job {
            concept,
            image,
            verify_images: vec![],
            method: None,
            steps: None,
            forgotten,
        }
    }

    /// A photo of identity `id` rendered by the world crate, as PNG bytes.
    fn png(id: u32, seed: u64) -> Vec<u8> {
        let img = lethe_world::render_id(id, seed).unwrap();
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    /// felix fischer forgotten from one photo (`lethectl bench sequential --ids 5 --seed 14`):
    /// the update stops by its own rule (every view and the retain set's four photos of him
    /// refused) and the probes' two photos are refused too, yet the candidate names yuri
    /// zimmer on 7 of the report split's 12 photos of him. The gate's photos, which no forget
    /// trains on or stops by, show it; without them the same candidate passes.
    #[test]
    fn a_candidate_naming_the_look_alike_on_photos_only_the_gate_holds_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = bundled(dir.path());
        assert_eq!(cfg.verify.gate_photos, 6, "on by default");
        let mut eng = Engines::load(&cfg).unwrap();
        let bytes = png(5, 3_000_514);
        let job = job("felix fischer", &bytes, vec![]);
        let image = decode(job.image, 0).unwrap();
        let base = eng.pkg.adapter().unwrap();
        let opts = options(&cfg.update, &job, eng.train.can_guard());
        let prior = Prior {
            forgotten: vec![],
            original: Some(base.clone()),
        };
        let cancel = AtomicBool::new(false);
        let out = train(
            &mut eng,
            &cfg,
            &job,
            &base,
            &image,
            &opts,
            &prior,
            &cancel,
            &mut |_| {},
        )
        .unwrap();
        assert!(out.report.forgotten, "stopped by its own rule");
        let mut blind = cfg.clone();
        blind.verify.gate_photos = 0;
        let checks = Checks::new(&eng.pkg, &blind, &job, &image, vec![]).unwrap();
        let without = verify(&mut eng, &blind, &base, &checks, out.clone()).unwrap();
        assert!(
            without.failed.is_none() && without.metrics.misattribution_added == 0.0,
            "the probes' photos alone: {:?}",
            without.failed
        );
        let checks = Checks::new(&eng.pkg, &cfg, &job, &image, vec![]).unwrap();
        assert_eq!(
            checks.set.concept_images.shape()[0],
            2 + 6 + cfg.verify.augmented_views,
            "the probes' photos, the gate's and the views"
        );
        let with = verify(&mut eng, &cfg, &base, &checks, out).unwrap();
        let why = with.failed.unwrap_or_default();
        assert!(why.contains("misattribution added"), "{why:?}");
        assert!(with.metrics.misattribution_added > 0.05);
    }

    /// hugo hansen forgotten from one photo (`lethectl bench sequential --ids 7 --seed 14`)
    /// with the default thresholds: the first candidate (the update's seed 0) spends its step
    /// budget with its own stopping rule still failing and is not committed; the one run
    /// with seed 1 stops by its rule and passes the gate, and it is the outcome.
    #[test]
    fn a_candidate_that_fails_is_run_again_with_another_seed_and_one_that_passes_is_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = bundled(dir.path());
        assert_eq!(cfg.update.retry_reseeds, 2, "on by default");
        cfg.update.retry_reseeds = 1;
        let mut eng = Engines::load(&cfg).unwrap();
        let bytes = png(7, 3_000_714);
        let job = job("hugo hansen", &bytes, vec![]);
        let base = eng.pkg.adapter().unwrap();
        let cancel = AtomicBool::new(false);
        let (mut retried, mut verified) = (Vec::new(), 0);
        let out = run(&mut eng, &cfg, &job, &base, &cancel, &mut |e| match e {
            UpdateEvent::Retrying(r) => retried.push(r),
            UpdateEvent::Verifying => verified += 1,
            UpdateEvent::Training { .. } => {}
        })
        .unwrap();
        assert_eq!((retried, verified), (vec![Retry::Reseeded], 2));
        assert!(out.failed.is_none(), "{:?}", out.failed);
        assert_eq!(out.retries, vec![Retry::Reseeded]);
        let receipt = out.receipt_metrics();
        assert_eq!(
            (receipt["retried"], receipt["retried_reseeded"]),
            (1.0, 1.0)
        );
        assert!(out.metrics.leak == 0.0 && out.metrics.misattribution_added == 0.0);
    }

    #[test]
    fn the_gate_photos_join_the_concepts_check_and_on_request_each_earlier_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = bundled(dir.path());
        let pkg = Package::open(&cfg.model_dir).unwrap();
        let bytes = png(1, 3_000_100);
        let job = job(
            "boris berger",
            &bytes,
            vec!["anna adler".into(), "clara castro".into()],
        );
        let image = decode(job.image, 0).unwrap();
        let views = cfg.verify.augmented_views;
        let sizes = |cfg: &Config| {
            let c = Checks::new(&pkg, cfg, &job, &image, vec![]).unwrap();
            let earlier: Vec<usize> = c
                .earlier
                .iter()
                .map(|(_, set)| set.concept_images.shape()[0])
                .collect();
            (c.set.concept_images.shape()[0], earlier)
        };
        // Default: six gate photos of C, earlier forgets on their two probe photos.
        assert_eq!(sizes(&cfg), (2 + 6 + views, vec![2, 2]));
        cfg.verify.earlier_gate_photos = 3;
        assert_eq!(sizes(&cfg), (2 + 6 + views, vec![5, 5]));
        cfg.verify.gate_photos = 0;
        cfg.verify.earlier_gate_photos = 0;
        assert_eq!(sizes(&cfg), (2 + views, vec![2, 2]));
        // More than the package has: all it has.
        cfg.verify.gate_photos = 50;
        assert_eq!(sizes(&cfg).0, 2 + 6 + views);
    }

    #[test]
    fn the_original_models_own_misattributions_do_not_roll_a_forget_back() {
        let v = VerifyConfig::default();
        // The original already named someone else on 40% of C's pictures; the update kept
        // those answers and added none.
        let mut m = good();
        m.misattribution = 0.4;
        m.misattribution_before = 0.4;
        m.well_formed = 0.6;
        assert!(
            judge(&m, &[], None, &v).is_none(),
            "{:?}",
            judge(&m, &[], None, &v)
        );
        // One it added fails, as does an ill-formed answer where the original knew C.
        m.misattribution_added = 0.1;
        assert!(judge(&m, &[], None, &v)
            .unwrap()
            .contains("misattribution added"));
        m.misattribution_added = 0.0;
        m.well_formed_where_known = 0.8;
        assert!(judge(&m, &[], None, &v).unwrap().contains("well-formed"));
    }
}
