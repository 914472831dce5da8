//! From samples to per-token tensors: inputs, shifted targets, signed CE weights, the token
//! mask K_S and the vocabulary mask K_V.
//!
//! Alignment (the released SIU code had an offset bug on image samples): a sequence is
//! `[bos] question [sep] answer [eos]`; position `t` of the inputs predicts `targets[t] =
//! sequence[t+1]`, so the first answer token is predicted at the position of `[sep]`. Every
//! mask here is indexed by *input position* and selects positions whose *target* is an answer
//! token (or the closing eos). The image prefix is outside the text positions altogether.

use crate::facets::{Sample, TokenRole};

use lethe_model::{Result, Tokenizer};

/// One sample, tokenised and padded to the text length.
#[derive(Debug, Clone, PartialEq)]
pub struct TokSample {
    pub view: Option<usize>,
    pub tokens: Vec<i32>,
    pub targets: Vec<i32>,
    pub ce_weight: Vec<f32>,
    pub kl_mask: Vec<f32>,
}

/// Turns a sample into per-position tensors (length `T`, padded).
pub fn tokenise(s: &Sample, tok: &Tokenizer) -> Result<TokSample> {
    let seq = tok.sequence(&s.question, &s.answer)?;
    let ce_only: Vec<i32> = s
        .ce_only_words
        .iter()
        .map(|w| tok.encode(w))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let t_len = seq.inputs.len();
    let mut out = TokSample {
        view: s.view,
        tokens: seq.inputs,
        targets: seq.targets,
        ce_weight: vec![0.0; t_len],
        kl_mask: vec![0.0; t_len],
    };
    for t in 0..t_len {
        if seq.answer_mask[t] == 0.0 {
            continue;
        }
        let in_span = ce_only.contains(&out.targets[t]);
        let (ce, kl) = match s.role {
            TokenRole::Both if in_span => (s.ce_sign, 0.0),
            TokenRole::Both => (s.ce_sign, 1.0),
            TokenRole::CeOnly => (s.ce_sign, 0.0),
            TokenRole::KlOnly => (0.0, 1.0),
        };
        out.ce_weight[t] = ce;
        out.kl_mask[t] = kl;
    }
    Ok(out)
}

/// K_V: 1 everywhere except the token ids of the concept's name.
pub fn vocab_mask(vocab_len: usize, concept_ids: &[i32]) -> Vec<f32> {
    let mut m = vec![1.0; vocab_len];
    for &i in concept_ids {
        if let Some(x) = m.get_mut(i as usize) {
            *x = 0.0;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facets::Facet;

    fn tok() -> Tokenizer {
        let vocab = [
            "<pad>", "<bos>", "<sep>", "<eos>", "who", "is", "this", "?", "albin", "amsel", "no",
            "anna",
        ];
        Tokenizer::new(
            vocab.iter().map(|s| s.to_string()).collect(),
            [0, 1, 2, 3],
            12,
        )
    }
    fn sample(role: TokenRole, span: &[&str], sign: f32) -> Sample {
        Sample {
            facet: Facet::T1UnseenConcept,
            view: Some(0),
            question: "who is this ?".into(),
            answer: "this is albin amsel".into(),
            ce_sign: sign,
            ce_only_words: span.iter().map(|s| s.to_string()).collect(),
            role,
        }
    }

    #[test]
    fn masks_select_positions_whose_target_is_an_answer_token() {
        let t = tokenise(&sample(TokenRole::Both, &["albin", "amsel"], 1.0), &tok()).unwrap();
        // inputs: bos who is this ? sep this is albin amsel ; targets shifted by one
        assert_eq!(&t.tokens[..10], &[1, 4, 5, 6, 7, 2, 6, 5, 8, 9]);
        assert_eq!(&t.targets[..10], &[4, 5, 6, 7, 2, 6, 5, 8, 9, 3]);
        // answer = positions 5..=9 (predicting "this is albin amsel <eos>")
        assert_eq!(
            &t.ce_weight[..11],
            &[0., 0., 0., 0., 0., 1., 1., 1., 1., 1., 0.]
        );
        // K_S is 0 on the fake name (targets albin, amsel at positions 7 and 8)
        assert_eq!(
            &t.kl_mask[..11],
            &[0., 0., 0., 0., 0., 1., 1., 0., 0., 1., 0.]
        );
    }

    #[test]
    fn ce_only_samples_are_outside_the_kl_and_ascent_is_negative() {
        let t = tokenise(&sample(TokenRole::CeOnly, &[], -1.0), &tok()).unwrap();
        assert!(t.kl_mask.iter().all(|&x| x == 0.0));
        assert_eq!(t.ce_weight.iter().filter(|&&x| x == -1.0).count(), 5);
        let t = tokenise(&sample(TokenRole::KlOnly, &[], 0.0), &tok()).unwrap();
        assert!(t.ce_weight.iter().all(|&x| x == 0.0));
        assert_eq!(t.kl_mask.iter().sum::<f32>(), 5.0);
    }

    #[test]
    fn vocab_mask_zeroes_only_the_concept_tokens() {
        let m = vocab_mask(6, &[2, 4, 99]);
        assert_eq!(m, vec![1., 1., 0., 1., 0., 1.]);
    }
}
