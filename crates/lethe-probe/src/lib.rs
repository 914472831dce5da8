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
use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// The threads tract's matrix products and element-wise kernels run on: one pool per engine,
/// used only while that engine runs a plan. tract splits a product by output panels and a
/// reduction by rows, never inside one sum, so results are bit for bit those of one thread
/// (the parity tests compare answers and log-probabilities across engines either way).
#[derive(Clone)]
pub(crate) struct Threads {
    executor: Executor,
    count: usize,
}

impl Threads {
    /// `n` threads (at least 1); one thread runs on the caller alone, with no pool.
    pub(crate) fn new(n: usize) -> Threads {
        let count = n.max(1);
        let executor = if count == 1 {
            Executor::SingleThread
        } else {
            Executor::multithread_with_name(count, "lethe-tract")
        };
        Threads { executor, count }
    }

    /// The cores this process may use (at least 1).
    pub(crate) fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Runs `f` with tract's kernels on these threads.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        multithread_tract_scope(self.executor.clone(), f)
    }
}

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
