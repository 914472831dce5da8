//! `TractEngine`: vision.onnx and decoder.onnx run by tract, implementing lethe-model's
//! `Engine`. Owns the two optimized tract plans.
//! Batch handling: both graphs declare batch as the symbolic dim `B`; tract keeps it symbolic
//! through `into_optimized`, and each run resolves `B` from the input shapes, so one plan per
//! graph serves every batch size (no per-size re-optimisation, no cache to bound).
//! Invariant: inputs are checked with the same `GraphDims` rules as `OrtEngine`.

use crate::tract_err;
use lethe_model::{Engine, GraphDims, ModelError, Package, Result};
use ndarray::{Array3, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Ix3};
use std::path::Path;
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// tract plans for the two inference graphs.
pub struct TractEngine {
    vision: Plan,
    decoder: Plan,
    dims: GraphDims,
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
    /// Loads both inference graphs of a (verified) package.
    pub fn new(pkg: &Package) -> Result<TractEngine> {
        Ok(TractEngine {
            vision: load_plan(&pkg.vision_path())?,
            decoder: load_plan(&pkg.decoder_path())?,
            dims: GraphDims::from_package(pkg),
        })
    }
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
        let outs = self
            .vision
            .run(tvec![t.into_tvalue()])
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
        let outs = self
            .decoder
            .run(inputs)
            .map_err(tract_err("running decoder.onnx"))?;
        out3(&outs[0], "decoder.onnx logits")
    }
}
