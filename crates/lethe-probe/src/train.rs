//! `TractTrainStep`: train_step.onnx run by tract, for the cross-engine check and the
//! benchmark (the update itself runs in ONNX Runtime). Owns one optimized tract plan.
//! Invariant: same inputs, same shape checks and same state hand-over as lethe-model's
//! `TrainStep`, so the two can be compared step for step.

use crate::engine::load_plan;
use crate::{tract_err, Threads};
use lethe_model::{ModelError, Package, Result, StepLosses, TrainBatch, TrainShape, TrainState};
use ndarray::{arr0, Array1, Ix1};
use tract_onnx::prelude::*;

/// tract plan of train_step.onnx.
pub struct TractTrainStep {
    plan: Arc<TypedRunnableModel>,
    shape: TrainShape,
    threads: Threads,
}

impl TractTrainStep {
    /// Loads and optimizes train_step.onnx; checks its input names against the manifest.
    pub fn new(pkg: &Package) -> Result<TractTrainStep> {
        let plan = load_plan(&pkg.train_step_path())?;
        let model = plan.model();
        let names: Vec<String> = model
            .input_outlets()
            .map_err(tract_err("train_step.onnx inputs"))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let spec = &pkg.manifest().graphs.train_step;
        if names != spec.inputs {
            return Err(ModelError::Package(format!(
                "train_step.onnx inputs are {names:?} in tract, the manifest says {:?}",
                spec.inputs
            )));
        }
        Ok(TractTrainStep {
            plan,
            shape: TrainShape::from_package(pkg),
            // One thread: tract's multithreaded products made the step slower, 41 -> 47-51 ms
            // on 2 cores, whatever the size threshold above which a product is shared
            // (a step is ~250 products, most of them small, each a hand-off to the pool).
            threads: Threads::new(1),
        })
    }

    /// Runs one step: updates `state` and returns the losses before the update.
    pub fn run(
        &mut self,
        state: &mut TrainState,
        batch: &TrainBatch,
        lr: f32,
        w_ce: f32,
        w_kl: f32,
    ) -> Result<StepLosses> {
        self.shape.check(state, batch)?;
        let inputs: TVec<TValue> = tvec![
            Tensor::from(state.params.clone()).into_tvalue(),
            Tensor::from(state.adam_m.clone()).into_tvalue(),
            Tensor::from(state.adam_v.clone()).into_tvalue(),
            Tensor::from(arr0(state.step)).into_tvalue(),
            Tensor::from(arr0(lr)).into_tvalue(),
            Tensor::from(batch.features.clone()).into_tvalue(),
            Tensor::from(batch.has_image.clone()).into_tvalue(),
            Tensor::from(batch.tokens.clone()).into_tvalue(),
            Tensor::from(batch.targets.clone()).into_tvalue(),
            Tensor::from(batch.ce_weight.clone()).into_tvalue(),
            Tensor::from(batch.kl_mask.clone()).into_tvalue(),
            Tensor::from(batch.vocab_mask.clone()).into_tvalue(),
            Tensor::from(batch.ref_logp.clone()).into_tvalue(),
            Tensor::from(arr0(w_ce)).into_tvalue(),
            Tensor::from(arr0(w_kl)).into_tvalue(),
        ];
        let plan = &self.plan;
        let outs = self
            .threads
            .run(|| plan.run(inputs))
            .map_err(tract_err("running train_step.onnx"))?;
        let scalar = |i: usize| -> Result<f32> {
            Ok(*outs[i]
                .try_as_plain_ram()
                .and_then(|v| v.to_scalar::<f32>())
                .map_err(tract_err(format!("train-step output {i}")))?)
        };
        let vector = |i: usize| -> Result<Array1<f32>> {
            outs[i]
                .to_plain_array_view::<f32>()
                .map_err(tract_err(format!("train-step output {i}")))?
                .to_owned()
                .into_dimensionality::<Ix1>()
                .map_err(|e| ModelError::Shape(format!("train-step output {i}: {e}")))
        };
        let losses = StepLosses {
            loss: scalar(0)?,
            ce: scalar(1)?,
            kl: scalar(2)?,
            grad_norm: scalar(3)?,
        };
        *state = TrainState {
            params: vector(4)?,
            adam_m: vector(5)?,
            adam_v: vector(6)?,
            step: scalar(7)?,
        };
        Ok(losses)
    }
}
