//! `TractEngine`: vision.onnx, decoder.onnx and the decoder's prefix and step graphs run by
//! tract, implementing lethe-model's `Engine`. Owns the optimized tract plans.
//! Batch handling: the graphs declare batch as the symbolic dim `B` (the step graph also its
//! cached and new lengths `K` and `S`); tract keeps them symbolic through `into_optimized`,
//! and each run resolves them from the input shapes, so one plan per graph serves every
//! shape (no per-size re-optimisation, no cache to bound).
//! Invariant: inputs are checked with the same `GraphDims` rules as `OrtEngine`.

use crate::{tract_err, Threads};
use lethe_model::engine::cache_from;
use lethe_model::{Engine, GraphDims, KvCache, ModelError, Package, Result};
use ndarray::{Array3, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Ix3};
use std::path::Path;
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// tract plans for the inference graphs.
pub struct TractEngine {
    vision: Plan,
    /// decoder.onnx, planned on the first [`Engine::logits`] call (the reference the cache
    /// graphs are checked against; generation and scoring do not use it).
    decoder: Option<Plan>,
    decoder_path: std::path::PathBuf,
    prefix: Plan,
    step: Plan,
    dims: GraphDims,
    threads: Threads,
}

/// Loads, types and optimizes one ONNX graph.
pub(crate) fn load_plan(path: &Path) -> Result<Plan> {
    let file = path.display().to_string();
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(tract_err(format!("loading {file}")))?;
    let typed = model
        .into_optimized()
        .map_err(tract_err(format!("optimizing {file}")))?;
    typed
        .into_runnable()
        .map_err(tract_err(format!("planning {file}")))
}

impl TractEngine {
    /// Loads the inference graphs of a (verified) package; runs them on one thread per core.
    pub fn new(pkg: &Package) -> Result<TractEngine> {
        TractEngine::with_threads(pkg, Threads::per_core().count())
    }

    /// [`new`](Self::new) on `threads` threads (1: the calling thread alone).
    pub fn with_threads(pkg: &Package, threads: usize) -> Result<TractEngine> {
        Ok(TractEngine {
            vision: load_plan(&pkg.vision_path())?,
            decoder: None,
            decoder_path: pkg.decoder_path(),
            prefix: load_plan(&pkg.decoder_prefix_path())?,
            step: load_plan(&pkg.decoder_step_path())?,
            dims: GraphDims::from_package(pkg),
            threads: Threads::new(threads),
        })
    }

    /// Threads the plans run on.
    pub fn threads(&self) -> usize {
        self.threads.count()
    }
}

/// The plain f32 arrays of a run's outputs.
fn arrays(outs: &[TValue], what: &str) -> Result<Vec<ndarray::ArrayD<f32>>> {
    outs.iter()
        .map(|v| {
            Ok(v.to_plain_array_view::<f32>()
                .map_err(tract_err(what.to_string()))?
                .to_owned())
        })
        .collect()
}

fn out3(v: &TValue, what: &str) -> Result<Array3<f32>> {
    v.to_plain_array_view::<f32>()
        .map_err(tract_err(what.to_string()))?
        .to_owned()
        .into_dimensionality::<Ix3>()
        .map_err(|e| ModelError::Shape(format!("{what}: {e}")))
}

impl Engine for TractEngine {
    fn name(&self) -> &str {
        "tract"
    }

    fn features(&mut self, images: ArrayView4<f32>) -> Result<Array3<f32>> {
        let b = self.dims.check_images(&images)?;
        if b == 0 {
            return Ok(self.dims.no_features());
        }
        let t = Tensor::from(images.to_owned());
        let plan = &self.vision;
        let outs = self
            .threads
            .run(|| plan.run(tvec![t.into_tvalue()]))
            .map_err(tract_err("running vision.onnx"))?;
        out3(&outs[0], "vision.onnx features")
    }

    fn logits(
        &mut self,
        adapter: &[f32],
        features: ArrayView3<f32>,
        has_image: ArrayView1<f32>,
        tokens: ArrayView2<i32>,
    ) -> Result<Array3<f32>> {
        let b = self
            .dims
            .check_decoder(adapter, &features, &has_image, &tokens)?;
        if b == 0 {
            return Ok(Array3::zeros((0, self.dims.text_len, self.dims.vocab)));
        }
        let inputs = tvec![
            Tensor::from(ndarray::Array1::from(adapter.to_vec())).into_tvalue(),
            Tensor::from(features.to_owned()).into_tvalue(),
            Tensor::from(has_image.to_owned()).into_tvalue(),
            Tensor::from(tokens.to_owned()).into_tvalue(),
        ];
        let plan = match &self.decoder {
            Some(p) => p,
            None => self.decoder.insert(load_plan(&self.decoder_path)?),
        };
        let outs = self
            .threads
            .run(|| plan.run(inputs))
            .map_err(tract_err("running decoder.onnx"))?;
        out3(&outs[0], "decoder.onnx logits")
    }

    fn prefix(&mut self, adapter: &[f32], features: ArrayView3<f32>) -> Result<KvCache> {
        let b = self.dims.check_prefix(adapter, &features)?;
        if b == 0 {
            return Ok(self.dims.empty_cache(0, self.dims.kv.prefix_len));
        }
        let inputs = tvec![
            Tensor::from(ndarray::Array1::from(adapter.to_vec())).into_tvalue(),
            Tensor::from(features.to_owned()).into_tvalue(),
        ];
        let plan = &self.prefix;
        let outs = self
            .threads
            .run(|| plan.run(inputs))
            .map_err(tract_err("running decoder_prefix.onnx"))?;
        cache_from(
            arrays(&outs, "decoder_prefix.onnx output")?,
            "decoder_prefix.onnx",
        )
    }

    fn step(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
    ) -> Result<(Array3<f32>, KvCache)> {
        if tokens.nrows() == 0 {
            self.dims
                .check_step(adapter, past, &past_mask, &tokens, &positions)?;
            return Ok(self.dims.empty_step(past, &tokens));
        }
        let outs = self.run_step(adapter, past, past_mask, tokens, positions)?;
        let logits = out3(&outs[0], "decoder_step.onnx logits")?;
        let cache = cache_from(
            arrays(&outs[1..], "decoder_step.onnx output")?,
            "decoder_step.onnx",
        )?;
        Ok((logits, cache))
    }

    fn step_logits(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
    ) -> Result<Array3<f32>> {
        if tokens.nrows() == 0 {
            return Ok(self.step(adapter, past, past_mask, tokens, positions)?.0);
        }
        let outs = self.run_step(adapter, past, past_mask, tokens, positions)?;
        out3(&outs[0], "decoder_step.onnx logits")
    }
}

impl TractEngine {
    /// decoder_step.onnx on a checked, non-empty batch: its raw outputs (logits, then the
    /// grown cache), left in tract's tensors until the caller copies what it needs.
    fn run_step(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
    ) -> Result<TVec<TValue>> {
        self.dims
            .check_step(adapter, past, &past_mask, &tokens, &positions)?;
        let mut inputs: TVec<TValue> =
            tvec![Tensor::from(ndarray::Array1::from(adapter.to_vec())).into_tvalue()];
        for (k, v) in &past.layers {
            inputs.push(Tensor::from(k.clone()).into_tvalue());
            inputs.push(Tensor::from(v.clone()).into_tvalue());
        }
        inputs.push(Tensor::from(past_mask.to_owned()).into_tvalue());
        inputs.push(Tensor::from(tokens.to_owned()).into_tvalue());
        inputs.push(Tensor::from(positions.to_owned()).into_tvalue());
        let plan = &self.step;
        self.threads
            .run(|| plan.run(inputs))
            .map_err(tract_err("running decoder_step.onnx"))
    }
}
