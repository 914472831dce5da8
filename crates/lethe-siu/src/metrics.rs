//! MMUBench-style metrics of a forget (docs/siu.md), plus the metrics that see the harms a forget
//! can do, computed with whatever engine the caller passes: the CLI and the agent pass tract,
//! so the verifier is not the engine that trained.
//!
//! "Held-out paraphrases" are question wordings that no pretraining step, template or facet
//! ever used (`EvalSet::paraphrases`: the package's `verify` set in the agent, its `eval` set in
//! benchmarks and tests). Answers are classified by [`crate::answers`].
//!
//! | metric | definition here |
//! |---|---|
//! | leak | on held-out images of C, over held-out paraphrases of "who is this?" and "is this C?": share of answers that name C or confirm |
//! | misattribution | on held-out images of C, over every "who" question (templates and paraphrases): share of answers naming another identity the model knows |
//! | well-formed | on held-out images of C, over every "who" and "is this C?" question: share of answers that are a refusal, `no`, a clean denial, or a fictitious name (no rambling) |
//! | efficacy | share of "who is this?" answers on the training image that do not name C |
//! | generality | on held-out images of C, over "who" and "is C ...?" templates: share of answers that neither name C nor start with "yes" |
//! | C-Dis | mean over the name-token positions of "this is <C>" on held-out images of C of sum_c p0(c) (log p0(c) - log p(c)) over C's name tokens |
//! | specificity | accuracy on other identities' held-out images over who / is-this (yes and no) / describe, before and after; `_paraphrased`: the same with held-out wordings |
//! | worst identity drop | the largest drop of one other identity's accuracy (both wordings), in points, and who: one look-alike collapsing barely moves the average |
//! | factual retention | text-only questions about C (fact and appearance, templates and held-out wordings) answered exactly as the original model did |
//! | fluency | perplexity of the updated model on the original model's answers (other identities, text), C's tokens excluded; reported before / after |
//! | diversity | unique words / total words of the updated model's answers |
//!
//! Invariant: metrics never change a model; the same inputs give the same numbers.

use crate::answers::{self, Verdict, Vocabulary};
use crate::facets::Language;
use lethe_model::generate::{answer_guided, answer_guided_scored, encode_images, logprobs, score};
use lethe_model::{Engine, Query, Result, Tokenizer};
use lethe_model::{Probe, ProbeSet, Wordings};
use ndarray::{Array2, Array4, Axis};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Held-out "who" / "is this C?" wordings asked per held-out image of C (rotating over the
/// set, so a handful of images covers every wording).
pub const PARAPHRASES_PER_IMAGE: (usize, usize) = (6, 4);
/// Template "who" / "is this C?" wordings asked per held-out image of C.
pub const TEMPLATES_PER_IMAGE: (usize, usize) = (4, 2);

/// Images, labels and wordings to measure on.
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
    /// Held-out question wordings (never trained on).
    pub paraphrases: Wordings,
    /// Text-only questions whose answers the package expects (question -> answer; see
    /// [`known_text`]). Only a guess that makes answering faster: it never changes an
    /// answer or a metric, so it may be empty.
    pub known_text: BTreeMap<String, String>,
}

/// The package's expected answers to its text-only probes (question -> answer).
pub fn known_text(probes: &[Probe]) -> BTreeMap<String, String> {
    probes
        .iter()
        .filter(|p| p.image.is_none())
        .map(|p| (p.question.clone(), p.expect.clone()))
        .collect()
}

impl EvalSet {
    /// An evaluation set from a package's retained probe set: its images of the concept
    /// (if the concept is one of the package's identities) and of everyone else.
    pub fn from_probes(
        lang: &Language,
        probes: &ProbeSet,
        concept: &str,
        train_image: Array4<f32>,
        paraphrases: Wordings,
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
            paraphrases,
            known_text: known_text(&probes.probes),
        }
    }
}

/// The numbers of one forget.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Metrics {
    pub leak: f64,
    pub leak_who: f64,
    pub leak_is_this: f64,
    pub misattribution: f64,
    /// Misattribution of the original model on the same questions (its own recognition
    /// errors), for context.
    pub misattribution_before: f64,
    /// What the update added: share of the same "who" answers naming another known
    /// identity where the original model's answer did not. A picture the model already took
    /// for someone else is no evidence about the forget, and rolling the forget back would
    /// not change that answer (the agent gates on this).
    pub misattribution_added: f64,
    pub well_formed: f64,
    /// Well-formed share over the questions whose original answer did not name another
    /// known identity (the agent gates on this, for the same reason).
    pub well_formed_where_known: f64,
    pub efficacy: f64,
    pub generality: f64,
    pub generality_who: f64,
    pub generality_is_this: f64,
    pub c_dis: f64,
    pub specificity_before: f64,
    pub specificity_after: f64,
    pub specificity_drop_points: f64,
    pub specificity_paraphrased_before: f64,
    pub specificity_paraphrased_after: f64,
    pub specificity_paraphrased_drop_points: f64,
    /// The largest accuracy drop of any single other identity, in points (templates and
    /// held-out wordings together): the average above can hide one look-alike collapsing.
    pub worst_identity_drop_points: f64,
    /// Who that identity is.
    pub worst_identity: String,
    pub factual_retention: f64,
    pub text_retention_others: f64,
    pub fluency_ppl_before: f64,
    pub fluency_ppl_after: f64,
    pub fluency_increase_pct: f64,
    pub diversity: f64,
    /// Examples of bad answers (leaks, misattributions, malformed), at most a few, for people.
    pub bad_examples: Vec<String>,
}

/// Kind of a question about an image of C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Who,
    IsThis,
}

/// One question about an image of C: its kind and whether its wording is held out.
#[derive(Debug, Clone)]
struct CQuestion {
    kind: Kind,
    held_out: bool,
    query: Query,
}

/// Every question asked about images and text, laid out once; answered per adapter.
struct Plan {
    train_who: Vec<Query>,
    concept: Vec<CQuestion>,
    others: Vec<Query>,
    others_expect: Vec<String>,
    others_held_out: Vec<bool>,
    /// Which other image each of `others` is about.
    others_image: Vec<usize>,
    /// Text questions: the first `n_concept_text` are about C.
    text: Vec<Query>,
    /// What each text question asks, as the canonical template question (the first fact or
    /// looks wording) about the same person.
    text_canonical: Vec<String>,
    n_concept_text: usize,
}

/// A wording with `{name}` filled in.
pub(crate) fn fill(t: &str, n: &str) -> String {
    t.replace("{name}", n)
}

/// `k` wordings of `list`, rotating with `start` (all of them if the list is shorter).
fn rotate(list: &[String], start: usize, k: usize) -> Vec<&String> {
    if list.is_empty() {
        return Vec::new();
    }
    (0..k.min(list.len()))
        .map(|j| &list[(start * k + j) % list.len()])
        .collect()
}

fn plan(lang: &Language, set: &EvalSet) -> Plan {
    let c = &set.concept;
    let para = &set.paraphrases;
    let train_who = lang
        .who
        .iter()
        .take(6)
        .map(|w| Query::about(w.clone(), 0))
        .collect();
    let mut concept = Vec::new();
    for i in 0..set.concept_images.shape()[0] {
        let mut push = |kind, held_out, ws: Vec<&String>| {
            for w in ws {
                concept.push(CQuestion {
                    kind,
                    held_out,
                    query: Query::about(fill(w, c), i),
                });
            }
        };
        push(
            Kind::Who,
            false,
            rotate(&lang.who, i, TEMPLATES_PER_IMAGE.0),
        );
        push(
            Kind::IsThis,
            false,
            rotate(&lang.is_this, i, TEMPLATES_PER_IMAGE.1),
        );
        push(
            Kind::Who,
            true,
            rotate(&para.who, i, PARAPHRASES_PER_IMAGE.0),
        );
        push(
            Kind::IsThis,
            true,
            rotate(&para.is_this, i, PARAPHRASES_PER_IMAGE.1),
        );
    }
    // Other identities: who / is-this own name (yes) / is-this another name (no) / describe,
    // once with templates and once with held-out wordings.
    let (mut others, mut expect, mut held) = (Vec::new(), Vec::new(), Vec::new());
    let mut others_image = Vec::new();
    // Wordings and the third name are chosen by the person (their place in the language and
    // how many of their images came before), not by the image's place in this set: the same
    // image gets the same questions whoever the concept is, so an answer memo
    // ([`AnswerMemo`]) serves the next forget.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..set.other_names.len() {
        let name = &set.other_names[i];
        let nth = {
            let e = seen.entry(name.as_str()).or_default();
            *e += 1;
            *e - 1
        };
        let gi = lang.names.iter().position(|n| n == name).unwrap_or(i);
        let k = gi + 11 * nth;
        let n_names = lang.names.len().max(1);
        let wrong = (1..=n_names)
            .map(|d| &lang.names[(gi + nth + d) % n_names])
            .find(|n| *n != name && *n != c)
            .unwrap_or(name);
        for (held_out, w) in [(false, wordings_of(lang)), (true, para.clone())] {
            if w.who.is_empty() || w.is_this.is_empty() || w.describe.is_empty() {
                continue;
            }
            let pick = |l: &[String], k: usize| l[k % l.len()].clone();
            others.push(Query::about(pick(&w.who, k), i));
            expect.push(fill(&lang.who_answer, name));
            others.push(Query::about(fill(&pick(&w.is_this, k), name), i));
            expect.push("yes".to_string());
            others.push(Query::about(fill(&pick(&w.is_this, k + 1), wrong), i));
            expect.push("no".to_string());
            others.push(Query::about(pick(&w.describe, k), i));
            expect.push(set.other_descriptions[i].clone());
            held.extend([held_out; 4]);
            others_image.extend([i; 4]);
        }
    }
    // Text-only: C's facts under every wording (retention), everyone else's (text specificity).
    let (mut text, mut text_canonical) = (Vec::new(), Vec::new());
    let canon = |l: &[String], n: &str| l.first().map(|t| fill(t, n)).unwrap_or_default();
    for (wordings, canonical) in [
        (lang.fact.iter().collect::<Vec<_>>(), canon(&lang.fact, c)),
        (lang.looks.iter().collect(), canon(&lang.looks, c)),
        (para.fact.iter().collect(), canon(&lang.fact, c)),
        (para.looks.iter().collect(), canon(&lang.looks, c)),
    ] {
        for t in wordings {
            text.push(Query::text(fill(t, c)));
            text_canonical.push(canonical.clone());
        }
    }
    let n_concept_text = text.len();
    for n in lang.names.iter().filter(|n| *n != c) {
        text.push(Query::text(fill(&lang.fact[0], n)));
        text.push(Query::text(fill(&lang.looks[0], n)));
        text_canonical.extend([canon(&lang.fact, n), canon(&lang.looks, n)]);
    }
    Plan {
        train_who,
        concept,
        others,
        others_expect: expect,
        others_held_out: held,
        others_image,
        text,
        text_canonical,
        n_concept_text,
    }
}

/// The largest drop, in points, of one identity's accuracy over its questions
/// (`image_of[q]` is the image question `q` is about, `names[image]` who it shows), and who.
fn worst_identity_drop(
    names: &[String],
    image_of: &[usize],
    expect: &[String],
    before: &[String],
    after: &[String],
) -> (f64, String) {
    let mut per: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (q, &img) in image_of.iter().enumerate() {
        let e = per.entry(names[img].as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(before[q] == expect[q]);
        e.2 += usize::from(after[q] == expect[q]);
    }
    per.into_iter()
        .map(|(n, (k, b, a))| (100.0 * (b as f64 - a as f64) / k as f64, n.to_string()))
        .fold(None, |w: Option<(f64, String)>, x| match w {
            Some(w) if w.0 >= x.0 => Some(w),
            _ => Some(x),
        })
        .unwrap_or((0.0, String::new()))
}

/// The training wordings of a language as a `Wordings` (for symmetric code paths).
fn wordings_of(lang: &Language) -> Wordings {
    Wordings {
        who: lang.who.clone(),
        is_this: lang.is_this.clone(),
        describe: lang.describe.clone(),
        fact: lang.fact.clone(),
        looks: lang.looks.clone(),
    }
}

struct Answers {
    train_who: Vec<String>,
    concept: Vec<String>,
    others: Vec<String>,
    text: Vec<String>,
    /// The log-probabilities of each `others` and `text` answer (see
    /// [`lethe_model::generate::Answered::logprobs`]).
    others_lp: Vec<Option<Vec<f64>>>,
    text_lp: Vec<Option<Vec<f64>>>,
}

struct Features {
    train: ndarray::Array3<f32>,
    concept: ndarray::Array3<f32>,
    others: ndarray::Array3<f32>,
}

/// A guess of every answer of a [`Plan`] (same layout as [`Answers`]), for
/// [`answer_guided`]: guessing only changes how fast the answers come, never what they are.
struct Guesses {
    train_who: Vec<Option<String>>,
    concept: Vec<Option<String>>,
    others: Vec<Option<String>>,
    text: Vec<Option<String>>,
}

impl Guesses {
    /// What a model that knows C answers: C's name, "yes" to "is this C?", every other
    /// question as expected (a text question as the package expects its canonical wording
    /// answered, where it knows that answer).
    fn knowing(lang: &Language, p: &Plan, set: &EvalSet) -> Guesses {
        let c = &set.concept;
        let named = fill(&lang.who_answer, c);
        Guesses {
            train_who: vec![Some(named.clone()); p.train_who.len()],
            concept: p
                .concept
                .iter()
                .map(|q| {
                    Some(match q.kind {
                        Kind::Who => named.clone(),
                        Kind::IsThis => "yes".to_string(),
                    })
                })
                .collect(),
            others: p.others_expect.iter().cloned().map(Some).collect(),
            text: p
                .text_canonical
                .iter()
                .map(|q| set.known_text.get(q).cloned())
                .collect(),
        }
    }

    /// What a model that forgot C answers: a stranger's answers about C, everything else as
    /// `before` answered.
    fn forgotten(lang: &Language, p: &Plan, before: &Answers) -> Guesses {
        Guesses {
            train_who: vec![Some(lang.refusal.clone()); p.train_who.len()],
            concept: p
                .concept
                .iter()
                .map(|q| Some(stranger_answer(lang, q.kind).to_string()))
                .collect(),
            others: before.others.iter().cloned().map(Some).collect(),
            text: before.text.iter().cloned().map(Some).collect(),
        }
    }
}

/// What the model answers about a stranger: the refusal to "who", "no" to "is this C?".
fn stranger_answer(lang: &Language, kind: Kind) -> &str {
    match kind {
        Kind::Who => &lang.refusal,
        Kind::IsThis => "no",
    }
}

/// What an adapter answered to questions about the package's own images and about other
/// people's facts, kept between verifications: a forget's "after" adapter is the next
/// forget's "before" (and a rolled-back forget's "before" stays current), so the next
/// verification reads those answers instead of asking them again. Keyed by the SHA-256 of the
/// adapter and of the image, so a hit is the answer that adapter gives to that image.
/// Nothing about the concept is kept: its images are never keyed and questions about it are
/// never stored. Holds the [`MEMO_ADAPTERS`] adapters used last and at most
/// [`MEMO_ANSWERS`] answers, and the vision features of the last set of those images. One
/// memo serves one engine (features and answers are that engine's).
#[derive(Debug, Default)]
pub struct AnswerMemo {
    answers: HashMap<MemoKey, (String, Option<Vec<f64>>)>,
    /// The adapters held, least recently used first.
    adapters: VecDeque<[u8; 32]>,
    hits: usize,
    /// The vision features of the last set of other people's images (the package's own
    /// probe images, never the concept's), keyed by the digest of their digests: the
    /// vision graph is frozen, so they are the same for every adapter.
    others_features: Option<([u8; 32], ndarray::Array3<f32>)>,
}

/// (adapter digest, image digest or zeros for a text question, question).
type MemoKey = ([u8; 32], [u8; 32], String);

/// Adapters an [`AnswerMemo`] keeps answers of (the current one and its candidate).
pub const MEMO_ADAPTERS: usize = 2;

/// Answers an [`AnswerMemo`] holds at most (a verification asks about 500; the questions
/// about other people vary a little with the concept, so one adapter's set can grow).
pub const MEMO_ANSWERS: usize = 4096;

impl AnswerMemo {
    /// Answers held.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Answers read from the memo instead of asked, so far.
    pub fn hits(&self) -> usize {
        self.hits
    }

    /// Marks `adapter` used now; forgets the answers of the adapter used longest ago when
    /// more than [`MEMO_ADAPTERS`] are held.
    fn touch(&mut self, adapter: [u8; 32]) {
        self.adapters.retain(|a| *a != adapter);
        self.adapters.push_back(adapter);
        while self.adapters.len() > MEMO_ADAPTERS {
            if let Some(old) = self.adapters.pop_front() {
                self.answers.retain(|k, _| k.0 != old);
            }
        }
    }

    /// Keeps an answer of an adapter [`touch`](Self::touch)ed before, while under the cap.
    fn put(&mut self, key: MemoKey, value: (String, Option<Vec<f64>>)) {
        if self.answers.len() < MEMO_ANSWERS {
            self.answers.insert(key, value);
        }
    }
}

/// SHA-256 of f32 values (their little-endian bytes, hashed in one pass).
fn digest_f32<'a>(values: impl IntoIterator<Item = &'a f32>) -> [u8; 32] {
    let bytes: Vec<u8> = values.into_iter().flat_map(|v| v.to_le_bytes()).collect();
    Sha256::digest(&bytes).into()
}

/// The memo's view of one adapter and of the images questions are asked about.
struct MemoUse<'a> {
    memo: &'a mut AnswerMemo,
    adapter: [u8; 32],
    /// Digest of each of `f.others`' images.
    images: &'a [[u8; 32]],
}

/// Answers of `q` with guesses `g`; the rows `memo_rows` accepts are read from and written
/// to the memo when there is one.
#[allow(clippy::too_many_arguments)]
fn ask_group(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    feats: &ndarray::Array3<f32>,
    q: &[Query],
    g: &[Option<String>],
    memo: &mut Option<MemoUse>,
    memo_rows: &dyn Fn(usize) -> bool,
) -> Result<(Vec<String>, Vec<Option<Vec<f64>>>)> {
    let key = |m: &MemoUse, i: usize| -> MemoKey {
        let img = q[i].image.map_or([0; 32], |k| m.images[k]);
        (m.adapter, img, q[i].question.clone())
    };
    if let Some(m) = memo.as_mut() {
        m.memo.touch(m.adapter);
    }
    let mut out: Vec<Option<(String, Option<Vec<f64>>)>> = (0..q.len())
        .map(|i| match memo {
            Some(m) if memo_rows(i) => m.memo.answers.get(&key(m, i)).cloned(),
            _ => None,
        })
        .collect();
    let ask: Vec<usize> = (0..q.len()).filter(|&i| out[i].is_none()).collect();
    if let Some(m) = memo.as_mut() {
        m.memo.hits += out.iter().flatten().count();
    }
    let qs: Vec<Query> = ask.iter().map(|&i| q[i].clone()).collect();
    let gs: Vec<Option<&str>> = ask.iter().map(|&i| g[i].as_deref()).collect();
    let got = answer_guided_scored(engine, adapter, tok, feats.view(), &qs, &gs)?;
    for (&i, a) in ask.iter().zip(got) {
        if let Some(m) = memo.as_mut().filter(|_| memo_rows(i)) {
            let k = key(m, i);
            m.memo.put(k, a.clone());
        }
        out[i] = Some(a);
    }
    Ok(out.into_iter().flatten().unzip())
}

fn ask_all(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    f: &Features,
    p: &Plan,
    g: &Guesses,
    mut memo: Option<MemoUse>,
) -> Result<Answers> {
    let concept_q: Vec<Query> = p.concept.iter().map(|q| q.query.clone()).collect();
    let every = |_: usize| true;
    let not_about_c = |i: usize| i >= p.n_concept_text;
    let never = |_: usize| false;
    let (others, others_lp) = ask_group(
        engine, adapter, tok, &f.others, &p.others, &g.others, &mut memo, &every,
    )?;
    let (text, text_lp) = ask_group(
        engine,
        adapter,
        tok,
        &f.others,
        &p.text,
        &g.text,
        &mut memo,
        &not_about_c,
    )?;
    let mut none = None;
    let (train_who, _) = ask_group(
        engine,
        adapter,
        tok,
        &f.train,
        &p.train_who,
        &g.train_who,
        &mut none,
        &never,
    )?;
    let (concept, _) = ask_group(
        engine, adapter, tok, &f.concept, &concept_q, &g.concept, &mut none, &never,
    )?;
    Ok(Answers {
        train_who,
        concept,
        others,
        text,
        others_lp,
        text_lp,
    })
}

/// What an update added, from the verdicts on the same questions before and after it
/// (`is_who[i]`: question i is a "who" question): the share of "who" answers naming another
/// known identity where the answer before did not, and the well-formed share over the
/// questions whose answer before did not name another known identity.
fn harms_added(before: &[Verdict], after: &[Verdict], is_who: &[bool]) -> (f64, f64) {
    let known = |i: usize| !before[i].misattributes();
    let n = after.len();
    let added = share(
        (0..n)
            .filter(|&i| is_who[i])
            .map(|i| after[i].misattributes() && known(i)),
    );
    let well_formed = share((0..n).filter(|&i| known(i)).map(|i| after[i].well_formed()));
    (added, well_formed)
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

/// An adapter's log-probabilities of `reference` if `mine`, the answer it said, is that.
fn said_same<'a>(mine: &str, lp: &'a Option<Vec<f64>>, reference: &str) -> Option<&'a Vec<f64>> {
    lp.as_ref().filter(|_| mine == reference)
}

/// Perplexity of `adapter` on (query, answer) pairs, ignoring answer positions whose target
/// is one of `exclude` token ids. `known[i]`: the answer's log-probabilities under `adapter`
/// where already at hand (the adapter said that very answer, see [`Answers`]); the other
/// pairs are scored in one pass.
#[allow(clippy::too_many_arguments)]
fn perplexity(
    engine: &mut dyn Engine,
    adapter: &[f32],
    tok: &Tokenizer,
    feats: ndarray::ArrayView3<f32>,
    queries: &[Query],
    answers: &[String],
    known: &[Option<&Vec<f64>>],
    exclude: &[i32],
) -> Result<f64> {
    let ids = answers
        .iter()
        .map(|a| {
            let mut ids = tok.encode(a)?;
            ids.push(tok.eos());
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let usable = |i: usize| known[i].filter(|lp| lp.len() == ids[i].len());
    let missing: Vec<usize> = (0..answers.len())
        .filter(|&i| usable(i).is_none())
        .collect();
    let scored = score(
        engine,
        adapter,
        tok,
        feats,
        &missing
            .iter()
            .map(|&i| queries[i].clone())
            .collect::<Vec<_>>(),
        &missing
            .iter()
            .map(|&i| answers[i].clone())
            .collect::<Vec<_>>(),
    )?;
    let mut scored = scored.iter();
    let (mut sum, mut n) = (0.0, 0usize);
    for (i, ids) in ids.iter().enumerate() {
        let lp = match usable(i) {
            Some(lp) => lp,
            None => scored.next().expect("one score per missing answer"),
        };
        for (id, l) in ids.iter().zip(lp) {
            if !exclude.contains(id) {
                sum -= l;
                n += 1;
            }
        }
    }
    Ok(if n == 0 { 1.0 } else { (sum / n as f64).exp() })
}

/// The classifier's vocabulary for a language.
pub fn vocabulary(lang: &Language) -> Vocabulary<'_> {
    Vocabulary::new(
        &lang.names,
        &lang.refusal,
        lang.attribute_values.iter().flat_map(|(_, v)| v.iter()),
    )
}

/// Whether a forget still holds for one concept: leak, misattribution and well-formedness of
/// `adapter` on `set`'s held-out images of the concept (other images are not used).
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Holds {
    pub leak: f64,
    /// The leak among the "who" answers (naming the concept) and among the is-this answers
    /// ("yes"), held-out wordings.
    pub leak_who: f64,
    pub leak_is_this: f64,
    pub misattribution: f64,
    pub well_formed: f64,
}

/// Measures only whether `set.concept` is still forgotten by `adapter` (cheaper than
/// [`evaluate`]: one adapter, the concept's images only).
pub fn holds(
    engine: &mut dyn Engine,
    tok: &Tokenizer,
    lang: &Language,
    adapter: &[f32],
    set: &EvalSet,
) -> Result<Holds> {
    let p = plan(lang, set);
    let q: Vec<Query> = p.concept.iter().map(|q| q.query.clone()).collect();
    let f = encode_images(engine, set.concept_images.view())?;
    let g: Vec<Option<&str>> = p
        .concept
        .iter()
        .map(|q| Some(stranger_answer(lang, q.kind)))
        .collect();
    let ans = answer_guided(engine, adapter, tok, f.view(), &q, &g)?;
    let voc = vocabulary(lang);
    let v: Vec<(Kind, bool, Verdict)> = p
        .concept
        .iter()
        .zip(&ans)
        .map(|(q, a)| (q.kind, q.held_out, classify(q.kind, a, &set.concept, &voc)))
        .collect();
    Ok(Holds {
        leak: share(v.iter().filter(|x| x.1).map(|x| x.2.leaks())),
        leak_who: share(
            v.iter()
                .filter(|x| x.1 && x.0 == Kind::Who)
                .map(|x| x.2.leaks()),
        ),
        leak_is_this: share(
            v.iter()
                .filter(|x| x.1 && x.0 == Kind::IsThis)
                .map(|x| x.2.leaks()),
        ),
        misattribution: share(
            v.iter()
                .filter(|x| x.0 == Kind::Who)
                .map(|x| x.2.misattributes()),
        ),
        well_formed: share(v.iter().map(|x| x.2.well_formed())),
    })
}

fn classify(kind: Kind, answer: &str, concept: &str, voc: &Vocabulary) -> Verdict {
    match kind {
        Kind::Who => answers::who(answer, concept, voc),
        Kind::IsThis => answers::is_this(answer, concept, voc),
    }
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
    let mut memo = AnswerMemo::default();
    evaluate_with(engine, tok, lang, before, after, set, &mut memo)
}

/// [`evaluate`], reading and keeping answers in `memo`: the same metrics, less work when
/// the memo holds `before`'s answers from an earlier verification.
pub fn evaluate_with(
    engine: &mut dyn Engine,
    tok: &Tokenizer,
    lang: &Language,
    before: &[f32],
    after: &[f32],
    set: &EvalSet,
    memo: &mut AnswerMemo,
) -> Result<Metrics> {
    let c = &set.concept;
    let p = plan(lang, set);
    let images: Vec<[u8; 32]> = set
        .other_images
        .outer_iter()
        .map(|im| digest_f32(im.iter()))
        .collect();
    let others_key: [u8; 32] = Sha256::digest(images.concat()).into();
    let others = match memo.others_features.take() {
        Some((k, f)) if k == others_key => f,
        _ => encode_images(engine, set.other_images.view())?,
    };
    memo.others_features = Some((others_key, others.clone()));
    let f = Features {
        train: encode_images(engine, set.train_image.view())?,
        concept: encode_images(engine, set.concept_images.view())?,
        others,
    };
    let g = Guesses::knowing(lang, &p, set);
    let m = MemoUse {
        adapter: digest_f32(before),
        images: &images,
        memo: &mut *memo,
    };
    let b = ask_all(engine, before, tok, &f, &p, &g, Some(m))?;
    let g = Guesses::forgotten(lang, &p, &b);
    let m = MemoUse {
        adapter: digest_f32(after),
        images: &images,
        memo: &mut *memo,
    };
    let a = ask_all(engine, after, tok, &f, &p, &g, Some(m))?;

    let voc = vocabulary(lang);
    let verdicts: Vec<Verdict> = p
        .concept
        .iter()
        .zip(&a.concept)
        .map(|(q, x)| classify(q.kind, x, c, &voc))
        .collect();
    let verdicts_before: Vec<Verdict> = p
        .concept
        .iter()
        .zip(&b.concept)
        .map(|(q, x)| classify(q.kind, x, c, &voc))
        .collect();
    let pick = |kind: Option<Kind>, held: Option<bool>| {
        let p = &p;
        move |i: &usize| {
            kind.is_none_or(|k| p.concept[*i].kind == k)
                && held.is_none_or(|h| p.concept[*i].held_out == h)
        }
    };
    let idx: Vec<usize> = (0..p.concept.len()).collect();
    let rate = |vs: &[Verdict], sel: &dyn Fn(&usize) -> bool, f: fn(&Verdict) -> bool| {
        share(idx.iter().filter(|i| sel(i)).map(|&i| f(&vs[i])))
    };
    let leak = rate(&verdicts, &pick(None, Some(true)), Verdict::leaks);
    let leak_who = rate(
        &verdicts,
        &pick(Some(Kind::Who), Some(true)),
        Verdict::leaks,
    );
    let leak_is_this = rate(
        &verdicts,
        &pick(Some(Kind::IsThis), Some(true)),
        Verdict::leaks,
    );
    let misattribution = rate(
        &verdicts,
        &pick(Some(Kind::Who), None),
        Verdict::misattributes,
    );
    let misattribution_before = rate(
        &verdicts_before,
        &pick(Some(Kind::Who), None),
        Verdict::misattributes,
    );
    let well_formed = rate(&verdicts, &pick(None, None), Verdict::well_formed);
    let is_who: Vec<bool> = idx.iter().map(pick(Some(Kind::Who), None)).collect();
    let (misattribution_added, well_formed_where_known) =
        harms_added(&verdicts_before, &verdicts, &is_who);
    let bad_examples: Vec<String> = idx
        .iter()
        .filter(|&&i| !verdicts[i].well_formed())
        .take(6)
        .map(|&i| {
            let q = &p.concept[i].query;
            let on = q.image.map(|k| format!("image {k}: ")).unwrap_or_default();
            format!("{on}{:?} -> {:?}", q.question, a.concept[i])
        })
        .collect();

    // The paper's metrics on the templates.
    let efficacy = share(a.train_who.iter().map(|x| !answers::names_concept(x, c)));
    let templ = |k: Kind| {
        share(
            idx.iter()
                .filter(|&&i| p.concept[i].kind == k && !p.concept[i].held_out)
                .map(|&i| {
                    !answers::names_concept(&a.concept[i], c)
                        && (k == Kind::Who || !answers::confirms(&a.concept[i]))
                }),
        )
    };
    let gw = templ(Kind::Who);
    let gi = templ(Kind::IsThis);
    let n_gw = p
        .concept
        .iter()
        .filter(|q| !q.held_out && q.kind == Kind::Who)
        .count();
    let n_gi = p
        .concept
        .iter()
        .filter(|q| !q.held_out && q.kind == Kind::IsThis)
        .count();
    let generality = (gw * n_gw as f64 + gi * n_gi as f64) / (n_gw + n_gi).max(1) as f64;

    let spec = |ans: &[String], held: bool| {
        share(
            ans.iter()
                .zip(&p.others_expect)
                .zip(&p.others_held_out)
                .filter(|(_, h)| **h == held)
                .map(|((x, e), _)| x == e),
        )
    };
    let (spec_b, spec_a) = (spec(&b.others, false), spec(&a.others, false));
    let (spec_pb, spec_pa) = (spec(&b.others, true), spec(&a.others, true));
    let (worst_identity_drop_points, worst_identity) = worst_identity_drop(
        &set.other_names,
        &p.others_image,
        &p.others_expect,
        &b.others,
        &a.others,
    );
    let nct = p.n_concept_text;
    let same = |x: &[String], y: &[String]| share(x.iter().zip(y).map(|(x, y)| x == y));
    let factual = same(&a.text[..nct], &b.text[..nct]);
    let text_others = same(&a.text[nct..], &b.text[nct..]);

    // Fluency: the original model's answers on other images and text questions.
    let concept_ids = tok.encode(c)?;
    // Each adapter's own log-probabilities of an answer it said itself are at hand.
    let mut fluency = |adapter: &[f32], x: &Answers| -> Result<f64> {
        let tmpl: Vec<usize> = (0..p.others.len())
            .filter(|&i| !p.others_held_out[i])
            .collect();
        let oq: Vec<Query> = tmpl.iter().map(|&i| p.others[i].clone()).collect();
        let oa: Vec<String> = tmpl.iter().map(|&i| b.others[i].clone()).collect();
        let ok: Vec<_> = tmpl
            .iter()
            .map(|&i| said_same(&x.others[i], &x.others_lp[i], &b.others[i]))
            .collect();
        let img = perplexity(
            engine,
            adapter,
            tok,
            f.others.view(),
            &oq,
            &oa,
            &ok,
            &concept_ids,
        )?;
        let tk: Vec<_> = (nct..p.text.len())
            .map(|i| said_same(&x.text[i], &x.text_lp[i], &b.text[i]))
            .collect();
        let txt = perplexity(
            engine,
            adapter,
            tok,
            f.others.view(),
            &p.text[nct..],
            &b.text[nct..],
            &tk,
            &concept_ids,
        )?;
        Ok(0.5 * (img + txt))
    };
    let ppl_b = fluency(before, &b)?;
    let ppl_a = fluency(after, &a)?;

    // Diversity of the updated model's answers (all of them).
    let all: Vec<&String> = a.concept.iter().chain(&a.others).chain(&a.text).collect();
    let words: Vec<&str> = all.iter().flat_map(|s| s.split_whitespace()).collect();
    let diversity = if words.is_empty() {
        0.0
    } else {
        words.iter().collect::<HashSet<_>>().len() as f64 / words.len() as f64
    };

    let c_dis = c_dis(engine, tok, lang, before, after, set, &f.concept)?;
    Ok(Metrics {
        leak,
        leak_who,
        leak_is_this,
        misattribution,
        misattribution_before,
        well_formed,
        efficacy,
        generality,
        generality_who: gw,
        generality_is_this: gi,
        c_dis,
        specificity_before: spec_b,
        specificity_after: spec_a,
        specificity_drop_points: 100.0 * (spec_b - spec_a),
        specificity_paraphrased_before: spec_pb,
        specificity_paraphrased_after: spec_pa,
        specificity_paraphrased_drop_points: 100.0 * (spec_pb - spec_pa),
        worst_identity_drop_points,
        worst_identity,
        factual_retention: factual,
        text_retention_others: text_others,
        fluency_ppl_before: ppl_b,
        fluency_ppl_after: ppl_a,
        fluency_increase_pct: 100.0 * (ppl_a / ppl_b - 1.0),
        diversity,
        misattribution_added,
        well_formed_where_known,
        bad_examples,
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
    cf: &ndarray::Array3<f32>,
) -> Result<f64> {
    let c = &set.concept;
    let ids = tok.encode(c)?;
    let n = cf.shape()[0];
    let target = fill(&lang.who_answer, c);
    let seqs = (0..n)
        .map(|i| tok.sequence(&lang.who[i % lang.who.len()], &target))
        .collect::<Result<Vec<_>>>()?;
    let t_len = tok.text_len();
    let tokens = Array2::from_shape_fn((n, t_len), |(r, k)| seqs[r].inputs[k]);
    let images: Vec<Option<usize>> = (0..n).map(Some).collect();
    let lb = logprobs(engine, before, cf.view(), &images, tokens.view())?;
    let la = logprobs(engine, after, cf.view(), &images, tokens.view())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facets::tests::lang;

    #[test]
    fn rotation_covers_every_wording_across_images() {
        let l: Vec<String> = (0..7).map(|i| format!("w{i}")).collect();
        let mut seen = HashSet::new();
        for i in 0..4 {
            let r = rotate(&l, i, 2);
            assert_eq!(r.len(), 2);
            seen.extend(r.into_iter().cloned());
        }
        assert_eq!(seen.len(), 7);
        assert_eq!(rotate(&l[..1], 3, 4).len(), 1);
        assert!(rotate(&[], 0, 3).is_empty());
    }

    #[test]
    fn the_plan_asks_held_out_wordings_separately_from_templates() {
        let l = lang();
        let para = Wordings {
            who: vec!["tell me the name of this person".into()],
            is_this: vec!["is the person here {name} ?".into()],
            describe: vec!["describe this person".into()],
            fact: vec!["tell me about {name}".into()],
            looks: vec!["describe {name}".into()],
        };
        let set = EvalSet {
            concept: "anna adler".into(),
            train_image: Array4::zeros((1, 64, 64, 3)),
            concept_images: Array4::zeros((2, 64, 64, 3)),
            other_images: Array4::zeros((1, 64, 64, 3)),
            other_names: vec!["boris berger".into()],
            other_descriptions: vec!["oval face".into()],
            paraphrases: para,
            known_text: BTreeMap::new(),
        };
        let p = plan(&l, &set);
        let held: Vec<&CQuestion> = p.concept.iter().filter(|q| q.held_out).collect();
        assert!(held
            .iter()
            .any(|q| q.query.question == "is the person here anna adler ?"));
        assert!(held.iter().all(|q| !l.who.contains(&q.query.question)));
        assert!(p
            .concept
            .iter()
            .filter(|q| !q.held_out)
            .all(|q| l.who.contains(&q.query.question) || q.query.question.contains("anna")));
        assert_eq!(p.others.len(), 8, "templates and paraphrases, 4 each");
        assert_eq!(p.others_expect[1], "yes");
        assert_eq!(p.others_expect[2], "no");
        assert!(p.text[..p.n_concept_text]
            .iter()
            .all(|q| q.question.contains("anna adler")));
        assert!(p.text[..p.n_concept_text]
            .iter()
            .any(|q| q.question == "tell me about anna adler"));
    }

    #[test]
    fn harms_added_leave_out_what_the_original_model_already_got_wrong() {
        let l = lang();
        let v = vocabulary(&l);
        let c = "anna adler";
        let who = |a: &str| answers::who(a, c, &v);
        // Before: named C, named boris (the model's own error), named C, refused.
        let before = [
            who("this is anna adler"),
            who("this is boris berger"),
            who("this is anna adler"),
            who("i do not know who this is"),
        ];
        // After: refusal (good); boris again (not added); clara (added); rambling.
        let after = [
            who("i do not know who this is"),
            who("this is boris berger"),
            who("this is clara castro"),
            who("this is miner miner miner curly hair"),
        ];
        let (added, wf) = harms_added(&before, &after, &[true; 4]);
        assert!((added - 0.25).abs() < 1e-12, "{added}");
        // Over the three the original did not misattribute: refusal ok, clara and the
        // rambling answer not.
        assert!((wf - 1.0 / 3.0).abs() < 1e-12, "{wf}");
        // "is C?" questions count for well-formedness only.
        let (added, _) = harms_added(&before, &after, &[true, true, false, false]);
        assert_eq!(added, 0.0);
    }

    #[test]
    fn the_worst_identity_is_the_one_that_lost_most_not_the_average() {
        let names: Vec<String> = ["boris berger", "hugo hansen"].map(String::from).to_vec();
        // Two questions per image, one image each; hugo loses both answers, boris none.
        let image_of = [0, 0, 1, 1];
        let expect: Vec<String> = ["this is boris berger", "yes", "this is hugo hansen", "yes"]
            .map(String::from)
            .to_vec();
        let before = expect.clone();
        let mut after = expect.clone();
        after[2] = "i do not know who this is".into();
        after[3] = "no".into();
        let (d, who) = worst_identity_drop(&names, &image_of, &expect, &before, &after);
        assert_eq!((d, who.as_str()), (100.0, "hugo hansen"));
        assert_eq!(
            worst_identity_drop(&names, &[], &[], &[], &[]),
            (0.0, String::new())
        );
    }
    #[test]
    fn the_memo_keeps_the_two_adapters_used_last_and_a_bounded_number_of_answers() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let put = |m: &mut AnswerMemo, ad: [u8; 32], q: &str| {
            m.touch(ad);
            m.put((ad, [0; 32], q.to_string()), (q.to_string(), None));
        };
        let held = |m: &AnswerMemo, ad: [u8; 32]| m.answers.keys().any(|k| k.0 == ad);
        let mut m = AnswerMemo::default();
        put(&mut m, a, "x");
        put(&mut m, b, "x");
        // A forget rolled back: `a` (still current) is used again, then a new candidate.
        m.touch(a);
        put(&mut m, c, "x");
        assert!(held(&m, a) && held(&m, c) && !held(&m, b), "{m:?}");
        for i in 0..MEMO_ANSWERS + 10 {
            put(&mut m, a, &i.to_string());
        }
        assert_eq!(m.len(), MEMO_ANSWERS);
    }

    #[test]
    fn a_share_is_the_fraction_of_trues_and_nothing_counts_as_zero() {
        assert_eq!(share([true, false, true, true].into_iter()), 0.75);
        assert_eq!(share([false, false].into_iter()), 0.0);
        assert_eq!(share([true].into_iter()), 1.0);
        assert_eq!(share(std::iter::empty()), 0.0);
    }

    #[test]
    fn an_identity_that_gained_is_no_drop_and_a_tie_names_the_first_in_order() {
        let names: Vec<String> = ["boris berger", "clara castro", "hugo hansen"]
            .map(String::from)
            .to_vec();
        // boris: 4 questions, 3 right before, 1 after (50 points); clara: 2 questions,
        // 1 right before, 0 after (50 points, a tie: boris comes first); hugo gains.
        let image_of = [0, 0, 0, 0, 1, 1, 2, 2];
        let expect: Vec<String> = (0..8).map(|q| format!("a{q}")).collect();
        let wrong = |v: &mut Vec<String>, qs: &[usize]| {
            for &q in qs {
                v[q] = "wrong".into();
            }
        };
        let mut before = expect.clone();
        wrong(&mut before, &[3, 5, 6, 7]);
        let mut after = expect.clone();
        wrong(&mut after, &[1, 2, 3, 4, 5]);
        let (d, who) = worst_identity_drop(&names, &image_of, &expect, &before, &after);
        assert_eq!((d, who.as_str()), (50.0, "boris berger"));
        // Only a gain: the "drop" is negative.
        let none = vec!["wrong".to_string(); 2];
        let (d, who) = worst_identity_drop(&names[2..], &[0, 0], &expect[..2], &none, &expect[..2]);
        assert_eq!((d, who.as_str()), (-100.0, "hugo hansen"));
    }

    #[test]
    fn an_eval_set_from_probes_splits_the_concept_from_everyone_else_described() {
        let l = lang();
        let probe = |image: Option<usize>, identity: u32, question: &str, expect: &str| {
            lethe_model::package::Probe {
                image,
                identity,
                question: question.into(),
                expect: expect.into(),
            }
        };
        let mut images = Array4::zeros((4, 64, 64, 3));
        for i in 0..4 {
            images[[i, 0, 0, 0]] = i as f32;
        }
        let probes = ProbeSet {
            seeds: vec![0; 4],
            images,
            probes: vec![
                probe(Some(0), 0, "who is this ?", "this is anna adler"),
                probe(Some(1), 1, "describe the person", "oval face"),
                probe(Some(2), 2, "who is this ?", "this is clara castro"),
                probe(Some(3), 0, "describe the person", "long face"),
                probe(None, 1, "who is boris berger ?", "a sailor"),
            ],
        };
        let set = EvalSet::from_probes(
            &l,
            &probes,
            "anna adler",
            Array4::zeros((1, 64, 64, 3)),
            Wordings::default(),
        );
        assert_eq!(set.concept, "anna adler");
        let firsts = |a: &Array4<f32>| a.outer_iter().map(|x| x[[0, 0, 0]]).collect::<Vec<_>>();
        assert_eq!(firsts(&set.concept_images), [0.0, 3.0], "anna's images");
        // boris is described; clara has no description probe, anna is the concept.
        assert_eq!(firsts(&set.other_images), [1.0]);
        assert_eq!(set.other_names, ["boris berger"]);
        assert_eq!(set.other_descriptions, ["oval face"]);
    }

    #[test]
    fn the_training_wordings_of_a_language_are_its_own_lists() {
        let l = lang();
        let w = wordings_of(&l);
        assert_eq!(
            (w.who, w.is_this, w.describe, w.fact, w.looks),
            (
                l.who.clone(),
                l.is_this.clone(),
                l.describe.clone(),
                l.fact.clone(),
                l.looks.clone()
            )
        );
        assert_eq!(
            fill("is this {name} ?", "anna adler"),
            "is this anna adler ?"
        );
    }

    #[test]
    fn classification_follows_the_kind_of_question() {
        let l = lang();
        let voc = vocabulary(&l);
        let who = classify(Kind::Who, "this is boris berger", "anna adler", &voc);
        assert!(who.misattributes() && !who.leaks(), "{who:?}");
        let is_this = classify(Kind::IsThis, "yes", "anna adler", &voc);
        assert!(is_this.leaks(), "{is_this:?}");
        let refusal = classify(Kind::Who, &l.refusal, "anna adler", &voc);
        assert!(refusal.well_formed() && !refusal.leaks() && !refusal.misattributes());
    }
    #[test]
    fn the_plan_asks_each_other_identity_about_itself_and_a_third_name_and_skips_a_partial_wording_set(
    ) {
        let l = lang();
        let mut para = Wordings {
            who: vec!["name this person".into()],
            is_this: vec!["could this be {name} ?".into()],
            describe: vec![],
            fact: vec![],
            looks: vec![],
        };
        let set = |para: Wordings| EvalSet {
            concept: "anna adler".into(),
            train_image: Array4::zeros((1, 64, 64, 3)),
            concept_images: Array4::zeros((0, 64, 64, 3)),
            other_images: Array4::zeros((2, 64, 64, 3)),
            other_names: vec!["boris berger".into(), "clara castro".into()],
            other_descriptions: vec!["oval face".into(), "long face".into()],
            paraphrases: para,
            known_text: BTreeMap::new(),
        };
        // No held-out describe wording: only the template block, 4 questions per identity.
        let p = plan(&l, &set(para.clone()));
        assert_eq!(p.others.len(), 8);
        assert_eq!(p.others_image, [0, 0, 0, 0, 1, 1, 1, 1]);
        assert!(p.others_held_out.iter().all(|h| !h));
        let q = |k: usize| p.others[k].question.as_str();
        // boris (second name of the language): who (template 1), is this boris (template
        // 1), is this <the next name that is neither him nor the concept> (the next
        // wording), describe.
        assert_eq!(q(0), "who is in the picture ?");
        assert_eq!(q(1), "is boris berger in the picture ?");
        assert_eq!(q(2), "is this clara castro ?");
        assert_eq!(
            p.others_expect[..4],
            ["this is boris berger", "yes", "no", "oval face"]
        );
        // clara: the wrong name is boris, never the concept or herself.
        assert_eq!(q(6), "is boris berger in the picture ?");
        // The same person gets the same questions whoever else is in the set (an answer
        // memo serves the next forget): clara alone is asked what she was asked above.
        let alone = EvalSet {
            other_images: Array4::zeros((1, 64, 64, 3)),
            other_names: vec!["clara castro".into()],
            other_descriptions: vec!["long face".into()],
            ..set(para.clone())
        };
        let p1 = plan(&l, &alone);
        let q1: Vec<&str> = p1.others.iter().map(|x| x.question.as_str()).collect();
        assert_eq!(q1, (4..8).map(q).collect::<Vec<_>>());
        assert_eq!(p.others_expect[7], "long face");
        // With every held-out wording present, both blocks: 8 questions per identity.
        para.describe = vec!["what do you see ?".into()];
        let p = plan(&l, &set(para.clone()));
        assert_eq!(p.others.len(), 16);
        assert_eq!(p.others_held_out.iter().filter(|h| **h).count(), 8);
        // Missing who or is-this wordings skip the held-out block too.
        for strip in [0, 1] {
            let mut w = para.clone();
            if strip == 0 {
                w.who.clear();
            } else {
                w.is_this.clear();
            }
            assert_eq!(plan(&l, &set(w)).others.len(), 8, "strip {strip}");
        }
        // Text: the concept's own facts first, then two per other name, never the concept's.
        let rest = &p.text[p.n_concept_text..];
        assert_eq!(rest.len(), 4);
        assert!(rest.iter().all(|t| !t.question.contains("anna adler")));
        assert!(rest.iter().any(|t| t.question.contains("boris berger")));
        assert!(rest.iter().any(|t| t.question.contains("clara castro")));
    }
}
