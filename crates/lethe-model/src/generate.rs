//! Engine-agnostic greedy generation, answer scoring and log-probabilities over any
//! `&mut dyn Engine`, batched in chunks of `CHUNK` rows. Owns the decoding loop of
//! models/PACKAGE.md: feed `[bos] q [sep]`, append the argmax at the last real position,
//! stop at eos or `T` tokens. Generation runs on the key/value cache (image positions once
//! per image, then text only) and checks guessed answers by teacher forcing first
//! ([`answer_tokens_guided`]); [`answer_tokens_uncached`] is the whole-decoder reference.
//! Invariants: answers do not depend on the engine's batch composition, on guesses or on
//! the cache (causal graph, each row's padding masked or never read; tested on every probe,
//! both engines), and log-probabilities only by float summation order (< 1e-4); log-softmax
//! is computed in f64 here, never in the graph, so ORT and tract are compared on identical
//! arithmetic; argmax ties go to the lowest id.

use crate::engine::{Engine, KvCache};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis};

/// Rows per engine call. An engine holds a call's intermediate tensors until the call ends:
/// with the whole decoder, 64 rows put the agent's peak (VmHWM) at 179 MiB during a forget
/// and 32 rows at 140 MiB; on the key/value cache, 64 rows 202 MiB, 32 rows 157 MiB, 16
/// rows 148 MiB, all at the same speed (ARCHITECTURE.md).
pub const CHUNK: usize = 16;

/// A question, about one image of a features batch or text-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub question: String,
    /// Index into the features batch; `None` = text-only (image positions hidden).
    pub image: Option<usize>,
}

impl Query {
    /// A question about image `index` of the features batch.
    pub fn about(question: impl Into<String>, index: usize) -> Query {
        Query {
            question: question.into(),
            image: Some(index),
        }
    }

    /// A text-only question.
    pub fn text(question: impl Into<String>) -> Query {
        Query {
            question: question.into(),
            image: None,
        }
    }
}

/// Vision features for a batch of images, computed in chunks.
pub fn encode_images(engine: &mut dyn Engine, images: ArrayView4<f32>) -> Result<Array3<f32>> {
    let mut parts = Vec::new();
    for start in (0..images.shape()[0]).step_by(CHUNK) {
        let end = (start + CHUNK).min(images.shape()[0]);
        parts.push(engine.features(images.slice(s![start..end, .., .., ..]))?);
    }
    if parts.is_empty() {
        return engine.features(images);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| ModelError::Shape(e.to_string()))
}

/// Per-row features and `has_image` for rows referring to `images` of a features batch
/// (zeros and 0 for text-only rows).
pub fn gather_features(
    features: ArrayView3<f32>,
    images: &[Option<usize>],
) -> Result<(Array3<f32>, Array1<f32>)> {
    let (n, k, d) = features.dim();
    let mut out = Array3::zeros((images.len(), k, d));
    let mut has = Array1::zeros(images.len());
    for (row, img) in images.iter().enumerate() {
        if let Some(i) = *img {
            if i >= n {
                return Err(ModelError::NoSuchImage {
                    query: row,
                    image: i,
                    available: n,
                });
            }
            out.slice_mut(s![row, .., ..])
                .assign(&features.slice(s![i, .., ..]));
            has[row] = 1.0;
        }
    }
    Ok((out, has))
}

/// Greedy answers as token ids (without eos). Invariant: an answer always leaves room for
/// eos, so every generated answer can be laid out again by [`Tokenizer::sequence`] (SIU
/// trains on the model's own answers): a model that never says eos is cut at
/// `text_len - 1` tokens.
pub fn answer_tokens(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
) -> Result<Vec<Vec<i32>>> {
    Ok(answer_tokens_guided(
        engine,
        adapter,
        tok,
        features,
        queries,
        &vec![None; queries.len()],
    )?
    .into_iter()
    .map(|a| a.tokens)
    .collect())
}

/// Greedy answers as token ids by the whole decoder (decoder.onnx), one call per generated
/// token and no cache: the reference [`answer_tokens`] is checked against, and the baseline
/// of the generation benchmark.
pub fn answer_tokens_uncached(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
) -> Result<Vec<Vec<i32>>> {
    let prompts: Vec<Vec<i32>> = queries
        .iter()
        .map(|q| tok.prompt(&q.question))
        .collect::<Result<_>>()?;
    let images: Vec<Option<usize>> = queries.iter().map(|q| q.image).collect();
    let (feats, has) = gather_features(features, &images)?;
    let t_len = tok.text_len();
    let mut answers: Vec<Vec<i32>> = vec![Vec::new(); queries.len()];
    for start in (0..queries.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(queries.len());
        let n = end - start;
        let mut tokens = Array2::from_elem((n, t_len), tok.pad());
        let mut lens = vec![0usize; n];
        for (r, p) in prompts[start..end].iter().enumerate() {
            tokens
                .slice_mut(s![r, ..p.len()])
                .assign(&ArrayView1::from(p));
            lens[r] = p.len();
        }
        let mut active: Vec<usize> = (0..n).collect();
        while !active.is_empty() {
            let rows: Vec<usize> = active.iter().map(|&r| start + r).collect();
            let f = feats.select(Axis(0), &rows);
            let h = has.select(Axis(0), &rows);
            let tk = tokens.select(Axis(0), &active);
            let logits = engine.logits(adapter, f.view(), h.view(), tk.view())?;
            let mut still = Vec::with_capacity(active.len());
            for (k, &r) in active.iter().enumerate() {
                let next = argmax(logits.slice(s![k, lens[r] - 1, ..])) as i32;
                if next == tok.eos() {
                    continue;
                }
                answers[start + r].push(next);
                tokens[[r, lens[r]]] = next;
                lens[r] += 1;
                if lens[r] + 1 < t_len {
                    still.push(r);
                }
            }
            active = still;
        }
    }
    Ok(answers)
}

/// A greedy answer with what it cost the model to say it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    /// The answer's tokens, without eos.
    pub tokens: Vec<i32>,
    /// The log-probability of each answer token and of eos, as [`score`] gives them for this
    /// answer; `None` for an answer cut at `text_len - 1` tokens (no eos was said).
    pub logprobs: Option<Vec<f64>>,
}

/// Greedy answers as token ids, those of [`answer_tokens`], using a guess of each answer
/// where one is given: the guessed answers are checked by teacher forcing, one engine call
/// per chunk of rows, and only a row whose guess is wrong is decoded on, from the first
/// token where the model disagrees. A right guess costs one forward pass instead of one per
/// token. Why the answers are the same: the decoder is causal, so the logits at a position
/// read only the tokens before it, and those are the ones greedy decoding would have fed
/// (the guess up to the first disagreement). Each answer comes with its log-probabilities,
/// read from the logits that chose its tokens.
///
/// Decoding runs on the key/value cache (decoder_prefix / decoder_step): the image
/// positions once per image, then only text positions, one new token per step.
pub fn answer_tokens_guided(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
    guesses: &[Option<Vec<i32>>],
) -> Result<Vec<Answered>> {
    if guesses.len() != queries.len() {
        return Err(ModelError::Shape(format!(
            "{} queries but {} guesses",
            queries.len(),
            guesses.len()
        )));
    }
    let t_len = tok.text_len();
    let mut rows: Vec<Row> = queries
        .iter()
        .map(|q| {
            let prompt = tok.prompt(&q.question)?;
            Ok(Row {
                prompt_len: prompt.len(),
                tokens: prompt,
                logprobs: Vec::new(),
                last: -1,
                done: false,
            })
        })
        .collect::<Result<_>>()?;
    let images: Vec<Option<usize>> = queries.iter().map(|q| q.image).collect();
    let prefix = ImagePrefix::new(engine, adapter, features, &images)?;

    // Teacher-forced check of every usable guess (a guess greedy decoding cannot produce,
    // longer than the room left, is ignored).
    let mut guessed: Vec<usize> = (0..rows.len())
        .filter(|&r| matches!(&guesses[r], Some(g) if rows[r].prompt_len + g.len() < t_len))
        .collect();
    // Rows of about the same length share a call, so little of it is padding.
    let guessed_len = |r: usize| rows[r].prompt_len + guesses[r].as_ref().map_or(0, Vec::len);
    guessed.sort_by_key(|&r| guessed_len(r));
    for chunk in guessed.chunks(CHUNK) {
        let seqs: Vec<Vec<i32>> = chunk
            .iter()
            .map(|&r| {
                let g = guesses[r].as_deref().unwrap_or_default();
                rows[r].tokens.iter().chain(g).copied().collect()
            })
            .collect();
        let tokens = padded(tok, &seqs);
        let logits = prefix.logits(engine, adapter, chunk, tokens.view())?;
        for (k, &r) in chunk.iter().enumerate() {
            let g = guesses[r].as_deref().unwrap_or_default();
            let row = &mut rows[r];
            for &want in g.iter().chain(std::iter::once(&tok.eos())) {
                if row.done {
                    break;
                }
                let at = row.tokens.len() - 1;
                row.push(logits.slice(s![k, at, ..]), tok.eos(), t_len);
                if row.last != want {
                    break;
                }
            }
        }
    }

    // Greedy decoding of every row not finished yet: their tokens so far in one step, then
    // one token per step on the cache.
    let open: Vec<usize> = (0..rows.len()).filter(|&r| !rows[r].done).collect();
    for chunk in open.chunks(CHUNK) {
        let seqs: Vec<Vec<i32>> = chunk.iter().map(|&r| rows[r].tokens.clone()).collect();
        let (logits, mut cache) = prefix.run(engine, adapter, tok, chunk, &seqs)?;
        // Which cached positions each row may see: its image (if any), its own tokens (not
        // the padding of shorter rows).
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut mask = Array2::<f32>::zeros((chunk.len(), prefix.len + width));
        for (k, &r) in chunk.iter().enumerate() {
            if images[r].is_some() {
                mask.slice_mut(s![k, ..prefix.len]).fill(1.0);
            }
            mask.slice_mut(s![k, prefix.len..prefix.len + seqs[k].len()])
                .fill(1.0);
            let at = rows[r].tokens.len() - 1;
            rows[r].push(logits.slice(s![k, at, ..]), tok.eos(), t_len);
        }
        let mut active: Vec<usize> = (0..chunk.len()).filter(|&k| !rows[chunk[k]].done).collect();
        let mut in_cache: Vec<usize> = (0..chunk.len()).collect();
        while !active.is_empty() {
            if active != in_cache {
                // Drop finished rows from the cache (`active` indexes chunk rows).
                let keep: Vec<usize> = active
                    .iter()
                    .map(|k| in_cache.iter().position(|x| x == k).unwrap_or(0))
                    .collect();
                cache = cache.select(&keep);
                mask = mask.select(Axis(0), &keep);
                in_cache = active.clone();
            }
            let m = active.len();
            let mut tokens = Array2::<i32>::zeros((m, 1));
            let mut positions = Array2::<i32>::zeros((m, 1));
            for (j, &k) in active.iter().enumerate() {
                let row = &rows[chunk[k]];
                tokens[[j, 0]] = row.last;
                positions[[j, 0]] = (row.tokens.len() - 1) as i32;
            }
            let (logits, grown) = engine.step(
                adapter,
                &cache,
                mask.view(),
                tokens.view(),
                positions.view(),
            )?;
            cache = grown;
            mask = ndarray::concatenate(Axis(1), &[mask.view(), Array2::ones((m, 1)).view()])
                .map_err(|e| ModelError::Shape(e.to_string()))?;
            for (j, &k) in active.iter().enumerate() {
                rows[chunk[k]].push(logits.slice(s![j, 0, ..]), tok.eos(), t_len);
            }
            active.retain(|&k| !rows[chunk[k]].done);
        }
    }
    Ok(rows
        .into_iter()
        .map(|r| Answered {
            logprobs: (r.last == tok.eos()).then_some(r.logprobs),
            tokens: r.tokens[r.prompt_len..].to_vec(),
        })
        .collect())
}

/// The image positions' keys and values, computed once per image a query asks about, and
/// once for text-only queries (an image they never see: their mask hides it).
struct ImagePrefix {
    cache: KvCache,
    /// Row of `cache` for each query.
    slot: Vec<usize>,
    has_image: Vec<bool>,
    /// Cached positions per row (the image tokens).
    len: usize,
}

impl ImagePrefix {
    fn new(
        engine: &mut dyn Engine,
        adapter: &[f32],
        features: ArrayView3<f32>,
        images: &[Option<usize>],
    ) -> Result<ImagePrefix> {
        let n = features.shape()[0];
        let mut used: Vec<usize> = images.iter().flatten().copied().collect();
        used.sort_unstable();
        used.dedup();
        if let Some(&i) = used.iter().find(|&&i| i >= n) {
            let query = images.iter().position(|x| *x == Some(i)).unwrap_or(0);
            return Err(ModelError::NoSuchImage {
                query,
                image: i,
                available: n,
            });
        }
        // One blank image row for text-only queries.
        let blank = used.len();
        let mut feats = features.select(Axis(0), &used);
        if images.iter().any(Option::is_none) {
            let (_, k, d) = features.dim();
            feats
                .append(Axis(0), Array3::zeros((1, k, d)).view())
                .map_err(|e| ModelError::Shape(e.to_string()))?;
        }
        let cache = engine.prefix(adapter, feats.view())?;
        let slot = images
            .iter()
            .map(|img| match img {
                Some(i) => used.binary_search(i).unwrap_or(0),
                None => blank,
            })
            .collect();
        Ok(ImagePrefix {
            len: cache.positions(),
            cache,
            slot,
            has_image: images.iter().map(Option::is_some).collect(),
        })
    }

    /// The step's inputs for token rows `[n,S]` of the given queries: their cached image
    /// rows, the mask (the image where the query has one) and text positions 0...
    fn inputs(&self, queries: &[usize], width: usize) -> (KvCache, Array2<f32>, Array2<i32>) {
        let slots: Vec<usize> = queries.iter().map(|&q| self.slot[q]).collect();
        let mask = Array2::from_shape_fn((queries.len(), self.len), |(k, _)| {
            f32::from(u8::from(self.has_image[queries[k]]))
        });
        let positions = Array2::from_shape_fn((queries.len(), width), |(_, j)| j as i32);
        (self.cache.select(&slots), mask, positions)
    }

    /// One step over whole token sequences of the given queries (right-padded to the
    /// longest; each row reads only its own prefix): logits `[n,S,V]` and the cache.
    fn run(
        &self,
        engine: &mut dyn Engine,
        adapter: &[f32],
        tok: &Tokenizer,
        queries: &[usize],
        seqs: &[Vec<i32>],
    ) -> Result<(Array3<f32>, KvCache)> {
        let tokens = padded(tok, seqs);
        let (cache, mask, positions) = self.inputs(queries, tokens.ncols());
        engine.step(
            adapter,
            &cache,
            mask.view(),
            tokens.view(),
            positions.view(),
        )
    }

    /// The logits of token rows `[n,S]` of the given queries (no cache kept).
    fn logits(
        &self,
        engine: &mut dyn Engine,
        adapter: &[f32],
        queries: &[usize],
        tokens: ArrayView2<i32>,
    ) -> Result<Array3<f32>> {
        let (cache, mask, positions) = self.inputs(queries, tokens.ncols());
        engine.step_logits(adapter, &cache, mask.view(), tokens, positions.view())
    }
}

/// Token sequences right-padded to the longest (at least one column).
fn padded(tok: &Tokenizer, seqs: &[Vec<i32>]) -> Array2<i32> {
    let width = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut tokens = Array2::from_elem((seqs.len(), width), tok.pad());
    for (k, sq) in seqs.iter().enumerate() {
        tokens
            .slice_mut(s![k, ..sq.len()])
            .assign(&ArrayView1::from(sq));
    }
    tokens
}

/// One answer being decoded: its prompt, then its answer tokens so far, and their
/// log-probabilities.
struct Row {
    tokens: Vec<i32>,
    prompt_len: usize,
    logprobs: Vec<f64>,
    /// The last token the model said.
    last: i32,
    done: bool,
}

impl Row {
    /// Takes the model's next token, the argmax of `logits`: eos ends the answer; an answer
    /// that reaches `text_len - 1` tokens in all is cut (room for eos).
    fn push(&mut self, logits: ArrayView1<f32>, eos: i32, t_len: usize) {
        let next = argmax(logits) as i32;
        self.logprobs.push(log_softmax(logits)[next as usize]);
        self.last = next;
        if next == eos {
            self.done = true;
            return;
        }
        self.tokens.push(next);
        if self.tokens.len() + 1 >= t_len {
            self.done = true;
        }
    }
}

/// Greedy answers as text.
pub fn answer(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
) -> Result<Vec<String>> {
    Ok(answer_tokens(engine, adapter, tok, features, queries)?
        .iter()
        .map(|ids| tok.decode(ids))
        .collect())
}

/// Greedy answers as text, exactly those of [`answer`], checking each given guess first
/// (see [`answer_tokens_guided`]): the cheap way to ask a model questions whose answers are
/// mostly known (expected answers, or another adapter's answers). A guess with a word
/// outside the vocabulary cannot be the model's answer and is ignored.
pub fn answer_guided(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
    guesses: &[Option<&str>],
) -> Result<Vec<String>> {
    Ok(
        answer_guided_scored(engine, adapter, tok, features, queries, guesses)?
            .into_iter()
            .map(|(a, _)| a)
            .collect(),
    )
}

/// [`answer_guided`], each answer with its log-probabilities ([`Answered::logprobs`]).
pub fn answer_guided_scored(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
    guesses: &[Option<&str>],
) -> Result<Vec<(String, Option<Vec<f64>>)>> {
    let ids: Vec<Option<Vec<i32>>> = guesses
        .iter()
        .map(|g| g.and_then(|g| tok.encode(g).ok()))
        .collect();
    Ok(
        answer_tokens_guided(engine, adapter, tok, features, queries, &ids)?
            .into_iter()
            .map(|a| (tok.decode(&a.tokens), a.logprobs))
            .collect(),
    )
}

/// The decoder's logits over whole token sequences `[B,T]`, `[B,T,V]` as
/// [`Engine::logits`] gives them, computed on the key/value cache graphs: the image
/// positions by `decoder_prefix` once per image (`images[r]`: the features row token row
/// `r` is about, `None` for text only), then every text position in one `decoder_step`
/// per chunk of rows. The same function as decoder.onnx (the parity tests compare them,
/// within float summation order), without a third decoder graph in memory: teacher
/// forcing (scores, the train step's reference log-probabilities) runs on the graphs
/// generation already holds.
pub fn forward(
    engine: &mut dyn Engine,
    adapter: &[f32],
    features: ArrayView3<f32>,
    images: &[Option<usize>],
    tokens: ArrayView2<i32>,
) -> Result<Array3<f32>> {
    let b = tokens.nrows();
    if images.len() != b {
        return Err(ModelError::Shape(format!(
            "{} image indices for {b} token rows",
            images.len()
        )));
    }
    let prefix = ImagePrefix::new(engine, adapter, features, images)?;
    let mut parts = Vec::new();
    for start in (0..b).step_by(CHUNK) {
        let end = (start + CHUNK).min(b);
        let rows: Vec<usize> = (start..end).collect();
        parts.push(prefix.logits(engine, adapter, &rows, tokens.slice(s![start..end, ..]))?);
    }
    if parts.is_empty() {
        return prefix.logits(engine, adapter, &[], tokens);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| ModelError::Shape(e.to_string()))
}

/// Log-probabilities of each given answer's tokens and eos under the model (teacher forcing):
/// one `Vec` per query, one value per answer token plus one for eos.
pub fn score(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    features: ArrayView3<f32>,
    queries: &[Query],
    answers: &[String],
) -> Result<Vec<Vec<f64>>> {
    if queries.len() != answers.len() {
        return Err(ModelError::Shape(format!(
            "{} queries but {} answers",
            queries.len(),
            answers.len()
        )));
    }
    let seqs = queries
        .iter()
        .zip(answers)
        .map(|(q, a)| tok.sequence(&q.question, a))
        .collect::<Result<Vec<_>>>()?;
    let images: Vec<Option<usize>> = queries.iter().map(|q| q.image).collect();
    let t_len = tok.text_len();
    let tokens = Array2::from_shape_fn((seqs.len(), t_len), |(r, k)| seqs[r].inputs[k]);
    let logits = forward(engine, adapter, features, &images, tokens.view())?;
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(r, sq)| {
            (0..t_len)
                .filter(|&t| sq.answer_mask[t] > 0.0)
                .map(|t| {
                    let row = log_softmax(logits.slice(s![r, t, ..]));
                    row[sq.targets[t] as usize]
                })
                .collect()
        })
        .collect())
}

/// Full log-softmax of the decoder's logits, `[B,T,V]` ([`forward`]), computed in f64 and
/// stored as f32 (the train step's `ref_logp` input).
pub fn logprobs(
    engine: &mut dyn Engine,
    adapter: &[f32],
    features: ArrayView3<f32>,
    images: &[Option<usize>],
    tokens: ArrayView2<i32>,
) -> Result<Array3<f32>> {
    let mut l = forward(engine, adapter, features, images, tokens)?;
    for mut row in l.lanes_mut(Axis(2)) {
        let lp = log_softmax(row.view());
        row.iter_mut().zip(lp).for_each(|(x, v)| *x = v as f32);
    }
    Ok(l)
}

/// log-softmax of one logit row in f64.
pub fn log_softmax(row: ArrayView1<f32>) -> Vec<f64> {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let lse = row
        .iter()
        .map(|&x| (f64::from(x) - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| f64::from(x) - lse).collect()
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(row: ArrayView1<f32>) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array4};

    /// A fake engine whose logits make row b answer `b+4`, then eos; or, rambling, `yes`
    /// forever.
    struct Fake {
        calls: usize,
        vocab: usize,
        ramble: bool,
    }

    impl Fake {
        fn new(ramble: bool) -> Fake {
            Fake {
                calls: 0,
                vocab: 8,
                ramble,
            }
        }
    }

    impl Engine for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn features(&mut self, images: ArrayView4<f32>) -> Result<Array3<f32>> {
            Ok(Array3::from_elem((images.shape()[0], 1, 2), 1.0))
        }
        fn logits(
            &mut self,
            _adapter: &[f32],
            _features: ArrayView3<f32>,
            has_image: ArrayView1<f32>,
            tokens: ArrayView2<i32>,
        ) -> Result<Array3<f32>> {
            self.calls += 1;
            let (b, t) = tokens.dim();
            let mut out = Array3::zeros((b, t, self.vocab));
            for r in 0..b {
                for p in 0..t {
                    // After sep (2) answer 4 (+1 with an image), after an answer word: eos.
                    let next = match tokens[[r, p]] {
                        _ if self.ramble => 5,
                        2 => 4 + has_image[r] as usize,
                        4 | 5 => 3,
                        _ => 0,
                    };
                    out[[r, p, next]] = 5.0;
                }
            }
            Ok(out)
        }
        fn prefix(&mut self, _adapter: &[f32], features: ArrayView3<f32>) -> Result<KvCache> {
            let z = Array4::zeros((features.shape()[0], 1, 1, 1));
            Ok(KvCache {
                layers: vec![(z.clone(), z)],
            })
        }
        fn step(
            &mut self,
            adapter: &[f32],
            past: &KvCache,
            past_mask: ArrayView2<f32>,
            tokens: ArrayView2<i32>,
            _positions: ArrayView2<i32>,
        ) -> Result<(Array3<f32>, KvCache)> {
            // The first cached position is the image: visible = an image question.
            let has = past_mask.column(0).to_owned();
            let feats = Array3::zeros((tokens.nrows(), 1, 2));
            let logits = self.logits(adapter, feats.view(), has.view(), tokens)?;
            let (b, s) = tokens.dim();
            let grow = |a: &Array4<f32>| {
                ndarray::concatenate(Axis(2), &[a.view(), Array4::zeros((b, 1, s, 1)).view()])
                    .unwrap()
            };
            let layers = past
                .layers
                .iter()
                .map(|(k, v)| (grow(k), grow(v)))
                .collect();
            Ok((logits, KvCache { layers }))
        }
    }

    fn tok() -> Tokenizer {
        let v = [
            "<pad>", "<bos>", "<sep>", "<eos>", "no", "yes", "is", "this",
        ];
        Tokenizer::new(v.iter().map(|s| s.to_string()).collect(), [0, 1, 2, 3], 8)
    }

    #[test]
    fn greedy_answers_follow_argmax_and_stop_at_eos() {
        let mut e = Fake::new(false);
        let feats = Array3::zeros((1, 1, 2));
        let q = [Query::text("is this"), Query::about("is this", 0)];
        let got = answer(&mut e, &[], &tok(), feats.view(), &q).unwrap();
        assert_eq!(got, vec!["no", "yes"]);
        assert_eq!(
            e.calls, 2,
            "one call per generated token, finished rows dropped"
        );
    }

    #[test]
    fn an_answer_without_eos_is_cut_so_it_still_fits_a_training_sequence() {
        let t = tok();
        let feats = Array3::zeros((0, 1, 2));
        let mut rambler = Fake::new(true);
        let got = answer(
            &mut rambler,
            &[],
            &t,
            feats.view(),
            &[Query::text("is this")],
        )
        .unwrap();
        // [bos] is this [sep] = 4 of 8 positions; 3 answer words leave room for eos.
        assert_eq!(got, vec!["yes yes yes"]);
        let seq = t.sequence("is this", &got[0]).unwrap();
        assert_eq!(seq.len, 8);
    }

    #[test]
    fn a_right_guess_costs_one_call_and_any_guess_gives_the_greedy_answer() {
        let t = tok();
        let feats = Array3::zeros((1, 1, 2));
        let q = [Query::text("is this"), Query::about("is this", 0)];
        let mut e = Fake::new(false);
        let got = answer_guided(
            &mut e,
            &[],
            &t,
            feats.view(),
            &q,
            &[Some("no"), Some("yes")],
        );
        assert_eq!(got.unwrap(), vec!["no", "yes"]);
        assert_eq!(
            e.calls, 1,
            "both guesses confirmed by one teacher-forced call"
        );

        // Wrong, too long, unknown, partly right, absent: always the greedy answers.
        let words = [
            "",
            "no",
            "yes",
            "is",
            "no yes",
            "yes no",
            "this is no",
            "zebra",
        ];
        for ramble in [false, true] {
            let mut plain = Fake {
                calls: 0,
                vocab: 8,
                ramble,
            };
            let want = answer(&mut plain, &[], &t, feats.view(), &q).unwrap();
            for a in words {
                for b in words {
                    let mut e = Fake {
                        calls: 0,
                        vocab: 8,
                        ramble,
                    };
                    let g = [Some(a), (!b.is_empty()).then_some(b)];
                    let got = answer_guided(&mut e, &[], &t, feats.view(), &q, &g).unwrap();
                    assert_eq!(got, want, "guesses {g:?}, ramble {ramble}");
                }
            }
        }
    }

    #[test]
    fn an_answer_carries_the_log_probs_score_gives_it_unless_it_was_cut() {
        let t = tok();
        let feats = Array3::zeros((1, 1, 2));
        let q = [Query::text("is this"), Query::about("is this", 0)];
        let mut e = Fake::new(false);
        let got =
            answer_guided_scored(&mut e, &[], &t, feats.view(), &q, &[Some("yes"), None]).unwrap();
        let texts: Vec<String> = got.iter().map(|g| g.0.clone()).collect();
        let want = score(&mut e, &[], &t, feats.view(), &q, &texts).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.1.as_ref(), Some(w), "{g:?}");
        }
        let mut rambler = Fake::new(true);
        let cut = answer_guided_scored(&mut rambler, &[], &t, feats.view(), &q[..1], &[None]);
        assert_eq!(cut.unwrap()[0], ("yes yes yes".to_string(), None));
    }

    #[test]
    fn a_wrong_guess_is_generated_on_from_where_the_model_disagrees() {
        let mut rambler = Fake::new(true);
        let feats = Array3::zeros((0, 1, 2));
        // The model says "yes yes yes" (cut); the guess agrees on two words.
        let got = answer_guided(
            &mut rambler,
            &[],
            &tok(),
            feats.view(),
            &[Query::text("is this")],
            &[Some("yes yes no")],
        )
        .unwrap();
        assert_eq!(got, vec!["yes yes yes"]);
        assert_eq!(
            rambler.calls, 1,
            "the disagreeing token is the model's own, and it fills the row"
        );
        let err = answer_guided(
            &mut rambler,
            &[],
            &tok(),
            feats.view(),
            &[Query::text("is this")],
            &[],
        );
        assert!(matches!(err, Err(ModelError::Shape(_))));
    }

    #[test]
    fn query_about_a_missing_image_is_an_error() {
        let mut e = Fake::new(false);
        let feats = Array3::zeros((1, 1, 2));
        let err = answer(
            &mut e,
            &[],
            &tok(),
            feats.view(),
            &[Query::about("is this", 3)],
        );
        assert!(matches!(err, Err(ModelError::NoSuchImage { image: 3, .. })));
    }

    #[test]
    fn score_reads_answer_and_eos_log_probs() {
        let mut e = Fake::new(false);
        let feats = Array3::zeros((0, 1, 2));
        let got = score(
            &mut e,
            &[],
            &tok(),
            feats.view(),
            &[Query::text("is this")],
            &["no".into()],
        )
        .unwrap();
        assert_eq!(got[0].len(), 2);
        let expect = 5.0 - (5f64.exp() + 7.0).ln();
        assert!(got[0].iter().all(|v| (v - expect).abs() < 1e-12), "{got:?}");
    }

    #[test]
    fn log_softmax_is_stable_far_below_the_max() {
        let lp = log_softmax(array![0.0f32, -1000.0].view());
        assert!((lp[0]).abs() < 1e-12 && (lp[1] + 1000.0).abs() < 1e-9);
    }

    #[test]
    fn argmax_prefers_the_first_of_equal_values() {
        assert_eq!(argmax(array![1.0f32, 3.0, 3.0].view()), 1);
        assert_eq!(argmax(array![f32::NAN, 0.5].view()), 1);
    }

    #[test]
    fn encode_images_returns_one_row_per_image() {
        let mut e = Fake::new(false);
        let imgs = Array4::zeros((130, 64, 64, 3));
        assert_eq!(
            encode_images(&mut e, imgs.view()).unwrap().shape(),
            &[130, 1, 2]
        );
    }
}
