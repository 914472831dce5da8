//! `Adapter`: the only trainable part of the model, a flat f32 vector stored as f32
//! little-endian (manifest `adapter`). Owns its file format and hash. Invariant: an adapter
//! read from disk has exactly the length the manifest declares, or loading fails.

use crate::error::{ModelError, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The adapter vector (projector + LoRA weights, layout in the manifest).
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter(pub Vec<f32>);

impl Adapter {
    /// Reads an f32le adapter file of `expected_len` values.
    pub fn load(path: &Path, expected_len: usize) -> Result<Adapter> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(&bytes, expected_len).map_err(|e| match e {
            ModelError::Adapter(m) => ModelError::Adapter(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses f32le bytes of `expected_len` values.
    pub fn from_bytes(bytes: &[u8], expected_len: usize) -> Result<Adapter> {
        if bytes.len() != expected_len * 4 {
            return Err(ModelError::Adapter(format!(
                "{} bytes, expected {} ({} f32 values)",
                bytes.len(),
                expected_len * 4,
                expected_len
            )));
        }
        Ok(Adapter(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    /// The f32le bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Writes the adapter and fsyncs the file (the caller renames and syncs the folder).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::package::write_synced(path, &self.to_bytes())
    }

    /// SHA-256 of the f32le bytes, lower-case hex (equals the file's hash).
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_hash_matches_file_bytes() {
        let a = Adapter(vec![1.0, -2.5, 3.25]);
        let b = Adapter::from_bytes(&a.to_bytes(), 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.sha256_hex(), hex::encode(Sha256::digest(a.to_bytes())));
    }

    #[test]
    fn wrong_length_is_refused() {
        let err = Adapter::from_bytes(&[0u8; 8], 3).unwrap_err().to_string();
        assert!(err.contains("8 bytes") && err.contains("12"), "{err}");
    }
}
