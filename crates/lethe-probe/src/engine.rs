//! `TractEngine`: vision.onnx, decoder.onnx and the decoder's prefix and step graphs run by
//! tract, implementing lethe-model's `Engine`. Owns the optimized tract plans.
//! Batch handling: the graphs declare batch as the symbolic dim `B` (the step graph also its
//! cached and new lengths `K` and `S`); tract keeps them symbolic through `into_optimized`,
//! and each run resolves them from the input shapes, so one plan per graph serves every
//! shape (no per-size re-optimisation, no cache to bound).
//! Threads: a batch is split by rows, one part per thread, each part a plan run of its own
//! (`run_rows`); a batch too small to split runs once, its matrix products spread over the
//! threads.
//! Invariant: inputs are checked with the same `GraphDims` rules as `OrtEngine`.

use crate::{tract_err, Threads};
use lethe_model::engine::cache_from;
use lethe_model::{Engine, GraphDims, KvCache, ModelError, Package, Result};
use ndarray::{s, Array3, ArrayD, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis, Ix3};
use std::ops::Range;
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
        TractEngine::with_threads(pkg, Threads::cores())
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
fn arrays(outs: &[TValue], what: &str) -> Result<Vec<ArrayD<f32>>> {
    outs.iter()
        .map(|v| {
            Ok(v.to_plain_array_view::<f32>()
                .map_err(tract_err(what.to_string()))?
                .to_owned())
        })
        .collect()
}

fn out3(outs: Vec<ArrayD<f32>>, what: &str) -> Result<Array3<f32>> {
    outs.into_iter()
        .next()
        .ok_or_else(|| ModelError::Shape(format!("{what}: no output")))?
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
        let outs = self.run_rows(&self.vision, b, 1, "vision.onnx", |r| {
            tvec![Tensor::from(images.slice(s![r, .., .., ..]).to_owned()).into_tvalue()]
        })?;
        out3(outs, "vision.onnx features")
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
        if self.decoder.is_none() {
            self.decoder = Some(load_plan(&self.decoder_path)?);
        }
        let plan = self.decoder.as_ref().expect("planned above");
        let outs = self.run_rows(plan, b, 1, "decoder.onnx", |r| {
            tvec![
                adapter_tensor(adapter),
                Tensor::from(features.slice(s![r.clone(), .., ..]).to_owned()).into_tvalue(),
                Tensor::from(has_image.slice(s![r.clone()]).to_owned()).into_tvalue(),
                Tensor::from(tokens.slice(s![r, ..]).to_owned()).into_tvalue(),
            ]
        })?;
        out3(outs, "decoder.onnx logits")
    }

    fn prefix(&mut self, adapter: &[f32], features: ArrayView3<f32>) -> Result<KvCache> {
        let b = self.dims.check_prefix(adapter, &features)?;
        if b == 0 {
            return Ok(self.dims.empty_cache(0, self.dims.kv.prefix_len));
        }
        let outs = self.run_rows(&self.prefix, b, usize::MAX, "decoder_prefix.onnx", |r| {
            tvec![
                adapter_tensor(adapter),
                Tensor::from(features.slice(s![r, .., ..]).to_owned()).into_tvalue(),
            ]
        })?;
        cache_from(outs, "decoder_prefix.onnx")
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
        let mut outs = self.run_step(adapter, past, past_mask, tokens, positions, usize::MAX)?;
        let cache = cache_from(outs.split_off(1), "decoder_step.onnx")?;
        Ok((out3(outs, "decoder_step.onnx logits")?, cache))
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
        let outs = self.run_step(adapter, past, past_mask, tokens, positions, 1)?;
        out3(outs, "decoder_step.onnx logits")
    }
}

/// The adapter as a graph input.
fn adapter_tensor(adapter: &[f32]) -> TValue {
    Tensor::from(ndarray::Array1::from(adapter.to_vec())).into_tvalue()
}

/// Rows a part of a split run gets at least: below that, one run with the matrix products
/// spread over the threads costs less than a thread per part.
const MIN_PART_ROWS: usize = 4;

impl TractEngine {
    /// decoder_step.onnx on a checked, non-empty batch: its first `keep` outputs (logits,
    /// then the grown cache).
    fn run_step(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
        keep: usize,
    ) -> Result<Vec<ArrayD<f32>>> {
        self.dims
            .check_step(adapter, past, &past_mask, &tokens, &positions)?;
        self.run_rows(&self.step, tokens.nrows(), keep, "decoder_step.onnx", |r| {
            let mut inputs: TVec<TValue> = tvec![adapter_tensor(adapter)];
            for (k, v) in &past.layers {
                inputs.push(
                    Tensor::from(k.slice(s![r.clone(), .., .., ..]).to_owned()).into_tvalue(),
                );
                inputs.push(
                    Tensor::from(v.slice(s![r.clone(), .., .., ..]).to_owned()).into_tvalue(),
                );
            }
            inputs.push(Tensor::from(past_mask.slice(s![r.clone(), ..]).to_owned()).into_tvalue());
            inputs.push(Tensor::from(tokens.slice(s![r.clone(), ..]).to_owned()).into_tvalue());
            inputs.push(Tensor::from(positions.slice(s![r, ..]).to_owned()).into_tvalue());
            inputs
        })
    }

    /// Runs `plan` on rows `0..b`, the inputs of rows `r` made by `inputs(r)`, and returns its
    /// first `keep` outputs as f32 arrays.
    ///
    /// Rows are independent in every graph here and every output is batch-first, so the
    /// rows are split into one contiguous part per thread (at least [`MIN_PART_ROWS`] each),
    /// each part run on its own thread with tract single-threaded there, and each output's
    /// parts concatenated in order. A part's rows get the same per-row arithmetic as in one
    /// run: tract's kernels reduce each dot product in the same order whatever the row count
    /// (the parity tests compare answers and log-probabilities with ONNX Runtime). Too few
    /// rows to split: one run on the caller's thread, the matrix products spread over the
    /// threads. Splitting is faster on 2 cores: the products of a 16-row chunk are too small
    /// for tract to spread well (docs/bench/).
    fn run_rows<F>(
        &self,
        plan: &Plan,
        b: usize,
        keep: usize,
        what: &str,
        inputs: F,
    ) -> Result<Vec<ArrayD<f32>>>
    where
        F: Fn(Range<usize>) -> TVec<TValue> + Sync,
    {
        let run_part = |r: Range<usize>| -> Result<Vec<ArrayD<f32>>> {
            let outs = plan
                .run(inputs(r))
                .map_err(tract_err(format!("running {what}")))?;
            arrays(&outs[..keep.min(outs.len())], what)
        };
        let parts = self.threads.count().min(b / MIN_PART_ROWS).max(1);
        if parts == 1 {
            return self.threads.run(|| run_part(0..b));
        }
        let ranges: Vec<Range<usize>> = (0..parts)
            .map(|i| b * i / parts..b * (i + 1) / parts)
            .collect();
        let results: Vec<Result<Vec<ArrayD<f32>>>> = std::thread::scope(|sc| {
            let run_part = &run_part;
            let handles: Vec<_> = ranges
                .iter()
                .map(|r| {
                    let r = r.clone();
                    sc.spawn(move || run_part(r))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let results: Vec<Vec<ArrayD<f32>>> = results.into_iter().collect::<Result<_>>()?;
        (0..results[0].len())
            .map(|o| {
                let views: Vec<_> = results.iter().map(|p| p[o].view()).collect();
                ndarray::concatenate(Axis(0), &views)
                    .map_err(|e| ModelError::Shape(format!("{what} output {o}: {e}")))
            })
            .collect()
    }
}
