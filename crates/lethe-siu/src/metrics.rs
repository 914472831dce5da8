//! MMUBench-style metrics of a forget (siu.md), computed with whatever engine the caller
//! passes: the CLI and the agent pass tract, so the verifier is not the engine that trained.
//!
//! | metric | definition here |
//! |---|---|
//! | efficacy | share of "who is this?" answers on the training image that do not name C |
//! | generality | on held-out images of C, over every "who" paraphrase and every "is C ...?" template: share of answers that neither name C nor start with "yes" |
//! | C-Dis | mean over the name-token positions of "this is <C>" on held-out images of C of sum_c p0(c) (log p0(c) - log p(c)) over C's name tokens |
//! | specificity | accuracy on other identities' held-out images over who / is-this (yes and no) / describe, before and after |
//! | factual retention | text-only questions about C (fact and appearance) answered exactly as the original model did |
//! | fluency | perplexity of the updated model on the original model's answers (other identities, text), C's tokens excluded; reported before / after |
//! | diversity | unique words / total words of the updated model's answers |
//! Invariant: metrics never change a model; the same inputs give the same numbers.

use crate::facets::Language;
use crate::unlearn::{confirms, names_concept};
use lethe_model::generate::{answer, encode_images, logprobs, score};
use lethe_model::ProbeSet;
use lethe_model::{Engine, Query, Result, Tokenizer};
use ndarray::{Array1, Array2, Array4, Axis};
use serde::Serialize;
use std::collections::HashSet;

/// Images and labels to measure on.
pub struct EvalSet {
    pub concept: String,
    /// The training image, `[1,64,64,3]`.
    pub train_image: Array4<f32>,
    /// Held-out images of the concept, `[N,64,64,3]`.
    pub concept_images: Array4<f32>,
    /// Held-out images of other identities, their names and descriptions.
    pub other_images: Array4<f32>,
    pub other_names: Vec<String>,
    pub other_descriptions: Vec<String>,
}

impl EvalSet {
    /// An evaluation set from a package's retained probe set: its images of the concept
    /// (if the concept is one of the package's identities) and of everyone else.
    pub fn from_probes(
        lang: &Language,
        probes: &ProbeSet,
        concept: &str,
        train_image: Array4<f32>,
    ) -> EvalSet {
        let n = probes.images.shape()[0];
        let mut who = vec![None; n];
        let mut desc = vec![None; n];
        for p in &probes.probes {
            if let Some(i) = p.image {
                who[i] = lang.names.get(p.identity as usize).cloned();
                if lang.describe.contains(&p.question) {
                    desc[i] = Some(p.expect.clone());
                }
            }
        }
        let mine: Vec<usize> = (0..n)
            .filter(|&i| who[i].as_deref() == Some(concept))
            .collect();
        let others: Vec<usize> = (0..n)
            .filter(|&i| {
                who[i].is_some() && desc[i].is_some() && who[i].as_deref() != Some(concept)
            })
            .collect();
        EvalSet {
            concept: concept.to_string(),
            train_image,
            concept_images: probes.images.select(Axis(0), &mine),
            other_images: probes.images.select(Axis(0), &others),
            other_names: others
                .iter()
                .map(|&i| who[i].clone().unwrap_or_default())
                .collect(),
            other_descriptions: others
                .iter()
                .map(|&i| desc[i].clone().unwrap_or_default())
                .collect(),
        }
    }
}

/// The numbers of one forget.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Metrics {
    pub efficacy: f64,
    pub generality: f64,
    pub generality_who: f64,
    pub generality_is_this: f64,
    pub c_dis: f64,
    pub specificity_before: f64,
    pub specificity_after: f64,
    pub specificity_drop_points: f64,
    pub factual_retention: f64,
    pub text_retention_others: f64,
    pub fluency_ppl_before: f64,
    pub fluency_ppl_after: f64,
    pub fluency_increase_pct: f64,
    pub diversity: f64,
}

struct Answers {
    who_train: Vec<String>,
    who_c: Vec<String>,
    is_c: Vec<String>,
    other_ok: Vec<bool>,
    other_queries: Vec<Query>,
    other_answers: Vec<String>,
    text_queries: Vec<Query>,
    text_answers: Vec<String>,
}

fn fill(t: &str, n: &str) -> String {
    t.replace("{name}", n)
}

fn ask_all(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    lang: &Language,
    set: &EvalSet,
) -> Result<Answers> {
    let describe = &lang.describe;
    let c = &set.concept;
    let tf = encode_images(engine, set.train_image.view())?;
    let who_train = answer(
        engine,
        adapter,
        tok,
        tf.view(),
        &(0..lang.who.len())
            .map(|k| Query::about(lang.who[k].clone(), 0))
            .collect::<Vec<_>>(),
    )?;
    let cf = encode_images(engine, set.concept_images.view())?;
    let nc = cf.shape()[0];
    let mut qw = Vec::new();
    let mut qi = Vec::new();
    for i in 0..nc {
        for w in &lang.who {
            qw.push(Query::about(w.clone(), i));
        }
        for t in &lang.is_this {
            qi.push(Query::about(fill(t, c), i));
        }
    }
    let who_c = answer(engine, adapter, tok, cf.view(), &qw)?;
    let is_c = answer(engine, adapter, tok, cf.view(), &qi)?;
    // Other identities: who / is-this own name (yes) / is-this another name (no) / describe.
    let of = encode_images(engine, set.other_images.view())?;
    let mut oq = Vec::new();
    let mut expect = Vec::new();
    let no = set.other_names.len();
    for i in 0..no {
        let name = &set.other_names[i];
        let wrongs: Vec<&String> = lang
            .names
            .iter()
            .filter(|n| *n != name && *n != c)
            .collect();
        let wrong = wrongs[i % wrongs.len()];
        oq.push(Query::about(lang.who[i % lang.who.len()].clone(), i));
        expect.push(fill(&lang.who_answer, name));
        oq.push(Query::about(
            fill(&lang.is_this[i % lang.is_this.len()], name),
            i,
        ));
        expect.push("yes".to_string());
        oq.push(Query::about(
            fill(&lang.is_this[(i + 1) % lang.is_this.len()], wrong),
            i,
        ));
        expect.push("no".to_string());
        oq.push(Query::about(describe[i % describe.len()].clone(), i));
        expect.push(set.other_descriptions[i].clone());
    }
    let oa = answer(engine, adapter, tok, of.view(), &oq)?;
    let other_ok = oa.iter().zip(&expect).map(|(a, e)| a == e).collect();
    // Text-only: C's facts (retention) and every other identity's (text specificity).
    let mut tq = vec![
        Query::text(fill(&lang.fact, c)),
        Query::text(fill(&lang.looks, c)),
    ];
    for n in lang.names.iter().filter(|n| *n != c) {
        tq.push(Query::text(fill(&lang.fact, n)));
        tq.push(Query::text(fill(&lang.looks, n)));
    }
    let ta = answer(engine, adapter, tok, of.view(), &tq)?;
    Ok(Answers {
        who_train,
        who_c,
        is_c,
        other_ok,
        other_queries: oq,
        other_answers: oa,
        text_queries: tq,
        text_answers: ta,
    })
}

fn share(v: impl Iterator<Item = bool>) -> f64 {
    let (mut n, mut k) = (0usize, 0usize);
    for b in v {
        n += 1;
        k += b as usize;
    }
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

/// Perplexity of `adapter` on (query, answer) pairs, ignoring answer positions whose target
/// is one of `exclude` token ids.
fn perplexity(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    feats: ndarray::ArrayView3<f32>,
    queries: &[Query],
    answers: &[String],
    exclude: &[i32],
) -> Result<f64> {
    let lps = score(engine, adapter, tok, feats, queries, answers)?;
    let (mut sum, mut n) = (0.0, 0usize);
    for (a, lp) in answers.iter().zip(&lps) {
        let mut ids = tok.encode(a)?;
        ids.push(tok.eos());
        for (id, l) in ids.iter().zip(lp) {
            if !exclude.contains(id) {
                sum -= l;
                n += 1;
            }
        }
    }
    Ok(if n == 0 { 1.0 } else { (sum / n as f64).exp() })
}

/// Measures a forget: `before` is the original adapter, `after` the updated one.
pub fn evaluate(
    engine: &mut dyn Engine,
    tok: &Tokenizer,
    lang: &Language,
    before: &[f32],
    after: &[f32],
    set: &EvalSet,
) -> Result<Metrics> {
    let c = &set.concept;
    let b = ask_all(engine, before, tok, lang, set)?;
    let a = ask_all(engine, after, tok, lang, set)?;
    let efficacy = share(a.who_train.iter().map(|x| !names_concept(x, c)));
    let gw = share(a.who_c.iter().map(|x| !names_concept(x, c)));
    let gi = share(a.is_c.iter().map(|x| !confirms(x) && !names_concept(x, c)));
    let generality = (gw * a.who_c.len() as f64 + gi * a.is_c.len() as f64)
        / (a.who_c.len() + a.is_c.len()).max(1) as f64;
    let spec_b = share(b.other_ok.iter().copied());
    let spec_a = share(a.other_ok.iter().copied());
    let factual = share(
        a.text_answers[..2]
            .iter()
            .zip(&b.text_answers[..2])
            .map(|(x, y)| x == y),
    );
    let text_others = share(
        a.text_answers[2..]
            .iter()
            .zip(&b.text_answers[2..])
            .map(|(x, y)| x == y),
    );

    // Fluency: the original model's answers on other images and text questions.
    let concept_ids = tok.encode(c)?;
    let of = encode_images(engine, set.other_images.view())?;
    // Equal weight to image answers and text answers, as the original model gave them.
    let mut fluency = |adapter: &[f32]| -> Result<f64> {
        let img = perplexity(
            engine,
            adapter,
            tok,
            of.view(),
            &b.other_queries,
            &b.other_answers,
            &concept_ids,
        )?;
        let txt = perplexity(
            engine,
            adapter,
            tok,
            of.view(),
            &b.text_queries[2..],
            &b.text_answers[2..],
            &concept_ids,
        )?;
        Ok(0.5 * (img + txt))
    };
    let ppl_b = fluency(before)?;
    let ppl_a = fluency(after)?;

    // Diversity of the updated model's answers (all of them).
    let all: Vec<&String> = a
        .who_c
        .iter()
        .chain(&a.is_c)
        .chain(&a.other_answers)
        .chain(&a.text_answers)
        .collect();
    let words: Vec<&str> = all.iter().flat_map(|s| s.split_whitespace()).collect();
    let diversity = if words.is_empty() {
        0.0
    } else {
        words.iter().collect::<HashSet<_>>().len() as f64 / words.len() as f64
    };

    let c_dis = c_dis(engine, tok, lang, before, after, set)?;
    Ok(Metrics {
        efficacy,
        generality,
        generality_who: gw,
        generality_is_this: gi,
        c_dis,
        specificity_before: spec_b,
        specificity_after: spec_a,
        specificity_drop_points: 100.0 * (spec_b - spec_a),
        factual_retention: factual,
        text_retention_others: text_others,
        fluency_ppl_before: ppl_b,
        fluency_ppl_after: ppl_a,
        fluency_increase_pct: 100.0 * (ppl_a / ppl_b - 1.0),
        diversity,
    })
}

/// C-Dis: KL of the original against the updated model restricted to C's name tokens, at the
/// positions that predict the name in "this is <C>" on held-out images of C.
fn c_dis(
    engine: &mut dyn Engine,
    tok: &Tokenizer,
    lang: &Language,
    before: &[f32],
    after: &[f32],
    set: &EvalSet,
) -> Result<f64> {
    let c = &set.concept;
    let ids = tok.encode(c)?;
    let cf = encode_images(engine, set.concept_images.view())?;
    let n = cf.shape()[0];
    let target = fill(&lang.who_answer, c);
    let seqs = (0..n)
        .map(|i| tok.sequence(&lang.who[i % lang.who.len()], &target))
        .collect::<Result<Vec<_>>>()?;
    let t_len = tok.text_len();
    let tokens = Array2::from_shape_fn((n, t_len), |(r, k)| seqs[r].inputs[k]);
    let has = Array1::ones(n);
    let lb = logprobs(engine, before, cf.view(), has.view(), tokens.view())?;
    let la = logprobs(engine, after, cf.view(), has.view(), tokens.view())?;
    let (mut sum, mut cnt) = (0.0f64, 0usize);
    for (r, sq) in seqs.iter().enumerate() {
        for t in 0..t_len {
            if sq.answer_mask[t] > 0.0 && ids.contains(&sq.targets[t]) {
                for &v in &ids {
                    let p0 = f64::from(lb[[r, t, v as usize]]);
                    let p1 = f64::from(la[[r, t, v as usize]]);
                    sum += p0.exp() * (p0 - p1);
                }
                cnt += 1;
            }
        }
    }
    Ok(if cnt == 0 { 0.0 } else { sum / cnt as f64 })
}
