//! One optimizer step of the adapter as a plain ONNX inference graph (train_step.onnx, see
//! models/PACKAGE.md "Train-step graph") run by ONNX Runtime. Owns the step's state, batch
//! and loss types, shared with tract's `TractTrainStep` in lethe-probe, and the shape checks
//! of every input against the manifest. Invariants: inputs are fed by name in the manifest's
//! order and checked before running; `TrainState` is only replaced after a step succeeded.

use crate::adapter::Adapter;
use crate::error::{ModelError, Result};
use crate::package::Package;
use crate::runtime::{build_session, ProviderReport, SessionOptions};
use ndarray::{arr0, Array1, Array2, Array3, Ix1};
use ort::session::Session;
use ort::value::{Tensor, TensorRef};

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

/// The loss parts of one step (before the update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLosses {
    pub loss: f32,
    pub ce: f32,
    pub kl: f32,
    pub grad_norm: f32,
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

/// ONNX Runtime session of train_step.onnx.
pub struct TrainStep {
    session: Session,
    shape: TrainShape,
    provider: ProviderReport,
}

impl TrainStep {
    /// Opens train_step.onnx and checks its interface against the manifest.
    pub fn new(pkg: &Package, opts: &SessionOptions) -> Result<TrainStep> {
        let (session, provider) = build_session(&pkg.train_step_path(), opts)?;
        let spec = &pkg.manifest().graphs.train_step;
        let ins: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if ins != spec.inputs || outs != spec.outputs {
            return Err(ModelError::Package(format!(
                "train_step.onnx has inputs {ins:?} and outputs {outs:?}, the manifest says \
                 {:?} and {:?}",
                spec.inputs, spec.outputs
            )));
        }
        let shape = TrainShape::from_package(pkg);
        for o in session.inputs() {
            if o.name() == "features" {
                let dims: Option<Vec<i64>> = o
                    .dtype()
                    .tensor_shape()
                    .map(|s| s.iter().copied().collect());
                if dims.as_ref().and_then(|d| d.first()).copied() != Some(shape.batch as i64) {
                    return Err(ModelError::Package(format!(
                        "train_step.onnx features are {dims:?}, manifest batch is {}",
                        shape.batch
                    )));
                }
            }
        }
        Ok(TrainStep {
            session,
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

    /// Runs one step: updates `state` in place and returns the losses computed before the
    /// update.
    pub fn run(
        &mut self,
        state: &mut TrainState,
        batch: &TrainBatch,
        lr: f32,
        w_ce: f32,
        w_kl: f32,
    ) -> Result<StepLosses> {
        self.shape.check(state, batch)?;
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
        let outs = self
            .session
            .run(inputs)
            .map_err(e("running train_step.onnx"))?;
        let scalar = |name: &str| -> Result<f32> {
            outs[name]
                .try_extract_scalar::<f32>()
                .map_err(ModelError::ort(format!("output {name}")))
        };
        let losses = StepLosses {
            loss: scalar("loss")?,
            ce: scalar("ce")?,
            kl: scalar("kl")?,
            grad_norm: scalar("grad_norm")?,
        };
        let vector = |name: &str| -> Result<Array1<f32>> {
            outs[name]
                .try_extract_array::<f32>()
                .map_err(ModelError::ort(format!("output {name}")))?
                .to_owned()
                .into_dimensionality::<Ix1>()
                .map_err(|err| ModelError::Shape(format!("output {name}: {err}")))
        };
        let next = TrainState {
            params: vector("params_out")?,
            adam_m: vector("adam_m_out")?,
            adam_v: vector("adam_v_out")?,
            step: scalar("step_out")?,
        };
        if next.params.len() != self.shape.params {
            return Err(ModelError::Shape(format!(
                "params_out has {} values, expected {}",
                next.params.len(),
                self.shape.params
            )));
        }
        *state = next;
        Ok(losses)
    }
}
