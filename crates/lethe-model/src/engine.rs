//! The `Engine` trait (vision features and decoder logits, batch-dynamic) and `OrtEngine`, its
//! ONNX Runtime implementation. Owns input-shape checks shared by every engine (`GraphDims`),
//! so tract (lethe-probe) and ORT refuse the same malformed inputs with the same messages.
//! Invariant: an engine never sees an input whose shape disagrees with the package manifest.

use crate::error::{ModelError, Result};
use crate::package::Package;
use crate::runtime::{build_session, ProviderReport, SessionOptions};
use ndarray::{Array3, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Ix3};
use ort::session::Session;
use ort::value::TensorRef;

/// Runs the package's two inference graphs. Batch `B` is free in both.
pub trait Engine {
    /// Short engine name (`"ort"`, `"tract"`).
    fn name(&self) -> &str;
    /// vision.onnx: images `[B,64,64,3]` f32 0..255 -> features `[B,16,512]`.
    fn features(&mut self, images: ArrayView4<f32>) -> Result<Array3<f32>>;
    /// decoder.onnx: adapter `[P]`, features `[B,16,512]`, has_image `[B]`, tokens `[B,T]`
    /// -> logits `[B,T,V]` (`logits[b,t]` predicts token `t+1`).
    fn logits(
        &mut self,
        adapter: &[f32],
        features: ArrayView3<f32>,
        has_image: ArrayView1<f32>,
        tokens: ArrayView2<i32>,
    ) -> Result<Array3<f32>>;
}

/// The fixed dimensions of a package's graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphDims {
    pub image_size: usize,
    pub n_image_tokens: usize,
    pub feature_dim: usize,
    pub text_len: usize,
    pub vocab: usize,
    pub adapter_len: usize,
}

impl GraphDims {
    /// The dimensions declared by a package.
    pub fn from_package(pkg: &Package) -> GraphDims {
        let m = pkg.manifest();
        GraphDims {
            image_size: m.config.img,
            n_image_tokens: m.n_image_tokens,
            feature_dim: m.feature_dim,
            text_len: m.text_len,
            vocab: m.vocab.len(),
            adapter_len: m.adapter.len,
        }
    }

    /// The vision output for an empty batch (engines need not run a graph for it).
    pub fn no_features(&self) -> Array3<f32> {
        Array3::zeros((0, self.n_image_tokens, self.feature_dim))
    }

    /// Checks a vision input; returns the batch size.
    pub fn check_images(&self, images: &ArrayView4<f32>) -> Result<usize> {
        let s = self.image_size;
        let sh = images.shape();
        if sh[1..] != [s, s, 3] {
            return Err(ModelError::Shape(format!(
                "images are {sh:?}, the vision graph takes [B,{s},{s},3]"
            )));
        }
        Ok(sh[0])
    }

    /// Checks decoder inputs; returns the batch size.
    pub fn check_decoder(
        &self,
        adapter: &[f32],
        features: &ArrayView3<f32>,
        has_image: &ArrayView1<f32>,
        tokens: &ArrayView2<i32>,
    ) -> Result<usize> {
        if adapter.len() != self.adapter_len {
            return Err(ModelError::Shape(format!(
                "adapter has {} values, the decoder takes {}",
                adapter.len(),
                self.adapter_len
            )));
        }
        let b = tokens.nrows();
        let fs = features.shape();
        if fs != [b, self.n_image_tokens, self.feature_dim] {
            return Err(ModelError::Shape(format!(
                "features are {fs:?}, expected [{b},{},{}]",
                self.n_image_tokens, self.feature_dim
            )));
        }
        if has_image.len() != b {
            return Err(ModelError::Shape(format!(
                "has_image has {} rows, tokens have {b}",
                has_image.len()
            )));
        }
        if tokens.ncols() != self.text_len {
            return Err(ModelError::Shape(format!(
                "tokens are {:?}, expected [{b},{}]",
                tokens.shape(),
                self.text_len
            )));
        }
        if let Some(t) = tokens.iter().find(|&&t| t < 0 || t as usize >= self.vocab) {
            return Err(ModelError::Shape(format!(
                "token id {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        Ok(b)
    }
}

/// ONNX Runtime sessions for vision.onnx and decoder.onnx.
pub struct OrtEngine {
    vision: Session,
    decoder: Session,
    dims: GraphDims,
    provider: ProviderReport,
}

impl OrtEngine {
    /// Opens both inference graphs of a (verified) package.
    pub fn new(pkg: &Package, opts: &SessionOptions) -> Result<OrtEngine> {
        let (vision, v) = build_session(&pkg.vision_path(), opts)?;
        let (decoder, d) = build_session(&pkg.decoder_path(), opts)?;
        let mut fallbacks = v.fallbacks;
        for f in d.fallbacks {
            if !fallbacks.contains(&f) {
                fallbacks.push(f);
            }
        }
        Ok(OrtEngine {
            vision,
            decoder,
            dims: GraphDims::from_package(pkg),
            // The engine is as fast as its slower session: report the later provider of
            // the chain if the two differ.
            provider: ProviderReport {
                used: v.used.max(d.used),
                fallbacks,
            },
        })
    }

    /// The execution provider the sessions run on.
    pub fn provider(&self) -> &ProviderReport {
        &self.provider
    }

    /// The graph dimensions this engine checks against.
    pub fn dims(&self) -> GraphDims {
        self.dims
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &str {
        "ort"
    }

    fn features(&mut self, images: ArrayView4<f32>) -> Result<Array3<f32>> {
        let b = self.dims.check_images(&images)?;
        if b == 0 {
            return Ok(self.dims.no_features());
        }
        let images = images.as_standard_layout();
        let t = TensorRef::from_array_view(&images).map_err(ModelError::ort("image input"))?;
        let outs = self
            .vision
            .run(ort::inputs!["image" => t])
            .map_err(ModelError::ort("running vision.onnx"))?;
        let f = outs["features"]
            .try_extract_array::<f32>()
            .map_err(ModelError::ort("features output"))?;
        f.to_owned()
            .into_dimensionality::<Ix3>()
            .map_err(|e| ModelError::Shape(format!("vision.onnx features: {e}")))
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
        let features = features.as_standard_layout();
        let has_image = has_image.as_standard_layout();
        let tokens = tokens.as_standard_layout();
        let e = ModelError::ort;
        let inputs = ort::inputs![
            "adapter" => TensorRef::from_array_view(([adapter.len()], adapter)).map_err(e("adapter input"))?,
            "features" => TensorRef::from_array_view(&features).map_err(e("features input"))?,
            "has_image" => TensorRef::from_array_view(&has_image).map_err(e("has_image input"))?,
            "tokens" => TensorRef::from_array_view(&tokens).map_err(e("tokens input"))?,
        ];
        let outs = self
            .decoder
            .run(inputs)
            .map_err(e("running decoder.onnx"))?;
        let l = outs["logits"]
            .try_extract_array::<f32>()
            .map_err(e("logits output"))?;
        l.to_owned()
            .into_dimensionality::<Ix3>()
            .map_err(|e| ModelError::Shape(format!("decoder.onnx logits: {e}")))
    }
}
