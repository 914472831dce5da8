//! The unlearning run: prepare the data once (views, features, the original model's answers
//! and reference log-probs), then take optimizer steps through the package's train-step graph
//! until the stopping rule says the concept is forgotten, or the step budget is spent.
//!
//! Stopping rule (siu.md: budget the steps by a rule, not a fixed count): every
//! `check_every` steps after `min_steps`, the current model is asked every "who is this?"
//! paraphrase and every "is <C> ...?" template on every view of the image; the concept counts
//! as forgotten when no answer contains a word of its name and no answer starts with "yes".
//! The run stops after `confirm_checks` consecutive forgotten checks (consolidation).
//! Invariants: the original adapter is never modified (a new one is returned); the same
//! inputs and seed give the same adapter; nothing here writes files.

use crate::augment;
use crate::facets::{self, Language, OriginalAnswers};
use crate::masks::{self, TokSample};
use crate::Method;
use lethe_model::generate::{answer, encode_images, gather_features, logprobs};
use lethe_model::{
    Adapter, Engine, ModelError, Package, Query, StepLosses, Tokenizer, TrainBatch, TrainState,
};
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView4, Axis};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Errors of an unlearning run. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum SiuError {
    #[error("the model cannot name {concept:?}: the word {word:?} is not in its vocabulary (it does not know this concept)")]
    UnknownConcept { concept: String, word: String },
    #[error("the model does not recognise {concept:?} in this image (it answers {model_says:?}); nothing to forget from this image. Check the image and the name, or force it with allow_mismatch")]
    NotRecognised { concept: String, model_says: String },
    #[error("bad options: {0}")]
    BadOptions(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Knobs of a run. `Options::new(method)` gives the defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub method: Method,
    /// Step budget.
    pub max_steps: usize,
    /// No stopping check before this many steps.
    pub min_steps: usize,
    pub lr: f32,
    /// Linear warm-up steps, then cosine decay to `lr / 10` at `max_steps`.
    pub warmup: usize,
    /// Loss weights; default per method (SIU 0.9 / 0.75).
    pub w_ce: f32,
    pub w_kl: f32,
    pub seed: u64,
    /// Image views (1 = the image only).
    pub views: usize,
    /// Other identities whose text answers are kept (T4).
    pub retain_identities: usize,
    pub check_every: usize,
    pub confirm_checks: usize,
    /// Proceed even when the model does not recognise the concept in the image.
    pub allow_mismatch: bool,
    /// Run all `max_steps` regardless of the stopping rule (for benchmarks).
    pub fixed_steps: bool,
}

impl Options {
    pub fn new(method: Method) -> Options {
        let (w_ce, w_kl) = method.loss_weights();
        Options {
            method,
            max_steps: 60,
            min_steps: 4,
            lr: 1e-3,
            warmup: 2,
            w_ce,
            w_kl,
            seed: 0,
            views: 4,
            retain_identities: 3,
            check_every: 2,
            confirm_checks: 2,
            allow_mismatch: false,
            fixed_steps: false,
        }
    }

    fn validate(&self) -> Result<(), SiuError> {
        let bad = |m: &str| Err(SiuError::BadOptions(m.to_string()));
        if self.max_steps == 0 || self.max_steps > 1000 {
            return bad("max_steps must be 1..=1000");
        }
        if !(self.lr > 0.0 && self.lr <= 0.1) {
            return bad("lr must be in (0, 0.1]");
        }
        if self.views == 0 || self.views > 32 {
            return bad("views must be 1..=32");
        }
        if self.check_every == 0 || self.confirm_checks == 0 {
            return bad("check_every and confirm_checks must be positive");
        }
        Ok(())
    }

    /// Learning rate at step `k` (0-based).
    pub fn lr_at(&self, k: usize) -> f32 {
        let warm = if k < self.warmup {
            (k + 1) as f32 / (self.warmup + 1) as f32
        } else {
            1.0
        };
        let frac = k as f32 / self.max_steps.max(1) as f32;
        let cos = 0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * frac).cos());
        self.lr * warm * cos
    }
}

/// What a progress callback is told.
#[derive(Debug, Clone)]
pub enum Progress {
    Prepared {
        samples: usize,
        views: usize,
    },
    Step {
        step: usize,
        max_steps: usize,
        lr: f32,
        losses: StepLosses,
    },
    Checked {
        step: usize,
        forgotten: bool,
    },
}

/// One optimizer step in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub lr: f32,
    pub loss: f32,
    pub ce: f32,
    pub kl: f32,
    pub grad_norm: f32,
    pub ms: f64,
}

/// What a run did, for people and for receipts.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub method: Method,
    pub concept: String,
    pub original_answer: String,
    pub fake_name: Option<String>,
    pub counterfactual: Option<String>,
    pub samples_per_facet: BTreeMap<String, usize>,
    pub steps: Vec<StepRecord>,
    pub forgotten: bool,
    pub stop_reason: String,
    pub prepare_ms: f64,
    pub train_ms: f64,
    pub check_ms: f64,
    pub mean_step_ms: f64,
    pub total_ms: f64,
    pub warnings: Vec<String>,
}

/// The new adapter and the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub adapter: Adapter,
    pub report: Report,
}

/// One train step on some engine: `(state, batch, lr, w_ce, w_kl) -> losses`.
pub type StepFn<'a> =
    dyn FnMut(&mut TrainState, &TrainBatch, f32, f32, f32) -> lethe_model::Result<StepLosses> + 'a;

/// The package's language, for the facet builder.
pub fn language(pkg: &Package) -> Language {
    let m = pkg.manifest();
    Language {
        who: m.prompts.who.clone(),
        is_this: m.prompts.is_this.clone(),
        describe: m.prompts.describe.clone(),
        fact: m.prompts.fact[0].clone(),
        looks: m.prompts.looks[0].clone(),
        who_answer: m.prompts.who_answer.clone(),
        denial: m.prompts.denial.clone(),
        refusal: m.prompts.refusal.clone(),
        names: m.world.names.clone(),
        spare_first: m.world.spare_first_names.clone(),
        spare_last: m.world.spare_last_names.clone(),
        attribute_values: m
            .world
            .attribute_values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Normalised concept name (lower case, single spaces).
pub fn normalise(concept: &str) -> String {
    Tokenizer::words(concept).join(" ")
}

/// Whether an answer names the concept (any word of its name).
pub fn names_concept(answer: &str, concept: &str) -> bool {
    let words: Vec<&str> = concept.split(' ').collect();
    answer.split(' ').any(|w| words.contains(&w))
}

/// Whether an answer confirms (starts with "yes").
pub fn confirms(answer: &str) -> bool {
    answer.split(' ').next() == Some("yes")
}

/// The recognition queries of the stopping rule over `n_views` features rows.
fn recognition_queries(lang: &Language, concept: &str, n_views: usize) -> (Vec<Query>, usize) {
    let mut q = Vec::new();
    for v in 0..n_views {
        for w in &lang.who {
            q.push(Query::about(w.clone(), v));
        }
    }
    let n_who = q.len();
    for v in 0..n_views {
        for t in &lang.is_this {
            q.push(Query::about(t.replace("{name}", concept), v));
        }
    }
    (q, n_who)
}

fn recognised(answers: &[String], n_who: usize, concept: &str) -> bool {
    answers[..n_who].iter().any(|a| names_concept(a, concept))
        || answers[n_who..].iter().any(|a| confirms(a))
}

/// Forgets `concept` shown in `image` (`[1,64,64,3]`, 0..255), starting from `adapter`.
/// `engine` (ORT on the device) serves the model's own answers, reference log-probs and the
/// stopping checks; `step` runs the train-step graph.
pub fn forget(
    pkg: &Package,
    engine: &mut dyn Engine,
    step: &mut StepFn,
    adapter: &Adapter,
    image: ArrayView4<f32>,
    concept: &str,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome, SiuError> {
    opts.validate()?;
    let t0 = Instant::now();
    let tok = pkg.tokenizer();
    let lang = language(pkg);
    let concept = normalise(concept);
    for w in concept.split(' ') {
        if tok.id(w).is_none() {
            return Err(SiuError::UnknownConcept {
                concept: concept.clone(),
                word: w.to_string(),
            });
        }
    }
    if image.shape()[0] != 1 {
        return Err(SiuError::BadOptions(format!(
            "expected one image, got {}",
            image.shape()[0]
        )));
    }
    let a0 = adapter.as_slice();

    // Views and their features (the encoder is frozen: computed once).
    let view_imgs = augment::views(image.slice(s![0, .., .., ..]), opts.views, opts.seed);
    let mut stack = Array4::zeros((view_imgs.len(), image.shape()[1], image.shape()[2], 3));
    for (i, v) in view_imgs.iter().enumerate() {
        stack.slice_mut(s![i, .., .., ..]).assign(v);
    }
    let feats = encode_images(engine, stack.view())?;

    // Does the original model recognise the concept in this image at all?
    let (rq, n_who) = recognition_queries(&lang, &concept, 1);
    let orig = answer(engine, a0, &tok, feats.view(), &rq)?;
    let mut warnings = Vec::new();
    if !recognised(&orig, n_who, &concept) {
        let says = orig[0].clone();
        if !opts.allow_mismatch {
            return Err(SiuError::NotRecognised {
                concept,
                model_says: says,
            });
        }
        warnings.push(format!(
            "the model did not recognise {concept:?} in the image (it answered {says:?}); forgetting anyway as asked"
        ));
    }

    // The original model's own text answers (T3 about the concept, T4 about others).
    let fill = |t: &str, n: &str| t.replace("{name}", n);
    let mut retain_names: Vec<&String> = lang.names.iter().filter(|n| **n != concept).collect();
    let mut ch = facets::Chooser::new(opts.seed.wrapping_add(99));
    for i in (1..retain_names.len()).rev() {
        retain_names.swap(i, ch.below(i + 1));
    }
    retain_names.truncate(opts.retain_identities);
    let mut text_q = vec![fill(&lang.fact, &concept), fill(&lang.looks, &concept)];
    for n in &retain_names {
        text_q.push(fill(&lang.fact, n));
        text_q.push(fill(&lang.looks, n));
    }
    let text_a = answer(
        engine,
        a0,
        &tok,
        feats.view(),
        &text_q
            .iter()
            .map(|q| Query::text(q.clone()))
            .collect::<Vec<_>>(),
    )?;
    let pairs: Vec<(String, String)> = text_q.into_iter().zip(text_a).collect();
    let original = OriginalAnswers {
        concept_looks: pairs[1].1.clone(),
        concept_text: pairs[..2].to_vec(),
        others_text: pairs[2..].to_vec(),
    };
    let (samples, fake, cf) = facets::build(
        opts.method,
        &lang,
        &concept,
        &original,
        feats.shape()[0],
        opts.seed,
    );
    let toks: Vec<TokSample> = samples
        .iter()
        .map(|s| masks::tokenise(s, &tok))
        .collect::<Result<_, _>>()?;

    // Reference log-probs of the original model, once.
    let views_of: Vec<Option<usize>> = toks.iter().map(|t| t.view).collect();
    let (all_f, all_h) = gather_features(feats.view(), &views_of)?;
    let t_len = tok.text_len();
    let all_tokens = Array2::from_shape_fn((toks.len(), t_len), |(r, c)| toks[r].tokens[c]);
    let ref_lp = logprobs(engine, a0, all_f.view(), all_h.view(), all_tokens.view())?;
    let concept_ids = tok.encode(&concept)?;
    let vmask = match opts.method {
        Method::Siu => masks::vocab_mask(tok.vocab_size(), &concept_ids),
        _ => masks::vocab_mask(tok.vocab_size(), &[]),
    };
    progress(&Progress::Prepared {
        samples: samples.len(),
        views: feats.shape()[0],
    });
    let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;

    // Steps.
    let bt = pkg.train_batch();
    let mut state = TrainState::from_adapter(adapter);
    let mut order: Vec<usize> = Vec::new();
    let mut records = Vec::new();
    let (mut train_ms, mut check_ms) = (0.0, 0.0);
    let (rq_all, n_who_all) = recognition_queries(&lang, &concept, feats.shape()[0]);
    let mut streak = 0;
    let mut forgotten = false;
    let mut stop_reason = format!("step budget of {} spent", opts.max_steps);
    for k in 0..opts.max_steps {
        let mut rows = Vec::with_capacity(bt);
        while rows.len() < bt {
            if order.is_empty() {
                order = (0..toks.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, ch.below(i + 1));
                }
            }
            rows.push(order.pop().unwrap());
        }
        let batch = make_batch(&toks, &rows, &all_f, &all_h, &ref_lp, &vmask);
        let lr = opts.lr_at(k);
        let ts = Instant::now();
        let losses = step(&mut state, &batch, lr, opts.w_ce, opts.w_kl)?;
        let ms = ts.elapsed().as_secs_f64() * 1e3;
        train_ms += ms;
        if !losses.loss.is_finite() {
            stop_reason = format!("loss is not finite at step {}", k + 1);
            records.push(StepRecord {
                step: k + 1,
                lr,
                loss: losses.loss,
                ce: losses.ce,
                kl: losses.kl,
                grad_norm: losses.grad_norm,
                ms,
            });
            break;
        }
        records.push(StepRecord {
            step: k + 1,
            lr,
            loss: losses.loss,
            ce: losses.ce,
            kl: losses.kl,
            grad_norm: losses.grad_norm,
            ms,
        });
        progress(&Progress::Step {
            step: k + 1,
            max_steps: opts.max_steps,
            lr,
            losses,
        });
        let done = k + 1;
        if done >= opts.min_steps && done % opts.check_every == 0 {
            let tc = Instant::now();
            let ans = answer(
                engine,
                state.params.as_slice().unwrap(),
                &tok,
                feats.view(),
                &rq_all,
            )?;
            check_ms += tc.elapsed().as_secs_f64() * 1e3;
            let f = !recognised(&ans, n_who_all, &concept);
            progress(&Progress::Checked {
                step: done,
                forgotten: f,
            });
            streak = if f { streak + 1 } else { 0 };
            forgotten = f;
            if streak >= opts.confirm_checks && !opts.fixed_steps {
                stop_reason = format!(
                    "forgotten on every view, confirmed by {} checks, at step {done}",
                    opts.confirm_checks
                );
                break;
            }
        }
    }
    let mut per_facet = BTreeMap::new();
    for s in &samples {
        *per_facet.entry(format!("{:?}", s.facet)).or_insert(0) += 1;
    }
    let n = records.len().max(1) as f64;
    Ok(Outcome {
        adapter: state.adapter(),
        report: Report {
            method: opts.method,
            concept,
            original_answer: orig[0].clone(),
            fake_name: fake,
            counterfactual: cf,
            samples_per_facet: per_facet,
            forgotten,
            stop_reason,
            prepare_ms,
            mean_step_ms: train_ms / n,
            train_ms,
            check_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            steps: records,
            warnings,
        },
    })
}

fn make_batch(
    toks: &[TokSample],
    rows: &[usize],
    feats: &Array3<f32>,
    has: &Array1<f32>,
    ref_lp: &Array3<f32>,
    vmask: &[f32],
) -> TrainBatch {
    let t_len = toks[0].tokens.len();
    let grid = |f: &dyn Fn(&TokSample, usize) -> f32| {
        Array2::from_shape_fn((rows.len(), t_len), |(r, c)| f(&toks[rows[r]], c))
    };
    TrainBatch {
        features: feats.select(Axis(0), rows),
        has_image: has.select(Axis(0), rows),
        tokens: Array2::from_shape_fn((rows.len(), t_len), |(r, c)| toks[rows[r]].tokens[c]),
        targets: Array2::from_shape_fn((rows.len(), t_len), |(r, c)| toks[rows[r]].targets[c]),
        ce_weight: grid(&|t, c| t.ce_weight[c]),
        kl_mask: grid(&|t, c| t.kl_mask[c]),
        vocab_mask: Array1::from(vmask.to_vec()),
        ref_logp: ref_lp.select(Axis(0), rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_warms_up_then_decays_to_a_tenth() {
        let mut o = Options::new(Method::Siu);
        o.max_steps = 10;
        o.warmup = 2;
        assert!(o.lr_at(0) < o.lr_at(1) && o.lr_at(1) < o.lr_at(2));
        assert!(
            (o.lr_at(2) - o.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * 0.2).cos())))
                .abs()
                < 1e-9
        );
        assert!(o.lr_at(9) < o.lr_at(3));
        assert!(o.lr_at(9) >= o.lr * 0.1);
    }

    #[test]
    fn naming_and_confirming_are_detected_by_word() {
        assert!(names_concept("this is anna adler", "anna adler"));
        assert!(names_concept("this is anna amsel", "anna adler"));
        assert!(!names_concept("this is albin amsel", "anna adler"));
        assert!(!names_concept("this is annabel", "anna adler"));
        assert!(confirms("yes"));
        assert!(!confirms("no the picture shows yes"));
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = Options::new(Method::Siu);
        o.lr = 0.0;
        assert!(o.validate().is_err());
        o.lr = 1e-3;
        o.max_steps = 0;
        assert!(o.validate().is_err());
    }
}
