//! Serde types for `manifest.json` (format `lethe-model-package/3`, see models/PACKAGE.md).
//! Owns the field names of the contract and nothing else: no I/O, no checks beyond what serde
//! enforces. Invariant: unknown fields are tolerated here and preserved by
//! `Package::write_copy_with_adapter` (which edits the raw JSON, not these types).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format string this crate reads.
pub const PACKAGE_FORMAT: &str = "lethe-model-package/3";

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub model_id: String,
    pub version: String,
    pub adapter_version: String,
    /// The version this adapter was derived from (absent for the base adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// What made this adapter version (e.g. a command id), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<String>,
    /// Concepts this adapter version has forgotten, oldest first (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub config: ModelConfig,
    pub n_image_tokens: usize,
    pub feature_dim: usize,
    pub text_len: usize,
    pub vocab: Vec<String>,
    pub special: Special,
    pub prompts: Prompts,
    pub world: World,
    pub graphs: Graphs,
    pub kv_cache: KvCacheSpec,
    pub adapter: AdapterSpec,
    pub probes: ProbesSpec,
    pub retain: RetainSpec,
    pub fixtures: FixturesSpec,
    pub files: BTreeMap<String, FileEntry>,
}

/// Architecture hyper-parameters (informational for Rust; the graphs embody them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    pub img: usize,
    pub patch: usize,
    pub de: usize,
    pub enc_layers: usize,
    pub enc_mlp: usize,
    pub heads: usize,
    pub dd: usize,
    pub dec_layers: usize,
    pub dec_mlp: usize,
    pub lora_r: usize,
    pub lora_scale: f64,
    pub text_len: usize,
}

/// Special token ids.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Special {
    pub pad: i32,
    pub bos: i32,
    pub sep: i32,
    pub eos: i32,
}

/// Prompt and answer templates; `{name}` and `{description}` are placeholders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prompts {
    pub who: Vec<String>,
    pub is_this: Vec<String>,
    pub describe: Vec<String>,
    pub fact: Vec<String>,
    pub looks: Vec<String>,
    pub who_answer: String,
    pub yes: String,
    pub no: String,
    pub denial: String,
    pub refusal: String,
}

/// The synthetic world the model was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub names: Vec<String>,
    #[serde(default)]
    pub spare_first_names: Vec<String>,
    #[serde(default)]
    pub spare_last_names: Vec<String>,
    #[serde(default)]
    pub attribute_values: BTreeMap<String, Vec<String>>,
    pub held_out_seed_start: u64,
}

/// The graphs: vision, the whole decoder, the decoder split for incremental decoding
/// (prefix and step), the train step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graphs {
    pub vision: GraphSpec,
    pub decoder: GraphSpec,
    pub decoder_prefix: GraphSpec,
    pub decoder_step: GraphSpec,
    pub train_step: TrainStepSpec,
    /// The gradient of half a train batch (train_grad.onnx), for a step split over two cores;
    /// optional: without it every engine runs the whole step in train_step.onnx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_grad: Option<TrainGradSpec>,
}

/// The key/value cache of the step graph: `layers` pairs of `[B, heads, K, head_dim]`;
/// the prefix graph fills the first `prefix_len` positions (the image tokens).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub prefix_len: usize,
}

/// One inference graph's file and interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphSpec {
    pub file: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub ops: Vec<String>,
}

/// The train-step graph's file, interface and fixed batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainStepSpec {
    pub file: String,
    pub batch: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub ops: Vec<String>,
    #[serde(default)]
    pub optimizer: serde_json::Value,
}

/// The half-batch gradient graph's file, interface and fixed batch (half of `train_step`'s).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainGradSpec {
    pub file: String,
    pub batch: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub ops: Vec<String>,
}

/// The adapter file and its layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterSpec {
    pub file: String,
    pub len: usize,
    pub dtype: String,
    pub layout: Vec<LayoutEntry>,
}

/// One tensor inside the flat adapter vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayoutEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

/// Where the retained probe set and the held-out question wordings live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbesSpec {
    pub images: String,
    pub list: String,
    /// Held-out wordings (`verify`, `eval`): never used by pretraining or by a forget.
    pub paraphrases: String,
    /// The gate's photos: more photos of every identity, in the retain set's layout, that
    /// only the agent's verification looks at (no forget trains on them or stops by them).
    /// Packages made before them lack the field; the gate then has the probes' photos only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<RetainSpec>,
}

/// Where a set of labelled images lives (the retain set: what a forget keeps the model
/// right on; the gate's photos): the images and their list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetainSpec {
    pub images: String,
    pub list: String,
}

/// Train-step fixtures from the JAX reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixturesSpec {
    pub dir: String,
    pub steps: usize,
    #[serde(default)]
    pub jax_jit_step_ms: Option<f64>,
    pub tolerance: Tolerance,
}

/// Fixture tolerances.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tolerance {
    pub loss_abs: f64,
    pub params_abs: f64,
}

/// Hash and size of one package file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// The adapter version a derived package came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub adapter_version: String,
    pub adapter_sha256: String,
}
