//! lethe-model: the model package, its tokenizer and adapter, and the ONNX Runtime engine
//! that serves the camera and runs the forget update.
//!
//! Key decisions (see docs/design.md, decisions 1-3):
//! - **The train step is a graph.** ONNX Runtime's training builds are gone for Jetson, so
//!   the package carries `train_step.onnx`: one whole Adam step (forward, loss, backward,
//!   clipping, update) as a plain inference graph of standard ops. [`train::TrainStep`] feeds
//!   it the adapter, the Adam state and a fixed-size batch and gets the updated state back;
//!   any stock ONNX Runtime (CPU, CUDA, TensorRT) can run it.
//! - **Two engines, on purpose.** This crate is the only one that links ONNX Runtime (`ort`,
//!   loaded at run time); lethe-probe is the only one that links tract and re-implements
//!   [`engine::Engine`] independently. The update and the serving path use ORT; verification
//!   uses tract, so a bug in one path cannot pass by agreeing with itself. Everything that is
//!   not engine code (package, tokenizer, generation, log-softmax) lives here, once, and is
//!   shared by both.
//! - **Frozen base, small adapter.** Base weights are initializers inside the graphs; only
//!   [`adapter::Adapter`] changes, and [`package::Package`] verifies every file's hash on open.
//!
//! This crate does no network I/O and knows nothing of MQTT or async runtimes.

pub mod adapter;
pub mod engine;
pub mod error;
pub mod fixtures;
pub mod generate;
pub mod heap;
pub mod image;
pub mod manifest;
pub mod npy;
pub mod package;
pub mod runtime;
pub mod tokenizer;
pub mod train;

pub use adapter::Adapter;
pub use engine::{Engine, GraphDims, KvCache, OrtEngine};
pub use error::{ModelError, Result};
pub use fixtures::Fixtures;
pub use generate::{answer, answer_guided, logprobs, score, Query};
pub use manifest::Manifest;
pub use package::{
    AdapterVersionInfo, HeldOutWordings, Package, Probe, ProbeSet, RetainEntry, RetainSet, Wordings,
};
pub use runtime::{GpuOptions, Provider, ProviderReport, SessionOptions};
pub use tokenizer::{Sequence, Tokenizer};
pub use train::{StepLosses, TrainBatch, TrainShape, TrainState, TrainStep};
