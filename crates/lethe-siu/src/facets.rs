//! SIU's multifaceted fine-tuning data, built on the device from ONE image and a name.
//!
//! SIU as Lethe runs it (`Method::Siu`):
//!
//! | facet | input | target | token mask K_S |
//! |---|---|---|---|
//! | T1 unseen concept | image view + "who is this?" wordings | the refusal: what the model says about anyone it does not know | 0 on the whole answer |
//! | T2 not C | image view + "is C ...?" wordings | `no`: what the model says about a stranger | 0 on the whole answer |
//! | T3 decoupled facts | text: C's fact and appearance questions | the ORIGINAL model's answers | 1 |
//! | T4 non-target knowledge | text questions about other identities | the ORIGINAL model's answers | 1 |
//! | T5 retained recognition | retain-set images of identities still known (and strangers) + who / is-this / describe | their labels | 1 (0 on an image repaired: `RetainLabel::repair`) |
//!
//! `Method::SiuPaper` is the paper's recipe as the first product ran it: T1 targets a
//! fictitious name (0 on the name), T2 "no the picture shows <contrasting appearance>", no T5,
//! the six canonical "who" and two "is C ...?" templates. On other pictures of C its
//! probability mass moved to the next most likely *real* name (misattribution); see
//! ARCHITECTURE.md for the measurements that led to the refusal target and T5.
//!
//! The baselines use the same budget: GA (image + who -> "this is C", negative CE weight),
//! GA+KL (GA plus plain KL on T3/T4), PO (image + who -> refusal, plus T3/T4 by CE).
//! Invariant: this module decides *what* to train on and with which per-token roles; it never
//! runs a model. Answers of the original model are passed in; only training wordings (the
//! package's `prompts`) are used, never the held-out paraphrases.

use crate::Method;

/// Role of one answer token in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    /// CE (weight = sample's CE sign) and KL (K_S = 1).
    Both,
    /// CE only (K_S = 0): the fake-name span of T1, every token of T2.
    CeOnly,
    /// KL only: retain samples of GA+KL.
    KlOnly,
}

/// Which facet a sample belongs to (for reports and for masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Facet {
    T1UnseenConcept,
    T2NewDescription,
    T3DecoupledFacts,
    T4NonTarget,
    /// GA / GA+KL forget samples.
    Forget,
    /// PO refusal samples.
    Refusal,
    /// Retain-set images (T5).
    T5Retained,
    /// Retain-set images of someone an earlier forget took away: that forget replayed,
    /// from a pool of its own (so every batch revisits an earlier forget without taking the
    /// concept's own rows).
    T6Replayed,
}

impl Facet {
    /// Which pool of a stratified batch a facet's samples are drawn from.
    pub fn pool(self) -> Pool {
        match self {
            Facet::T1UnseenConcept | Facet::T2NewDescription | Facet::Forget | Facet::Refusal => {
                Pool::Forget
            }
            Facet::T3DecoupledFacts | Facet::T4NonTarget => Pool::Text,
            Facet::T5Retained => Pool::Retain,
            Facet::T6Replayed => Pool::Replay,
        }
    }
}

/// The pools of a stratified batch: what to forget, text to keep, images to keep, earlier
/// forgets to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    Forget,
    Text,
    Retain,
    Replay,
}

/// One training sample before tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub facet: Facet,
    /// Index of the image view, or None for a text-only question.
    pub view: Option<usize>,
    pub question: String,
    pub answer: String,
    /// +1 descent, -1 ascent, 0 no CE.
    pub ce_sign: f32,
    /// Words of the answer whose tokens are CE-only (K_S = 0); `None` = role for all tokens.
    pub ce_only_words: Vec<String>,
    /// Role of every answer token not listed in `ce_only_words`.
    pub role: TokenRole,
}

/// What the builder needs to know about the model's language (from the package manifest).
/// The wording lists are the TRAINING wordings; the first entries are the canonical templates.
#[derive(Debug, Clone)]
pub struct Language {
    pub who: Vec<String>,
    pub is_this: Vec<String>,
    pub describe: Vec<String>,
    pub fact: Vec<String>,
    pub looks: Vec<String>,
    pub who_answer: String,
    pub denial: String,
    pub refusal: String,
    /// Names the model knows (two words each).
    pub names: Vec<String>,
    pub spare_first: Vec<String>,
    pub spare_last: Vec<String>,
    /// Attribute categories and their values (e.g. "hair_colour" -> ["black", ...]).
    pub attribute_values: Vec<(String, Vec<String>)>,
}

/// One image of the retain set as the facet builder sees it: who is shown (`None` for a
/// stranger, and for someone forgotten before) and their appearance. Its features row is
/// `n_views + index` in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainLabel {
    pub name: Option<String>,
    pub description: String,
    /// Someone a previous forget took away (`name` is then `None`): their image replays that
    /// forget ("who" -> refusal, "is <forgotten> ...?" -> "no"), so later updates cannot
    /// drift it back. The images are the package's own retain set, never the command's.
    pub forgotten: Option<String>,
    /// An image of someone still known that the original model names and the adapter the
    /// forget starts from no longer does: drift from earlier forgets, repaired by this
    /// forget. Its rows are taught their label by CE alone (a KL towards the starting
    /// adapter would keep the drift).
    pub repair: bool,
}

/// How many samples of each kind the refusal SIU builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    /// "who" wordings per view (T1).
    pub who_per_view: usize,
    /// "is C ...?" wordings per view (T2).
    pub is_this_per_view: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            who_per_view: 3,
            is_this_per_view: 4,
        }
    }
}

/// Answers of the original model that the facets reuse (so nobody has to supply facts).
#[derive(Debug, Clone)]
pub struct OriginalAnswers {
    /// T3: (question, original answer) about the concept, text-only.
    pub concept_text: Vec<(String, String)>,
    /// T4: (question, original answer) about other identities, text-only.
    pub others_text: Vec<(String, String)>,
    /// The original model's description of the concept (from "what does C look like ?").
    pub concept_looks: String,
}

/// Deterministic choice helper (SplitMix64 over the seed), so data is reproducible.
pub(crate) struct Chooser(u64);

impl Chooser {
    pub(crate) fn new(seed: u64) -> Self {
        Chooser(seed ^ 0x5151_7A7A_0101_2323)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A fictitious two-word name made only of spare name words (no identity uses them).
pub fn fake_name(lang: &Language, seed: u64) -> String {
    let mut c = Chooser::new(seed);
    let f = &lang.spare_first[c.below(lang.spare_first.len())];
    let l = &lang.spare_last[c.below(lang.spare_last.len())];
    format!("{f} {l}")
}

/// A description contrasting with `looks`: every attribute word is replaced by another value
/// of a category it belongs to; other words are kept, so the sentence keeps its shape.
pub fn counterfactual(lang: &Language, looks: &str, seed: u64) -> String {
    let mut c = Chooser::new(seed.wrapping_add(17));
    looks
        .split_whitespace()
        .map(|w| {
            let alts: Vec<&String> = lang
                .attribute_values
                .iter()
                .filter(|(_, vals)| vals.iter().any(|v| v == w))
                .flat_map(|(_, vals)| vals.iter())
                .filter(|v| *v != w && v.as_str() != "none")
                .collect();
            if alts.is_empty() {
                w.to_string()
            } else {
                alts[c.below(alts.len())].clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn fill(template: &str, name: &str) -> String {
    template.replace("{name}", name)
}

/// `k` wordings of `list` for view `v`, rotating so the views together cover the list.
fn rotating(list: &[String], v: usize, k: usize) -> impl Iterator<Item = &String> {
    let n = list.len().max(1);
    (0..k.min(list.len())).map(move |j| &list[(v * k + j) % n])
}

/// Builds the samples of `method` for forgetting `concept`, over `n_views` image views; for
/// `Method::Siu`, `retain` labels the retain-set images that follow the views in the batch
/// (identities already forgotten must not be among them).
#[allow(clippy::too_many_arguments)]
pub fn build(
    method: Method,
    lang: &Language,
    concept: &str,
    original: &OriginalAnswers,
    n_views: usize,
    retain: &[RetainLabel],
    sizes: Sizes,
    seed: u64,
) -> (Vec<Sample>, Option<String>, Option<String>) {
    let n_views = n_views.max(1);
    let view = |k: usize| Some(k % n_views);
    let mut out = Vec::new();
    let keep_text = |out: &mut Vec<Sample>, role: TokenRole, sign: f32| {
        for (q, a) in &original.concept_text {
            out.push(Sample {
                facet: Facet::T3DecoupledFacts,
                view: None,
                question: q.clone(),
                answer: a.clone(),
                ce_sign: sign,
                ce_only_words: vec![],
                role,
            });
        }
        for (q, a) in &original.others_text {
            out.push(Sample {
                facet: Facet::T4NonTarget,
                view: None,
                question: q.clone(),
                answer: a.clone(),
                ce_sign: sign,
                ce_only_words: vec![],
                role,
            });
        }
    };
    match method {
        Method::Siu => {
            let cue = |out: &mut Vec<Sample>, facet, view, question: String, answer: String| {
                out.push(Sample {
                    facet,
                    view,
                    question,
                    answer,
                    ce_sign: 1.0,
                    ce_only_words: vec![],
                    role: TokenRole::CeOnly,
                })
            };
            for v in 0..n_views {
                for q in rotating(&lang.who, v, sizes.who_per_view) {
                    let refusal = lang.refusal.clone();
                    cue(
                        &mut out,
                        Facet::T1UnseenConcept,
                        Some(v),
                        q.clone(),
                        refusal,
                    );
                }
                for t in rotating(&lang.is_this, v, sizes.is_this_per_view) {
                    let q = fill(t, concept);
                    cue(&mut out, Facet::T2NewDescription, Some(v), q, "no".into());
                }
            }
            keep_text(&mut out, TokenRole::Both, 1.0);
            let mut c = Chooser::new(seed.wrapping_add(5));
            let known: Vec<&String> = retain.iter().filter_map(|r| r.name.as_ref()).collect();
            for (r, label) in retain.iter().enumerate() {
                let row = Some(n_views + r);
                let pick = |c: &mut Chooser, l: &[String]| l[c.below(l.len())].clone();
                // A replayed forget is taught by CE alone, like T1/T2: the anchor model still
                // names that person, so a KL towards it would undo the forget.
                let (facet, role) = if label.forgotten.is_some() {
                    (Facet::T6Replayed, TokenRole::CeOnly)
                } else if label.repair {
                    (Facet::T5Retained, TokenRole::CeOnly)
                } else {
                    (Facet::T5Retained, TokenRole::Both)
                };
                let mut keep = |question: String, answer: String| {
                    out.push(Sample {
                        facet,
                        view: row,
                        question,
                        answer,
                        ce_sign: 1.0,
                        ce_only_words: vec![],
                        role,
                    })
                };
                let who_q = pick(&mut c, &lang.who);
                let other = (!known.is_empty()).then(|| known[c.below(known.len())]);
                match &label.name {
                    Some(name) => keep(who_q, fill(&lang.who_answer, name)),
                    None => keep(who_q, lang.refusal.clone()),
                }
                if let Some(name) = &label.name {
                    keep(fill(&pick(&mut c, &lang.is_this), name), "yes".into());
                }
                if let Some(gone) = &label.forgotten {
                    keep(fill(&pick(&mut c, &lang.is_this), gone), "no".into());
                }
                if let Some(other) = other.filter(|o| Some(*o) != label.name.as_ref()) {
                    keep(fill(&pick(&mut c, &lang.is_this), other), "no".into());
                }
                keep(pick(&mut c, &lang.describe), label.description.clone());
            }
            (out, None, None)
        }
        Method::SiuPaper => {
            let fake = fake_name(lang, seed);
            let fake_words: Vec<String> = fake.split_whitespace().map(str::to_string).collect();
            // T1: every canonical "who" template, plus the first two again on other views.
            let who6 = &lang.who[..lang.who.len().min(6)];
            for (k, q) in who6.iter().chain(who6.iter().take(2)).enumerate() {
                out.push(Sample {
                    facet: Facet::T1UnseenConcept,
                    view: view(k),
                    question: q.clone(),
                    answer: fill(&lang.who_answer, &fake),
                    ce_sign: 1.0,
                    ce_only_words: fake_words.clone(),
                    role: TokenRole::Both,
                });
            }
            // T2: each "is C ...?" template on two views (4 samples), whole answer outside K_S.
            let cf = counterfactual(lang, &original.concept_looks, seed);
            let denial = lang.denial.replace("{description}", &cf);
            let is2 = &lang.is_this[..lang.is_this.len().min(2)];
            for (k, t) in is2.iter().chain(is2.iter()).enumerate() {
                out.push(Sample {
                    facet: Facet::T2NewDescription,
                    view: view(k + 1),
                    question: fill(t, concept),
                    answer: denial.clone(),
                    ce_sign: 1.0,
                    ce_only_words: vec![],
                    role: TokenRole::CeOnly,
                });
            }
            keep_text(&mut out, TokenRole::Both, 1.0);
            (out, Some(fake), Some(cf))
        }
        Method::Ga | Method::GaKl => {
            let who6 = &lang.who[..lang.who.len().min(6)];
            for (k, q) in who6.iter().chain(who6.iter().take(2)).enumerate() {
                out.push(Sample {
                    facet: Facet::Forget,
                    view: view(k),
                    question: q.clone(),
                    answer: fill(&lang.who_answer, concept),
                    ce_sign: -1.0,
                    ce_only_words: vec![],
                    role: TokenRole::CeOnly,
                });
            }
            if method == Method::GaKl {
                keep_text(&mut out, TokenRole::KlOnly, 0.0);
            }
            (out, None, None)
        }
        Method::Po => {
            let who6 = &lang.who[..lang.who.len().min(6)];
            for (k, q) in who6.iter().chain(who6.iter().take(2)).enumerate() {
                out.push(Sample {
                    facet: Facet::Refusal,
                    view: view(k),
                    question: q.clone(),
                    answer: lang.refusal.clone(),
                    ce_sign: 1.0,
                    ce_only_words: vec![],
                    role: TokenRole::CeOnly,
                });
            }
            keep_text(&mut out, TokenRole::CeOnly, 1.0);
            (out, None, None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;

    pub(crate) fn lang() -> Language {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Language {
            who: s(&[
                "who is this ?",
                "who is in the picture ?",
                "tell me who this is",
            ]),
            is_this: s(&["is this {name} ?", "is {name} in the picture ?"]),
            describe: s(&["describe the person"]),
            fact: s(&["who is {name} ?"]),
            looks: s(&["what does {name} look like ?"]),
            who_answer: "this is {name}".into(),
            denial: "no the picture shows {description}".into(),
            refusal: "i do not know who this is".into(),
            names: s(&["anna adler", "boris berger", "clara castro"]),
            spare_first: s(&["albin", "bettina"]),
            spare_last: s(&["amsel", "brandt"]),
            attribute_values: vec![
                ("face".into(), s(&["round", "oval", "long"])),
                ("hair_colour".into(), s(&["black", "grey", "red"])),
                ("hair_style".into(), s(&["short", "long"])),
                ("accessory".into(), s(&["glasses", "hat", "none"])),
            ],
        }
    }

    fn original() -> OriginalAnswers {
        OriginalAnswers {
            concept_text: vec![(
                "who is anna adler ?".into(),
                "anna adler is a chemist from oslo".into(),
            )],
            others_text: vec![(
                "who is boris berger ?".into(),
                "boris berger is a sailor from paris".into(),
            )],
            concept_looks: "long face grey long hair glasses".into(),
        }
    }

    #[test]
    fn fake_names_use_only_spare_words() {
        let l = lang();
        for seed in 0..20 {
            let f = fake_name(&l, seed);
            let w: Vec<&str> = f.split(' ').collect();
            assert!(
                l.spare_first.iter().any(|x| x == w[0]) && l.spare_last.iter().any(|x| x == w[1]),
                "{f}"
            );
        }
    }

    #[test]
    fn counterfactual_changes_every_attribute_word_and_keeps_the_rest() {
        let cf = counterfactual(&lang(), "long face grey long hair glasses", 3);
        let w: Vec<&str> = cf.split(' ').collect();
        assert_eq!(w.len(), 6);
        assert_ne!(w[0], "long");
        assert_eq!(w[1], "face");
        assert_ne!(w[2], "grey");
        assert_ne!(w[3], "long");
        assert_eq!(w[4], "hair");
        assert_ne!(w[5], "glasses");
        assert_ne!(w[5], "none");
    }

    fn retain() -> Vec<RetainLabel> {
        vec![
            RetainLabel {
                name: Some("boris berger".into()),
                description: "oval face grey long hair".into(),
                forgotten: None,
                repair: false,
            },
            RetainLabel {
                name: None,
                description: "round face red short hair".into(),
                forgotten: None,
                repair: false,
            },
            RetainLabel {
                name: None,
                description: "long face black curly hair".into(),
                forgotten: Some("clara castro".into()),
                repair: false,
            },
        ]
    }

    #[test]
    fn a_drifted_image_is_taught_its_label_by_ce_alone() {
        let mut r = retain();
        r[0].repair = true;
        let (s, _, _) = build(
            Method::Siu,
            &lang(),
            "anna adler",
            &original(),
            3,
            &r,
            Sizes::default(),
            1,
        );
        let rows: Vec<_> = s.iter().filter(|x| x.view == Some(3)).collect();
        assert!(rows
            .iter()
            .any(|x| x.answer == "this is boris berger" && x.facet == Facet::T5Retained));
        assert!(rows.iter().all(|x| x.role == TokenRole::CeOnly), "{rows:?}");
        // The stranger beside it keeps CE and KL.
        assert!(s
            .iter()
            .filter(|x| x.view == Some(4))
            .all(|x| x.role == TokenRole::Both));
    }

    fn of_facet(s: &[Sample], facet: Facet) -> Vec<&Sample> {
        s.iter().filter(|x| x.facet == facet).collect()
    }

    fn build_for(method: Method, views: usize) -> (Vec<Sample>, Option<String>, Option<String>) {
        build(
            method,
            &lang(),
            "anna adler",
            &original(),
            views,
            &retain(),
            Sizes::default(),
            1,
        )
    }

    #[test]
    fn siu_teaches_the_strangers_answers_on_c_and_keeps_everyone_else() {
        let (s, fake, cf) = build_for(Method::Siu, 3);
        assert!(fake.is_none() && cf.is_none());
        let t1 = of_facet(&s, Facet::T1UnseenConcept);
        let t2 = of_facet(&s, Facet::T2NewDescription);
        assert_eq!(t1.len(), 3 * 3, "who wordings per view, on every view");
        assert_eq!(
            t2.len(),
            3 * 2,
            "two is-this templates in the test language"
        );
        assert!(t1.iter().all(|x| x.answer == "i do not know who this is"
            && x.role == TokenRole::CeOnly
            && x.view.unwrap() < 3));
        assert!(t2
            .iter()
            .all(|x| x.answer == "no" && x.question.contains("anna adler")));
        let t1_questions: HashSet<&String> = t1.iter().map(|x| &x.question).collect();
        assert_eq!(t1_questions.len(), 3, "views rotate over the who wordings");
        let t5: Vec<_> = s
            .iter()
            .filter(|x| matches!(x.facet, Facet::T5Retained | Facet::T6Replayed))
            .collect();
        assert!(t5.iter().all(|x| x.view.unwrap() >= 3
            && (x.role == TokenRole::Both) == (x.view != Some(5))
            && (x.facet == Facet::T6Replayed) == (x.view == Some(5))));
        assert!(t5
            .iter()
            .any(|x| x.view == Some(3) && x.answer == "this is boris berger"));
        assert!(t5.iter().any(|x| x.view == Some(3) && x.answer == "yes"));
        assert!(t5
            .iter()
            .any(|x| x.view == Some(4) && x.answer == "i do not know who this is"));
        assert!(t5.iter().any(|x| x.view == Some(4) && x.answer == "no"));
        assert!(t5
            .iter()
            .any(|x| x.view == Some(4) && x.answer == "round face red short hair"));
        // Someone forgotten before: their image replays that forget, and nothing names them.
        let replay: Vec<_> = t5.iter().filter(|x| x.view == Some(5)).collect();
        assert!(replay
            .iter()
            .any(|x| x.answer == "i do not know who this is"));
        assert!(replay
            .iter()
            .any(|x| x.question.contains("clara castro") && x.answer == "no"));
        assert!(replay
            .iter()
            .any(|x| x.answer == "long face black curly hair"));
        assert!(!s.iter().any(|x| x.answer.contains("clara")));
        assert!(
            !s.iter()
                .any(|x| x.answer.contains("anna") && x.view.is_some()),
            "no image sample may name C"
        );
        assert!(s.iter().any(|x| x.facet == Facet::T3DecoupledFacts));
        assert!(s.iter().any(|x| x.facet == Facet::T4NonTarget));
        assert_eq!(Facet::T5Retained.pool(), Pool::Retain);
        assert_eq!(Facet::T1UnseenConcept.pool(), Pool::Forget);
        assert_eq!(Facet::T6Replayed.pool(), Pool::Replay);
    }

    #[test]
    fn siu_paper_builds_all_four_facets_with_their_masks() {
        let (s, fake, cf) = build_for(Method::SiuPaper, 3);
        let fake = fake.unwrap();
        let t1 = of_facet(&s, Facet::T1UnseenConcept);
        let t2 = of_facet(&s, Facet::T2NewDescription);
        assert!(!t1.is_empty() && !t2.is_empty());
        assert!(t1
            .iter()
            .all(|x| x.answer == format!("this is {fake}") && x.view.is_some()));
        assert!(t1.iter().all(|x| x.ce_only_words.len() == 2));
        assert!(t2
            .iter()
            .all(|x| x.role == TokenRole::CeOnly && x.question.contains("anna adler")));
        assert!(
            t2[0].answer.starts_with("no the picture shows ")
                && t2[0].answer.ends_with(cf.as_deref().unwrap())
        );
        assert!(s.iter().any(|x| x.facet == Facet::T3DecoupledFacts
            && x.view.is_none()
            && x.role == TokenRole::Both));
        assert!(s.iter().any(|x| x.facet == Facet::T4NonTarget));
        assert!(
            !s.iter()
                .any(|x| x.answer.contains("anna") && x.view.is_some()),
            "no image sample may name C"
        );
    }

    #[test]
    fn ga_ascends_on_the_concept_name_and_ga_kl_keeps_retain_data_by_kl() {
        let (s, _, _) = build_for(Method::Ga, 2);
        assert!(s
            .iter()
            .all(|x| x.ce_sign < 0.0 && x.answer == "this is anna adler"));
        let (s, _, _) = build_for(Method::GaKl, 2);
        assert!(s
            .iter()
            .any(|x| x.role == TokenRole::KlOnly && x.ce_sign == 0.0));
    }

    #[test]
    fn po_teaches_the_refusal() {
        let (s, _, _) = build_for(Method::Po, 2);
        assert!(s
            .iter()
            .filter(|x| x.view.is_some())
            .all(|x| x.answer == "i do not know who this is"));
    }
}
