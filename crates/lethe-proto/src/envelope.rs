//! The envelope: a tiny binary framing around exact payload bytes and their signatures.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "LETH"
//! 4       1     envelope format version (1)
//! 5       1     kind: 1 command, 2 receipt, 3 key rotation
//! 6       4     payload length n, big-endian u32
//! 10      n     payload (UTF-8 JSON, see PROTOCOL.md)
//! 10+n    1     signature count s, 1..=8
//! 11+n    72*s  s times: key id (8 bytes) then Ed25519 signature (64 bytes)
//! ```
//!
//! Every signature covers bytes `0 .. 10+n`: the header and the payload exactly as received,
//! one contiguous slice of the input. Nothing is re-serialised before checking, and the kind
//! byte inside the signed bytes separates domains (a receipt can never pass as a command).
//!
//! Invariant: `parse` reads lengths only, checks them against the input and the caps before
//! touching anything else, and never allocates in proportion to the input.

use crate::keys::{KeyId, KEY_ID_LEN, SIGNATURE_LEN};
use crate::Rejection;
use alloc::vec::Vec;

/// First four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"LETH";
/// The framing version this build reads and writes.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 10;
/// Bytes per signature entry.
pub const SIG_ENTRY_LEN: usize = KEY_ID_LEN + SIGNATURE_LEN;
/// Most signatures one envelope may carry (k-of-n with n <= 8).
pub const MAX_SIGNATURES: usize = 8;
/// Cap on a whole envelope of any kind, checked first.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// Cap on the payload of receipts and rotation statements (small documents).
pub const MAX_SMALL_PAYLOAD_BYTES: usize = 64 << 10;

/// What an envelope carries; part of the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Command = 1,
    Receipt = 2,
    Rotation = 3,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Receipt => "receipt",
            Kind::Rotation => "rotation",
        }
    }

    /// Payload cap for this kind.
    pub fn payload_cap(self) -> usize {
        match self {
            Kind::Command => MAX_ENVELOPE_BYTES - HEADER_LEN - 1 - SIG_ENTRY_LEN,
            Kind::Receipt | Kind::Rotation => MAX_SMALL_PAYLOAD_BYTES,
        }
    }
}

/// One signature entry as framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureEntry {
    pub key_id: KeyId,
    pub signature: [u8; SIGNATURE_LEN],
}

/// A parsed envelope borrowing the input. Nothing in it has been verified yet.
#[derive(Clone, Debug)]
pub struct Envelope<'a> {
    pub kind: Kind,
    /// Header and payload: the exact bytes the signatures cover.
    pub signed: &'a [u8],
    /// The payload bytes as received.
    pub payload: &'a [u8],
    pub signatures: heapless::Vec<SignatureEntry, MAX_SIGNATURES>,
}

/// Parses the framing of an envelope that must be of kind `expected`.
pub fn parse(bytes: &[u8], expected: Kind) -> Result<Envelope<'_>, Rejection> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(Rejection::TooLarge {
            len: bytes.len(),
            cap: MAX_ENVELOPE_BYTES,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(Rejection::Truncated("header"));
    }
    if bytes[0..4] != MAGIC {
        return Err(Rejection::BadMagic);
    }
    if bytes[4] != ENVELOPE_VERSION {
        return Err(Rejection::UnsupportedEnvelope(bytes[4]));
    }
    if bytes[5] != expected as u8 {
        return Err(Rejection::WrongKind {
            expected: expected.name(),
            found: bytes[5],
        });
    }
    let n = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    if n > expected.payload_cap() {
        return Err(Rejection::TooLarge {
            len: n,
            cap: expected.payload_cap(),
        });
    }
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < n {
        return Err(Rejection::Truncated("payload"));
    }
    let (payload, rest) = rest.split_at(n);
    let Some((&count, rest)) = rest.split_first() else {
        return Err(Rejection::Truncated("signature count"));
    };
    let count = count as usize;
    if count == 0 || count > MAX_SIGNATURES {
        return Err(Rejection::SignatureCount(count));
    }
    let need = count * SIG_ENTRY_LEN;
    if rest.len() < need {
        return Err(Rejection::Truncated("signatures"));
    }
    if rest.len() > need {
        return Err(Rejection::TrailingBytes(rest.len() - need));
    }
    let mut signatures = heapless::Vec::new();
    for chunk in rest.chunks_exact(SIG_ENTRY_LEN) {
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&chunk[..KEY_ID_LEN]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&chunk[KEY_ID_LEN..]);
        // Cannot fail: count <= MAX_SIGNATURES was checked above.
        let _ = signatures.push(SignatureEntry {
            key_id: KeyId(key_id),
            signature,
        });
    }
    Ok(Envelope {
        kind: expected,
        signed: &bytes[..HEADER_LEN + n],
        payload,
        signatures,
    })
}

/// The bytes a signer signs: header plus payload. Fails if the payload is over its cap.
pub fn signed_bytes(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, Rejection> {
    if payload.len() > kind.payload_cap() {
        return Err(Rejection::TooLarge {
            len: payload.len(),
            cap: kind.payload_cap(),
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 1 + SIG_ENTRY_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(ENVELOPE_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Completes signed bytes (from `signed_bytes`) with signatures into a whole envelope.
pub fn seal(mut signed: Vec<u8>, signatures: &[SignatureEntry]) -> Result<Vec<u8>, Rejection> {
    if signatures.is_empty() || signatures.len() > MAX_SIGNATURES {
        return Err(Rejection::SignatureCount(signatures.len()));
    }
    signed.push(signatures.len() as u8);
    for s in signatures {
        signed.extend_from_slice(&s.key_id.0);
        signed.extend_from_slice(&s.signature);
    }
    if signed.len() > MAX_ENVELOPE_BYTES {
        return Err(Rejection::TooLarge {
            len: signed.len(),
            cap: MAX_ENVELOPE_BYTES,
        });
    }
    Ok(signed)
}

/// Signs `payload` as `kind` with every key in `keys` and frames the result.
pub fn sign(kind: Kind, payload: &[u8], keys: &[&crate::SigningKey]) -> Result<Vec<u8>, Rejection> {
    let signed = signed_bytes(kind, payload)?;
    let sigs: Vec<SignatureEntry> = keys
        .iter()
        .map(|k| SignatureEntry {
            key_id: k.id(),
            signature: k.sign(&signed),
        })
        .collect();
    seal(signed, &sigs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    fn sample() -> (SigningKey, Vec<u8>) {
        let k = SigningKey::generate("alice").unwrap();
        let env = sign(Kind::Command, b"{\"a\":1}", &[&k]).unwrap();
        (k, env)
    }

    #[test]
    fn a_sealed_envelope_parses_back_to_its_exact_payload() {
        let (k, env) = sample();
        let e = parse(&env, Kind::Command).unwrap();
        assert_eq!(e.payload, b"{\"a\":1}");
        assert_eq!(e.signatures.len(), 1);
        assert_eq!(e.signatures[0].key_id, k.id());
        assert!(k.public().verifies(e.signed, &e.signatures[0].signature));
    }

    #[test]
    fn every_prefix_of_an_envelope_is_truncated_or_bad_magic() {
        let (_, env) = sample();
        for cut in 0..env.len() {
            let code = parse(&env[..cut], Kind::Command).unwrap_err().code();
            assert!(
                matches!(code, "truncated" | "bad-magic"),
                "cut {cut}: {code}"
            );
        }
    }

    #[test]
    fn a_receipt_envelope_is_not_accepted_as_a_command() {
        let k = SigningKey::generate("cam").unwrap();
        let env = sign(Kind::Receipt, b"{}", &[&k]).unwrap();
        assert_eq!(parse(&env, Kind::Command).unwrap_err().code(), "wrong-kind");
    }

    #[test]
    fn a_declared_length_beyond_the_cap_is_refused_before_reading_on() {
        let mut env = sample().1;
        env[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&env, Kind::Command).unwrap_err().code(), "too-large");
    }

    #[test]
    fn zero_or_nine_signatures_are_refused() {
        let (_, env) = sample();
        let n = HEADER_LEN + 7;
        let mut zero = env[..=n].to_vec();
        zero[n] = 0;
        assert_eq!(
            parse(&zero, Kind::Command).unwrap_err(),
            Rejection::SignatureCount(0)
        );
        let mut nine = env.clone();
        nine[n] = 9;
        assert_eq!(
            parse(&nine, Kind::Command).unwrap_err(),
            Rejection::SignatureCount(9)
        );
    }

    #[test]
    fn bytes_after_the_signatures_are_refused_and_counted() {
        let (_, mut env) = sample();
        env.push(0);
        assert_eq!(
            parse(&env, Kind::Command).unwrap_err(),
            Rejection::TrailingBytes(1)
        );
        env.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse(&env, Kind::Command).unwrap_err(),
            Rejection::TrailingBytes(5)
        );
    }

    #[test]
    fn a_cut_envelope_is_truncated_in_the_part_where_it_ends() {
        let (_, env) = sample();
        let n = 7; // the sample's payload length
        for cut in 0..env.len() {
            let want = match cut {
                c if c < HEADER_LEN => "header",
                c if c < HEADER_LEN + n => "payload",
                c if c == HEADER_LEN + n => "signature count",
                _ => "signatures",
            };
            assert_eq!(
                parse(&env[..cut], Kind::Command).unwrap_err(),
                Rejection::Truncated(want),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_wrong_kind_names_the_kind_expected() {
        let (_, env) = sample();
        for (kind, name) in [(Kind::Receipt, "receipt"), (Kind::Rotation, "rotation")] {
            assert_eq!(kind.name(), name);
            assert_eq!(
                parse(&env, kind).unwrap_err(),
                Rejection::WrongKind {
                    expected: name,
                    found: 1
                }
            );
        }
        assert_eq!(Kind::Command.name(), "command");
    }

    #[test]
    fn a_command_payload_up_to_its_cap_fills_exactly_the_envelope_cap_with_one_signature() {
        let cap = Kind::Command.payload_cap();
        assert_eq!(cap, MAX_ENVELOPE_BYTES - HEADER_LEN - 1 - SIG_ENTRY_LEN);
        assert_eq!(cap, 1_048_493);
        let k = SigningKey::generate("alice").unwrap();
        let env = sign(Kind::Command, &vec![b' '; cap], &[&k]).unwrap();
        assert_eq!(env.len(), MAX_ENVELOPE_BYTES);
        assert_eq!(parse(&env, Kind::Command).unwrap().payload.len(), cap);
        // One byte more, or a second signature, is over.
        assert_eq!(
            sign(Kind::Command, &vec![b' '; cap + 1], &[&k]).unwrap_err(),
            Rejection::TooLarge { len: cap + 1, cap }
        );
        let k2 = SigningKey::generate("bob").unwrap();
        assert_eq!(
            sign(Kind::Command, &vec![b' '; cap], &[&k, &k2]).unwrap_err(),
            Rejection::TooLarge {
                len: MAX_ENVELOPE_BYTES + SIG_ENTRY_LEN,
                cap: MAX_ENVELOPE_BYTES
            }
        );
        assert_eq!(Kind::Receipt.payload_cap(), MAX_SMALL_PAYLOAD_BYTES);
    }

    #[test]
    fn one_to_eight_signatures_are_sealed_and_parsed_and_none_or_nine_are_refused() {
        let keys: Vec<SigningKey> = (0..9)
            .map(|i| SigningKey::generate(&alloc::format!("k{i}")).unwrap())
            .collect();
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let eight = sign(Kind::Command, b"{}", &refs[..8]).unwrap();
        assert_eq!(parse(&eight, Kind::Command).unwrap().signatures.len(), 8);
        assert_eq!(
            sign(Kind::Command, b"{}", &refs).unwrap_err(),
            Rejection::SignatureCount(9)
        );
        assert_eq!(
            sign(Kind::Command, b"{}", &[]).unwrap_err(),
            Rejection::SignatureCount(0)
        );
    }
}
