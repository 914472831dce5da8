//! `TractTrainStep`: the train step run by tract, for the cross-engine check and the
//! benchmark (the update itself runs in ONNX Runtime). Where the package has
//! train_grad.onnx and the machine two cores, the step is split as lethe-model's
//! (`lethe_model::train::split_step`): each half of the batch on its own thread with tract's
//! kernels on that thread alone, then the same Adam update; otherwise train_step.onnx on
//! one thread. Invariant: same inputs, same shape checks and same state hand-over as
//! lethe-model's `TrainStep`, so the two can be compared step for step.

use crate::engine::load_plan;
use crate::{tract_err, Threads};
use lethe_model::train::{split_step, Adam, GradArgs, PartGrad, Workers};
use lethe_model::{ModelError, Package, Result, StepLosses, TrainBatch, TrainShape, TrainState};
use ndarray::{arr0, Array1, Ix1};
use tract_onnx::prelude::*;

/// tract plan of train_step.onnx, or of train_grad.onnx run on two halves.
pub struct TractTrainStep {
    plan: Arc<TypedRunnableModel>,
    shape: TrainShape,
    /// `Some((half batch, optimizer))` when `plan` is train_grad.onnx.
    split: Option<(usize, Adam)>,
}

/// Checks a plan's input names against the manifest's.
fn check_inputs(plan: &TypedRunnableModel, file: &str, want: &[String]) -> Result<()> {
    let model = plan.model();
    let names: Vec<String> = model
        .input_outlets()
        .map_err(tract_err(format!("{file} inputs")))?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    if names != want {
        return Err(ModelError::Package(format!(
            "{file} inputs are {names:?} in tract, the manifest says {want:?}"
        )));
    }
    Ok(())
}

/// A tensor of a tract output.
fn output<T: Datum + Clone>(
    outs: &TVec<TValue>,
    i: usize,
) -> Result<tract_ndarray::ArrayViewD<'_, T>> {
    outs[i]
        .to_plain_array_view::<T>()
        .map_err(tract_err(format!("train-step output {i}")))
}

fn scalar(outs: &TVec<TValue>, i: usize) -> Result<f32> {
    Ok(*output::<f32>(outs, i)?
        .iter()
        .next()
        .ok_or_else(|| ModelError::Shape(format!("train-step output {i} is empty")))?)
}

fn vector(outs: &TVec<TValue>, i: usize) -> Result<Array1<f32>> {
    output::<f32>(outs, i)?
        .to_owned()
        .into_dimensionality::<Ix1>()
        .map_err(|e| ModelError::Shape(format!("train-step output {i}: {e}")))
}

/// The rows of a batch as tract inputs, in the graphs' order after the state.
fn batch_inputs(b: &TrainBatch) -> [TValue; 8] {
    [
        Tensor::from(b.features.clone()).into_tvalue(),
        Tensor::from(b.has_image.clone()).into_tvalue(),
        Tensor::from(b.tokens.clone()).into_tvalue(),
        Tensor::from(b.targets.clone()).into_tvalue(),
        Tensor::from(b.ce_weight.clone()).into_tvalue(),
        Tensor::from(b.kl_mask.clone()).into_tvalue(),
        Tensor::from(b.vocab_mask.clone()).into_tvalue(),
        Tensor::from(b.ref_logp.clone()).into_tvalue(),
    ]
}

impl TractTrainStep {
    /// Loads and optimizes the train step; checks its input names against the manifest.
    pub fn new(pkg: &Package) -> Result<TractTrainStep> {
        let graphs = &pkg.manifest().graphs;
        let cores = Threads::cores();
        if let (true, Some(path), Some(spec)) = (
            cores >= 2,
            pkg.train_grad_path(),
            graphs.train_grad.as_ref(),
        ) {
            let plan = load_plan(&path)?;
            check_inputs(&plan, &spec.file, &spec.inputs)?;
            return Ok(TractTrainStep {
                plan,
                shape: TrainShape::from_package(pkg),
                split: Some((spec.batch, Adam::from_package(pkg)?)),
            });
        }
        TractTrainStep::whole(pkg)
    }

    /// train_step.onnx on one thread, whatever the package and the machine offer.
    pub fn whole(pkg: &Package) -> Result<TractTrainStep> {
        let spec = &pkg.manifest().graphs.train_step;
        let plan = load_plan(&pkg.train_step_path())?;
        check_inputs(&plan, &spec.file, &spec.inputs)?;
        Ok(TractTrainStep {
            plan,
            shape: TrainShape::from_package(pkg),
            split: None,
        })
    }

    /// Whether the step is split over two threads (train_grad.onnx).
    pub fn is_split(&self) -> bool {
        self.split.is_some()
    }

    /// Runs one step: updates `state` and returns the losses before the update.
    ///
    /// One thread per half (or one for the whole step): tract's own multithreaded products
    /// made the whole step slower, 41 -> 47-51 ms on 2 cores, whatever the size threshold
    /// above which a product is shared (a step is ~250 products, most of them small, each a
    /// hand-off to the pool).
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
        let plan = &self.plan;
        if let Some((half, adam)) = &self.split {
            let grad = |b: &TrainBatch, a: &GradArgs| -> Result<PartGrad> {
                let mut inputs: TVec<TValue> = tvec![Tensor::from(a.params.clone()).into_tvalue()];
                inputs.extend(batch_inputs(b));
                for x in [a.w_ce, a.w_kl, a.ce_den, a.kl_den] {
                    inputs.push(Tensor::from(arr0(x)).into_tvalue());
                }
                let outs = Threads::new(1)
                    .run(|| plan.run(inputs))
                    .map_err(tract_err("running train_grad.onnx"))?;
                Ok(PartGrad {
                    loss: scalar(&outs, 0)?,
                    ce: scalar(&outs, 1)?,
                    kl: scalar(&outs, 2)?,
                    grad: vector(&outs, 3)?,
                })
            };
            let (mut g0, mut g1) = (grad, grad);
            return split_step(
                adam,
                *half,
                state,
                batch,
                guard,
                lr,
                w_ce,
                w_kl,
                Workers::Two([&mut g0, &mut g1]),
            );
        }
        if guard.is_some() {
            return Err(ModelError::Package(
                "a guarded step needs the split train step (train_grad.onnx, 2+ cores)".into(),
            ));
        }
        let mut inputs: TVec<TValue> = tvec![
            Tensor::from(state.params.clone()).into_tvalue(),
            Tensor::from(state.adam_m.clone()).into_tvalue(),
            Tensor::from(state.adam_v.clone()).into_tvalue(),
            Tensor::from(arr0(state.step)).into_tvalue(),
            Tensor::from(arr0(lr)).into_tvalue(),
        ];
        inputs.extend(batch_inputs(batch));
        inputs.push(Tensor::from(arr0(w_ce)).into_tvalue());
        inputs.push(Tensor::from(arr0(w_kl)).into_tvalue());
        let outs = Threads::new(1)
            .run(|| plan.run(inputs))
            .map_err(tract_err("running train_step.onnx"))?;
        let losses = StepLosses {
            loss: scalar(&outs, 0)?,
            ce: scalar(&outs, 1)?,
            kl: scalar(&outs, 2)?,
            grad_norm: scalar(&outs, 3)?,
            guard_cut: None,
        };
        *state = TrainState {
            params: vector(&outs, 4)?,
            adam_m: vector(&outs, 5)?,
            adam_v: vector(&outs, 6)?,
            step: scalar(&outs, 7)?,
        };
        Ok(losses)
    }
}
