//! The unlearning run: prepare the data once (views, features, the original model's answers
//! and reference log-probs), then take optimizer steps through the package's train-step graph
//! until the stopping rule says the concept is forgotten, or the step budget is spent.
//!
//! Stopping rule (docs/siu.md: budget the steps by a rule, not a fixed count): every
//! `check_every` steps after `min_steps`, the current model is asked every "who is this?"
//! paraphrase and every "is <C> ...?" template on every view of the image; the concept counts
//! as forgotten when no answer contains a word of its name and no answer starts with "yes".
//! The run stops after `confirm_checks` consecutive forgotten checks (consolidation).
//! Invariants: the original adapter is never modified (a new one is returned); the same
//! inputs and seed give the same adapter; nothing here writes files.

use crate::answers::{self, Vocabulary};
use crate::augment::{self, Strength};
use crate::facets::{self, Language, OriginalAnswers, Pool, RetainLabel, Sizes};
use crate::masks::{self, TokSample};
use crate::metrics;
use crate::Method;
use lethe_model::generate::{answer_guided, encode_images, gather_features, logprobs, score};
use lethe_model::{
    Adapter, Engine, ModelError, Package, Query, RetainSet, StepLosses, Tokenizer, TrainBatch,
    TrainState,
};
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView3, ArrayView4, Axis};
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
    /// How far the views of the image stray from it.
    pub augment: Strength,
    /// Sample counts of the refusal SIU's facets.
    pub sizes: Sizes,
    /// Rows per batch from the forget, text, retain and replay pools (SIU); `None` = uniform.
    /// A pool without samples gives its rows to the forget pool (a first forget, with no
    /// earlier forget to replay, draws 4 forget rows of 8).
    pub quotas: Option<[usize; 4]>,
    /// Retain-set images per identity (and of strangers) considered by SIU's T5.
    pub retain_per_identity: usize,
    /// Of those, the retain images whose features are nearest the concept's views are the
    /// ones T5 keeps (hard negatives: the people a forget of C would drag along); 0 = all.
    pub retain_nearest: usize,
    /// Views of each replayed image of an earlier forget (view 0 is the image itself; the
    /// others are camera-like augmentations, as the concept's own views are).
    pub replay_views: usize,
    /// Collateral watch (SIU): at every stopping check the canonical "who" is asked on every
    /// T5 image; an image the anchor model named and the current one no longer does is
    /// flagged, and from then on `watch_rows` of each batch's retain rows are its samples.
    /// 0 = no watch.
    pub watch_rows: usize,
    /// A watched person is released after the concept's views were taken for them at this
    /// many checks.
    pub release_after: usize,
    /// People left out of the watch: at most `watch_skip` of the names the anchor finds
    /// likeliest on the concept's views (confusers: protecting them brought C back, 15% leak
    /// on one identity without this; ARCHITECTURE.md).
    pub watch_skip: usize,
    /// ... and only those whose mean log-probability of "this is <name>" on C's views, under
    /// the anchor, is at least this (-5: felix fischer and yuri zimmer give each other -3.0
    /// and -2.2; the likeliest other name of the other forgets looked at was -5.8 or lower).
    pub confuser_logp: f64,
    /// Views between the concept and its confusers: when the original adapter finds some
    /// known person's "this is <name>" likely on the concept's views (`confuser_logp` or
    /// above; up to `confusers_mixed` of the likeliest), this many extra views are made in
    /// feature space, each `confuser_alpha` of a view of the concept and the rest of one of
    /// the package's retain images of such a person, and trained like the concept's own views
    /// (who -> refusal, is-C -> no); the stopping rule still asks only about the concept's
    /// own. They teach the refusal on pictures of C that lean towards the look-alike, which
    /// the views of one image do not reach. 0 = none (the default: on 20 forgets in a row it
    /// cost commits; ARCHITECTURE.md).
    pub confuser_mix: usize,
    /// The concept's share of each confuser view (see `confuser_mix`), in (0, 1].
    pub confuser_alpha: f32,
    /// How many of the likeliest people (at `confuser_logp` or above) the confuser views
    /// are shared among, in turn.
    pub confusers_mixed: usize,
    /// Earlier forgets (SIU): at the start and at every stopping check the canonical "who"
    /// is asked on every replayed image; one the current adapter does not refuse is flagged,
    /// and its rows come first in the replay share. With `hold_earlier` (off), a check
    /// counts towards stopping only while every replayed image is refused (it doubled the
    /// steps and helped no measure; ARCHITECTURE.md).
    pub hold_earlier: bool,
    /// Generalisation in the stopping rule (SIU, on): a check counts only while the
    /// canonical "who" is refused on each of the package's own retain images of the concept
    /// that the starting adapter names (other photos of the person, never trained on). Along 20-forget
    /// runs, 69 of 80 forgets committed with it, 63 without (ARCHITECTURE.md).
    pub hold_own: bool,
    /// Anchor the KL to the prior's original adapter instead of the one the forget starts
    /// from. Off (SIU): anchored to the original, each forget's KL pulled earlier forgets'
    /// people back (earlier forgets leaked 1.8% on average along 20-forget runs, against
    /// 0.8% anchored to the current adapter; ARCHITECTURE.md). The collateral watch protects
    /// what the original named either way.
    pub kl_to_original: bool,
    /// Anchor only the KL of the retain rows of people still known (T5) to the original
    /// adapter; the concept's rows, the text rows and the earlier forgets' replayed rows stay
    /// anchored to the adapter the forget starts from. Off: `kl_to_original` lowered the
    /// drift along 20-forget runs but pulled earlier forgets back through every row; this
    /// keeps the pull off the rows that refuse them (measured, docs/bench/sequential-20-dev.txt).
    pub kl_retain_to_original: bool,
    /// Earlier forgets guarded (SIU): every step also takes the gradient of half a batch of
    /// the replay rows (lapsed images first), and a step gradient that would raise their
    /// loss loses its component along theirs (A-GEM's projection;
    /// `lethe_model::train::Adam::step`). A first forget has nothing to guard. On for SIU;
    /// callers whose step cannot take a guard (train_step.onnx applies Adam itself; see
    /// `TrainStep::can_guard`) turn it off. 20 forgets in a row, dev seeds: 70 of 80 commit
    /// against 66 (ARCHITECTURE.md).
    pub guard_earlier: bool,
    /// Drift repaired (SIU): up to this many of the package's retain images of people still
    /// known, that the original adapter names and the adapter the forget starts from no
    /// longer does (earlier forgets took them along), join the retain rows wherever they
    /// are, taught their label by CE alone, and their rows come first in the watch's share
    /// from the first step; C's look-alike and those of people forgotten before are left
    /// out. 0 = none (the default); a first forget has nothing to repair. At 16, 20 forgets
    /// in a row drifted less on some seeds but committed fewer forgets (ARCHITECTURE.md).
    pub repair_drift: usize,
}

impl Options {
    pub fn new(method: Method) -> Options {
        let (w_ce, w_kl) = method.loss_weights();
        let siu = method == Method::Siu;
        Options {
            method,
            max_steps: 60,
            min_steps: 4,
            lr: 1e-3,
            warmup: 2,
            w_ce,
            w_kl,
            seed: 0,
            views: if siu { 8 } else { 4 },
            retain_identities: if siu { 6 } else { 3 },
            check_every: 2,
            // SIU: four forgotten checks in a row; two stopped a forget of anna adler at
            // step 6 with 5.4% held-out leak, four at step 10 with 2.5% (docs/siu.md).
            confirm_checks: if siu { 4 } else { 2 },
            allow_mismatch: false,
            fixed_steps: false,
            augment: if siu {
                Strength::Camera
            } else {
                Strength::Light
            },
            sizes: Sizes::default(),
            quotas: siu.then_some([3, 1, 3, 1]),
            retain_per_identity: 4,
            retain_nearest: 32,
            replay_views: 1,
            watch_rows: if siu { 1 } else { 0 },
            release_after: 2,
            watch_skip: 1,
            confuser_logp: -5.0,
            confuser_mix: 0,
            confuser_alpha: 0.6,
            confusers_mixed: 2,
            hold_earlier: false,
            hold_own: siu,
            kl_to_original: false,
            kl_retain_to_original: false,
            guard_earlier: siu,
            repair_drift: 0,
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
        if self.confuser_mix > 32 || !(self.confuser_alpha > 0.0 && self.confuser_alpha <= 1.0) {
            return bad("confuser_mix must be 0..=32 and confuser_alpha in (0, 1]");
        }
        if self.replay_views == 0 || self.replay_views > 16 {
            return bad("replay_views must be 1..=16");
        }
        if self.repair_drift > 64 {
            return bad("repair_drift must be 0..=64");
        }
        if self.check_every == 0 || self.confirm_checks == 0 {
            return bad("check_every and confirm_checks must be positive");
        }
        if self.quotas.is_some_and(|q| q.iter().sum::<usize>() == 0) {
            return bad("quotas must give the batch at least one row");
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
    /// With earlier forgets guarded (`Options::guard_earlier`): how much of the step's
    /// gradient the guard took out (minus the cosine between the step's and the guard rows'
    /// gradients where they conflicted, so in (0, 1]; else 0); `None` without a guard.
    pub guard_cut: Option<f32>,
    pub ms: f64,
}

/// What one stopping check saw: a check passes when none of it counts against C (which
/// counts depends on `strict` and `Options::hold_earlier`; see the step loop).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckFindings {
    /// Questions asked on C's views ("who" and "is this C?").
    pub questions: usize,
    /// Answers on C's views that name C or confirm "is this C?".
    pub named_c: usize,
    /// "Who" answers on C's views that name another known person: whom, once per answer.
    pub named_other: Vec<String>,
    /// Answers on C's views that are neither well-formed nor one of the above (rambling, an
    /// answer of the wrong kind).
    pub ill_formed: usize,
    /// The package's own photos of C whose "who" is not refused (`Options::hold_own`).
    pub own_not_refused: usize,
    /// Replayed images of earlier forgets whose "who" is not refused (counted only with
    /// `Options::hold_earlier`, the only time they count against a check).
    pub earlier_not_refused: usize,
}

impl CheckFindings {
    /// Whether anything about C itself counted against the check (its views' answers or the
    /// package's photos of C), not only earlier forgets' replayed images.
    pub fn against_c(&self) -> bool {
        self.on_views() || self.own_not_refused > 0
    }

    /// Whether any answer on C's views is not well-formed (names C or another person, or
    /// rambles): what the strict stopping rule asks of the views.
    pub fn on_views(&self) -> bool {
        self.named_c > 0 || !self.named_other.is_empty() || self.ill_formed > 0
    }

    /// Classifies a check's answers on C's views (the first `n_who` are "who" answers, the
    /// rest "is this C?") and takes the photo counts as they are.
    pub fn of(
        answers_on_views: &[String],
        n_who: usize,
        concept: &str,
        voc: &Vocabulary,
        own_not_refused: usize,
        earlier_not_refused: usize,
    ) -> CheckFindings {
        let mut f = CheckFindings {
            questions: answers_on_views.len(),
            own_not_refused,
            earlier_not_refused,
            ..CheckFindings::default()
        };
        for (i, a) in answers_on_views.iter().enumerate() {
            let v = if i < n_who {
                answers::who(a, concept, voc)
            } else {
                answers::is_this(a, concept, voc)
            };
            match v {
                answers::Verdict::Leak => f.named_c += 1,
                answers::Verdict::Misattributed(o) => f.named_other.push(o),
                v if !v.well_formed() => f.ill_formed += 1,
                _ => {}
            }
        }
        f
    }
}

/// For people: what counted against C, e.g. "2 of 16 answers on its views named another
/// person (felix fischer x2), 1 of the package's photos of C not refused".
impl std::fmt::Display for CheckFindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.questions;
        let mut parts = Vec::new();
        if self.named_c > 0 {
            parts.push(format!(
                "{} of {q} answers on its views named C",
                self.named_c
            ));
        }
        if !self.named_other.is_empty() {
            let mut whom: BTreeMap<&str, usize> = BTreeMap::new();
            for o in &self.named_other {
                *whom.entry(o).or_default() += 1;
            }
            let whom: Vec<String> = whom.iter().map(|(o, n)| format!("{o} x{n}")).collect();
            parts.push(format!(
                "{} of {q} answers on its views named another person ({})",
                self.named_other.len(),
                whom.join(", ")
            ));
        }
        if self.ill_formed > 0 {
            parts.push(format!(
                "{} of {q} answers on its views ill-formed",
                self.ill_formed
            ));
        }
        if self.own_not_refused > 0 {
            parts.push(format!(
                "{} of the package's photos of C not refused",
                self.own_not_refused
            ));
        }
        if self.earlier_not_refused > 0 {
            parts.push(format!(
                "{} replayed images of earlier forgets not refused",
                self.earlier_not_refused
            ));
        }
        if parts.is_empty() {
            return f.write_str("nothing against C");
        }
        f.write_str(&parts.join(", "))
    }
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
    /// Retain images the collateral watch asked about at each check (those the anchor names).
    pub watched_images: usize,
    /// Of those, the ones that stopped being named at some check (their rows were then
    /// drawn first).
    pub flagged_images: usize,
    /// Retain images of earlier forgets' people replayed (and checked) by this forget.
    pub replayed_images: usize,
    /// Of those, the ones not refused at the start or at some check (drawn first).
    pub lapsed_images: usize,
    /// Retain images of people still known that earlier forgets took along, repaired by
    /// this forget (`Options::repair_drift`).
    pub repaired_images: usize,
    /// The confusers whose retain images the concept's views were mixed with
    /// (`Options::confuser_mix`), likeliest first.
    pub confusers: Vec<String>,
    /// The look-alikes the collateral watch left out (`Options::watch_skip`): known people
    /// whose "this is <name>" the original adapter finds likely on the concept's views
    /// (`Options::confuser_logp`), likeliest first; empty without a watch.
    pub lookalikes: Vec<String>,
    /// Steps whose gradient would have raised the guarded earlier forgets' loss and was
    /// projected (`Options::guard_earlier`; 0 without a guard).
    pub guarded_steps: usize,
    pub steps: Vec<StepRecord>,
    /// Stopping checks run (`forgotten` is the last one's verdict; false when none ran).
    pub checks: usize,
    /// What the last stopping check found (`None` when none ran).
    pub last_check: Option<CheckFindings>,
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

/// One train step on some engine: `(state, batch, guard, lr, w_ce, w_kl) -> losses`; a
/// `guard` batch holds rows whose loss the step must not raise (`Options::guard_earlier`).
pub type StepFn<'a> = dyn FnMut(
        &mut TrainState,
        &TrainBatch,
        Option<&TrainBatch>,
        f32,
        f32,
        f32,
    ) -> lethe_model::Result<StepLosses>
    + 'a;

/// The package's language, for the facet builder (training wordings only).
pub fn language(pkg: &Package) -> Language {
    let m = pkg.manifest();
    Language {
        who: m.prompts.who.clone(),
        is_this: m.prompts.is_this.clone(),
        describe: m.prompts.describe.clone(),
        fact: m.prompts.fact.clone(),
        looks: m.prompts.looks.clone(),
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

pub use crate::answers::{confirms, names_concept};

/// What earlier forgets left behind that this one must respect.
#[derive(Debug, Clone, Default)]
pub struct Prior {
    /// Concepts forgotten before, in order (names only: nothing of the person is kept).
    /// Their name tokens stay in K_V, so the KL never pulls them back, and their images
    /// leave the retain set.
    pub forgotten: Vec<String>,
    /// The package's original adapter (`None` = the adapter this forget starts from): the
    /// collateral watch protects the retain images it names, and with
    /// [`Options::kl_to_original`] the KL (and T3/T4's answers) are anchored to it.
    pub original: Option<Adapter>,
}

/// The recognition queries of the stopping rule over `n_views` features rows: the "who"
/// and "is C ...?" wordings the facets train on, spread over the views.
/// One guess per recognition query (the first `n_who` are "who" questions): `who` for
/// those, `is_this` for the rest.
fn stranger_guesses(q: &[Query], n_who: usize, who: &str, is_this: &str) -> Vec<Option<String>> {
    (0..q.len())
        .map(|i| Some(if i < n_who { who } else { is_this }.to_string()))
        .collect()
}

fn as_strs(g: &[Option<String>]) -> Vec<Option<&str>> {
    g.iter().map(|x| x.as_deref()).collect()
}

fn recognition_queries(
    lang: &Language,
    concept: &str,
    n_views: usize,
    method: Method,
) -> (Vec<Query>, usize) {
    let (who, is_this) = match method {
        Method::Siu => (&lang.who[..], &lang.is_this[..]),
        _ => (
            &lang.who[..lang.who.len().min(6)],
            &lang.is_this[..lang.is_this.len().min(2)],
        ),
    };
    let per_view = |l: &[String], v: usize, k: usize| -> Vec<String> {
        (0..k.min(l.len()))
            .map(|j| l[(v * k + j) % l.len()].clone())
            .collect()
    };
    let (kw, ki) = match method {
        Method::Siu => (4, 4),
        _ => (who.len(), is_this.len()),
    };
    let mut q = Vec::new();
    for v in 0..n_views {
        for w in per_view(who, v, kw) {
            q.push(Query::about(w, v));
        }
    }
    let n_who = q.len();
    for v in 0..n_views {
        for t in per_view(is_this, v, ki) {
            q.push(Query::about(t.replace("{name}", concept), v));
        }
    }
    (q, n_who)
}

/// Whether any of the answers (the first `n_who` "who", the rest "is this C?") names the
/// concept or confirms it: the paper's stopping rule, and whether the model recognised the
/// image at all. The strict rule (SIU) asks more of the views: every answer well-formed
/// ([`CheckFindings::on_views`]).
fn names_or_confirms(answers: &[String], n_who: usize, concept: &str) -> bool {
    answers[..n_who].iter().any(|a| names_concept(a, concept))
        || answers[n_who..].iter().any(|a| confirms(a))
}

/// Stacks views `[H,W,3]` into `[N,H,W,3]`.
fn stack(views: &[Array3<f32>]) -> Array4<f32> {
    let (h, w, c) = views[0].dim();
    let mut out = Array4::zeros((views.len(), h, w, c));
    for (i, v) in views.iter().enumerate() {
        out.slice_mut(s![i, .., .., ..]).assign(v);
    }
    out
}

/// Forgets `concept` shown in `image` (`[1,64,64,3]`, 0..255), starting from `adapter`.
/// `engine` (ORT on the device) serves the model's own answers, reference log-probs and the
/// stopping checks; `step` runs the train-step graph. `prior` says what earlier forgets left.
#[allow(clippy::too_many_arguments)]
pub fn forget(
    pkg: &Package,
    engine: &mut dyn Engine,
    step: &mut StepFn,
    adapter: &Adapter,
    image: ArrayView4<f32>,
    concept: &str,
    opts: &Options,
    prior: &Prior,
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
    let forgotten: Vec<String> = prior.forgotten.iter().map(|c| normalise(c)).collect();
    let a0 = adapter.as_slice();
    // The package's original adapter, where the prior names it: what the watch protects.
    let first_adapter = prior.original.as_ref().map_or(a0, |a| a.as_slice());
    // What the KL keeps the model close to (and T3/T4's answers come from).
    let anchor = match opts.kl_to_original {
        true => first_adapter,
        false => a0,
    };
    let strict = opts.method == Method::Siu;
    let voc = metrics::vocabulary(&lang);

    // Views of the one image, then the retain set's images; features once (frozen encoder).
    let view_imgs = augment::views_at(
        image.slice(s![0, .., .., ..]),
        opts.views,
        opts.seed,
        opts.augment,
    );
    let view_feats = encode_images(engine, stack(&view_imgs).view())?;
    // The concept's own views (the stopping rule asks about these; confuser views follow).
    let n_concept = view_imgs.len();
    // The package's retain set, read once: T5/T6 rows and the concept's own photos.
    let retain_set = if strict { Some(pkg.retain()?) } else { None };
    // Drift is repaired only after an earlier forget moved the model.
    let repairing = strict && opts.repair_drift > 0 && first_adapter != a0;
    // How likely the original finds each known person's "this is <name>" on the concept's
    // views: the confusers of the confuser views, of the drift repair and of the watch,
    // scored once.
    let people: Vec<String> = lang
        .names
        .iter()
        .filter(|n| **n != concept && !forgotten.contains(n))
        .cloned()
        .collect();
    let name_scores = match strict && (opts.confuser_mix > 0 || repairing) {
        true => Some(name_logp(
            engine,
            first_adapter,
            &tok,
            view_feats.view(),
            &lang,
            &people,
        )?),
        false => None,
    };
    let (retain_labels, retain_feats) = if let Some(set) = &retain_set {
        // C's look-alike is not repaired: naming him again on his photos pulls C's towards
        // his name (the watch leaves him out for the same reason).
        let spare = match (&name_scores, repairing) {
            (Some(lp), true) => confusers(&people, lp, opts.watch_skip, opts.confuser_logp),
            _ => Vec::new(),
        };
        let drift = Drift {
            start: a0,
            original: first_adapter,
            tok: &tok,
            lang: &lang,
            max: if repairing { opts.repair_drift } else { 0 },
            spare,
            forgotten: &forgotten,
            set,
            per_identity: opts.retain_per_identity,
            lookalike_logp: opts.confuser_logp,
        };
        retain_rows(
            set,
            engine,
            &concept,
            &forgotten,
            opts.retain_per_identity,
            opts.retain_nearest,
            opts.replay_views,
            opts.seed,
            &view_feats,
            &drift,
        )?
    } else {
        (Vec::new(), None)
    };
    // Views between the concept and its confusers, after the concept's own: they are views
    // to the facets and to the row offsets below; the stopping rule and the watch's confuser
    // scoring use the concept's own (`n_concept`).
    let mut mixed_with = Vec::new();
    let view_feats = match (&retain_set, &name_scores) {
        (Some(set), Some(lp)) if opts.confuser_mix > 0 => {
            let mut theirs = Vec::new();
            for p in confusers(&people, lp, opts.confusers_mixed, opts.confuser_logp) {
                if let Some(f) = own_images(set, engine, &p, opts.retain_per_identity)? {
                    theirs.push(f);
                    mixed_with.push(p);
                }
            }
            mixed_views(&view_feats, &theirs, opts.confuser_mix, opts.confuser_alpha)
        }
        _ => view_feats,
    };
    let name_scores = name_scores.map(|lp| people.into_iter().zip(lp).collect::<BTreeMap<_, _>>());
    let n_views = view_feats.shape()[0];
    let mut feats = match &retain_feats {
        Some(r) => ndarray::concatenate(Axis(0), &[view_feats.view(), r.view()])
            .map_err(|e| ModelError::Shape(e.to_string()))?,
        None => view_feats.clone(),
    };
    // The package's own photos of the concept, asked about (never trained on) when
    // `hold_own`: their rows follow every training row's.
    let own_feats = match (&retain_set, opts.hold_own) {
        (Some(set), true) => own_images(set, engine, &concept, opts.retain_per_identity)?,
        _ => None,
    };
    let n_own = own_feats.as_ref().map_or(0, |f| f.shape()[0]);
    let own_at = feats.shape()[0];
    if let Some(o) = &own_feats {
        feats = ndarray::concatenate(Axis(0), &[feats.view(), o.view()])
            .map_err(|e| ModelError::Shape(e.to_string()))?;
    }

    // Does the model recognise the concept in this image at all?
    let (rq, n_who) = recognition_queries(&lang, &concept, 1, opts.method);
    let knowing = stranger_guesses(
        &rq,
        n_who,
        &metrics::fill(&lang.who_answer, &concept),
        "yes",
    );
    let orig = answer_guided(engine, a0, &tok, view_feats.view(), &rq, &as_strs(&knowing))?;
    let mut warnings = Vec::new();
    // After earlier forgets the current model can fail to name C on a photo the original
    // model names C on (someone else's forget took the photo along): the photo is C's as far
    // as the model ever knew, and C, not forgotten before, is still there to forget (20
    // forgets in a row: such photos were refused; ARCHITECTURE.md). A person forgotten
    // before is not forgotten again.
    let current_knows = names_or_confirms(&orig, n_who, &concept);
    let original_knows = !current_knows
        && !forgotten.contains(&concept)
        && first_adapter != a0
        && names_or_confirms(
            &answer_guided(
                engine,
                first_adapter,
                &tok,
                view_feats.view(),
                &rq,
                &as_strs(&knowing),
            )?,
            n_who,
            &concept,
        );
    if original_knows {
        warnings.push(format!(
            "the current model does not name {concept:?} in the image (it answered {:?}), the original model does: forgetting",
            orig[0]
        ));
    } else if !current_knows {
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

    // The anchor model's own text answers (T3 about the concept, T4 about others).
    let fill = metrics::fill;
    let mut ch = facets::Chooser::new(opts.seed.wrapping_add(99));
    let mut retain_names: Vec<&String> = lang
        .names
        .iter()
        .filter(|n| **n != concept && !forgotten.contains(n))
        .collect();
    for i in (1..retain_names.len()).rev() {
        retain_names.swap(i, ch.below(i + 1));
    }
    retain_names.truncate(opts.retain_identities);
    let concept_wordings: Vec<&String> = match opts.method {
        Method::Siu => lang.fact.iter().chain(&lang.looks).collect(),
        _ => vec![&lang.fact[0], &lang.looks[0]],
    };
    // (wording, name) of each text question.
    let mut text_src: Vec<(&String, &str)> = concept_wordings
        .iter()
        .map(|t| (*t, concept.as_str()))
        .collect();
    let n_concept_text = text_src.len();
    for n in &retain_names {
        text_src.push((&lang.fact[ch.below(lang.fact.len())], n.as_str()));
        text_src.push((&lang.looks[ch.below(lang.looks.len())], n.as_str()));
    }
    let text_q: Vec<String> = text_src.iter().map(|(t, n)| fill(t, n)).collect();
    // Guess each answer as the package's text probes answer its canonical wording.
    let known = metrics::known_text(&pkg.probe_list()?);
    let canonical = |t: &String, n: &str| {
        let list = if lang.fact.contains(t) {
            &lang.fact
        } else {
            &lang.looks
        };
        fill(&list[0], n)
    };
    let text_guess: Vec<Option<&str>> = text_src
        .iter()
        .map(|(t, n)| known.get(&canonical(t, n)).map(String::as_str))
        .collect();
    let text_a = answer_guided(
        engine,
        anchor,
        &tok,
        feats.view(),
        &text_q
            .iter()
            .map(|q| Query::text(q.clone()))
            .collect::<Vec<_>>(),
        &text_guess,
    )?;
    let pairs: Vec<(String, String)> = text_q.into_iter().zip(text_a).collect();
    let looks_at = concept_wordings
        .iter()
        .position(|w| **w == lang.looks[0])
        .unwrap_or(1);
    let original = OriginalAnswers {
        concept_looks: pairs[looks_at].1.clone(),
        concept_text: pairs[..n_concept_text].to_vec(),
        others_text: pairs[n_concept_text..].to_vec(),
    };
    let (samples, fake, cf) = facets::build(
        opts.method,
        &lang,
        &concept,
        &original,
        n_views,
        &retain_labels,
        opts.sizes,
        opts.seed,
    );
    let toks: Vec<TokSample> = samples
        .iter()
        .map(|s| masks::tokenise(s, &tok))
        .collect::<Result<_, _>>()?;
    let mut lookalikes = Vec::new();
    let mut watch = if strict && opts.watch_rows > 0 {
        let mut w = Watch::new(
            engine,
            first_adapter,
            &tok,
            feats.view(),
            &lang,
            &retain_labels,
            n_views,
            &samples,
            opts.release_after,
        )?;
        lookalikes = w.skip_confusers(
            engine,
            first_adapter,
            &tok,
            feats.view(),
            &lang,
            n_concept,
            opts.watch_skip,
            opts.confuser_logp,
            name_scores.as_ref(),
        )?;
        w
    } else {
        Watch::default()
    };

    // Reference log-probs of the anchor model, computed for a row the first time a batch
    // draws it.
    let views_of: Vec<Option<usize>> = toks.iter().map(|t| t.view).collect();
    let (all_f, all_h) = gather_features(feats.view(), &views_of)?;
    let t_len = tok.text_len();
    let all_tokens = Array2::from_shape_fn((toks.len(), t_len), |(r, c)| toks[r].tokens[c]);
    let mut ref_lp = RefLogprobs::new(toks.len(), t_len, tok.vocab_size());
    // Which rows' KL goes to the original adapter instead of `anchor`.
    let to_original: Vec<bool> = samples
        .iter()
        .map(|s| opts.kl_retain_to_original && s.facet == facets::Facet::T5Retained)
        .collect();
    // K_V: the concept's name tokens and, for SIU, every name forgotten before.
    let mut masked = tok.encode(&concept)?;
    if opts.method == Method::Siu {
        for f in &forgotten {
            masked.extend(tok.encode(f)?);
        }
    }
    let vmask = match opts.method {
        Method::Siu | Method::SiuPaper => masks::vocab_mask(tok.vocab_size(), &masked),
        _ => masks::vocab_mask(tok.vocab_size(), &[]),
    };
    progress(&Progress::Prepared {
        samples: samples.len(),
        views: n_views,
    });
    let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;

    // Steps.
    let bt = pkg.train_batch();
    if let Some(q) = opts.quotas.filter(|q| q.iter().sum::<usize>() > bt) {
        return Err(SiuError::BadOptions(format!(
            "quotas {q:?} ask for more rows than the train step's batch of {bt}"
        )));
    }
    let mut sampler = Sampler::new(
        &samples,
        opts.quotas.filter(|_| strict),
        bt,
        opts.seed,
        opts.watch_rows,
    );
    // Earlier forgets that have lapsed already are replayed first from the first step.
    let mut replays = if strict {
        Watch::replays(&lang, &retain_labels, n_views, &samples, opts.replay_views)
    } else {
        Watch::default()
    };
    let lapsed = replays.lost(engine, a0, &tok, feats.view())?;
    replays.flag(&lapsed, &mut sampler);
    // Drift repaired: the watched images the forget starts without are drawn first from
    // the first step, not from the first check.
    if repairing {
        let drifted = watch.lost(engine, a0, &tok, feats.view())?;
        watch.flag(&drifted, &mut sampler);
    }
    let own = Watch::own(
        engine,
        a0,
        &tok,
        feats.view(),
        &lang,
        &concept,
        own_at..own_at + n_own,
    )?;
    // The guard's rows: the replay pool's, the lapsed images' first.
    let replay_rows: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].facet == facets::Facet::T6Replayed)
        .collect();
    let mut guard = (strict && opts.guard_earlier && !replay_rows.is_empty()).then(|| {
        let half = bt / 2;
        Stratum {
            all: Cycle::new(replay_rows, half),
            flagged: Cycle::new(Vec::new(), half),
        }
    });
    let mut state = TrainState::from_adapter(adapter);
    let mut records = Vec::new();
    let (mut train_ms, mut check_ms) = (0.0, 0.0);
    let (rq_all, n_who_all) = recognition_queries(&lang, &concept, n_concept, opts.method);
    let mut streak = 0;
    let mut forgotten_now = false;
    let mut checks = 0;
    let mut last_check = None;
    let mut check_guess = stranger_guesses(&rq_all, n_who_all, &lang.refusal, "no");
    let mut stop_reason = format!("step budget of {} spent", opts.max_steps);
    for k in 0..opts.max_steps {
        let rows = sampler.next_batch();
        ref_lp.fill(
            engine,
            [anchor, first_adapter],
            &to_original,
            feats.view(),
            &views_of,
            &all_tokens,
            &rows,
        )?;
        let batch = make_batch(&toks, &rows, &all_f, &all_h, &ref_lp.lp, &vmask);
        // The guard's loss is cross-entropy only: its rows' reference log-probs are unused.
        let guard_batch = guard.as_mut().map(|g| {
            g.flagged.set(
                replays
                    .flagged
                    .iter()
                    .flat_map(|&i| replays.images[i].rows.iter().copied()),
                true,
            );
            let grows = g.draw(&mut ch);
            make_batch(&toks, &grows, &all_f, &all_h, &ref_lp.lp, &vmask)
        });
        let lr = opts.lr_at(k);
        let ts = Instant::now();
        let losses = step(
            &mut state,
            &batch,
            guard_batch.as_ref(),
            lr,
            opts.w_ce,
            opts.w_kl,
        )?;
        let ms = ts.elapsed().as_secs_f64() * 1e3;
        train_ms += ms;
        records.push(StepRecord {
            step: k + 1,
            lr,
            loss: losses.loss,
            ce: losses.ce,
            kl: losses.kl,
            grad_norm: losses.grad_norm,
            guard_cut: losses.guard_cut,
            ms,
        });
        if !losses.loss.is_finite() {
            stop_reason = format!("loss is not finite at step {}", k + 1);
            break;
        }
        progress(&Progress::Step {
            step: k + 1,
            max_steps: opts.max_steps,
            lr,
            losses,
        });
        let done = k + 1;
        if done >= opts.min_steps && done % opts.check_every == 0 {
            let tc = Instant::now();
            // Guess the previous check's answers (the stranger's answers at the first).
            let ans = answer_guided(
                engine,
                state.params.as_slice().unwrap(),
                &tok,
                view_feats.view(),
                &rq_all,
                &as_strs(&check_guess),
            )?;
            check_guess = ans.iter().cloned().map(Some).collect();
            let lost = watch.lost(engine, state.params.as_slice().unwrap(), &tok, feats.view())?;
            watch.after_check(&ans[..n_who_all], &lost, &concept, &voc, &mut sampler);
            let lapsed =
                replays.lost(engine, state.params.as_slice().unwrap(), &tok, feats.view())?;
            replays.flag(&lapsed, &mut sampler);
            let still_named =
                own.lost(engine, state.params.as_slice().unwrap(), &tok, feats.view())?;
            check_ms += tc.elapsed().as_secs_f64() * 1e3;
            let saw = CheckFindings::of(
                &ans,
                n_who_all,
                &concept,
                &voc,
                still_named.len(),
                if opts.hold_earlier { lapsed.len() } else { 0 },
            );
            // Strict (SIU): every answer on the views well-formed; else (the baselines) none
            // naming C or confirming it. Either way the photos counted above must be clear.
            let views_clear = if strict {
                !saw.on_views()
            } else {
                !names_or_confirms(&ans, n_who_all, &concept)
            };
            let f = views_clear && saw.own_not_refused == 0 && saw.earlier_not_refused == 0;
            progress(&Progress::Checked {
                step: done,
                forgotten: f,
            });
            streak = if f { streak + 1 } else { 0 };
            forgotten_now = f;
            checks += 1;
            last_check = Some(saw);
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
            watched_images: watch.images.len(),
            flagged_images: watch.flagged.len(),
            replayed_images: replays.images.len(),
            repaired_images: retain_labels.iter().filter(|l| l.repair).count(),
            lapsed_images: replays.flagged.len(),
            confusers: mixed_with,
            lookalikes,
            guarded_steps: records
                .iter()
                .filter(|r| r.guard_cut.is_some_and(|c| c > 0.0))
                .count(),
            checks,
            last_check,
            forgotten: forgotten_now,
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

/// The collateral watch: the canonical "who" on every retain image of someone still known
/// that the anchor model names correctly, and the training rows of each such image.
/// Invariants: an image is flagged at most once and never after its person is released; a
/// released person stays released for the rest of the run.
#[derive(Default)]
struct Watch {
    /// The watched images, in retain-set order (indices below are into this list).
    images: Vec<Watched>,
    /// Watched images whose rows the sampler draws first.
    flagged: std::collections::BTreeSet<usize>,
    /// People the concept's views were taken for at `release_after` checks: no longer
    /// protected (naming them on C's pictures is worse than losing some of theirs).
    released: std::collections::BTreeSet<String>,
    /// Checks at which the concept's views were taken for each person.
    misnamed: BTreeMap<String, usize>,
    release_after: usize,
}

/// One watched retain image.
struct Watched {
    /// The canonical "who" about it.
    query: Query,
    /// The answer expected: the anchor's "this is <name>" (collateral watch), the refusal
    /// (earlier forgets).
    expect: String,
    /// Who it shows.
    name: String,
    /// Its training rows (T5).
    rows: Vec<usize>,
}

impl Watch {
    #[allow(clippy::too_many_arguments)]
    fn new(
        engine: &mut dyn Engine,
        anchor: &[f32],
        tok: &Tokenizer,
        feats: ArrayView3<f32>,
        lang: &Language,
        retain: &[RetainLabel],
        n_views: usize,
        samples: &[facets::Sample],
        release_after: usize,
    ) -> Result<Watch, SiuError> {
        let mut w = Watch {
            release_after,
            ..Watch::default()
        };
        for (r, label) in retain.iter().enumerate() {
            if let (Some(name), None) = (&label.name, &label.forgotten) {
                let row = n_views + r;
                w.images.push(Watched {
                    query: Query::about(lang.who[0].clone(), row),
                    expect: metrics::fill(&lang.who_answer, name),
                    name: name.clone(),
                    rows: (0..samples.len())
                        .filter(|&i| {
                            samples[i].facet == facets::Facet::T5Retained
                                && samples[i].view == Some(row)
                        })
                        .collect(),
                });
            }
        }
        // Watch only what the anchor gets right: a wrong answer there is not collateral.
        let lost = w.lost(engine, anchor, tok, feats)?;
        w.keep(|i, _| !lost.contains(&i));
        Ok(w)
    }

    /// The earlier forgets' watch: every replayed image (an earlier forget's person, from the
    /// retain set), expected to be refused, with its T6 rows. Nobody is released from it.
    /// Each image is asked about as itself; a lapsed one flags the rows of all its
    /// `per_image` views (laid out as [`retain_rows`] lays them out).
    fn replays(
        lang: &Language,
        retain: &[RetainLabel],
        n_views: usize,
        samples: &[facets::Sample],
        per_image: usize,
    ) -> Watch {
        let per = per_image.max(1);
        let mut w = Watch::default();
        let first = retain.iter().position(|l| l.forgotten.is_some());
        for r in first
            .into_iter()
            .flat_map(|f| (f..retain.len()).step_by(per))
        {
            let Some(name) = &retain[r].forgotten else {
                continue;
            };
            let row = n_views + r;
            w.images.push(Watched {
                query: Query::about(lang.who[0].clone(), row),
                expect: lang.refusal.clone(),
                name: name.clone(),
                rows: (0..samples.len())
                    .filter(|&i| {
                        samples[i].facet == facets::Facet::T6Replayed
                            && samples[i]
                                .view
                                .is_some_and(|v| (row..row + per).contains(&v))
                    })
                    .collect(),
            });
        }
        w
    }

    /// The concept's own photos (features rows `rows`, never trained on), expected to be
    /// refused: those the adapter the forget starts from (`start`) names the concept on.
    /// Any other answer there is not the concept's to forget.
    fn own(
        engine: &mut dyn Engine,
        start: &[f32],
        tok: &Tokenizer,
        feats: ArrayView3<f32>,
        lang: &Language,
        concept: &str,
        rows: std::ops::Range<usize>,
    ) -> Result<Watch, SiuError> {
        let mut w = Watch::default();
        for r in rows {
            w.images.push(Watched {
                query: Query::about(lang.who[0].clone(), r),
                expect: lang.refusal.clone(),
                name: concept.to_string(),
                rows: Vec::new(),
            });
        }
        let named = metrics::fill(&lang.who_answer, concept);
        let queries: Vec<Query> = w.images.iter().map(|x| x.query.clone()).collect();
        let guesses: Vec<Option<&str>> = queries.iter().map(|_| Some(named.as_str())).collect();
        let says = answer_guided(engine, start, tok, feats, &queries, &guesses)?;
        w.keep(|i, _| says[i] == named);
        Ok(w)
    }

    /// Keeps the watched images for which `f(index, image)` holds.
    fn keep(&mut self, f: impl Fn(usize, &Watched) -> bool) {
        let images = std::mem::take(&mut self.images);
        self.images = images
            .into_iter()
            .enumerate()
            .filter(|(i, x)| f(*i, x))
            .map(|(_, x)| x)
            .collect();
    }

    /// Leaves out of the watch the confusers among its people: of the `k` whose
    /// "this is <name>" the anchor finds likeliest, on average over the concept's `n_views`
    /// views, those at `min_logp` or above. `scored` holds those means where the caller has
    /// them already (the confuser views score every known person the same way). Returns
    /// the people left out, likeliest first.
    #[allow(clippy::too_many_arguments)]
    fn skip_confusers(
        &mut self,
        engine: &mut dyn Engine,
        anchor: &[f32],
        tok: &Tokenizer,
        feats: ArrayView3<f32>,
        lang: &Language,
        n_views: usize,
        k: usize,
        min_logp: f64,
        scored: Option<&BTreeMap<String, f64>>,
    ) -> Result<Vec<String>, SiuError> {
        let mut people: Vec<String> = self.images.iter().map(|x| x.name.clone()).collect();
        people.sort();
        people.dedup();
        if k == 0 || people.is_empty() || n_views == 0 {
            return Ok(Vec::new());
        }
        let known: Option<Vec<f64>> =
            scored.and_then(|m| people.iter().map(|p| m.get(p).copied()).collect());
        let mean = match known {
            Some(m) => m,
            None => {
                let views = feats.slice(s![..n_views, .., ..]);
                name_logp(engine, anchor, tok, views, lang, &people)?
            }
        };
        let skip = confusers(&people, &mean, k, min_logp);
        self.keep(|_, x| !skip.contains(&x.name));
        Ok(skip)
    }

    /// After a check: release the people the concept's views (`who` answers) were taken for
    /// at `release_after` checks, then flag the `lost` images of everyone else.
    fn after_check(
        &mut self,
        who: &[String],
        lost: &[usize],
        concept: &str,
        voc: &Vocabulary,
        sampler: &mut Sampler,
    ) {
        let taken_for: std::collections::BTreeSet<String> = who
            .iter()
            .filter_map(|a| match answers::who(a, concept, voc) {
                answers::Verdict::Misattributed(o) => Some(o),
                _ => None,
            })
            .collect();
        for o in taken_for {
            let seen = self.misnamed.entry(o.clone()).or_insert(0);
            *seen += 1;
            if *seen >= self.release_after && self.released.insert(o.clone()) {
                let rows: Vec<usize> = self
                    .images
                    .iter()
                    .filter(|x| x.name == o)
                    .flat_map(|x| x.rows.iter().copied())
                    .collect();
                sampler.unflag(&rows);
            }
        }
        self.flag(lost, sampler);
    }

    /// Flags the `lost` images of everyone not released.
    fn flag(&mut self, lost: &[usize], sampler: &mut Sampler) {
        for &i in lost {
            let x = &self.images[i];
            if !self.released.contains(&x.name) && self.flagged.insert(i) {
                sampler.flag(x.rows.iter().copied());
            }
        }
    }

    /// Indices of the watched images `params` no longer names as the anchor did.
    fn lost(
        &self,
        engine: &mut dyn Engine,
        params: &[f32],
        tok: &Tokenizer,
        feats: ArrayView3<f32>,
    ) -> Result<Vec<usize>, SiuError> {
        if self.images.is_empty() {
            return Ok(Vec::new());
        }
        let queries: Vec<Query> = self.images.iter().map(|x| x.query.clone()).collect();
        let guesses: Vec<Option<&str>> = self.images.iter().map(|x| Some(&*x.expect)).collect();
        let got = answer_guided(engine, params, tok, feats, &queries, &guesses)?;
        Ok((0..got.len())
            .filter(|&i| got[i] != self.images[i].expect)
            .collect())
    }
}

/// The mean log-probability, over the `views` (features `[N, tokens, dim]`), of the
/// canonical "this is <name>" for each of `people` under `params`.
fn name_logp(
    engine: &mut dyn Engine,
    params: &[f32],
    tok: &Tokenizer,
    views: ArrayView3<f32>,
    lang: &Language,
    people: &[String],
) -> Result<Vec<f64>, SiuError> {
    let n = views.shape()[0];
    if n == 0 || people.is_empty() {
        return Ok(vec![f64::NEG_INFINITY; people.len()]);
    }
    let (mut q, mut a) = (Vec::new(), Vec::new());
    for p in people {
        for v in 0..n {
            q.push(Query::about(lang.who[0].clone(), v));
            a.push(metrics::fill(&lang.who_answer, p));
        }
    }
    let lp = score(engine, params, tok, views, &q, &a)?;
    Ok(lp
        .chunks(n)
        .map(|views| views.iter().map(|r| r.iter().sum::<f64>()).sum::<f64>() / n as f64)
        .collect())
}

/// `views` followed by `k` views between them and other people's features (`theirs`, one
/// array per person): the `i`-th is `alpha * views[i % n] + (1 - alpha) * t[j]`, with `t` the
/// person `i % p` and `j` their `i / p`-th image (cyclically).
fn mixed_views(views: &Array3<f32>, theirs: &[Array3<f32>], k: usize, alpha: f32) -> Array3<f32> {
    let theirs: Vec<&Array3<f32>> = theirs.iter().filter(|t| t.shape()[0] > 0).collect();
    let (n, p) = (views.shape()[0], theirs.len());
    if k == 0 || n == 0 || p == 0 {
        return views.clone();
    }
    let mut extra = Vec::with_capacity(k);
    for i in 0..k {
        let t = theirs[i % p];
        let v = views.index_axis(Axis(0), i % n);
        let t = t.index_axis(Axis(0), (i / p) % t.shape()[0]);
        extra.push((&v * alpha + &t * (1.0 - alpha)).insert_axis(Axis(0)));
    }
    let mut parts = vec![views.view()];
    parts.extend(extra.iter().map(|e| e.view()));
    ndarray::concatenate(Axis(0), &parts).expect("views and retain images share a shape")
}

/// Of the `k` people with the highest log-probability (ties: the first listed), those at
/// `min_logp` or above.
fn confusers(people: &[String], logp: &[f64], k: usize, min_logp: f64) -> Vec<String> {
    let mut order: Vec<usize> = (0..people.len()).collect();
    order.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .filter(|&i| logp[i] >= min_logp)
        .map(|i| people[i].clone())
        .collect()
}

/// Features of at most `per_identity` of the retain set's images of `concept` (the first
/// listed), or `None` if it has none.
fn own_images(
    set: &RetainSet,
    engine: &mut dyn Engine,
    concept: &str,
    per_identity: usize,
) -> Result<Option<Array3<f32>>, SiuError> {
    match set.images_of(concept, per_identity) {
        Some(imgs) => Ok(Some(encode_images(engine, imgs.view())?)),
        None => Ok(None),
    }
}

/// Mean over image tokens, L2-normalised: one vector per image for similarity.
fn pooled(feats: &Array3<f32>) -> Array2<f32> {
    let mut m = feats.mean_axis(Axis(1)).expect("image tokens");
    for mut row in m.rows_mut() {
        let n = row.dot(&row).sqrt().max(1e-12);
        row.mapv_inplace(|x| x / n);
    }
    m
}

/// What drift a forget repairs: the retain images of people still known that the
/// `original` adapter names and the adapter the forget `start`s from no longer does.
struct Drift<'a> {
    start: &'a [f32],
    original: &'a [f32],
    tok: &'a Tokenizer,
    lang: &'a Language,
    /// At most this many images; 0 = none (the caller's choice wherever `start` is
    /// `original`: a first forget has nothing to repair).
    max: usize,
    /// People never repaired (the concept's look-alikes).
    spare: Vec<String>,
    /// The people forgotten before, whose look-alikes are not repaired either: those whose
    /// "this is <name>" the original finds at least `lookalike_logp` likely, on average over
    /// a forgotten person's first `per_identity` retain images in `set`.
    forgotten: &'a [String],
    set: &'a RetainSet,
    per_identity: usize,
    lookalike_logp: f64,
}

impl Drift<'_> {
    /// Indices of the drifted images among `names` (features `feats`; `None` = a stranger,
    /// never drifted; the `spare` and the forgotten people's look-alikes are left out), at
    /// most `max`, taken in turn from each person (one image of each first, then a second,
    /// ...) so that no one takes the whole quota.
    fn find(
        &self,
        engine: &mut dyn Engine,
        feats: ArrayView3<f32>,
        names: &[Option<&str>],
    ) -> Result<Vec<usize>, SiuError> {
        if self.max == 0 {
            return Ok(Vec::new());
        }
        let known: Vec<usize> = (0..names.len())
            .filter(|&i| names[i].is_some_and(|n| !self.spare.iter().any(|s| s == n)))
            .collect();
        let expect: Vec<String> = known
            .iter()
            .map(|&i| metrics::fill(&self.lang.who_answer, names[i].unwrap_or_default()))
            .collect();
        let queries: Vec<Query> = known
            .iter()
            .map(|&i| Query::about(self.lang.who[0].clone(), i))
            .collect();
        let guesses: Vec<Option<&str>> = expect.iter().map(|e| Some(e.as_str())).collect();
        let now = answer_guided(engine, self.start, self.tok, feats, &queries, &guesses)?;
        let lost: Vec<usize> = (0..known.len()).filter(|&j| now[j] != expect[j]).collect();
        if lost.is_empty() {
            return Ok(Vec::new());
        }
        let sub: Vec<Query> = lost.iter().map(|&j| queries[j].clone()).collect();
        let sub_guess: Vec<Option<&str>> = lost.iter().map(|&j| guesses[j]).collect();
        let then = answer_guided(engine, self.original, self.tok, feats, &sub, &sub_guess)?;
        let mut drifted: Vec<usize> = lost
            .iter()
            .zip(then)
            .filter(|(&j, a)| *a == expect[j])
            .map(|(&j, _)| known[j])
            .collect();
        // A look-alike of someone forgotten before is left drifted: naming him again on his
        // photos names the forgotten person on theirs (20 in a row: four forgets rolled back
        // for bringing an earlier forget back; ARCHITECTURE.md).
        let mut people: Vec<String> = drifted
            .iter()
            .filter_map(|&i| names[i].map(String::from))
            .collect();
        people.sort();
        people.dedup();
        let mut near = std::collections::BTreeSet::new();
        for f in self.forgotten {
            let Some(theirs) = own_images(self.set, engine, f, self.per_identity)? else {
                continue;
            };
            let lp = name_logp(
                engine,
                self.original,
                self.tok,
                theirs.view(),
                self.lang,
                &people,
            )?;
            for (p, l) in people.iter().zip(lp) {
                if l >= self.lookalike_logp {
                    near.insert(p.clone());
                }
            }
        }
        drifted.retain(|&i| names[i].is_some_and(|n| !near.contains(n)));
        Ok(take_in_turn(&drifted, |i| names[i], self.max))
    }
}

/// At most `max` of `items`, one of each key first (in order of first appearance), then a
/// second of each, and so on; returned in the order of `items`.
fn take_in_turn<K: PartialEq>(items: &[usize], key: impl Fn(usize) -> K, max: usize) -> Vec<usize> {
    let mut rank = Vec::with_capacity(items.len());
    for (n, &i) in items.iter().enumerate() {
        let before = items[..n].iter().filter(|&&j| key(j) == key(i)).count();
        rank.push((before, n));
    }
    rank.sort_unstable();
    let mut out: Vec<usize> = rank.into_iter().take(max).map(|(_, n)| items[n]).collect();
    out.sort_unstable();
    out
}

/// The retain set's labels and features, without the concept; at most `per_identity`
/// images of each identity (and of strangers); of those the `nearest` images most similar
/// to any view of the concept (0 = all), plus every image of an identity forgotten before,
/// labelled as forgotten (its forget replayed, see [`RetainLabel::forgotten`]), each as
/// `replay_views` views.
/// Besides the nearest, up to `drift.max` images [`Drift::find`] finds drifted join, labelled
/// `repair`.
/// Invariant: the replayed rows come last, image by image, `replay_views` rows per image
/// with the image itself first ([`Watch::replays`] relies on it).
#[allow(clippy::too_many_arguments)]
fn retain_rows(
    set: &RetainSet,
    engine: &mut dyn Engine,
    concept: &str,
    forgotten: &[String],
    per_identity: usize,
    nearest: usize,
    replay_views: usize,
    seed: u64,
    views: &Array3<f32>,
    drift: &Drift,
) -> Result<(Vec<RetainLabel>, Option<Array3<f32>>), SiuError> {
    let mut count: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let mut keep = Vec::new();
    let mut replay = Vec::new();
    for e in &set.entries {
        let seen = count.entry(e.name.clone()).or_insert(0);
        if e.name.as_deref() == Some(concept) || *seen >= per_identity {
            continue;
        }
        *seen += 1;
        match &e.name {
            Some(n) if forgotten.contains(n) => replay.push(e),
            _ => keep.push(e),
        }
    }
    if keep.is_empty() {
        return Ok((Vec::new(), None));
    }
    let idx: Vec<usize> = keep.iter().map(|e| e.image).collect();
    let imgs = set.images.select(Axis(0), &idx);
    let mut feats = encode_images(engine, imgs.view())?;
    let names: Vec<Option<&str>> = keep.iter().map(|e| e.name.as_deref()).collect();
    let drifted = drift.find(engine, feats.view(), &names)?;
    let mut repair = vec![false; keep.len()];
    for &i in &drifted {
        repair[i] = true;
    }
    if nearest > 0 && nearest < keep.len() {
        // Similarity of each retain image to its nearest view of the concept.
        let sim = pooled(&feats).dot(&pooled(views).t());
        let score: Vec<f32> = sim
            .rows()
            .into_iter()
            .map(|r| r.fold(f32::NEG_INFINITY, |m, &x| m.max(x)))
            .collect();
        let mut order: Vec<usize> = (0..keep.len()).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        order.truncate(nearest);
        let extra: Vec<usize> = drifted
            .iter()
            .copied()
            .filter(|i| !order.contains(i))
            .collect();
        order.extend(extra);
        order.sort_unstable();
        feats = feats.select(Axis(0), &order);
        keep = order.iter().map(|&i| keep[i]).collect();
        repair = order.iter().map(|&i| repair[i]).collect();
    }
    let mut labels: Vec<RetainLabel> = keep
        .iter()
        .zip(repair)
        .map(|(e, repair)| RetainLabel {
            name: e.name.clone(),
            description: e.description.clone(),
            forgotten: None,
            repair,
        })
        .collect();
    if !replay.is_empty() {
        let per = replay_views.max(1);
        let mut imgs = Vec::with_capacity(replay.len() * per);
        for e in &replay {
            let img = set.images.slice(s![e.image, .., .., ..]);
            let at = seed.wrapping_add(7919 * (e.image as u64 + 1));
            imgs.extend(augment::views_at(img, per, at, augment::Strength::Camera));
            labels.extend((0..per).map(|_| RetainLabel {
                name: None,
                description: e.description.clone(),
                forgotten: e.name.clone(),
                repair: false,
            }));
        }
        let replay_feats = encode_images(engine, stack(&imgs).view())?;
        feats = ndarray::concatenate(Axis(0), &[feats.view(), replay_feats.view()])
            .map_err(|e| ModelError::Shape(e.to_string()))?;
    }
    Ok((labels, Some(feats)))
}

/// Draws batch rows. Uniform over all samples (each epoch shuffled), or, with quotas,
/// stratified: every batch has `quotas[pool]` rows of each pool (forget, text, retain,
/// replay), each pool cycling through its own shuffled order; the rows of empty pools go to
/// the first non-empty one. Flagged rows come first within their pool's share, up to its
/// flag cap, cycling through their own order: rows the collateral watch flags take up to
/// `watch_rows` of the retain share; replay rows of a lapsed earlier forget may take the
/// whole replay share.
/// Invariant: a batch has exactly `bt` rows once any pool has members; a row is flagged in
/// the pool it belongs to, and only there.
struct Sampler {
    strata: Vec<Stratum>,
    /// Index into `strata` of each sample's pool.
    stratum_of: Vec<usize>,
    ch: facets::Chooser,
}

/// One pool of the sampler: all its rows, and those flagged (`flagged.n` is the cap).
struct Stratum {
    all: Cycle,
    flagged: Cycle,
}

/// A set of rows drawn in shuffled rounds, `n` per batch.
struct Cycle {
    members: Vec<usize>,
    order: Vec<usize>,
    n: usize,
}

impl Cycle {
    fn new(members: Vec<usize>, n: usize) -> Cycle {
        Cycle {
            members,
            order: Vec::new(),
            n,
        }
    }

    fn draw(&mut self, k: usize, ch: &mut facets::Chooser, rows: &mut Vec<usize>) {
        for _ in 0..k {
            if self.order.is_empty() {
                self.order = self.members.clone();
                for i in (1..self.order.len()).rev() {
                    self.order.swap(i, ch.below(i + 1));
                }
            }
            rows.push(self.order.pop().expect("a cycle has members"));
        }
    }

    /// Adds or removes `rows`; a changed set starts a new round.
    fn set(&mut self, rows: impl IntoIterator<Item = usize>, on: bool) {
        let before = self.members.len();
        for r in rows {
            let has = self.members.contains(&r);
            if on && !has {
                self.members.push(r);
            } else if !on && has {
                self.members.retain(|&m| m != r);
            }
        }
        if self.members.len() != before {
            self.order.clear();
        }
    }
}

impl Stratum {
    /// `all.n` rows: the flagged ones first (at most `flagged.n`), then the others.
    fn draw(&mut self, ch: &mut facets::Chooser) -> Vec<usize> {
        let mut rows = Vec::new();
        let mut n = self.all.n;
        if !self.flagged.members.is_empty() {
            let k = self.flagged.n.min(n);
            self.flagged.draw(k, ch, &mut rows);
            n -= k;
        }
        self.all.draw(n, ch, &mut rows);
        rows
    }
}

impl Sampler {
    fn new(
        samples: &[facets::Sample],
        quotas: Option<[usize; 4]>,
        bt: usize,
        seed: u64,
        watch_rows: usize,
    ) -> Sampler {
        let ch = facets::Chooser::new(seed.wrapping_add(99));
        let mut strata = Vec::new();
        let mut stratum_of = vec![0; samples.len()];
        match quotas {
            None => strata.push(Stratum {
                all: Cycle::new((0..samples.len()).collect(), bt),
                flagged: Cycle::new(Vec::new(), 0),
            }),
            Some(q) => {
                let kinds = [Pool::Forget, Pool::Text, Pool::Retain, Pool::Replay];
                for (kind, n) in kinds.into_iter().zip(q) {
                    let members: Vec<usize> = (0..samples.len())
                        .filter(|&i| samples[i].facet.pool() == kind)
                        .collect();
                    if members.is_empty() {
                        continue;
                    }
                    for &m in &members {
                        stratum_of[m] = strata.len();
                    }
                    let cap = match kind {
                        Pool::Retain => watch_rows,
                        Pool::Replay => n,
                        Pool::Forget | Pool::Text => 0,
                    };
                    strata.push(Stratum {
                        all: Cycle::new(members, n),
                        flagged: Cycle::new(Vec::new(), cap),
                    });
                }
                // Rows of empty pools (and any shortfall) go to the first non-empty pool.
                let given: usize = strata.iter().map(|p| p.all.n).sum();
                if let Some(first) = strata.first_mut() {
                    first.all.n += bt.saturating_sub(given);
                }
            }
        }
        Sampler {
            strata,
            stratum_of,
            ch,
        }
    }

    /// Flags `rows`; they stay flagged until unflagged.
    fn flag(&mut self, rows: impl IntoIterator<Item = usize>) {
        self.mark(rows, true);
    }

    /// Removes `rows` from the flagged rows.
    fn unflag(&mut self, rows: &[usize]) {
        self.mark(rows.iter().copied(), false);
    }

    fn mark(&mut self, rows: impl IntoIterator<Item = usize>, on: bool) {
        for r in rows {
            self.strata[self.stratum_of[r]].flagged.set([r], on);
        }
    }

    /// The flagged rows, pool by pool.
    #[cfg(test)]
    fn flagged(&self) -> Vec<usize> {
        self.strata
            .iter()
            .flat_map(|p| p.flagged.members.iter().copied())
            .collect()
    }

    fn next_batch(&mut self) -> Vec<usize> {
        let mut rows = Vec::new();
        for p in &mut self.strata {
            rows.extend(p.draw(&mut self.ch));
        }
        rows
    }
}

/// The anchor model's log-probabilities of the training rows (the KL term's reference),
/// each computed the first time a batch draws its row: a forget stops after 10-14 steps of
/// 8 rows, so about half of the ~200 facet rows are never drawn and never scored. A row's
/// values do not depend on when, or with which other rows, it was scored.
struct RefLogprobs {
    /// `[rows, T, V]`; a row is meaningful once `have[row]`.
    lp: Array3<f32>,
    have: Vec<bool>,
}

impl RefLogprobs {
    fn new(rows: usize, t_len: usize, vocab: usize) -> RefLogprobs {
        RefLogprobs {
            lp: Array3::zeros((rows, t_len, vocab)),
            have: vec![false; rows],
        }
    }

    /// Scores the rows of `rows` not scored yet: under `anchors[0]`, or `anchors[1]` where
    /// `second[row]`; one batch per anchor.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        engine: &mut dyn Engine,
        anchors: [&[f32]; 2],
        second: &[bool],
        feats: ArrayView3<f32>,
        views_of: &[Option<usize>],
        tokens: &Array2<i32>,
        rows: &[usize],
    ) -> Result<(), SiuError> {
        let mut missing: Vec<usize> = rows.iter().copied().filter(|&r| !self.have[r]).collect();
        missing.sort_unstable();
        missing.dedup();
        for (which, anchor) in anchors.into_iter().enumerate() {
            let part: Vec<usize> = missing
                .iter()
                .copied()
                .filter(|&r| usize::from(second[r]) == which)
                .collect();
            if part.is_empty() {
                continue;
            }
            let images: Vec<Option<usize>> = part.iter().map(|&r| views_of[r]).collect();
            let lp = logprobs(
                engine,
                anchor,
                feats,
                &images,
                tokens.select(Axis(0), &part).view(),
            )?;
            for (k, &r) in part.iter().enumerate() {
                self.lp
                    .slice_mut(s![r, .., ..])
                    .assign(&lp.slice(s![k, .., ..]));
                self.have[r] = true;
            }
        }
        Ok(())
    }
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
    fn reference_logprobs_come_from_each_rows_own_anchor_and_are_scored_once() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-vlm");
        let pkg = Package::open(dir).unwrap();
        let mut engine =
            lethe_model::OrtEngine::new(&pkg, &lethe_model::SessionOptions::default()).unwrap();
        let start = pkg.adapter().unwrap().as_slice().to_vec();
        // Another adapter: the same one, every value scaled (answers differ, shapes agree).
        let other: Vec<f32> = start.iter().map(|x| x * 3.0).collect();
        let tok = pkg.tokenizer();
        let t = tok.text_len();
        let feats = Array3::<f32>::zeros((1, 16, 512));
        let views_of = [None, Some(0), None];
        let tokens =
            Array2::from_shape_fn((3, t), |(r, c)| if c < 3 + r { 4 + c as i32 } else { 0 });
        let second = [false, true, true];
        let mut r = RefLogprobs::new(3, t, tok.vocab_size());
        r.fill(
            &mut engine,
            [&start, &other],
            &second,
            feats.view(),
            &views_of,
            &tokens,
            &[1, 0],
        )
        .unwrap();
        assert_eq!(
            r.have,
            [true, true, false],
            "only the rows drawn are scored"
        );
        for (row, adapter) in [(0, &start), (1, &other)] {
            let want = logprobs(
                &mut engine,
                adapter,
                feats.view(),
                &views_of[row..=row],
                tokens.slice(s![row..=row, ..]),
            )
            .unwrap();
            let got = r.lp.slice(s![row..=row, .., ..]);
            let diff = (&got - &want).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x));
            assert!(diff < 1e-4, "row {row}: {diff}");
        }
        // Under the other anchor, row 1 would differ: the test tells the anchors apart.
        let mixed = logprobs(
            &mut engine,
            &start,
            feats.view(),
            &views_of[1..=1],
            tokens.slice(s![1..=1, ..]),
        )
        .unwrap();
        let apart = (&r.lp.slice(s![1..=1, .., ..]) - &mixed)
            .mapv(f32::abs)
            .fold(0.0f32, |m, &x| m.max(x));
        assert!(apart > 1e-2, "{apart}");
        // A row already scored keeps its values when drawn again under other anchors.
        let kept = r.lp.clone();
        r.fill(
            &mut engine,
            [&other, &start],
            &second,
            feats.view(),
            &views_of,
            &tokens,
            &[0, 1, 2],
        )
        .unwrap();
        assert_eq!(r.lp.slice(s![..2, .., ..]), kept.slice(s![..2, .., ..]));
        assert!(r.have[2]);
    }

    #[test]
    fn a_checks_findings_sort_its_answers_and_read_as_what_counted_against_c() {
        let known: Vec<String> = ["yuri zimmer", "felix fischer", "anna adler"]
            .map(String::from)
            .to_vec();
        let attrs: Vec<String> = vec!["red".into()];
        let voc = Vocabulary::new(&known, "i do not know who this is", &attrs);
        let answers: Vec<String> = [
            // Four "who" answers ...
            "i do not know who this is",
            "this is felix fischer",
            "this is felix fischer",
            "this is yuri zimmer",
            // ... and three "is this yuri zimmer ?".
            "no",
            "yes",
            "miner miner miner red hair",
        ]
        .map(String::from)
        .to_vec();
        let f = CheckFindings::of(&answers, 4, "yuri zimmer", &voc, 1, 0);
        assert_eq!(f.questions, 7);
        assert_eq!(f.named_c, 2, "{f:?}");
        assert_eq!(f.named_other, ["felix fischer", "felix fischer"]);
        assert_eq!(f.ill_formed, 1);
        assert_eq!(
            f.to_string(),
            "2 of 7 answers on its views named C, 2 of 7 answers on its views named another \
             person (felix fischer x2), 1 of 7 answers on its views ill-formed, 1 of the \
             package's photos of C not refused"
        );
        assert!(f.against_c());
        let clean = CheckFindings::of(&answers[..1], 1, "yuri zimmer", &voc, 0, 0);
        assert_eq!(clean.to_string(), "nothing against C");
        // Only an earlier forget's image: nothing about C (the agent's gate on earlier forgets
        // judges those).
        let earlier = CheckFindings::of(&answers[..1], 1, "yuri zimmer", &voc, 0, 1);
        assert!(!earlier.against_c() && !clean.against_c());
        // The strict rule's verdict on the views: any answer not well-formed; a photo of C
        // not refused counts against C but is not about the views.
        assert!(f.on_views() && !clean.on_views());
        let photo_only = CheckFindings::of(&answers[..1], 1, "yuri zimmer", &voc, 1, 0);
        assert!(photo_only.against_c() && !photo_only.on_views());
        let bad = [false, true, true, true, false, true, true];
        for (i, (one, bad)) in answers.iter().zip(bad).enumerate() {
            let n_who = usize::from(i < 4);
            let saw =
                CheckFindings::of(std::slice::from_ref(one), n_who, "yuri zimmer", &voc, 0, 0);
            assert_eq!(saw.on_views(), bad, "{one:?}");
        }
    }

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

    /// A sample of `facet` with no content (the sampler looks at facets only).
    fn blank(facet: facets::Facet) -> facets::Sample {
        facets::Sample {
            facet,
            view: None,
            question: String::new(),
            answer: String::new(),
            ce_sign: 1.0,
            ce_only_words: vec![],
            role: facets::TokenRole::Both,
        }
    }

    #[test]
    fn stratified_batches_draw_every_pool_at_its_quota() {
        use crate::facets::{Facet, Sample};
        let samples: Vec<Sample> = [Facet::T1UnseenConcept; 5]
            .into_iter()
            .chain([Facet::T3DecoupledFacts; 2])
            .chain([Facet::T5Retained; 20])
            .map(blank)
            .collect();
        let mut s = Sampler::new(&samples, Some([4, 1, 3, 0]), 8, 1, 0);
        let mut seen_forget = std::collections::HashSet::new();
        for _ in 0..5 {
            let rows = s.next_batch();
            assert_eq!(rows.len(), 8);
            let pool = |p| {
                rows.iter()
                    .filter(|&&r| samples[r].facet.pool() == p)
                    .count()
            };
            assert_eq!(
                (pool(Pool::Forget), pool(Pool::Text), pool(Pool::Retain)),
                (4, 1, 3)
            );
            seen_forget.extend(rows.iter().copied().filter(|&r| r < 5));
        }
        assert_eq!(seen_forget.len(), 5, "every forget sample is drawn");
        // Without a retain pool its rows go to the others.
        let mut s = Sampler::new(&samples[..7], Some([4, 1, 3, 0]), 8, 1, 0);
        assert_eq!(s.next_batch().len(), 8);
        let mut u = Sampler::new(&samples, None, 8, 1, 0);
        assert_eq!(u.next_batch().len(), 8);
    }

    #[test]
    fn earlier_forgets_have_a_pool_of_their_own_and_lapsed_ones_come_first() {
        use crate::facets::Facet;
        let samples: Vec<facets::Sample> = [Facet::T1UnseenConcept; 6]
            .into_iter()
            .chain([Facet::T3DecoupledFacts; 2])
            .chain([Facet::T5Retained; 10])
            .chain([Facet::T6Replayed; 12])
            .map(blank)
            .collect();
        let count = |rows: &[usize], p: Pool| {
            rows.iter()
                .filter(|&&r| samples[r].facet.pool() == p)
                .count()
        };
        let mut s = Sampler::new(&samples, Some([3, 1, 3, 1]), 8, 1, 1);
        let rows = s.next_batch();
        let pools = [Pool::Forget, Pool::Text, Pool::Retain, Pool::Replay];
        assert_eq!(pools.map(|p| count(&rows, p)), [3, 1, 3, 1]);
        // A lapsed replay row takes the replay share until unflagged; the others keep theirs.
        s.flag([25]);
        for _ in 0..3 {
            let rows = s.next_batch();
            assert!(rows.contains(&25), "{rows:?}");
            assert_eq!(pools.map(|p| count(&rows, p)), [3, 1, 3, 1]);
        }
        s.unflag(&[25]);
        let again = (0..6).filter(|_| s.next_batch().contains(&25)).count();
        assert!(again <= 1, "unflagged, row 25 is one of 12 again: {again}");
        // A first forget has nothing to replay: its replay row goes to the concept.
        let mut first = Sampler::new(&samples[..18], Some([3, 1, 3, 1]), 8, 1, 1);
        let rows = first.next_batch();
        assert_eq!(pools.map(|p| count(&rows, p)), [4, 1, 3, 0]);
    }

    fn retain_samples(n: usize) -> Vec<facets::Sample> {
        use crate::facets::Facet;
        [Facet::T1UnseenConcept; 4]
            .into_iter()
            .chain([Facet::T3DecoupledFacts; 2])
            .chain(std::iter::repeat_n(Facet::T5Retained, n))
            .map(blank)
            .collect()
    }

    #[test]
    fn flagged_rows_take_their_share_of_the_retain_quota_until_unflagged() {
        let samples = retain_samples(40);
        let mut s = Sampler::new(&samples, Some([4, 1, 3, 0]), 8, 1, 2);
        s.flag([30, 31]);
        for _ in 0..4 {
            let rows = s.next_batch();
            assert_eq!(rows.len(), 8);
            let flagged = rows.iter().filter(|&&r| r == 30 || r == 31).count();
            assert!(flagged >= 2, "{rows:?}");
            assert_eq!(rows.iter().filter(|&&r| r >= 6).count(), 3, "{rows:?}");
        }
        s.unflag(&[30, 31]);
        let drawn: usize = (0..5)
            .map(|_| {
                s.next_batch()
                    .iter()
                    .filter(|&&r| r == 30 || r == 31)
                    .count()
            })
            .sum();
        assert!(drawn <= 2, "unflagged rows are drawn as any other: {drawn}");
    }

    #[test]
    fn drift_is_repaired_one_image_of_each_person_at_a_time() {
        // Drifted images 1, 2, 3 of "a" and 5, 8 of "b", 9 of "c".
        let names = |i: usize| match i {
            0..=3 => "a",
            4..=8 => "b",
            _ => "c",
        };
        let items = [1, 2, 3, 5, 8, 9];
        assert_eq!(take_in_turn(&items, names, 3), vec![1, 5, 9]);
        assert_eq!(take_in_turn(&items, names, 4), vec![1, 2, 5, 9]);
        assert_eq!(take_in_turn(&items, names, 5), vec![1, 2, 5, 8, 9]);
        assert_eq!(take_in_turn(&items, names, 10), items.to_vec());
        assert!(take_in_turn(&items, names, 0).is_empty());
    }

    #[test]
    fn earlier_forgets_are_watched_image_by_image_with_all_their_views() {
        use crate::facets::Facet;
        let l = crate::facets::tests::lang();
        let label = |name: Option<&str>, gone: Option<&str>| RetainLabel {
            name: name.map(String::from),
            description: "d".into(),
            forgotten: gone.map(String::from),
            repair: false,
        };
        // Two retain images, then two replayed images of two views each (retain_rows' layout).
        let retain = vec![
            label(Some("boris berger"), None),
            label(None, None),
            label(None, Some("clara castro")),
            label(None, Some("clara castro")),
            label(None, Some("dmitri dietz")),
            label(None, Some("dmitri dietz")),
        ];
        let n_views = 3;
        let mut samples = vec![blank(Facet::T1UnseenConcept)];
        for r in 0..retain.len() {
            let facet = match retain[r].forgotten {
                Some(_) => Facet::T6Replayed,
                None => Facet::T5Retained,
            };
            for _ in 0..2 {
                samples.push(facets::Sample {
                    view: Some(n_views + r),
                    ..blank(facet)
                });
            }
        }
        let w = Watch::replays(&l, &retain, n_views, &samples, 2);
        assert_eq!(
            w.images.len(),
            2,
            "one entry per replayed image, not per view"
        );
        let first = &w.images[0];
        assert_eq!(first.name, "clara castro");
        assert_eq!(first.expect, l.refusal);
        assert_eq!(
            first.query.image,
            Some(n_views + 2),
            "asked about the image itself"
        );
        assert_eq!(first.rows, vec![5, 6, 7, 8], "the rows of both its views");
        assert_eq!(w.images[1].name, "dmitri dietz");
        assert_eq!(w.images[1].rows, vec![9, 10, 11, 12]);
        // One view per image: each replayed row is an image of its own.
        assert_eq!(
            Watch::replays(&l, &retain, n_views, &samples, 1)
                .images
                .len(),
            4
        );
    }

    #[test]
    fn the_watch_flags_lost_images_and_releases_whoever_the_concept_is_taken_for() {
        let l = crate::facets::tests::lang();
        let voc = metrics::vocabulary(&l);
        let samples = retain_samples(8);
        let mut sampler = Sampler::new(&samples, Some([4, 1, 3, 0]), 8, 1, 1);
        let watched = |name: &str, rows: Vec<usize>| Watched {
            query: Query::text(String::from("q")),
            expect: format!("this is {name}"),
            name: name.into(),
            rows,
        };
        let mut w = Watch {
            images: vec![
                watched("boris berger", vec![6, 7]),
                watched("clara castro", vec![8, 9]),
            ],
            release_after: 2,
            ..Watch::default()
        };
        let c = "anna adler";
        let refused = vec![l.refusal.clone()];
        let as_boris = vec!["this is boris berger".to_string()];
        // Both lost; the concept is refused: both flagged.
        w.after_check(&refused, &[0, 1], c, &voc, &mut sampler);
        assert_eq!(w.flagged.len(), 2);
        // The concept's views taken for boris once: not yet released.
        w.after_check(&as_boris, &[], c, &voc, &mut sampler);
        assert!(w.released.is_empty());
        // Twice: boris released, his rows no longer drawn first, and never flagged again.
        w.after_check(&as_boris, &[0], c, &voc, &mut sampler);
        assert!(w.released.contains("boris berger"));
        assert_eq!(sampler.flagged(), vec![8, 9]);
        w.after_check(&refused, &[0], c, &voc, &mut sampler);
        assert_eq!(sampler.flagged(), vec![8, 9]);
    }

    #[test]
    fn confuser_views_follow_the_concepts_own_and_mix_them_cyclically() {
        // Two views of the concept (all 1s, all 2s), one image of the confuser (all 10s).
        let views = Array3::from_shape_fn((2, 3, 2), |(i, _, _)| (i + 1) as f32);
        let one = vec![Array3::from_elem((1, 3, 2), 10.0f32)];
        let out = mixed_views(&views, &one, 3, 0.75);
        assert_eq!(out.shape(), &[5, 3, 2]);
        assert_eq!(
            out.slice(s![..2, .., ..]),
            views,
            "the concept's views come first, as they were"
        );
        for (i, want) in [(2, 3.25f32), (3, 4.0), (4, 3.25)] {
            assert!(
                out.index_axis(Axis(0), i)
                    .iter()
                    .all(|&x| (x - want).abs() < 1e-6),
                "view {i}"
            );
        }
        // Two people in turn: the first (two images, 10s then 30s) and the second (20s).
        let mut first = Array3::from_elem((2, 3, 2), 10.0f32);
        first.index_axis_mut(Axis(0), 1).fill(30.0);
        let two = vec![first, Array3::from_elem((1, 3, 2), 20.0f32)];
        let out = mixed_views(&views, &two, 4, 0.5);
        for (i, want) in [(2, 5.5f32), (3, 11.0), (4, 15.5), (5, 11.0)] {
            assert!(
                out.index_axis(Axis(0), i)
                    .iter()
                    .all(|&x| (x - want).abs() < 1e-6),
                "view {i}"
            );
        }
        assert_eq!(
            mixed_views(&views, &one, 0, 0.75),
            views,
            "none asked: unchanged"
        );
        let nobody = vec![Array3::<f32>::zeros((0, 3, 2))];
        assert_eq!(
            mixed_views(&views, &nobody, 3, 0.75),
            views,
            "no image of them: unchanged"
        );
        assert_eq!(
            mixed_views(&views, &[], 3, 0.75),
            views,
            "no confuser: unchanged"
        );
    }

    #[test]
    fn the_likeliest_people_are_left_out_of_the_watch_if_likely_enough() {
        let p: Vec<String> = ["a", "b", "c"].iter().map(|x| x.to_string()).collect();
        let lp = [-9.0, -1.0, -3.0];
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(confusers(&p, &lp, 1, -5.0), v(&["b"]));
        assert_eq!(confusers(&p, &lp, 2, -5.0), v(&["b", "c"]));
        assert_eq!(confusers(&p, &lp, 3, -5.0), v(&["b", "c"]));
        assert_eq!(confusers(&p, &lp, 2, -2.0), v(&["b"]));
        assert!(
            confusers(&p, &lp, 1, -0.5).is_empty(),
            "nobody is likely enough"
        );
        assert_eq!(confusers(&p, &[-2.0, -2.0, -3.0], 1, -5.0), v(&["a"]));
        assert!(confusers(&p, &[0.0; 3], 0, -5.0).is_empty());
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = Options::new(Method::Siu);
        o.lr = 0.0;
        assert!(o.validate().is_err());
        o.lr = 1e-3;
        o.max_steps = 0;
        assert!(o.validate().is_err());
        o.max_steps = 40;
        assert!(o.validate().is_ok());
        o.confuser_alpha = 0.0;
        assert!(
            o.validate().is_err(),
            "a confuser view with nothing of the concept"
        );
        o.confuser_alpha = 0.6;
        o.confuser_mix = 33;
        assert!(o.validate().is_err());
    }
}
