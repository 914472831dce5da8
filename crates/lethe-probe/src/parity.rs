//! Cross-engine parity on the package's retained probe set: two engines (in practice
//! `OrtEngine` and `TractEngine`) answer every probe greedily and score the expected answers
//! teacher-forced; the report gives answer agreement, accuracy per engine and the largest
//! feature and logit differences. Owns no engine: it takes any two `&mut dyn Engine`.
//! Invariant: each engine only ever sees its own vision features, so a vision-graph
//! discrepancy shows up in the answers and logits instead of being masked.

use lethe_model::fixtures::max_abs_diff;
use lethe_model::generate::{self, CHUNK};
use lethe_model::{Engine, Package, Result};
use ndarray::Array2;

/// One probe the two engines answered differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub index: usize,
    pub question: String,
    pub a: String,
    pub b: String,
}

/// Outcome of `probe_parity`.
#[derive(Debug, Clone)]
pub struct ParityReport {
    pub engine_a: String,
    pub engine_b: String,
    pub probes: usize,
    /// Probes both engines answered identically.
    pub agree: usize,
    pub mismatches: Vec<Mismatch>,
    /// Probes answered as expected, per engine.
    pub a_correct: usize,
    pub b_correct: usize,
    /// Largest |difference| of vision features over the probe images.
    pub max_feature_diff: f32,
    /// Largest |difference| of decoder logits over the teacher-forced probe sequences.
    pub max_logit_diff: f32,
}

impl ParityReport {
    /// Whether every answer agreed.
    pub fn all_agree(&self) -> bool {
        self.agree == self.probes
    }
}

/// Runs the retained probe set of `pkg` with `adapter` through both engines.
pub fn probe_parity(
    a: &mut dyn Engine,
    b: &mut dyn Engine,
    pkg: &Package,
    adapter: &[f32],
) -> Result<ParityReport> {
    let set = pkg.probes()?;
    let tok = pkg.tokenizer();
    let fa = generate::encode_images(a, set.images.view())?;
    let fb = generate::encode_images(b, set.images.view())?;
    let queries = set.queries();
    let ans_a = generate::answer(a, adapter, &tok, fa.view(), &queries)?;
    let ans_b = generate::answer(b, adapter, &tok, fb.view(), &queries)?;
    let mut mismatches = Vec::new();
    for (i, (x, y)) in ans_a.iter().zip(&ans_b).enumerate() {
        if x != y {
            mismatches.push(Mismatch {
                index: i,
                question: queries[i].question.clone(),
                a: x.clone(),
                b: y.clone(),
            });
        }
    }
    let correct = |ans: &[String]| {
        ans.iter()
            .zip(&set.probes)
            .filter(|(x, p)| **x == p.expect)
            .count()
    };

    // Teacher-forced logits of the expected answers, engine by engine, chunk by chunk.
    let t = tok.text_len();
    let mut max_logit_diff = 0f32;
    for start in (0..queries.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(queries.len());
        let mut tokens = Array2::<i32>::zeros((end - start, t));
        for (r, p) in set.probes[start..end].iter().enumerate() {
            let sq = tok.sequence(&p.question, &p.expect)?;
            tokens
                .row_mut(r)
                .assign(&ndarray::ArrayView1::from(&sq.inputs));
        }
        let images: Vec<Option<usize>> = queries[start..end].iter().map(|q| q.image).collect();
        let (ga, ha) = generate::gather_features(fa.view(), &images)?;
        let (gb, hb) = generate::gather_features(fb.view(), &images)?;
        let la = a.logits(adapter, ga.view(), ha.view(), tokens.view())?;
        let lb = b.logits(adapter, gb.view(), hb.view(), tokens.view())?;
        let d = max_abs_diff(&la, &lb);
        if d.is_nan() || d > max_logit_diff {
            max_logit_diff = d;
        }
        if d.is_nan() {
            break;
        }
    }
    Ok(ParityReport {
        engine_a: a.name().to_string(),
        engine_b: b.name().to_string(),
        probes: queries.len(),
        agree: queries.len() - mismatches.len(),
        a_correct: correct(&ans_a),
        b_correct: correct(&ans_b),
        max_feature_diff: max_abs_diff(&fa, &fb),
        max_logit_diff,
        mismatches,
    })
}

/// Largest difference allowed between a log-probability read while decoding on the key/value
/// cache and the whole decoder's (different summation order, same arithmetic).
pub const LOGPROB_TOL: f64 = 1e-4;

/// Generation as Lethe runs it (key/value cache, guesses checked by teacher forcing) against
/// the reference: plain greedy decoding by the whole decoder, one call per token
/// ([`generate::answer_tokens_uncached`]), over the retained probe set with `adapter` on one
/// engine. Guesses: none, the expected answers (mostly right), each probe's greedy answer
/// shifted by one probe (mostly wrong), the expected answers cut after their first word
/// (right prefix, wrong end) and with a word appended (too long). Each answer's
/// log-probabilities are compared with [`generate::score`] of it (within [`LOGPROB_TOL`]).
/// Returns the probes that differed, as (guess kind, index, reference, got); empty = same.
pub fn guided_parity(
    engine: &mut dyn Engine,
    pkg: &Package,
    adapter: &[f32],
) -> Result<Vec<(&'static str, usize, String, String)>> {
    let set = pkg.probes()?;
    let tok = pkg.tokenizer();
    let feats = generate::encode_images(engine, set.images.view())?;
    let queries = set.queries();
    let greedy: Vec<String> =
        generate::answer_tokens_uncached(engine, adapter, &tok, feats.view(), &queries)?
            .iter()
            .map(|ids| tok.decode(ids))
            .collect();
    let expect: Vec<String> = set.probes.iter().map(|p| p.expect.clone()).collect();
    let n = expect.len();
    let kinds: [(&'static str, Vec<Option<String>>); 5] = [
        ("none", vec![None; n]),
        ("expected", expect.iter().cloned().map(Some).collect()),
        (
            "shifted",
            (0..n).map(|i| Some(greedy[(i + 1) % n].clone())).collect(),
        ),
        (
            "first word",
            expect
                .iter()
                .map(|e| Some(e.split(' ').next().unwrap_or("").to_string()))
                .collect(),
        ),
        (
            "one word more",
            expect.iter().map(|e| Some(format!("{e} this"))).collect(),
        ),
    ];
    let scores = generate::score(engine, adapter, &tok, feats.view(), &queries, &greedy)?;
    let mut out = Vec::new();
    for (kind, guesses) in kinds {
        let g: Vec<Option<&str>> = guesses.iter().map(|s| s.as_deref()).collect();
        let got =
            generate::answer_guided_scored(engine, adapter, &tok, feats.view(), &queries, &g)?;
        for (i, (x, (y, lp))) in greedy.iter().zip(got).enumerate() {
            if *x != y {
                out.push((kind, i, x.clone(), y));
            } else if let Some(lp) = lp {
                let off = lp.len() != scores[i].len()
                    || lp
                        .iter()
                        .zip(&scores[i])
                        .any(|(a, b)| (a - b).abs() > LOGPROB_TOL);
                if off {
                    out.push(("logprobs", i, format!("{:?}", scores[i]), format!("{lp:?}")));
                }
            }
        }
    }
    Ok(out)
}
