//! Every way this crate says "no": one enum, one variant per reason, each with a stable short
//! code (`Rejection::code`) for logs, MQTT status events and scripts.
//!
//! Invariant: codes are unique and never change meaning once shipped; a new reason gets a new
//! variant and a new code. The unit test at the bottom checks uniqueness.

use crate::keys::KeyId;
use alloc::string::String;

/// Why an envelope, a payload, a key file or a trust store was refused.
///
/// The `Display` text is for humans and may change; `code()` is the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    // ---- framing (checked before anything is decoded) ----
    /// The input is larger than the cap for its kind.
    #[error("input is {len} bytes, over the cap of {cap}")]
    TooLarge { len: usize, cap: usize },
    /// The input ends before a length it declares.
    #[error("input ends early, inside the {0}")]
    Truncated(&'static str),
    /// The first four bytes are not `LETH`.
    #[error("not a Lethe envelope (bad magic)")]
    BadMagic,
    /// The envelope framing version is not one this build reads.
    #[error("envelope format version {0} is not supported")]
    UnsupportedEnvelope(u8),
    /// The envelope is of another kind (say a receipt where a command was expected).
    #[error("envelope kind {found} where a {expected} was expected")]
    WrongKind { expected: &'static str, found: u8 },
    /// Bytes after the last signature.
    #[error("{0} bytes after the last signature")]
    TrailingBytes(usize),
    /// Zero signatures, or more than `MAX_SIGNATURES`.
    #[error("envelope carries {0} signatures; 1..={max} allowed", max = crate::envelope::MAX_SIGNATURES)]
    SignatureCount(usize),

    // ---- keys and signatures ----
    /// No key in the trust store has this id.
    #[error("no trusted key has id {0}")]
    UnknownKey(KeyId),
    /// The key was revoked.
    #[error("key {0} is revoked")]
    RevokedKey(KeyId),
    /// The key's validity window has not started.
    #[error("key {id} is not valid before {not_before}")]
    KeyNotYetValid { id: KeyId, not_before: u64 },
    /// The key's validity window has ended.
    #[error("key {id} is not valid after {not_after}")]
    KeyExpired { id: KeyId, not_after: u64 },
    /// An Ed25519 signature does not verify over the signed bytes.
    #[error("signature by key {0} does not verify")]
    BadSignature(KeyId),
    /// One key signed the same envelope twice (it would otherwise count twice towards k).
    #[error("key {0} signed more than once")]
    DuplicateSigner(KeyId),
    /// Fewer distinct trusted signatures than the trust store's threshold.
    #[error("{got} distinct trusted signatures, {need} required")]
    InsufficientSignatures { got: usize, need: usize },
    /// The payload's issuer is not the name of any key that signed it.
    #[error("issuer {0:?} is not the name of any signing key")]
    IssuerMismatch(String),

    // ---- payload encoding (only reached for authentic bytes) ----
    /// Not UTF-8, not JSON, a wrong type or a missing field.
    #[error("malformed payload: {0}")]
    MalformedPayload(String),
    /// A JSON object has the same key twice (serde_json would silently keep the last).
    #[error("field {0:?} appears twice")]
    DuplicateField(String),
    /// A field this version does not define.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// A payload version this build does not read.
    #[error("payload version {0} is not supported")]
    UnsupportedVersion(u64),
    /// An action other than those this version defines.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// A string longer than its fixed capacity.
    #[error("field {field} is {len} bytes, over its cap of {cap}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        cap: usize,
    },
    /// A field with a value outside its allowed form (characters, range, base64 ...).
    #[error("field {field} is invalid: {why}")]
    InvalidField {
        field: &'static str,
        why: &'static str,
    },
    /// More verification images than allowed.
    #[error("{got} verification images, at most {cap} allowed")]
    TooManyImages { got: usize, cap: usize },
    /// An image (0 = the forget image, 1.. = verification images) is over the byte cap.
    #[error("image {index} is about {len} bytes, over the cap of {cap}")]
    ImageTooLarge {
        index: usize,
        len: usize,
        cap: usize,
    },
    /// The image bytes are not a PNG or JPEG whose header can be read.
    #[error("image {index} is not a readable PNG or JPEG")]
    NotAnImage { index: usize },
    /// The image header declares absurd dimensions (decompression bomb guard).
    #[error("image {index} declares {width}x{height} pixels, over the limit")]
    ImageDimensions {
        index: usize,
        width: u32,
        height: u32,
    },

    // ---- freshness ----
    /// `expires_at <= issued_at`, or a lifetime longer than the protocol allows.
    #[error("validity window is invalid: {0}")]
    BadValidityWindow(&'static str),
    /// Issued in the future beyond the clock-skew tolerance.
    #[error("issued at {issued_at}, in the future (now {now})")]
    NotYetValid { issued_at: u64, now: u64 },
    /// Past its expiry beyond the clock-skew tolerance.
    #[error("expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },

    // ---- targeting ----
    /// Addressed to another device.
    #[error("addressed to device {got:?}, this is {expected:?}")]
    WrongDevice { expected: String, got: String },
    /// Addressed to a group this device is not in.
    #[error("addressed to group {0:?}, which this device is not in")]
    WrongGroup(String),
    /// Meant for another model.
    #[error("meant for model {got:?}, this device runs {expected:?}")]
    WrongModel { expected: String, got: String },
    /// Meant for another version of this model.
    #[error("meant for model version {got:?}, this device runs {expected:?}")]
    WrongModelVersion { expected: String, got: String },

    // ---- replay ----
    /// The issuer's sequence number equals the last one accepted.
    #[error("sequence {seq} from issuer {issuer:?} was already accepted")]
    ReplayedSeq { issuer: String, seq: u64 },
    /// The issuer's sequence number is lower than the last one accepted.
    #[error("sequence {seq} from issuer {issuer:?} is below the last accepted {last}")]
    StaleSeq { issuer: String, seq: u64, last: u64 },

    // ---- key files, trust store, rotation, receipts ----
    /// A key file that is not in the documented text format.
    #[error("bad key file: {0}")]
    BadKeyFile(&'static str),
    /// A trust-store entry whose id is not derived from its public key.
    #[error("key id {claimed} does not match its public key (id {actual})")]
    KeyIdMismatch { claimed: String, actual: KeyId },
    /// A trust store file that does not parse or breaks an invariant.
    #[error("bad trust store: {0}")]
    BadTrustStore(String),
    /// Adding or rotating in a key that is already in the store.
    #[error("key {0} is already in the trust store")]
    KeyAlreadyTrusted(KeyId),
    /// A rotation statement naming the new key differently from every signer.
    #[error("rotation gives the new key name {0:?}, which is not a signer's name")]
    RotationNameMismatch(String),
    /// A receipt whose device id is not the name of the key that signed it.
    #[error("receipt claims device {claimed:?} but is signed by {key_name:?}'s key")]
    ReceiptDeviceMismatch { claimed: String, key_name: String },
}

impl Rejection {
    /// Every code [`Rejection::code`] can return, in declaration order (PROTOCOL.md's table
    /// lists the same, in the same order; a unit test holds the three together).
    pub const CODES: &'static [&'static str] = &[
        "too-large",
        "truncated",
        "bad-magic",
        "unsupported-envelope",
        "wrong-kind",
        "trailing-bytes",
        "signature-count",
        "unknown-key",
        "revoked-key",
        "key-not-yet-valid",
        "key-expired",
        "bad-signature",
        "duplicate-signer",
        "insufficient-signatures",
        "issuer-mismatch",
        "malformed-payload",
        "duplicate-field",
        "unknown-field",
        "unsupported-version",
        "unknown-action",
        "field-too-long",
        "invalid-field",
        "too-many-images",
        "image-too-large",
        "not-an-image",
        "image-dimensions",
        "bad-validity-window",
        "not-yet-valid",
        "expired",
        "wrong-device",
        "wrong-group",
        "wrong-model",
        "wrong-model-version",
        "replayed-seq",
        "stale-seq",
        "bad-key-file",
        "key-id-mismatch",
        "bad-trust-store",
        "key-already-trusted",
        "rotation-name-mismatch",
        "receipt-device-mismatch",
    ];

    /// Stable short code: the contract for logs, MQTT status events and scripts.
    pub fn code(&self) -> &'static str {
        use Rejection::*;
        match self {
            TooLarge { .. } => "too-large",
            Truncated(_) => "truncated",
            BadMagic => "bad-magic",
            UnsupportedEnvelope(_) => "unsupported-envelope",
            WrongKind { .. } => "wrong-kind",
            TrailingBytes(_) => "trailing-bytes",
            SignatureCount(_) => "signature-count",
            UnknownKey(_) => "unknown-key",
            RevokedKey(_) => "revoked-key",
            KeyNotYetValid { .. } => "key-not-yet-valid",
            KeyExpired { .. } => "key-expired",
            BadSignature(_) => "bad-signature",
            DuplicateSigner(_) => "duplicate-signer",
            InsufficientSignatures { .. } => "insufficient-signatures",
            IssuerMismatch(_) => "issuer-mismatch",
            MalformedPayload(_) => "malformed-payload",
            DuplicateField(_) => "duplicate-field",
            UnknownField(_) => "unknown-field",
            UnsupportedVersion(_) => "unsupported-version",
            UnknownAction(_) => "unknown-action",
            FieldTooLong { .. } => "field-too-long",
            InvalidField { .. } => "invalid-field",
            TooManyImages { .. } => "too-many-images",
            ImageTooLarge { .. } => "image-too-large",
            NotAnImage { .. } => "not-an-image",
            ImageDimensions { .. } => "image-dimensions",
            BadValidityWindow(_) => "bad-validity-window",
            NotYetValid { .. } => "not-yet-valid",
            Expired { .. } => "expired",
            WrongDevice { .. } => "wrong-device",
            WrongGroup(_) => "wrong-group",
            WrongModel { .. } => "wrong-model",
            WrongModelVersion { .. } => "wrong-model-version",
            ReplayedSeq { .. } => "replayed-seq",
            StaleSeq { .. } => "stale-seq",
            BadKeyFile(_) => "bad-key-file",
            KeyIdMismatch { .. } => "key-id-mismatch",
            BadTrustStore(_) => "bad-trust-store",
            KeyAlreadyTrusted(_) => "key-already-trusted",
            RotationNameMismatch(_) => "rotation-name-mismatch",
            ReceiptDeviceMismatch { .. } => "receipt-device-mismatch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// One value of every variant; kept in sync by the exhaustive match in `code()`.
    pub(crate) fn one_of_each() -> alloc::vec::Vec<Rejection> {
        let k = KeyId([0; 8]);
        let s = || "x".to_string();
        alloc::vec![
            Rejection::TooLarge { len: 0, cap: 0 },
            Rejection::Truncated("header"),
            Rejection::BadMagic,
            Rejection::UnsupportedEnvelope(2),
            Rejection::WrongKind {
                expected: "command",
                found: 2
            },
            Rejection::TrailingBytes(1),
            Rejection::SignatureCount(0),
            Rejection::UnknownKey(k),
            Rejection::RevokedKey(k),
            Rejection::KeyNotYetValid {
                id: k,
                not_before: 0
            },
            Rejection::KeyExpired {
                id: k,
                not_after: 0
            },
            Rejection::BadSignature(k),
            Rejection::DuplicateSigner(k),
            Rejection::InsufficientSignatures { got: 0, need: 1 },
            Rejection::IssuerMismatch(s()),
            Rejection::MalformedPayload(s()),
            Rejection::DuplicateField(s()),
            Rejection::UnknownField(s()),
            Rejection::UnsupportedVersion(2),
            Rejection::UnknownAction(s()),
            Rejection::FieldTooLong {
                field: "f",
                len: 1,
                cap: 0
            },
            Rejection::InvalidField {
                field: "f",
                why: "w"
            },
            Rejection::TooManyImages { got: 9, cap: 4 },
            Rejection::ImageTooLarge {
                index: 0,
                len: 1,
                cap: 0
            },
            Rejection::NotAnImage { index: 0 },
            Rejection::ImageDimensions {
                index: 0,
                width: 1,
                height: 1
            },
            Rejection::BadValidityWindow("w"),
            Rejection::NotYetValid {
                issued_at: 1,
                now: 0
            },
            Rejection::Expired {
                expires_at: 0,
                now: 1
            },
            Rejection::WrongDevice {
                expected: s(),
                got: s()
            },
            Rejection::WrongGroup(s()),
            Rejection::WrongModel {
                expected: s(),
                got: s()
            },
            Rejection::WrongModelVersion {
                expected: s(),
                got: s()
            },
            Rejection::ReplayedSeq {
                issuer: s(),
                seq: 1
            },
            Rejection::StaleSeq {
                issuer: s(),
                seq: 1,
                last: 2
            },
            Rejection::BadKeyFile("w"),
            Rejection::KeyIdMismatch {
                claimed: s(),
                actual: k
            },
            Rejection::BadTrustStore(s()),
            Rejection::KeyAlreadyTrusted(k),
            Rejection::RotationNameMismatch(s()),
            Rejection::ReceiptDeviceMismatch {
                claimed: s(),
                key_name: s()
            },
        ]
    }

    #[test]
    fn every_rejection_has_a_distinct_code() {
        let all = one_of_each();
        let mut codes: alloc::vec::Vec<_> = all.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        let n = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), n, "duplicate rejection codes");
        assert_eq!(n, 41);
    }

    #[test]
    fn protocol_md_lists_exactly_the_rejection_codes() {
        let doc = include_str!("../PROTOCOL.md");
        let table = doc.split("## Rejection codes").nth(1).unwrap();
        let documented: alloc::vec::Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(code, _)| code)
            .collect();
        let codes: alloc::vec::Vec<&str> = one_of_each().iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            Rejection::CODES,
            "Rejection::CODES vs Rejection::code"
        );
        assert_eq!(documented, codes, "PROTOCOL.md's table vs Rejection::code");
    }

    #[test]
    fn codes_are_lowercase_kebab() {
        for r in one_of_each() {
            assert!(r.code().chars().all(|c| c.is_ascii_lowercase() || c == '-'));
        }
    }
}
