//! `Tokenizer`: the package's closed word-level vocabulary (models/PACKAGE.md "Text").
//! Owns encoding text to ids, decoding ids to text, and laying out training sequences.
//! Invariants: every id it produces is a vocabulary index; an unknown word is an error that
//! names the word, never a silent `<unk>`; `sequence` follows PACKAGE.md exactly
//! (`[bos] q [sep] a [eos]` right-padded to `T`, position t predicts t+1, the answer mask
//! runs from the sep position through the position that predicts eos).

use crate::error::{ModelError, Result};
use crate::manifest::Manifest;
use std::collections::HashMap;

/// Word-level tokenizer over a closed vocabulary.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vec<String>,
    index: HashMap<String, i32>,
    pad: i32,
    bos: i32,
    sep: i32,
    eos: i32,
    text_len: usize,
}

/// One training/scoring sequence of length `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// `[bos] q [sep] a [eos] pad...` (length `T`).
    pub inputs: Vec<i32>,
    /// `inputs` shifted left by one, pad at the end (length `T`).
    pub targets: Vec<i32>,
    /// 1.0 at positions whose target is an answer token or eos, else 0.0 (length `T`).
    pub answer_mask: Vec<f32>,
    /// Index of the sep token (the first position with mask 1).
    pub sep_pos: usize,
    /// Number of real tokens (through eos).
    pub len: usize,
}

impl Tokenizer {
    /// Builds a tokenizer from a package manifest.
    pub fn from_manifest(m: &Manifest) -> Tokenizer {
        Tokenizer::new(
            m.vocab.clone(),
            [m.special.pad, m.special.bos, m.special.sep, m.special.eos],
            m.text_len,
        )
    }

    /// Builds a tokenizer from a vocabulary, `[pad, bos, sep, eos]` ids and `T`.
    pub fn new(vocab: Vec<String>, special: [i32; 4], text_len: usize) -> Tokenizer {
        let index = vocab
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as i32))
            .collect();
        let [pad, bos, sep, eos] = special;
        Tokenizer {
            vocab,
            index,
            pad,
            bos,
            sep,
            eos,
            text_len,
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Sequence length `T`.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Special ids.
    pub fn pad(&self) -> i32 {
        self.pad
    }
    pub fn bos(&self) -> i32 {
        self.bos
    }
    pub fn sep(&self) -> i32 {
        self.sep
    }
    pub fn eos(&self) -> i32 {
        self.eos
    }

    /// The id of one word, if it is in the vocabulary.
    pub fn id(&self, word: &str) -> Option<i32> {
        self.index.get(word).copied()
    }

    /// The word of one id.
    pub fn word(&self, id: i32) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.vocab.get(i))
            .map(String::as_str)
    }

    /// Splits text into words: lower case, whitespace-separated; a `?` is its own word even
    /// when written against the previous word (`"who is this?"`).
    pub fn words(text: &str) -> Vec<String> {
        text.to_lowercase()
            .replace('?', " ? ")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Encodes text to ids; an unknown word is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<i32>> {
        Self::words(text)
            .into_iter()
            .map(|w| {
                self.id(&w).ok_or_else(|| ModelError::UnknownWord {
                    word: w,
                    size: self.vocab.len(),
                })
            })
            .collect()
    }

    /// Decodes ids to text, stopping at the first eos; pad is skipped, other special
    /// tokens are written as their names, out-of-range ids as `<?>`.
    pub fn decode(&self, ids: &[i32]) -> String {
        ids.iter()
            .take_while(|&&t| t != self.eos)
            .filter(|&&t| t != self.pad)
            .map(|&t| self.word(t).unwrap_or("<?>"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The generation prompt `[bos] question [sep]` (unpadded).
    pub fn prompt(&self, question: &str) -> Result<Vec<i32>> {
        let q = self.encode(question)?;
        let mut out = Vec::with_capacity(q.len() + 2);
        out.push(self.bos);
        out.extend(q);
        out.push(self.sep);
        if out.len() >= self.text_len {
            return Err(ModelError::TextTooLong {
                tokens: out.len() + 1,
                max: self.text_len,
            });
        }
        Ok(out)
    }

    /// Lays out `[bos] question [sep] answer [eos]` as model inputs, targets and answer mask.
    pub fn sequence(&self, question: &str, answer: &str) -> Result<Sequence> {
        let mut full = self.prompt(question)?;
        let sep_pos = full.len() - 1;
        full.extend(self.encode(answer)?);
        full.push(self.eos);
        let len = full.len();
        if len > self.text_len {
            return Err(ModelError::TextTooLong {
                tokens: len,
                max: self.text_len,
            });
        }
        let t = self.text_len;
        let mut inputs = vec![self.pad; t];
        inputs[..len].copy_from_slice(&full);
        let mut targets = vec![self.pad; t];
        targets[..len - 1].copy_from_slice(&full[1..]);
        let mut answer_mask = vec![0.0; t];
        for m in &mut answer_mask[sep_pos..=len - 2] {
            *m = 1.0;
        }
        Ok(Sequence {
            inputs,
            targets,
            answer_mask,
            sep_pos,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let vocab = [
            "<pad>", "<bos>", "<sep>", "<eos>", "?", "who", "is", "this", "anna", "adler",
        ];
        Tokenizer::new(
            vocab.iter().map(|s| s.to_string()).collect(),
            [0, 1, 2, 3],
            10,
        )
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let t = tok();
        let ids = t.encode("Who is this ?").unwrap();
        assert_eq!(ids, vec![5, 6, 7, 4]);
        assert_eq!(t.decode(&ids), "who is this ?");
    }

    #[test]
    fn question_mark_against_a_word_is_split() {
        assert_eq!(tok().encode("who is this?").unwrap(), vec![5, 6, 7, 4]);
    }

    #[test]
    fn unknown_word_is_named_and_vocabulary_called_closed() {
        let err = tok().encode("who is zebra").unwrap_err().to_string();
        assert!(err.contains("\"zebra\"") && err.contains("closed"), "{err}");
    }

    #[test]
    fn decode_stops_at_eos() {
        assert_eq!(tok().decode(&[8, 9, 3, 5, 6]), "anna adler");
    }

    #[test]
    fn sequence_shifts_targets_and_masks_sep_through_eos_predictor() {
        let s = tok().sequence("who is this ?", "anna adler").unwrap();
        // [bos who is this ? sep anna adler eos pad]
        assert_eq!(s.inputs, vec![1, 5, 6, 7, 4, 2, 8, 9, 3, 0]);
        assert_eq!(s.targets, vec![5, 6, 7, 4, 2, 8, 9, 3, 0, 0]);
        assert_eq!(s.sep_pos, 5);
        assert_eq!(s.len, 9);
        assert_eq!(s.answer_mask, vec![0., 0., 0., 0., 0., 1., 1., 1., 0., 0.]);
        // The masked targets are exactly the answer and eos.
        let masked: Vec<i32> = (0..10)
            .filter(|&i| s.answer_mask[i] > 0.0)
            .map(|i| s.targets[i])
            .collect();
        assert_eq!(masked, vec![8, 9, 3]);
    }

    #[test]
    fn sequence_that_fills_t_exactly_fits_and_longer_is_refused() {
        let t = tok();
        let s = t.sequence("who is this ?", "anna adler anna").unwrap();
        assert_eq!(s.len, 10);
        assert_eq!(s.targets[9], 0);
        assert!(matches!(
            t.sequence("who is this ?", "anna adler anna adler"),
            Err(ModelError::TextTooLong {
                tokens: 11,
                max: 10
            })
        ));
    }
}
