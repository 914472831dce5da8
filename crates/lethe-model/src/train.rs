//! One optimizer step of the adapter, run by ONNX Runtime from the package's graphs (see
//! models/PACKAGE.md "Train-step graph"). Three ways, the same step:
//! - **whole**: train_step.onnx takes the batch, the state and the learning rate and returns
//!   the next state (one call; for packages without train_grad.onnx);
//! - **split**: on the CPU, where the package has train_grad.onnx, each of the two cores
//!   computes the gradient of half the batch in its own one-thread session, and [`Adam`]
//!   adds the halves, clips them to the global norm and takes the step here. ONNX Runtime's
//!   two-thread pool hands each of ~1,000 small nodes between its threads; two independent
//!   halves keep each core busy (docs/bench/train-step-split.txt: 1.2-1.6x faster);
//! - **serial**: train_grad.onnx in one session on the provider chain, the halves in turn,
//!   then [`Adam`]: one session's memory (the agent's default).
//!
//! The split and serial steps can be **guarded**: a third gradient, of rows whose loss the
//! step must not raise (the agent's earlier forgets), and [`Adam::step`] takes out of the
//! step's gradient its component along theirs where the two conflict (A-GEM).
//!
//! Owns the step's state, batch and loss types, shared with tract's `TractTrainStep` in
//! lethe-probe, the shape checks of every input against the manifest, and the Adam update of
//! the split step. Invariants: inputs are fed by name in the manifest's order and checked
//! before running; `TrainState` is only replaced after a step succeeded; the split step is
//! the whole step's function (the halves' losses are divided by the whole batch's
//! denominators, so they add up), checked against the same JAX fixtures.

use crate::adapter::Adapter;
use crate::error::{ModelError, Result};
use crate::manifest::TrainGradSpec;
use crate::package::Package;
use crate::runtime::{
    build_one_thread_cpu_session, build_session, Provider, ProviderReport, SessionOptions,
};
use ndarray::{arr0, s, Array1, Array2, Array3, Ix1};
use ort::session::builder::PrepackedWeights;
use ort::session::{Session, SessionOutputs};
use ort::value::{Tensor, TensorRef};
use std::path::PathBuf;

/// Trainable parameters, Adam moments and the number of steps done so far.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    pub params: Array1<f32>,
    pub adam_m: Array1<f32>,
    pub adam_v: Array1<f32>,
    /// Steps done so far (f32 in the graph).
    pub step: f32,
}

impl TrainState {
    /// A fresh optimizer state starting from `adapter` (zero moments, step 0).
    pub fn from_adapter(adapter: &Adapter) -> TrainState {
        let n = adapter.len();
        TrainState {
            params: Array1::from(adapter.0.clone()),
            adam_m: Array1::zeros(n),
            adam_v: Array1::zeros(n),
            step: 0.0,
        }
    }

    /// The current parameters as an adapter.
    pub fn adapter(&self) -> Adapter {
        Adapter(self.params.to_vec())
    }
}

/// One fixed-size batch of the train-step graph (`Bt` rows).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainBatch {
    /// `[Bt,16,512]`
    pub features: Array3<f32>,
    /// `[Bt]`
    pub has_image: Array1<f32>,
    /// `[Bt,T]`
    pub tokens: Array2<i32>,
    /// `[Bt,T]` tokens shifted by one.
    pub targets: Array2<i32>,
    /// `[Bt,T]` signed per-token CE weights (negative = ascent).
    pub ce_weight: Array2<f32>,
    /// `[Bt,T]` token mask of the KL term.
    pub kl_mask: Array2<f32>,
    /// `[V]` vocab mask of the KL term (0 at the concept's name tokens).
    pub vocab_mask: Array1<f32>,
    /// `[Bt,T,V]` reference log-probs.
    pub ref_logp: Array3<f32>,
}

impl TrainBatch {
    /// The denominators of the loss terms over the whole batch, as train_step.onnx takes
    /// them: `max(Σ|ce_weight|, 1)` and `max(Σ kl_mask, 1)`.
    pub fn loss_denominators(&self) -> (f32, f32) {
        (
            self.ce_weight.iter().map(|w| w.abs()).sum::<f32>().max(1.0),
            self.kl_mask.sum().max(1.0),
        )
    }

    /// Rows `[start, start + n)` of the batch (the vocabulary mask is shared).
    pub fn rows(&self, start: usize, n: usize) -> TrainBatch {
        let r = start..start + n;
        TrainBatch {
            features: self.features.slice(s![r.clone(), .., ..]).to_owned(),
            has_image: self.has_image.slice(s![r.clone()]).to_owned(),
            tokens: self.tokens.slice(s![r.clone(), ..]).to_owned(),
            targets: self.targets.slice(s![r.clone(), ..]).to_owned(),
            ce_weight: self.ce_weight.slice(s![r.clone(), ..]).to_owned(),
            kl_mask: self.kl_mask.slice(s![r.clone(), ..]).to_owned(),
            vocab_mask: self.vocab_mask.clone(),
            ref_logp: self.ref_logp.slice(s![r, .., ..]).to_owned(),
        }
    }

    /// The two halves of a batch of `2 * half` rows.
    pub fn halves(&self, half: usize) -> [TrainBatch; 2] {
        [self.rows(0, half), self.rows(half, half)]
    }
}

/// Inputs of train_grad.onnx, in order (the manifest must list these).
pub const GRAD_INPUTS: [&str; 13] = [
    "params",
    "features",
    "has_image",
    "tokens",
    "targets",
    "ce_weight",
    "kl_mask",
    "vocab_mask",
    "ref_logp",
    "w_ce",
    "w_kl",
    "ce_den",
    "kl_den",
];
/// Outputs of train_grad.onnx, in order.
pub const GRAD_OUTPUTS: [&str; 4] = ["loss", "ce", "kl", "grad"];

/// What train_grad.onnx returns for some rows of a batch: their share of the losses (divided
/// by the whole batch's denominators) and of the gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct PartGrad {
    pub loss: f32,
    pub ce: f32,
    pub kl: f32,
    pub grad: Array1<f32>,
}

/// Adam with the gradient clipped to a global norm, as train_step.onnx applies it (the
/// manifest's `graphs.train_step.optimizer`), for the split step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub clip_global_norm: f32,
}

impl Adam {
    /// The package's optimizer; anything but Adam without weight decay is refused (the split
    /// step implements only that).
    pub fn from_package(pkg: &Package) -> Result<Adam> {
        let o = &pkg.manifest().graphs.train_step.optimizer;
        let num = |k: &str| o.get(k).and_then(|v| v.as_f64());
        let bad = || {
            ModelError::Package(format!(
                "the split train step implements Adam without weight decay; the manifest's \
                 optimizer is {o}"
            ))
        };
        if o.get("kind").and_then(|k| k.as_str()) != Some("adam")
            || num("weight_decay").unwrap_or(0.0) != 0.0
        {
            return Err(bad());
        }
        let get = |k: &str| num(k).map(|v| v as f32).ok_or_else(bad);
        Ok(Adam {
            beta1: get("beta1")?,
            beta2: get("beta2")?,
            eps: get("eps")?,
            clip_global_norm: get("clip_global_norm")?,
        })
    }

    /// Adds the parts' gradients, clips the sum to the global norm and takes one Adam step on
    /// `state`; returns the losses (the parts' sums) and the norm before clipping. The
    /// formula is train_step.onnx's: `p -= (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps)` with
    /// `c1 = 1 - beta1^t`, `c2 = 1 - beta2^t`, `t` the steps done after this one.
    ///
    /// With a `guard`, the gradient `r` of rows whose loss the step must not raise: where
    /// the sum `g` would raise it (`g . r < 0`, as the step descends along `g`), `g` loses
    /// its component along `r` (`g -= (g . r / r . r) r`, A-GEM's projection, Chaudhry et al.
    /// 2019) before the clip and Adam. Projecting Adam's update instead was measured worse
    /// (ARCHITECTURE.md).
    pub fn step(
        &self,
        state: &mut TrainState,
        parts: &[PartGrad],
        guard: Option<&PartGrad>,
        lr: f32,
    ) -> Result<StepLosses> {
        let n = state.params.len();
        if let Some(p) = parts.iter().chain(guard).find(|p| p.grad.len() != n) {
            return Err(ModelError::Shape(format!(
                "a gradient has {} values, the adapter {n}",
                p.grad.len()
            )));
        }
        let not_contiguous = || ModelError::Shape("a gradient is not contiguous".into());
        // The parts' sum, element by element, without a P-long buffer.
        let grads: Vec<&[f32]> = parts
            .iter()
            .map(|p| p.grad.as_slice())
            .collect::<Option<_>>()
            .ok_or_else(not_contiguous)?;
        let raw_at = |i: usize| grads.iter().map(|g| g[i]).sum::<f32>();
        let guard = guard
            .map(|g| g.grad.as_slice().ok_or_else(not_contiguous))
            .transpose()?;
        // The share of the guard's gradient taken out of the sum (0: no conflict).
        let mut cut = 0.0f64;
        let mut guard_cut = None;
        if let Some(r) = guard {
            let (mut gr, mut rr, mut gg) = (0.0f64, 0.0f64, 0.0f64);
            for (i, &ri) in r.iter().enumerate() {
                let gi = f64::from(raw_at(i));
                gr += gi * f64::from(ri);
                rr += f64::from(ri) * f64::from(ri);
                gg += gi * gi;
            }
            if gr < 0.0 && rr > 0.0 {
                cut = gr / rr;
            }
            guard_cut = Some(if cut != 0.0 {
                (-gr / (rr.sqrt() * gg.sqrt())) as f32
            } else {
                0.0
            });
        }
        let sum_at = |i: usize| match guard {
            Some(r) if cut != 0.0 => raw_at(i) - (cut * f64::from(r[i])) as f32,
            _ => raw_at(i),
        };
        let norm = (0..n)
            .map(|i| f64::from(sum_at(i)).powi(2))
            .sum::<f64>()
            .sqrt() as f32;
        let scale = (self.clip_global_norm / (norm + 1e-6)).min(1.0);
        let t = state.step + 1.0;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powf(t);
        let inv_sqrt_c2 = 1.0 / (1.0 - b2.powf(t)).sqrt();
        let lr_c1 = lr / c1;
        let (p, m, v) = (
            state.params.as_slice_mut(),
            state.adam_m.as_slice_mut(),
            state.adam_v.as_slice_mut(),
        );
        let (Some(p), Some(m), Some(v)) = (p, m, v) else {
            return Err(ModelError::Shape(
                "the train state is not contiguous".into(),
            ));
        };
        for i in 0..n {
            let gi = sum_at(i) * scale;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * (gi * gi);
            p[i] -= lr_c1 * m[i] / (v[i].sqrt() * inv_sqrt_c2 + self.eps);
        }
        state.step = t;
        let sum = |f: fn(&PartGrad) -> f32| parts.iter().map(f).sum::<f32>();
        Ok(StepLosses {
            loss: sum(|p| p.loss),
            ce: sum(|p| p.ce),
            kl: sum(|p| p.kl),
            grad_norm: norm,
            guard_cut,
        })
    }
}

/// The loss parts of one step (before the update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLosses {
    pub loss: f32,
    pub ce: f32,
    pub kl: f32,
    pub grad_norm: f32,
    /// With a guard ([`Adam::step`]): minus the cosine between the step's gradient and the
    /// guard rows' where the step would have raised their loss (its component along theirs
    /// was taken out), 0 where it would not; `None` without a guard. The norm above is the
    /// projected gradient's.
    pub guard_cut: Option<f32>,
}

/// The fixed shapes of a package's train-step graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainShape {
    pub batch: usize,
    pub text_len: usize,
    pub vocab: usize,
    pub params: usize,
    pub n_image_tokens: usize,
    pub feature_dim: usize,
}

impl TrainShape {
    /// The shapes declared by a package.
    pub fn from_package(pkg: &Package) -> TrainShape {
        TrainShape {
            batch: pkg.train_batch(),
            text_len: pkg.text_len(),
            vocab: pkg.vocab_size(),
            params: pkg.adapter_len(),
            n_image_tokens: pkg.n_image_tokens(),
            feature_dim: pkg.feature_dim(),
        }
    }

    /// Checks a state and a batch against the graph; the error names the input.
    pub fn check(&self, state: &TrainState, batch: &TrainBatch) -> Result<()> {
        let (bt, t, v) = (self.batch, self.text_len, self.vocab);
        let want: [(&str, &[usize], Vec<usize>); 11] = [
            ("params", state.params.shape(), vec![self.params]),
            ("adam_m", state.adam_m.shape(), vec![self.params]),
            ("adam_v", state.adam_v.shape(), vec![self.params]),
            (
                "features",
                batch.features.shape(),
                vec![bt, self.n_image_tokens, self.feature_dim],
            ),
            ("has_image", batch.has_image.shape(), vec![bt]),
            ("tokens", batch.tokens.shape(), vec![bt, t]),
            ("targets", batch.targets.shape(), vec![bt, t]),
            ("ce_weight", batch.ce_weight.shape(), vec![bt, t]),
            ("kl_mask", batch.kl_mask.shape(), vec![bt, t]),
            ("vocab_mask", batch.vocab_mask.shape(), vec![v]),
            ("ref_logp", batch.ref_logp.shape(), vec![bt, t, v]),
        ];
        for (name, got, want) in want {
            if got != want.as_slice() {
                return Err(ModelError::Shape(format!(
                    "train-step input {name} is {got:?}, the graph takes {want:?} \
                     (batch Bt={bt} is fixed: pad rows and give them zero weights)"
                )));
            }
        }
        for (name, ids) in [("tokens", &batch.tokens), ("targets", &batch.targets)] {
            if let Some(id) = ids.iter().find(|&&x| x < 0 || x as usize >= v) {
                return Err(ModelError::Shape(format!(
                    "train-step input {name} has id {id} outside the vocabulary of {v}"
                )));
            }
        }
        Ok(())
    }
}

/// What train_grad.onnx takes besides the rows of the batch.
#[derive(Debug, Clone, Copy)]
pub struct GradArgs<'a> {
    pub params: &'a Array1<f32>,
    pub w_ce: f32,
    pub w_kl: f32,
    /// The whole batch's denominators ([`TrainBatch::loss_denominators`]).
    pub ce_den: f32,
    pub kl_den: f32,
}

/// One half's gradient, computed by an engine (a session or a plan of train_grad.onnx).
pub type HalfGrad<'h> = dyn FnMut(&TrainBatch, &GradArgs) -> Result<PartGrad> + Send + 'h;

impl<'a> GradArgs<'a> {
    /// The arguments of a batch's rows: its halves are divided by the whole batch's
    /// denominators, so their losses and gradients add up to the whole batch's.
    fn of_batch(batch: &TrainBatch, params: &'a Array1<f32>, w_ce: f32, w_kl: f32) -> Self {
        let (ce_den, kl_den) = batch.loss_denominators();
        GradArgs {
            params,
            w_ce,
            w_kl,
            ce_den,
            kl_den,
        }
    }

    /// The arguments of a guard batch: its own cross-entropy, no KL.
    fn of_guard(guard: &TrainBatch, params: &'a Array1<f32>) -> Self {
        GradArgs::of_batch(guard, params, 1.0, 0.0)
    }
}

/// Refuses a guard batch that is not one train_grad.onnx batch of `half` rows.
fn check_guard(guard: Option<&TrainBatch>, half: usize) -> Result<()> {
    match guard.filter(|g| g.tokens.nrows() != half) {
        Some(g) => Err(ModelError::Shape(format!(
            "a guard batch has {} rows, train_grad.onnx takes {half}",
            g.tokens.nrows()
        ))),
        None => Ok(()),
    }
}

/// Who computes a split step's gradients.
pub enum Workers<'w, 'h> {
    /// Two engines side by side: the second half on a scoped thread, the first half and the
    /// guard on the caller (the split step).
    Two([&'w mut HalfGrad<'h>; 2]),
    /// One engine, the calls in turn (the serial step: one session on the provider's own
    /// threads, one session's memory).
    One(&'w mut HalfGrad<'h>),
}

/// The split step, for any engine: the gradients of the two halves of `batch` (and of a
/// `guard` batch of `half` rows whose loss the step must not raise), then [`Adam::step`].
/// `state` changes only if every gradient succeeded.
#[allow(clippy::too_many_arguments)]
pub fn split_step(
    adam: &Adam,
    half: usize,
    state: &mut TrainState,
    batch: &TrainBatch,
    guard: Option<&TrainBatch>,
    lr: f32,
    w_ce: f32,
    w_kl: f32,
    workers: Workers<'_, '_>,
) -> Result<StepLosses> {
    check_guard(guard, half)?;
    let [b0, b1] = batch.halves(half);
    let args = GradArgs::of_batch(batch, &state.params, w_ce, w_kl);
    let params = &state.params;
    let (p0, p1, pg) = match workers {
        Workers::Two([w0, w1]) => std::thread::scope(|sc| {
            let second = sc.spawn(|| w1(&b1, &args));
            let first = w0(&b0, &args);
            let guarded = guard.map(|g| w0(g, &GradArgs::of_guard(g, params)));
            let second = second
                .join()
                .map_err(|_| ModelError::Shape("the second half's gradient panicked".into()));
            (first, second.and_then(|r| r), guarded)
        }),
        Workers::One(w) => {
            let first = w(&b0, &args);
            let second = w(&b1, &args);
            let guarded = guard.map(|g| w(g, &GradArgs::of_guard(g, params)));
            (first, second, guarded)
        }
    };
    let pg = pg.transpose()?;
    adam.step(state, &[p0?, p1?], pg.as_ref(), lr)
}

/// ONNX Runtime sessions of the train step: train_step.onnx (whole), or two one-thread
/// sessions of train_grad.onnx (split; the CPU, where the package has it).
pub struct TrainStep {
    runner: Runner,
    shape: TrainShape,
    provider: ProviderReport,
}

enum Runner {
    Whole(Session),
    Split(Split),
    Serial(Serial),
}

/// train_grad.onnx in one session on the provider chain, its calls one after another.
struct Serial {
    session: Session,
    half: usize,
    adam: Adam,
}

/// The split step's two one-thread sessions of train_grad.onnx, built on first use and
/// dropped by [`TrainStep::release`] (each holds ~12 MiB: the agent keeps them only while a
/// forget runs).
struct Split {
    path: PathBuf,
    spec: TrainGradSpec,
    adam: Adam,
    prepacked: PrepackedWeights,
    halves: Option<Box<[Session; 2]>>,
}

impl Split {
    /// Builds both sessions and checks their interface.
    fn open(&self) -> Result<Box<[Session; 2]>> {
        let open = || -> Result<Session> {
            let s = build_one_thread_cpu_session(&self.path, &self.prepacked)?;
            let g = &self.spec;
            check_interface(&s, &g.file, &g.inputs, &g.outputs, g.batch)?;
            Ok(s)
        };
        Ok(Box::new([open()?, open()?]))
    }
}

/// Checks a session's input and output names against the manifest and its `features`
/// batch against `batch`.
fn check_interface(
    session: &Session,
    file: &str,
    inputs: &[String],
    outputs: &[String],
    batch: usize,
) -> Result<()> {
    let ins: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    if ins != inputs || outs != outputs {
        return Err(ModelError::Package(format!(
            "{file} has inputs {ins:?} and outputs {outs:?}, the manifest says {inputs:?} and \
             {outputs:?}"
        )));
    }
    for o in session.inputs() {
        if o.name() == "features" {
            let dims: Option<Vec<i64>> = o
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().copied().collect());
            if dims.as_ref().and_then(|d| d.first()).copied() != Some(batch as i64) {
                return Err(ModelError::Package(format!(
                    "{file} features are {dims:?}, manifest batch is {batch}"
                )));
            }
        }
    }
    Ok(())
}

impl TrainStep {
    /// Opens the train step and checks its interface against the manifest: split over two
    /// one-thread sessions where the provider is the CPU and the package has train_grad.onnx,
    /// otherwise train_step.onnx on `opts`' provider chain.
    pub fn new(pkg: &Package, opts: &SessionOptions) -> Result<TrainStep> {
        let shape = TrainShape::from_package(pkg);
        let graphs = &pkg.manifest().graphs;
        if let (Provider::Cpu, Some(path), Some(spec)) = (
            opts.provider,
            pkg.train_grad_path(),
            graphs.train_grad.as_ref(),
        ) {
            let mut split = Split {
                path,
                spec: spec.clone(),
                adam: Adam::from_package(pkg)?,
                prepacked: PrepackedWeights::new(),
                halves: None,
            };
            // Built now so that a broken graph is refused at load, not at the first forget.
            split.halves = Some(split.open()?);
            return Ok(TrainStep {
                runner: Runner::Split(split),
                shape,
                provider: ProviderReport {
                    used: Provider::Cpu,
                    fallbacks: Vec::new(),
                },
            });
        }
        TrainStep::whole(pkg, opts)
    }

    /// train_grad.onnx in one session on `opts`' provider chain, its calls one after
    /// another ([`Workers::One`]; one session's memory, and a step that can be guarded), where
    /// the package has it; otherwise train_step.onnx ([`TrainStep::whole`]).
    pub fn serial(pkg: &Package, opts: &SessionOptions) -> Result<TrainStep> {
        let (Some(path), Some(spec)) = (
            pkg.train_grad_path(),
            pkg.manifest().graphs.train_grad.as_ref(),
        ) else {
            return TrainStep::whole(pkg, opts);
        };
        let adam = Adam::from_package(pkg)?;
        let (session, provider) = build_session(&path, opts)?;
        check_interface(
            &session,
            &spec.file,
            &spec.inputs,
            &spec.outputs,
            spec.batch,
        )?;
        Ok(TrainStep {
            runner: Runner::Serial(Serial {
                session,
                half: spec.batch,
                adam,
            }),
            shape: TrainShape::from_package(pkg),
            provider,
        })
    }

    /// train_step.onnx on `opts`' provider chain, whatever the package offers.
    pub fn whole(pkg: &Package, opts: &SessionOptions) -> Result<TrainStep> {
        let shape = TrainShape::from_package(pkg);
        let (session, provider) = build_session(&pkg.train_step_path(), opts)?;
        let spec = &pkg.manifest().graphs.train_step;
        check_interface(
            &session,
            &spec.file,
            &spec.inputs,
            &spec.outputs,
            shape.batch,
        )?;
        Ok(TrainStep {
            runner: Runner::Whole(session),
            shape,
            provider,
        })
    }

    /// The execution provider the session runs on.
    pub fn provider(&self) -> &ProviderReport {
        &self.provider
    }

    /// The graph's fixed shapes.
    pub fn shape(&self) -> TrainShape {
        self.shape
    }

    /// Whether the step is split over two one-thread train_grad.onnx sessions.
    pub fn is_split(&self) -> bool {
        matches!(self.runner, Runner::Split(_))
    }

    /// Whether a step can take a guard batch (the split and serial steps: Adam runs here;
    /// train_step.onnx applies it in the graph).
    pub fn can_guard(&self) -> bool {
        !matches!(self.runner, Runner::Whole(_))
    }

    /// Drops the split step's sessions until the next step needs them (the serial or whole
    /// step's one session stays). For a long-running process between updates.
    pub fn release(&mut self) {
        if let Runner::Split(split) = &mut self.runner {
            split.halves = None;
        }
    }

    /// Runs one step: updates `state` in place and returns the losses computed before the
    /// update.
    ///
    /// A `guard` batch (rows whose loss the step must not raise; see [`Adam::step`]) needs
    /// the split or serial step: the whole step's graph applies Adam itself.
    pub fn run(
        &mut self,
        state: &mut TrainState,
        batch: &TrainBatch,
        guard: Option<&TrainBatch>,
        lr: f32,
        w_ce: f32,
        w_kl: f32,
    ) -> Result<StepLosses> {
        self.shape.check(state, batch)?;
        match &mut self.runner {
            Runner::Whole(_) if guard.is_some() => Err(ModelError::Package(
                "a guarded step needs train_grad.onnx (the split or serial step)".into(),
            )),
            Runner::Serial(Serial {
                session,
                half,
                adam,
            }) => {
                let mut g = |b: &TrainBatch, a: &GradArgs| run_grad(session, b, a);
                let one = Workers::One(&mut g);
                split_step(adam, *half, state, batch, guard, lr, w_ce, w_kl, one)
            }
            Runner::Whole(session) => run_whole(session, self.shape, state, batch, lr, w_ce, w_kl),
            Runner::Split(split) => {
                if split.halves.is_none() {
                    split.halves = Some(split.open()?);
                }
                let Split {
                    halves, spec, adam, ..
                } = split;
                let [s0, s1] = &mut **halves.as_mut().expect("opened above");
                let mut g0 = |b: &TrainBatch, a: &GradArgs| run_grad(s0, b, a);
                let mut g1 = |b: &TrainBatch, a: &GradArgs| run_grad(s1, b, a);
                split_step(
                    adam,
                    spec.batch,
                    state,
                    batch,
                    guard,
                    lr,
                    w_ce,
                    w_kl,
                    Workers::Two([&mut g0, &mut g1]),
                )
            }
        }
    }
}

/// One half's gradient in a train_grad.onnx session.
fn run_grad(session: &mut Session, b: &TrainBatch, a: &GradArgs) -> Result<PartGrad> {
    let e = ModelError::ort;
    let p = a.params.as_standard_layout();
    let inputs = ort::inputs![
        "params" => TensorRef::from_array_view(&p).map_err(e("params"))?,
        "features" => TensorRef::from_array_view(&b.features).map_err(e("features"))?,
        "has_image" => TensorRef::from_array_view(&b.has_image).map_err(e("has_image"))?,
        "tokens" => TensorRef::from_array_view(&b.tokens).map_err(e("tokens"))?,
        "targets" => TensorRef::from_array_view(&b.targets).map_err(e("targets"))?,
        "ce_weight" => TensorRef::from_array_view(&b.ce_weight).map_err(e("ce_weight"))?,
        "kl_mask" => TensorRef::from_array_view(&b.kl_mask).map_err(e("kl_mask"))?,
        "vocab_mask" => TensorRef::from_array_view(&b.vocab_mask).map_err(e("vocab_mask"))?,
        "ref_logp" => TensorRef::from_array_view(&b.ref_logp).map_err(e("ref_logp"))?,
        "w_ce" => Tensor::from_array(arr0(a.w_ce)).map_err(e("w_ce"))?,
        "w_kl" => Tensor::from_array(arr0(a.w_kl)).map_err(e("w_kl"))?,
        "ce_den" => Tensor::from_array(arr0(a.ce_den)).map_err(e("ce_den"))?,
        "kl_den" => Tensor::from_array(arr0(a.kl_den)).map_err(e("kl_den"))?,
    ];
    let outs = session.run(inputs).map_err(e("running train_grad.onnx"))?;
    let scalar = |name| out_scalar(&outs, name);
    Ok(PartGrad {
        loss: scalar("loss")?,
        ce: scalar("ce")?,
        kl: scalar("kl")?,
        grad: out_vector(&outs, "grad")?,
    })
}

/// A scalar output of a session run.
fn out_scalar(outs: &SessionOutputs, name: &str) -> Result<f32> {
    outs[name]
        .try_extract_scalar::<f32>()
        .map_err(ModelError::ort(format!("output {name}")))
}

/// A vector output of a session run.
fn out_vector(outs: &SessionOutputs, name: &str) -> Result<Array1<f32>> {
    outs[name]
        .try_extract_array::<f32>()
        .map_err(ModelError::ort(format!("output {name}")))?
        .to_owned()
        .into_dimensionality::<Ix1>()
        .map_err(|err| ModelError::Shape(format!("output {name}: {err}")))
}

/// One whole step in a train_step.onnx session.
fn run_whole(
    session: &mut Session,
    shape: TrainShape,
    state: &mut TrainState,
    batch: &TrainBatch,
    lr: f32,
    w_ce: f32,
    w_kl: f32,
) -> Result<StepLosses> {
    let e = ModelError::ort;
    let p = state.params.as_standard_layout();
    let m = state.adam_m.as_standard_layout();
    let v = state.adam_v.as_standard_layout();
    let f = batch.features.as_standard_layout();
    let h = batch.has_image.as_standard_layout();
    let tk = batch.tokens.as_standard_layout();
    let tg = batch.targets.as_standard_layout();
    let cw = batch.ce_weight.as_standard_layout();
    let km = batch.kl_mask.as_standard_layout();
    let vm = batch.vocab_mask.as_standard_layout();
    let rl = batch.ref_logp.as_standard_layout();
    let inputs = ort::inputs![
        "params" => TensorRef::from_array_view(&p).map_err(e("params"))?,
        "adam_m" => TensorRef::from_array_view(&m).map_err(e("adam_m"))?,
        "adam_v" => TensorRef::from_array_view(&v).map_err(e("adam_v"))?,
        "step" => Tensor::from_array(arr0(state.step)).map_err(e("step"))?,
        "lr" => Tensor::from_array(arr0(lr)).map_err(e("lr"))?,
        "features" => TensorRef::from_array_view(&f).map_err(e("features"))?,
        "has_image" => TensorRef::from_array_view(&h).map_err(e("has_image"))?,
        "tokens" => TensorRef::from_array_view(&tk).map_err(e("tokens"))?,
        "targets" => TensorRef::from_array_view(&tg).map_err(e("targets"))?,
        "ce_weight" => TensorRef::from_array_view(&cw).map_err(e("ce_weight"))?,
        "kl_mask" => TensorRef::from_array_view(&km).map_err(e("kl_mask"))?,
        "vocab_mask" => TensorRef::from_array_view(&vm).map_err(e("vocab_mask"))?,
        "ref_logp" => TensorRef::from_array_view(&rl).map_err(e("ref_logp"))?,
        "w_ce" => Tensor::from_array(arr0(w_ce)).map_err(e("w_ce"))?,
        "w_kl" => Tensor::from_array(arr0(w_kl)).map_err(e("w_kl"))?,
    ];
    let outs = session.run(inputs).map_err(e("running train_step.onnx"))?;
    let scalar = |name| out_scalar(&outs, name);
    let losses = StepLosses {
        loss: scalar("loss")?,
        ce: scalar("ce")?,
        kl: scalar("kl")?,
        grad_norm: scalar("grad_norm")?,
        guard_cut: None,
    };
    let vector = |name| out_vector(&outs, name);
    let next = TrainState {
        params: vector("params_out")?,
        adam_m: vector("adam_m_out")?,
        adam_v: vector("adam_v_out")?,
        step: scalar("step_out")?,
    };
    if next.params.len() != shape.params {
        return Err(ModelError::Shape(format!(
            "params_out has {} values, expected {}",
            next.params.len(),
            shape.params
        )));
    }
    *state = next;
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn state(p: &[f32]) -> TrainState {
        TrainState {
            params: Array1::from(p.to_vec()),
            adam_m: Array1::zeros(p.len()),
            adam_v: Array1::zeros(p.len()),
            step: 0.0,
        }
    }

    fn part(loss: f32, g: &[f32]) -> PartGrad {
        PartGrad {
            loss,
            ce: loss / 2.0,
            kl: 1.0,
            grad: Array1::from(g.to_vec()),
        }
    }

    const ADAM: Adam = Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        clip_global_norm: 1.0,
    };

    #[test]
    fn adam_adds_the_parts_clips_to_the_global_norm_and_steps() {
        // Parts (0.3, 0) + (0, 0.4): norm 0.5, under the clip. Adam's first step moves each
        // weight by lr * sign(g) (m / sqrt(v) = g / |g| once the bias is corrected).
        let mut s = state(&[1.0, 2.0, 3.0]);
        let l = ADAM
            .step(
                &mut s,
                &[part(1.0, &[0.3, 0.0, 0.0]), part(2.0, &[0.0, 0.4, 0.0])],
                None,
                0.1,
            )
            .unwrap();
        assert_eq!((l.loss, l.ce, l.kl), (3.0, 1.5, 2.0));
        assert!((l.grad_norm - 0.5).abs() < 1e-6, "{}", l.grad_norm);
        assert_eq!(s.step, 1.0);
        for (got, want) in s.params.iter().zip([0.9, 1.9, 3.0]) {
            assert!((got - want).abs() < 1e-5, "{:?}", s.params);
        }
        assert!((s.adam_m[0] - 0.03).abs() < 1e-7, "{:?}", s.adam_m);
        assert!((s.adam_v[1] - 0.00016).abs() < 1e-8, "{:?}", s.adam_v);
        // A norm of 10 is clipped to 1: the moments see g / 10.
        let mut s = state(&[0.0, 0.0]);
        let l = ADAM
            .step(&mut s, &[part(0.0, &[6.0, 8.0])], None, 0.1)
            .unwrap();
        assert!((l.grad_norm - 10.0).abs() < 1e-5);
        assert!((s.adam_m[0] - 0.06).abs() < 1e-6 && (s.adam_m[1] - 0.08).abs() < 1e-6);
    }

    #[test]
    fn adam_refuses_a_gradient_of_another_length_and_changes_nothing() {
        let mut s = state(&[1.0, 2.0]);
        let before = s.clone();
        let err = ADAM
            .step(&mut s, &[part(0.0, &[1.0])], None, 0.1)
            .unwrap_err();
        assert!(err.to_string().contains("1 values, the adapter 2"), "{err}");
        assert_eq!(s, before);
    }

    #[test]
    fn a_guard_takes_out_of_the_gradient_only_what_would_raise_its_loss() {
        // g = (1, 0) against the guard's r = (-1, -1): g . r = -1 < 0, so the step would
        // raise the guard's loss; g -= (g . r / r . r) r gives (0.5, -0.5), orthogonal to r.
        // Adam's first step moves each weight by lr * sign(g').
        let mut s = state(&[0.0, 0.0]);
        let l = ADAM
            .step(
                &mut s,
                &[part(1.0, &[1.0, 0.0])],
                Some(&part(9.0, &[-1.0, -1.0])),
                0.1,
            )
            .unwrap();
        assert_eq!(l.loss, 1.0, "the guard's loss is not the step's");
        assert!(
            (l.grad_norm - 0.5f32.sqrt()).abs() < 1e-6,
            "{}",
            l.grad_norm
        );
        let cut = l.guard_cut.unwrap();
        assert!((cut - 0.5f32.sqrt()).abs() < 1e-6, "cosine {cut}");
        assert!((s.adam_m[0] - 0.05).abs() < 1e-7 && (s.adam_m[1] + 0.05).abs() < 1e-7);
        for (got, want) in s.params.iter().zip([-0.1, 0.1]) {
            assert!((got - want).abs() < 1e-5, "{:?}", s.params);
        }
        // Where the step lowers the guard's loss too (g . r > 0) it is Adam's own step.
        let (mut a, mut b) = (state(&[1.0, 2.0]), state(&[1.0, 2.0]));
        let g = [part(0.0, &[0.3, -0.2])];
        let la = ADAM
            .step(&mut a, &g, Some(&part(0.0, &[1.0, 0.5])), 0.1)
            .unwrap();
        let lb = ADAM.step(&mut b, &g, None, 0.1).unwrap();
        assert_eq!(a, b);
        assert_eq!((la.guard_cut, lb.guard_cut), (Some(0.0), None));
        // A guard of another length is refused, and nothing changes.
        let before = a.clone();
        let err = ADAM
            .step(&mut a, &g, Some(&part(0.0, &[1.0])), 0.1)
            .unwrap_err();
        assert!(err.to_string().contains("1 values, the adapter 2"), "{err}");
        assert_eq!(a, before);
    }

    fn batch_of(b: usize, t: usize, v: usize) -> TrainBatch {
        let f = |n: usize| (0..n).map(|x| x as f32).collect::<Vec<_>>();
        TrainBatch {
            features: Array::from_shape_vec((b, 2, 2), f(b * 4)).unwrap(),
            has_image: Array1::from_shape_fn(b, |i| ((i + 1) % 2) as f32),
            tokens: Array::from_shape_fn((b, t), |(i, j)| (i * t + j) as i32),
            targets: Array::from_shape_fn((b, t), |(i, j)| (i + j) as i32),
            ce_weight: Array::from_shape_fn((b, t), |(i, _)| if i == 2 { -0.5 } else { 1.0 }),
            kl_mask: Array::from_shape_fn((b, t), |(i, _)| (i % 2) as f32),
            vocab_mask: Array1::ones(v),
            ref_logp: Array::from_shape_vec((b, t, v), f(b * t * v)).unwrap(),
        }
    }

    #[test]
    fn split_and_serial_steps_ask_the_halves_and_the_guard_with_their_own_arguments() {
        // A fake engine: the gradient is (first token, w_ce, w_kl, ce_den) of its rows, so
        // the calls can be read back from the sum.
        let calls = std::sync::Mutex::new(Vec::new());
        let fake = |b: &TrainBatch, a: &GradArgs| -> Result<PartGrad> {
            let key = (b.tokens[[0, 0]], a.w_ce, a.w_kl, a.ce_den, a.kl_den);
            calls.lock().unwrap().push(key);
            Ok(part(1.0, &[0.0, 0.0, 0.0]))
        };
        let batch = batch_of(4, 3, 5);
        let guard = batch.rows(0, 2);
        let adam = Adam {
            clip_global_norm: 1e9,
            ..ADAM
        };
        let (mut w0, mut w1, mut w) = (fake, fake, fake);
        let mut s = state(&[0.0, 0.0, 0.0]);
        let l = split_step(
            &adam,
            2,
            &mut s,
            &batch,
            Some(&guard),
            0.1,
            0.9,
            0.75,
            Workers::Two([&mut w0, &mut w1]),
        )
        .unwrap();
        assert_eq!(l.loss, 2.0, "two halves, the guard apart");
        let mut s2 = state(&[0.0, 0.0, 0.0]);
        let one = Workers::One(&mut w);
        split_step(&adam, 2, &mut s2, &batch, Some(&guard), 0.1, 0.9, 0.75, one).unwrap();
        // A guard that is not one half-batch is refused before any call.
        let one = Workers::One(&mut w);
        let err =
            split_step(&adam, 2, &mut s2, &batch, Some(&batch), 0.1, 0.9, 0.75, one).unwrap_err();
        assert!(
            err.to_string().contains("4 rows, train_grad.onnx takes 2"),
            "{err}"
        );
        let mut got = calls.into_inner().unwrap();
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // Halves: the whole batch's denominators (10.5, 6); the guard (rows 0-1): its own
        // cross-entropy (|w| = 6 positions), no KL, its own KL denominator (3).
        let half0 = (0, 0.9, 0.75, 10.5, 6.0);
        let guard_call = (0, 1.0, 0.0, 6.0, 3.0);
        let half1 = (6, 0.9, 0.75, 10.5, 6.0);
        assert_eq!(
            got,
            vec![half0, half0, guard_call, guard_call, half1, half1]
        );
    }

    #[test]
    fn halves_of_a_batch_keep_the_rows_and_the_whole_batch_denominators() {
        let (b, t, v) = (4, 3, 5);
        let batch = batch_of(b, t, v);
        // |ce_weight|: 3 rows of 1 and one of 0.5, over 3 positions; kl_mask: rows 1 and 3.
        assert_eq!(batch.loss_denominators(), (10.5, 6.0));
        let [h0, h1] = batch.halves(2);
        assert_eq!(h1.tokens.row(0).to_vec(), vec![6, 7, 8]);
        assert_eq!(h1.features[[1, 1, 1]], batch.features[[3, 1, 1]]);
        assert_eq!(h0.ref_logp.shape(), &[2, t, v]);
        assert_eq!(h1.ref_logp[[0, 2, 4]], batch.ref_logp[[2, 2, 4]]);
        assert_eq!(h0.has_image.to_vec(), vec![1.0, 0.0]);
        assert_eq!(h0.vocab_mask, batch.vocab_mask);
        // An empty batch divides by 1, not 0.
        let none = TrainBatch {
            ce_weight: Array2::zeros((b, t)),
            kl_mask: Array2::zeros((b, t)),
            ..batch
        };
        assert_eq!(none.loss_denominators(), (1.0, 1.0));
    }
}
