//! The `Engine` trait (vision features and decoder logits, batch-dynamic) and `OrtEngine`, its
//! ONNX Runtime implementation. Owns input-shape checks shared by every engine (`GraphDims`),
//! so tract (lethe-probe) and ORT refuse the same malformed inputs with the same messages.
//! Invariant: an engine never sees an input whose shape disagrees with the package manifest.

use crate::error::{ModelError, Result};
use crate::manifest::KvCacheSpec;
use crate::package::Package;
use crate::runtime::{build_session, ProviderReport, SessionOptions};
use ndarray::{Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis, Ix3, Ix4};
use ort::session::Session;
use ort::value::TensorRef;

/// Keys and values of cached decoder positions: one pair per decoder layer, each
/// `[B, heads, K, head_dim]` (the `past_key_values.N.key/value` of decoder_step.onnx).
#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    pub layers: Vec<(Array4<f32>, Array4<f32>)>,
}

impl KvCache {
    /// Rows `B`.
    pub fn rows(&self) -> usize {
        self.layers.first().map_or(0, |l| l.0.shape()[0])
    }

    /// Cached positions `K`.
    pub fn positions(&self) -> usize {
        self.layers.first().map_or(0, |l| l.0.shape()[2])
    }

    /// The cache of the given rows, in that order (a row may repeat).
    pub fn select(&self, rows: &[usize]) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| (k.select(Axis(0), rows), v.select(Axis(0), rows)))
                .collect(),
        }
    }
}

/// Runs the package's inference graphs. Batch `B` is free in all of them.
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
    /// decoder_prefix.onnx: adapter `[P]`, features `[B,16,512]` -> the keys and values of
    /// the image positions (`K` = 16).
    fn prefix(&mut self, adapter: &[f32], features: ArrayView3<f32>) -> Result<KvCache>;
    /// decoder_step.onnx: `S` new tokens `[B,S]` at text positions `positions` `[B,S]`
    /// (0-based), attending to the cached positions where `past_mask` `[B,K]` is 1 and
    /// causally to each other -> logits `[B,S,V]` (`logits[b,s]` predicts the token after
    /// `tokens[b,s]`) and the cache grown by the new positions (`K+S`).
    fn step(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
    ) -> Result<(Array3<f32>, KvCache)>;
    /// [`step`](Self::step) when only the logits are wanted (teacher forcing, checking
    /// guesses): the same logits, without copying the grown cache out of the engine.
    fn step_logits(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
    ) -> Result<Array3<f32>> {
        Ok(self.step(adapter, past, past_mask, tokens, positions)?.0)
    }
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
    pub kv: KvCacheSpec,
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
            kv: m.kv_cache,
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

    fn check_adapter(&self, adapter: &[f32]) -> Result<()> {
        if adapter.len() != self.adapter_len {
            return Err(ModelError::Shape(format!(
                "adapter has {} values, the decoder takes {}",
                adapter.len(),
                self.adapter_len
            )));
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &ArrayView2<i32>) -> Result<()> {
        if let Some(t) = tokens.iter().find(|&&t| t < 0 || t as usize >= self.vocab) {
            return Err(ModelError::Shape(format!(
                "token id {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        Ok(())
    }

    /// Checks prefix inputs; returns the batch size.
    pub fn check_prefix(&self, adapter: &[f32], features: &ArrayView3<f32>) -> Result<usize> {
        self.check_adapter(adapter)?;
        let fs = features.shape();
        if fs[1..] != [self.n_image_tokens, self.feature_dim] {
            return Err(ModelError::Shape(format!(
                "features are {fs:?}, expected [B,{},{}]",
                self.n_image_tokens, self.feature_dim
            )));
        }
        Ok(fs[0])
    }

    /// Checks step inputs; returns the batch size.
    pub fn check_step(
        &self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: &ArrayView2<f32>,
        tokens: &ArrayView2<i32>,
        positions: &ArrayView2<i32>,
    ) -> Result<usize> {
        self.check_adapter(adapter)?;
        let (b, s) = tokens.dim();
        let k = past.positions();
        let kv = self.kv;
        let each = [b, kv.heads, k, kv.head_dim];
        if past.layers.len() != kv.layers
            || past
                .layers
                .iter()
                .any(|(x, y)| x.shape() != each || y.shape() != each)
        {
            return Err(ModelError::Shape(format!(
                "the cache must be {} layers of two [{b},{},{k},{}] arrays",
                kv.layers, kv.heads, kv.head_dim
            )));
        }
        if past_mask.dim() != (b, k) || positions.dim() != (b, s) {
            return Err(ModelError::Shape(format!(
                "past_mask is {:?} and positions {:?}, expected [{b},{k}] and [{b},{s}]",
                past_mask.shape(),
                positions.shape()
            )));
        }
        if s == 0 {
            return Err(ModelError::Shape("a step takes at least one token".into()));
        }
        if let Some(p) = positions
            .iter()
            .find(|&&p| p < 0 || p as usize >= self.text_len)
        {
            return Err(ModelError::Shape(format!(
                "text position {p} is outside 0..{}",
                self.text_len
            )));
        }
        self.check_tokens(tokens)?;
        Ok(b)
    }

    /// Checks decoder inputs; returns the batch size.
    pub fn check_decoder(
        &self,
        adapter: &[f32],
        features: &ArrayView3<f32>,
        has_image: &ArrayView1<f32>,
        tokens: &ArrayView2<i32>,
    ) -> Result<usize> {
        self.check_adapter(adapter)?;
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
        self.check_tokens(tokens)?;
        Ok(b)
    }

    /// A step's outputs for an empty batch (engines need not run the graph for it).
    pub fn empty_step(&self, past: &KvCache, tokens: &ArrayView2<i32>) -> (Array3<f32>, KvCache) {
        let (k, s) = (past.positions(), tokens.ncols());
        (
            Array3::zeros((0, s, self.vocab)),
            self.empty_cache(0, k + s),
        )
    }

    /// An empty cache of `b` rows and `k` positions.
    pub fn empty_cache(&self, b: usize, k: usize) -> KvCache {
        let kv = self.kv;
        let z = Array4::zeros((b, kv.heads, k, kv.head_dim));
        KvCache {
            layers: vec![(z.clone(), z); kv.layers],
        }
    }
}

/// The named f32 outputs of an ORT run, in order.
fn extract(
    outs: &ort::session::SessionOutputs<'_>,
    names: &[String],
    graph: &str,
) -> Result<Vec<ndarray::ArrayD<f32>>> {
    names
        .iter()
        .map(|n| {
            Ok(outs[n.as_str()]
                .try_extract_array::<f32>()
                .map_err(ModelError::ort(&format!("{graph} output {n}")))?
                .to_owned())
        })
        .collect()
}

/// Reads a cache from a graph's outputs (`present.N.key`, `present.N.value`, in order).
pub fn cache_from(arrays: Vec<ndarray::ArrayD<f32>>, what: &str) -> Result<KvCache> {
    let mut it = arrays.into_iter().map(|a| {
        a.into_dimensionality::<Ix4>()
            .map_err(|e| ModelError::Shape(format!("{what}: {e}")))
    });
    let mut layers = Vec::new();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| ModelError::Shape(format!("{what}: a key without its value")))?;
        layers.push((k?, v?));
    }
    Ok(KvCache { layers })
}

/// ONNX Runtime sessions for vision.onnx, decoder.onnx and the decoder's prefix and step.
pub struct OrtEngine {
    vision: Session,
    /// decoder.onnx, opened on the first [`Engine::logits`] call: the whole decoder is the
    /// reference the cache graphs are checked against, not part of generation or scoring
    /// (`generate::forward`), so an agent never holds its weights.
    decoder: Option<Session>,
    decoder_path: std::path::PathBuf,
    opts: SessionOptions,
    prefix: Session,
    step: Session,
    /// The step graph's input and output names (manifest order).
    step_inputs: Vec<String>,
    step_outputs: Vec<String>,
    prefix_outputs: Vec<String>,
    dims: GraphDims,
    provider: ProviderReport,
}

impl OrtEngine {
    /// Opens the inference graphs of a (verified) package.
    pub fn new(pkg: &Package, opts: &SessionOptions) -> Result<OrtEngine> {
        let mut reports = Vec::new();
        let mut open = |path: std::path::PathBuf| -> Result<Session> {
            let (s, r) = build_session(&path, opts)?;
            reports.push(r);
            Ok(s)
        };
        let vision = open(pkg.vision_path())?;
        let prefix = open(pkg.decoder_prefix_path())?;
        let step = open(pkg.decoder_step_path())?;
        let mut fallbacks = Vec::new();
        for f in reports.iter().flat_map(|r| r.fallbacks.iter()) {
            if !fallbacks.contains(f) {
                fallbacks.push(f.clone());
            }
        }
        let g = &pkg.manifest().graphs;
        Ok(OrtEngine {
            vision,
            decoder: None,
            decoder_path: pkg.decoder_path(),
            opts: opts.clone(),
            prefix,
            step,
            step_inputs: g.decoder_step.inputs.clone(),
            step_outputs: g.decoder_step.outputs.clone(),
            prefix_outputs: g.decoder_prefix.outputs.clone(),
            dims: GraphDims::from_package(pkg),
            // The engine is as fast as its slowest session: report the latest provider of
            // the chain if they differ.
            provider: ProviderReport {
                used: reports.iter().map(|r| r.used).max().unwrap_or_default(),
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
        let decoder = match &mut self.decoder {
            Some(d) => d,
            None => self
                .decoder
                .insert(build_session(&self.decoder_path, &self.opts)?.0),
        };
        let outs = decoder.run(inputs).map_err(e("running decoder.onnx"))?;
        let l = outs["logits"]
            .try_extract_array::<f32>()
            .map_err(e("logits output"))?;
        l.to_owned()
            .into_dimensionality::<Ix3>()
            .map_err(|e| ModelError::Shape(format!("decoder.onnx logits: {e}")))
    }

    fn prefix(&mut self, adapter: &[f32], features: ArrayView3<f32>) -> Result<KvCache> {
        let b = self.dims.check_prefix(adapter, &features)?;
        if b == 0 {
            return Ok(self.dims.empty_cache(0, self.dims.kv.prefix_len));
        }
        let features = features.as_standard_layout();
        let e = ModelError::ort;
        let inputs = ort::inputs![
            "adapter" => TensorRef::from_array_view(([adapter.len()], adapter)).map_err(e("adapter input"))?,
            "features" => TensorRef::from_array_view(&features).map_err(e("features input"))?,
        ];
        let outs = self
            .prefix
            .run(inputs)
            .map_err(e("running decoder_prefix.onnx"))?;
        cache_from(
            extract(&outs, &self.prefix_outputs, "decoder_prefix.onnx")?,
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
        let (logits, rest) = self.run_step(adapter, past, past_mask, tokens, positions, true)?;
        match rest {
            Some(arrays) => Ok((logits, cache_from(arrays, "decoder_step.onnx")?)),
            None => Ok(self.dims.empty_step(past, &tokens)),
        }
    }

    fn step_logits(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
    ) -> Result<Array3<f32>> {
        Ok(self
            .run_step(adapter, past, past_mask, tokens, positions, false)?
            .0)
    }
}

impl OrtEngine {
    /// decoder_step.onnx: the logits, and the grown cache's arrays when `with_cache`
    /// (`None` for an empty batch, which is not run).
    fn run_step(
        &mut self,
        adapter: &[f32],
        past: &KvCache,
        past_mask: ArrayView2<f32>,
        tokens: ArrayView2<i32>,
        positions: ArrayView2<i32>,
        with_cache: bool,
    ) -> Result<(Array3<f32>, Option<Vec<ndarray::ArrayD<f32>>>)> {
        let b = self
            .dims
            .check_step(adapter, past, &past_mask, &tokens, &positions)?;
        if b == 0 {
            return Ok((self.dims.empty_step(past, &tokens).0, None));
        }
        let e = ModelError::ort;
        let kv: Vec<_> = past
            .layers
            .iter()
            .flat_map(|(k, v)| [k.as_standard_layout(), v.as_standard_layout()])
            .collect();
        let (past_mask, tokens, positions) = (
            past_mask.as_standard_layout(),
            tokens.as_standard_layout(),
            positions.as_standard_layout(),
        );
        // Values in the manifest's input order (checked when the package was opened):
        // adapter, the cache's keys and values, past_mask, tokens, position_ids.
        let mut values: Vec<ort::session::SessionInputValue<'_>> = Vec::new();
        values.push(
            TensorRef::from_array_view(([adapter.len()], adapter))
                .map_err(e("adapter input"))?
                .into(),
        );
        for a in &kv {
            values.push(
                TensorRef::from_array_view(a)
                    .map_err(e("cache input"))?
                    .into(),
            );
        }
        values.push(
            TensorRef::from_array_view(&past_mask)
                .map_err(e("past_mask input"))?
                .into(),
        );
        values.push(
            TensorRef::from_array_view(&tokens)
                .map_err(e("tokens input"))?
                .into(),
        );
        values.push(
            TensorRef::from_array_view(&positions)
                .map_err(e("position_ids input"))?
                .into(),
        );
        let inputs: Vec<(std::borrow::Cow<'_, str>, _)> = self
            .step_inputs
            .iter()
            .map(|n| n.as_str().into())
            .zip(values)
            .collect();
        let outs = self
            .step
            .run(inputs)
            .map_err(e("running decoder_step.onnx"))?;
        // The manifest lists logits first, then the grown cache.
        let wanted = if with_cache {
            self.step_outputs.len()
        } else {
            1
        };
        let mut arrays = extract(&outs, &self.step_outputs[..wanted], "decoder_step.onnx")?;
        let logits = arrays
            .remove(0)
            .into_dimensionality::<Ix3>()
            .map_err(|e| ModelError::Shape(format!("decoder_step.onnx logits: {e}")))?;
        Ok((logits, Some(arrays)))
    }
}
