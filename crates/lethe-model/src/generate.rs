//! Engine-agnostic greedy generation, answer scoring and log-probabilities over any
//! `&mut dyn Engine`, batched in chunks of `CHUNK` rows. Owns the decoding loop of
//! models/PACKAGE.md: feed `[bos] q [sep]`, append the argmax at the last real position,
//! stop at eos or `T` tokens. Invariants: results do not depend on the engine's batch
//! composition (causal graph, each row's padding never read); log-softmax is computed in f64
//! here, never in the graph, so ORT and tract are compared on identical arithmetic; argmax
//! ties go to the lowest id.

use crate::engine::Engine;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis};

/// Rows per engine call.
pub const CHUNK: usize = 64;

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
    let (feats, has) = gather_features(features, &images)?;
    let t_len = tok.text_len();
    let mut out = Vec::with_capacity(seqs.len());
    for start in (0..seqs.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(seqs.len());
        let mut tokens = Array2::zeros((end - start, t_len));
        for (r, sq) in seqs[start..end].iter().enumerate() {
            tokens.row_mut(r).assign(&ArrayView1::from(&sq.inputs));
        }
        let logits = engine.logits(
            adapter,
            feats.slice(s![start..end, .., ..]),
            has.slice(s![start..end]),
            tokens.view(),
        )?;
        for (r, sq) in seqs[start..end].iter().enumerate() {
            let lp = (0..t_len)
                .filter(|&t| sq.answer_mask[t] > 0.0)
                .map(|t| {
                    let row = log_softmax(logits.slice(s![r, t, ..]));
                    row[sq.targets[t] as usize]
                })
                .collect();
            out.push(lp);
        }
    }
    Ok(out)
}

/// Full log-softmax of the decoder's logits, `[B,T,V]`, computed in f64 and stored as f32
/// (the train step's `ref_logp` input).
pub fn logprobs(
    engine: &mut dyn Engine,
    adapter: &[f32],
    features: ArrayView3<f32>,
    has_image: ArrayView1<f32>,
    tokens: ArrayView2<i32>,
) -> Result<Array3<f32>> {
    let b = tokens.nrows();
    let mut parts = Vec::new();
    for start in (0..b).step_by(CHUNK) {
        let end = (start + CHUNK).min(b);
        let mut l = engine.logits(
            adapter,
            features.slice(s![start..end, .., ..]),
            has_image.slice(s![start..end]),
            tokens.slice(s![start..end, ..]),
        )?;
        for mut row in l.lanes_mut(Axis(2)) {
            let lp = log_softmax(row.view());
            row.iter_mut().zip(lp).for_each(|(x, v)| *x = v as f32);
        }
        parts.push(l);
    }
    if parts.is_empty() {
        return engine.logits(adapter, features, has_image, tokens);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| ModelError::Shape(e.to_string()))
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
    }

    fn tok() -> Tokenizer {
        let v = [
            "<pad>", "<bos>", "<sep>", "<eos>", "no", "yes", "is", "this",
        ];
        Tokenizer::new(v.iter().map(|s| s.to_string()).collect(), [0, 1, 2, 3], 8)
    }

    #[test]
    fn greedy_answers_follow_argmax_and_stop_at_eos() {
        let mut e = Fake {
            calls: 0,
            vocab: 8,
            ramble: false,
        };
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
        let mut rambler = Fake {
            calls: 0,
            vocab: 8,
            ramble: true,
        };
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
    fn query_about_a_missing_image_is_an_error() {
        let mut e = Fake {
            calls: 0,
            vocab: 8,
            ramble: false,
        };
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
        let mut e = Fake {
            calls: 0,
            vocab: 8,
            ramble: false,
        };
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
        let mut e = Fake {
            calls: 0,
            vocab: 8,
            ramble: false,
        };
        let imgs = Array4::zeros((130, 64, 64, 3));
        assert_eq!(
            encode_images(&mut e, imgs.view()).unwrap().shape(),
            &[130, 1, 2]
        );
    }
}
