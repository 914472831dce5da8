//! Ed25519 keys (via `ring`), their ids and their text file formats.
//!
//! Invariant: a `KeyId` is always derived from the public key (first 8 bytes of SHA-256 of the
//! raw 32-byte key), never chosen, so an id cannot point at someone else's key. Key names are
//! `Ident`s (1..=64 of `A-Za-z0-9._-`), which keeps them safe in file names, MQTT topics and the
//! colon-separated file formats:
//!
//! ```text
//! NAME.key  lethe-ed25519-private-v1:NAME:BASE64(PKCS#8 v2 document)
//! NAME.pub  lethe-ed25519-public-v1:NAME:BASE64(raw 32-byte public key)
//! ```

use crate::ident::Ident;
use crate::Rejection;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use core::fmt;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

const PRIVATE_TAG: &str = "lethe-ed25519-private-v1";
const PUBLIC_TAG: &str = "lethe-ed25519-public-v1";
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a key id in bytes (16 hex characters).
pub const KEY_ID_LEN: usize = 8;

/// Short id of a public key: first 8 bytes of SHA-256 of the raw key. Shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// Derives the id of a raw Ed25519 public key.
    pub fn of(public_key: &[u8; 32]) -> KeyId {
        let d = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// Parses 16 lowercase or uppercase hex digits.
    pub fn parse_hex(s: &str) -> Option<KeyId> {
        let b = s.as_bytes();
        if b.len() != 2 * KEY_ID_LEN {
            return None;
        }
        let mut id = [0u8; KEY_ID_LEN];
        for (i, out) in id.iter_mut().enumerate() {
            let hi = (b[2 * i] as char).to_digit(16)?;
            let lo = (b[2 * i + 1] as char).to_digit(16)?;
            *out = (hi * 16 + lo) as u8;
        }
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A named Ed25519 public key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicKey {
    name: Ident,
    raw: [u8; 32],
}

impl PublicKey {
    /// A public key from its name and raw bytes.
    pub fn new(name: &str, raw: [u8; 32]) -> Result<PublicKey, Rejection> {
        Ok(PublicKey {
            name: Ident::new("key name", name)?,
            raw,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    pub fn id(&self) -> KeyId {
        KeyId::of(&self.raw)
    }

    /// True when `sig` is a valid Ed25519 signature of `msg` by this key.
    pub fn verifies(&self, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
        verify_raw(&self.raw, msg, sig)
    }

    /// `lethe-ed25519-public-v1:NAME:BASE64` plus a newline.
    pub fn to_file_string(&self) -> String {
        format!("{PUBLIC_TAG}:{}:{}\n", self.name, B64.encode(self.raw))
    }

    /// Parses the `.pub` format (surrounding whitespace ignored).
    pub fn from_file_str(s: &str) -> Result<PublicKey, Rejection> {
        let (name, b64) = split_file(s, PUBLIC_TAG)?;
        let bytes = B64
            .decode(b64)
            .map_err(|_| Rejection::BadKeyFile("public key is not base64"))?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Rejection::BadKeyFile("public key is not 32 bytes"))?;
        PublicKey::new(name, raw).map_err(|_| Rejection::BadKeyFile("bad key name"))
    }
}

/// Verifies an Ed25519 signature with a raw public key.
pub(crate) fn verify_raw(public: &[u8; 32], msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

/// A named Ed25519 private key. Its `Debug` does not print the secret.
pub struct SigningKey {
    name: Ident,
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<SigningKey, Rejection> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Rejection::BadKeyFile("the system random source failed"))?;
        SigningKey::from_pkcs8(name, doc.as_ref())
    }

    /// A key from a PKCS#8 document (as `ring` writes them).
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<SigningKey, Rejection> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| Rejection::BadKeyFile("not an Ed25519 PKCS#8 document"))?;
        Ok(SigningKey {
            name: Ident::new("key name", name)?,
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            name: self.name.clone(),
            raw,
        }
    }

    pub fn id(&self) -> KeyId {
        self.public().id()
    }

    /// Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    /// `lethe-ed25519-private-v1:NAME:BASE64` plus a newline. Write it with mode 0600.
    pub fn to_file_string(&self) -> String {
        format!("{PRIVATE_TAG}:{}:{}\n", self.name, B64.encode(&self.pkcs8))
    }

    /// Parses the `.key` format (surrounding whitespace ignored).
    pub fn from_file_str(s: &str) -> Result<SigningKey, Rejection> {
        let (name, b64) = split_file(s, PRIVATE_TAG)?;
        let doc = B64
            .decode(b64)
            .map_err(|_| Rejection::BadKeyFile("private key is not base64"))?;
        SigningKey::from_pkcs8(name, &doc)
    }
}

fn split_file<'a>(s: &'a str, tag: &'static str) -> Result<(&'a str, &'a str), Rejection> {
    if s.len() > 4096 {
        return Err(Rejection::BadKeyFile("key file over 4 KiB"));
    }
    let mut parts = s.trim().splitn(3, ':');
    let (Some(t), Some(name), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Rejection::BadKeyFile("expected TAG:NAME:BASE64"));
    };
    if t != tag {
        return Err(Rejection::BadKeyFile(
            if t == PRIVATE_TAG || t == PUBLIC_TAG {
                "public and private key files swapped"
            } else {
                "unknown key file tag"
            },
        ));
    }
    Ok((name, b64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_keep_the_name() {
        let k = SigningKey::generate("alice").unwrap();
        let k2 = SigningKey::from_file_str(&k.to_file_string()).unwrap();
        assert_eq!(k2.name(), "alice");
        assert_eq!(k2.public(), k.public());
        let p = PublicKey::from_file_str(&k.public().to_file_string()).unwrap();
        assert_eq!(p, k.public());
    }

    #[test]
    fn key_id_is_derived_from_the_public_key_and_parses_back() {
        let k = SigningKey::generate("alice").unwrap();
        let id = k.id();
        assert_eq!(id, KeyId::of(k.public().raw()));
        assert_eq!(KeyId::parse_hex(&alloc::format!("{id}")), Some(id));
        assert_eq!(KeyId::parse_hex("zz"), None);
    }

    #[test]
    fn a_public_key_file_is_refused_as_a_private_key() {
        let k = SigningKey::generate("alice").unwrap();
        let e = SigningKey::from_file_str(&k.public().to_file_string()).unwrap_err();
        assert_eq!(e.code(), "bad-key-file");
    }

    #[test]
    fn signatures_verify_only_over_the_signed_bytes() {
        let k = SigningKey::generate("alice").unwrap();
        let sig = k.sign(b"abc");
        assert!(k.public().verifies(b"abc", &sig));
        assert!(!k.public().verifies(b"abd", &sig));
    }

    #[test]
    fn debug_output_names_the_key_but_does_not_contain_the_secret() {
        let k = SigningKey::generate("alice").unwrap();
        let dbg = alloc::format!("{k:?}");
        assert!(!dbg.contains(&B64.encode(&k.pkcs8)));
        let id = k.id();
        assert_eq!(
            dbg,
            alloc::format!("SigningKey {{ name: \"alice\", id: KeyId({id}), .. }}")
        );
        assert_eq!(alloc::format!("{id:?}"), alloc::format!("KeyId({id})"));
    }

    #[test]
    fn a_key_file_may_be_padded_to_4_kib_and_no_further() {
        let k = SigningKey::generate("alice").unwrap();
        let mut text = k.to_file_string();
        text.push_str(&" ".repeat(4096 - text.len()));
        assert_eq!(SigningKey::from_file_str(&text).unwrap().id(), k.id());
        text.push(' ');
        assert_eq!(
            SigningKey::from_file_str(&text).unwrap_err(),
            Rejection::BadKeyFile("key file over 4 KiB")
        );
    }

    #[test]
    fn a_key_file_of_the_other_kind_or_an_unknown_tag_is_named_as_such() {
        let k = SigningKey::generate("alice").unwrap();
        let swapped = Rejection::BadKeyFile("public and private key files swapped");
        assert_eq!(
            SigningKey::from_file_str(&k.public().to_file_string()).unwrap_err(),
            swapped
        );
        assert_eq!(
            PublicKey::from_file_str(&k.to_file_string()).unwrap_err(),
            swapped
        );
        assert_eq!(
            PublicKey::from_file_str("ssh-ed25519:alice:AAAA").unwrap_err(),
            Rejection::BadKeyFile("unknown key file tag")
        );
    }
}
