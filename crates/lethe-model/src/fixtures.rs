//! The package's train-step fixtures (models/PACKAGE.md `fixtures/`): the JAX reference's
//! inputs and expected outputs, loaded as this crate's types so every engine is checked
//! against the same numbers. Owns only loading and comparing; no engine code.
//! Invariant: a loaded `Fixtures` has shapes that `TrainShape::check` accepts.

use crate::error::{ModelError, Result};
use crate::manifest::Tolerance;
use crate::npy;
use crate::package::Package;
use crate::train::{TrainBatch, TrainShape, TrainState};
use ndarray::{Array1, Array2, Array3, ArrayD, Dimension};

/// Fixture inputs and expectations.
#[derive(Debug, Clone)]
pub struct Fixtures {
    pub state: TrainState,
    pub batch: TrainBatch,
    pub lr: f32,
    pub w_ce: f32,
    pub w_kl: f32,
    /// Fed-back steps the expectations cover.
    pub steps: usize,
    pub tolerance: Tolerance,
    /// JAX `jit` time of one step on the packaging machine, if recorded.
    pub jax_jit_step_ms: Option<f64>,
    /// `[steps, 4]`: loss, ce, kl, grad_norm per step.
    pub expect_losses: Array2<f32>,
    pub expect_params: Array1<f32>,
    pub expect_adam_m: Array1<f32>,
    pub expect_adam_v: Array1<f32>,
    /// Decoder logits for the fixture batch with the initial adapter, `[Bt,T,V]`.
    pub expect_logits: Array3<f32>,
}

impl Fixtures {
    /// How far the Adam moments of `state` (after `steps` fed-back steps) are from JAX's,
    /// relative to their scale (see [`MOMENT_REL_TOL`]), by name.
    pub fn moment_diffs(&self, state: &TrainState) -> [(&'static str, f32); 2] {
        [
            ("adam_m", max_rel_diff(&state.adam_m, &self.expect_adam_m)),
            ("adam_v", max_rel_diff(&state.adam_v, &self.expect_adam_v)),
        ]
    }

    /// Loads the fixtures of a package.
    pub fn load(pkg: &Package) -> Result<Fixtures> {
        let spec = &pkg.manifest().fixtures;
        let dir = pkg.path(&spec.dir);
        let f32n = |name: &str| npy::read_f32(&dir.join(format!("{name}.npy")));
        let i32n = |name: &str| npy::read_i32(&dir.join(format!("{name}.npy")));
        let scalar = |name: &str| -> Result<f32> {
            let a = f32n(name)?;
            a.iter()
                .next()
                .copied()
                .filter(|_| a.len() == 1)
                .ok_or_else(|| ModelError::Shape(format!("fixture {name} is not a scalar")))
        };
        let state = TrainState {
            params: dims(f32n("in_params")?, "in_params")?,
            adam_m: dims(f32n("in_adam_m")?, "in_adam_m")?,
            adam_v: dims(f32n("in_adam_v")?, "in_adam_v")?,
            step: scalar("in_step")?,
        };
        let batch = TrainBatch {
            features: dims(f32n("in_features")?, "in_features")?,
            has_image: dims(f32n("in_has_image")?, "in_has_image")?,
            tokens: dims(i32n("in_tokens")?, "in_tokens")?,
            targets: dims(i32n("in_targets")?, "in_targets")?,
            ce_weight: dims(f32n("in_ce_weight")?, "in_ce_weight")?,
            kl_mask: dims(f32n("in_kl_mask")?, "in_kl_mask")?,
            vocab_mask: dims(f32n("in_vocab_mask")?, "in_vocab_mask")?,
            ref_logp: dims(f32n("in_ref_logp")?, "in_ref_logp")?,
        };
        TrainShape::from_package(pkg).check(&state, &batch)?;
        let fx = Fixtures {
            state,
            batch,
            lr: scalar("in_lr")?,
            w_ce: scalar("in_w_ce")?,
            w_kl: scalar("in_w_kl")?,
            steps: spec.steps,
            tolerance: spec.tolerance,
            jax_jit_step_ms: spec.jax_jit_step_ms,
            expect_losses: dims(f32n("expect_losses")?, "expect_losses")?,
            expect_params: dims(f32n("expect_params")?, "expect_params")?,
            expect_adam_m: dims(f32n("expect_adam_m")?, "expect_adam_m")?,
            expect_adam_v: dims(f32n("expect_adam_v")?, "expect_adam_v")?,
            expect_logits: dims(f32n("expect_logits")?, "expect_logits")?,
        };
        if fx.expect_losses.shape() != [fx.steps, 4] {
            return Err(ModelError::Shape(format!(
                "expect_losses is {:?}, expected [{}, 4]",
                fx.expect_losses.shape(),
                fx.steps
            )));
        }
        Ok(fx)
    }
}

fn dims<T, D: Dimension>(a: ArrayD<T>, name: &str) -> Result<ndarray::Array<T, D>> {
    let shape = a.shape().to_vec();
    a.into_dimensionality::<D>()
        .map_err(|_| ModelError::Shape(format!("fixture {name} has shape {shape:?}")))
}

/// Largest absolute difference of two equally long slices; NaN if either holds NaN, and
/// infinite if the lengths differ.
pub fn max_abs_diff<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32>,
) -> f32 {
    let mut a = a.into_iter();
    let mut b = b.into_iter();
    let mut m = 0f32;
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) => {
                let d = (x - y).abs();
                if d.is_nan() {
                    return f32::NAN;
                }
                m = m.max(d);
            }
            (None, None) => return m,
            _ => return f32::INFINITY,
        }
    }
}

/// Largest absolute difference of two equally long slices, relative to the largest absolute
/// value of `b` (the reference): NaN if either holds NaN, infinite if the lengths differ or `b`
/// is all zeros while `a` is not.
pub fn max_rel_diff<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32> + Clone,
) -> f32 {
    let d = max_abs_diff(a, b.clone());
    let mut scale = 0f32;
    for x in b {
        if x.is_nan() {
            return f32::NAN;
        }
        scale = scale.max(x.abs());
    }
    if d == 0.0 {
        0.0
    } else {
        d / scale
    }
}

/// Tolerance of the Adam moments against the fixtures, relative to their own scale: they are
/// orders of magnitude below the parameters (the second moment about 1e-9 after three
/// steps), so the parameters' absolute tolerance would bound nothing.
pub const MOMENT_REL_TOL: f32 = 1e-3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_rel_diff_is_relative_to_the_reference_and_propagates_nan() {
        assert_eq!(max_rel_diff(&[1e-9, 2e-9], &[1e-9, 4e-9]), 0.5);
        assert_eq!(max_rel_diff(&[0.0], &[0.0]), 0.0);
        assert!(max_rel_diff(&[1.0], &[0.0]).is_infinite());
        assert!(max_rel_diff(&[f32::NAN], &[1.0]).is_nan());
        assert!(max_rel_diff(&[1.0, 1.0], &[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn max_abs_diff_propagates_nan_and_length_mismatch() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert!(max_abs_diff(&[f32::NAN], &[0.0]).is_nan());
        assert!(max_abs_diff(&[1.0], &[1.0, 2.0]).is_infinite());
    }
}
