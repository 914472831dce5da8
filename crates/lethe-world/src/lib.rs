//! A synthetic, procedurally generated world of people, for training and testing Lethe's
//! bundled model without any real faces or downloaded data.
//!
//! Key decision: every image is a pure function of `(identity, seed)` computed with our own
//! pinned random generator, so datasets, fixtures and evaluation splits are reproducible
//! bit for bit on any machine. The split is fixed by seed: seeds below
//! [`HELD_OUT_SEED_START`] are the only ones ever used for training; seeds from it upwards are
//! held out for evaluation.
//!
//! This crate knows nothing of models, tokens or networks.

mod identity;
mod render;
pub mod rng;

pub use identity::*;
pub use render::{render, render_stranger, IMAGE_SIZE};

/// Seeds `>= HELD_OUT_SEED_START` are never used for training.
pub const HELD_OUT_SEED_START: u64 = 1_000_000;

/// Which part of the fixed split a seed belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    HeldOut,
}

impl Split {
    pub fn of(seed: u64) -> Split {
        if seed < HELD_OUT_SEED_START {
            Split::Train
        } else {
            Split::HeldOut
        }
    }
}

/// Errors of world look-ups.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("unknown identity {0}: the world has identities 0..{1}")]
    UnknownIdentity(u32, usize),
}

/// Renders `(identity id, seed)`, checking the id.
pub fn render_id(id: u32, seed: u64) -> Result<image::RgbImage, WorldError> {
    let ident = identity(id).ok_or(WorldError::UnknownIdentity(id, identities().len()))?;
    Ok(render(ident, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_fixed_at_one_million() {
        assert_eq!(Split::of(999_999), Split::Train);
        assert_eq!(Split::of(1_000_000), Split::HeldOut);
    }

    #[test]
    fn unknown_identity_is_a_clear_error() {
        let e = render_id(99, 0).unwrap_err().to_string();
        assert!(e.contains("unknown identity 99"), "{e}");
    }
}
