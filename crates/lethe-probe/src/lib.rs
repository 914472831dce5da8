//! lethe-probe: the independent verifier. Runs the model package with tract (pure Rust, no
//! native code) instead of ONNX Runtime.
//!
//! Key decision (design decision 3, "two engines, on purpose"): ONNX Runtime performs the
//! forget update and serves the camera; tract loads the committed package on its own and runs
//! the probes. A bug in the update path, in ORT, or in the export cannot pass verification by
//! agreeing with itself. This is the only crate that links `tract-onnx`; it depends on
//! lethe-model for the package, tokenizer, generation loop and the `Engine` trait, never on
//! ONNX Runtime code paths (parity checks take any two `&mut dyn Engine`).
//!
//! Errors are reported as `lethe_model::ModelError::Engine` (engine `"tract"`) with tract's
//! error as the source, so every engine shares the `Engine` trait's one error type.

pub mod engine;
pub mod parity;
pub mod train;

pub use engine::TractEngine;
pub use parity::{guided_parity, probe_parity, ParityReport};
pub use train::TractTrainStep;

use lethe_model::ModelError;

/// Wraps a tract error with context.
pub(crate) fn tract_err(
    context: impl Into<String>,
) -> impl FnOnce(tract_onnx::prelude::TractError) -> ModelError {
    let context = context.into();
    move |e| ModelError::Engine {
        engine: "tract",
        context,
        source: e.into(),
    }
}
