//! Single Image Unlearning (SIU, Li et al., NeurIPS 2024) on a Lethe model package: make the
//! model stop recognising a concept from ONE image of it and its name, in a few optimizer
//! steps, while it keeps the concept's text facts, every other concept, and fluent language.
//!
//! Key decision: the whole update is data + masks fed to the package's train-step graph (see
//! docs/design.md decision 1). SIU and its baselines (GA, GA+KL, PO) differ only in the samples,
//! the signed per-token CE weights, the token mask K_S and the vocabulary mask K_V, so one
//! graph serves all four and the comparison is fair by construction.
//!
//! Flow: [`facets`] decides what to train on (from the original model's own answers),
//! [`masks`] aligns it to token positions, [`augment`] makes views of the one image,
//! [`unlearn`] runs the steps with a stopping rule, [`metrics`] measures the result with
//! whatever engine the caller passes (the CLI and agent pass tract: an independent engine).
//! This crate knows nothing of MQTT, signatures or files other than the package.

pub mod answers;
pub mod augment;
pub mod facets;
pub mod masks;
pub mod metrics;
pub mod unlearn;

pub use unlearn::{forget, CheckFindings, Options, Outcome, Progress, Report, SiuError};

use serde::Serialize;

/// The unlearning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// SIU as Lethe runs it: the concept gets the answers the model gives a stranger (a
    /// refusal, "no"), Dual Masked KL + CE, and the retain set keeps everyone still known.
    Siu,
    /// SIU as the paper (and Lethe's first product) ran it: a fictitious name, a contrasting
    /// description, four facets. Kept for benchmarks.
    SiuPaper,
    /// Gradient ascent on the concept's name.
    Ga,
    /// Gradient ascent plus plain KL to the original model on retain data.
    GaKl,
    /// Preference optimisation as fine-tuning on refusals.
    Po,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Siu,
        Method::SiuPaper,
        Method::Ga,
        Method::GaKl,
        Method::Po,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Siu => "siu",
            Method::SiuPaper => "siu-paper",
            Method::Ga => "ga",
            Method::GaKl => "ga-kl",
            Method::Po => "po",
        }
    }

    /// Loss weights (w_ce, w_kl) of the shared loss form.
    pub fn loss_weights(self) -> (f32, f32) {
        match self {
            Method::Siu | Method::SiuPaper => (0.9, 0.75),
            Method::Ga | Method::Po => (1.0, 0.0),
            Method::GaKl => (1.0, 1.0),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown method {s:?}: expected siu, siu-paper, ga, ga-kl or po")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_from_their_names() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert!("gd"
            .parse::<Method>()
            .unwrap_err()
            .contains("unknown method"));
    }

    #[test]
    fn siu_uses_the_papers_loss_weights() {
        assert_eq!(Method::Siu.loss_weights(), (0.9, 0.75));
    }
}
