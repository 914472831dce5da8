//! Status receipts: the device's signed statement of what it did with a command (verdict,
//! model hash before and after, metrics). The operator's evidence that the forget happened.
//!
//! A receipt travels in an envelope of kind `Receipt`, signed by the DEVICE's own Ed25519 key,
//! whose name is the device id. Invariant: `verify_receipt` accepts only a receipt signed by the
//! given device key whose `device_id` equals that key's name, with every field within its cap.

use crate::envelope::{self, Kind};
use crate::ident::Ident;
use crate::keys::{PublicKey, SigningKey};
use crate::strict_json;
use crate::verify::Verified;
use crate::Rejection;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Most metrics per receipt.
pub const MAX_METRICS: usize = 32;
/// Cap on the free-text `reason` and on other text fields.
pub const MAX_RECEIPT_TEXT: usize = 512;
/// Most undone forgets one receipt names (the metric `forgets_undone` has the full count).
pub const MAX_UNDONE_FORGETS: usize = 64;

/// A forget that a revert undid: the concept is known to the model again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndoneForget {
    pub command_id: String,
    pub concept: String,
}

/// Outcome of a command on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The update was applied and passed the probes.
    Committed,
    /// The update was applied, failed the probes and was undone.
    RolledBack,
    /// The command was refused (see `reason`, a rejection code).
    Rejected,
    /// Something broke; the model is unchanged.
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Committed => "committed",
            Verdict::RolledBack => "rolled_back",
            Verdict::Rejected => "rejected",
            Verdict::Failed => "failed",
        }
    }
}

/// What the device reports. Serialised as the receipt payload (JSON, version 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub v: u32,
    pub command_id: String,
    pub device_id: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub reason: Option<String>,
    pub model_hash_before: String,
    pub model_hash_after: String,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub execution_provider: Option<String>,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds.
    pub finished_at: u64,
    /// A revert's receipt: the forgets it undid, oldest first (at most
    /// `MAX_UNDONE_FORGETS`). Absent from every other receipt, so those read as before; a
    /// verifier older than this field refuses a receipt that has it rather than drop it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undone_forgets: Vec<UndoneForget>,
}

impl Receipt {
    fn check(&self) -> Result<(), Rejection> {
        if self.v != 1 {
            return Err(Rejection::UnsupportedVersion(u64::from(self.v)));
        }
        Ident::new("command_id", &self.command_id)?;
        Ident::new("device_id", &self.device_id)?;
        let texts = [
            ("reason", self.reason.as_deref().unwrap_or("")),
            ("model_hash_before", self.model_hash_before.as_str()),
            ("model_hash_after", self.model_hash_after.as_str()),
            (
                "execution_provider",
                self.execution_provider.as_deref().unwrap_or(""),
            ),
        ];
        for (field, t) in texts {
            if t.len() > MAX_RECEIPT_TEXT {
                return Err(Rejection::FieldTooLong {
                    field,
                    len: t.len(),
                    cap: MAX_RECEIPT_TEXT,
                });
            }
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(Rejection::InvalidField {
                field: "metrics",
                why: "more than 32 entries",
            });
        }
        for (k, v) in &self.metrics {
            Ident::new("metrics", k)?;
            if !v.is_finite() {
                return Err(Rejection::InvalidField {
                    field: "metrics",
                    why: "not a finite number",
                });
            }
        }
        if self.undone_forgets.len() > MAX_UNDONE_FORGETS {
            return Err(Rejection::InvalidField {
                field: "undone_forgets",
                why: "more than 64 entries",
            });
        }
        for u in &self.undone_forgets {
            Ident::new("undone_forgets", &u.command_id)?;
            crate::ident::Concept::new(&u.concept)?;
        }
        if self.finished_at < self.started_at {
            return Err(Rejection::BadValidityWindow(
                "finished_at before started_at",
            ));
        }
        Ok(())
    }
}

/// Checks and signs a receipt with the device key (whose name must be `device_id`).
pub fn sign_receipt(receipt: &Receipt, device_key: &SigningKey) -> Result<Vec<u8>, Rejection> {
    receipt.check()?;
    if receipt.device_id != device_key.name() {
        return Err(Rejection::ReceiptDeviceMismatch {
            claimed: receipt.device_id.clone(),
            key_name: device_key.name().to_string(),
        });
    }
    let payload =
        serde_json::to_vec(receipt).map_err(|e| Rejection::MalformedPayload(e.to_string()))?;
    envelope::sign(Kind::Receipt, &payload, &[device_key])
}

/// Verifies a receipt envelope against the device's public key.
pub fn verify_receipt(bytes: &[u8], device: &PublicKey) -> Result<Verified<Receipt>, Rejection> {
    let env = envelope::parse(bytes, Kind::Receipt)?;
    if env.signatures.len() != 1 {
        return Err(Rejection::SignatureCount(env.signatures.len()));
    }
    let s = &env.signatures[0];
    if s.key_id != device.id() {
        return Err(Rejection::UnknownKey(s.key_id));
    }
    if !device.verifies(env.signed, &s.signature) {
        return Err(Rejection::BadSignature(s.key_id));
    }
    let v = strict_json::parse(env.payload)?;
    if let Some(ver) = v.get("v").and_then(serde_json::Value::as_u64) {
        if ver != 1 {
            return Err(Rejection::UnsupportedVersion(ver));
        }
    }
    let receipt: Receipt = strict_json::from_value(v)?;
    receipt.check()?;
    if receipt.device_id != device.name() {
        return Err(Rejection::ReceiptDeviceMismatch {
            claimed: receipt.device_id,
            key_name: device.name().to_string(),
        });
    }
    let mut ids = heapless::Vec::new();
    let _ = ids.push(s.key_id);
    Ok(Verified::new(receipt, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            v: 1,
            command_id: "cmd-1".into(),
            device_id: "cam-01".into(),
            verdict: Verdict::Committed,
            reason: None,
            model_hash_before: "aa".into(),
            model_hash_after: "bb".into(),
            metrics: [("efficacy".to_string(), 1.0)].into_iter().collect(),
            execution_provider: Some("cpu".into()),
            started_at: 10,
            finished_at: 12,
            undone_forgets: Vec::new(),
        }
    }

    #[test]
    fn a_receipt_signed_by_the_device_verifies_with_its_public_key() {
        let k = SigningKey::generate("cam-01").unwrap();
        let env = sign_receipt(&receipt(), &k).unwrap();
        let r = verify_receipt(&env, &k.public()).unwrap();
        assert_eq!(r.verdict, Verdict::Committed);
        assert_eq!(r.signers(), &[k.id()]);
    }

    #[test]
    fn a_tampered_receipt_or_another_devices_key_is_refused() {
        let k = SigningKey::generate("cam-01").unwrap();
        let other = SigningKey::generate("cam-01").unwrap();
        let mut env = sign_receipt(&receipt(), &k).unwrap();
        assert_eq!(
            verify_receipt(&env, &other.public()).unwrap_err().code(),
            "unknown-key"
        );
        env[20] ^= 1;
        assert_eq!(
            verify_receipt(&env, &k.public()).unwrap_err().code(),
            "bad-signature"
        );
    }

    #[test]
    fn a_device_cannot_sign_a_receipt_for_another_device() {
        let k = SigningKey::generate("cam-02").unwrap();
        assert_eq!(
            sign_receipt(&receipt(), &k).unwrap_err().code(),
            "receipt-device-mismatch"
        );
    }

    #[test]
    fn every_verdict_is_named_as_it_is_serialised() {
        for v in [
            Verdict::Committed,
            Verdict::RolledBack,
            Verdict::Rejected,
            Verdict::Failed,
        ] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
    }

    #[test]
    fn texts_and_metrics_up_to_their_caps_are_signed_and_one_more_is_refused() {
        let k = SigningKey::generate("cam-01").unwrap();
        let mut r = receipt();
        r.reason = Some("x".repeat(MAX_RECEIPT_TEXT));
        r.metrics = (0..MAX_METRICS)
            .map(|i| (alloc::format!("m{i}"), 0.5))
            .collect();
        let env = sign_receipt(&r, &k).unwrap();
        assert_eq!(verify_receipt(&env, &k.public()).unwrap().into_inner(), r);
        let mut long = r.clone();
        long.reason = Some("x".repeat(MAX_RECEIPT_TEXT + 1));
        assert_eq!(
            sign_receipt(&long, &k).unwrap_err(),
            Rejection::FieldTooLong {
                field: "reason",
                len: MAX_RECEIPT_TEXT + 1,
                cap: MAX_RECEIPT_TEXT
            }
        );
        let mut many = r;
        many.metrics.insert("one-more".into(), 1.0);
        assert_eq!(
            sign_receipt(&many, &k).unwrap_err(),
            Rejection::InvalidField {
                field: "metrics",
                why: "more than 32 entries"
            }
        );
    }

    #[test]
    fn up_to_64_undone_forgets_are_signed_and_read_back_and_one_more_or_a_bad_one_is_refused() {
        let k = SigningKey::generate("cam-01").unwrap();
        let undone = |i: usize| UndoneForget {
            command_id: alloc::format!("op-{i}"),
            concept: alloc::format!("person {i}"),
        };
        let mut r = receipt();
        r.undone_forgets = (0..MAX_UNDONE_FORGETS).map(undone).collect();
        let env = sign_receipt(&r, &k).unwrap();
        assert_eq!(verify_receipt(&env, &k.public()).unwrap().into_inner(), r);
        let mut many = r.clone();
        many.undone_forgets.push(undone(MAX_UNDONE_FORGETS));
        assert_eq!(
            sign_receipt(&many, &k).unwrap_err(),
            Rejection::InvalidField {
                field: "undone_forgets",
                why: "more than 64 entries"
            }
        );
        let mut bad = receipt();
        bad.undone_forgets = vec![UndoneForget {
            command_id: "not an id".into(),
            concept: "anna adler".into(),
        }];
        assert_eq!(sign_receipt(&bad, &k).unwrap_err().code(), "invalid-field");
        // A receipt without undone forgets serialises without the field, as before it existed.
        let plain = serde_json::to_string(&receipt()).unwrap();
        assert!(!plain.contains("undone_forgets"), "{plain}");
    }

    #[test]
    fn a_receipt_may_finish_when_it_started_but_not_before() {
        let k = SigningKey::generate("cam-01").unwrap();
        let mut r = receipt();
        r.finished_at = r.started_at;
        assert!(sign_receipt(&r, &k).is_ok());
        r.finished_at = r.started_at - 1;
        assert_eq!(
            sign_receipt(&r, &k).unwrap_err(),
            Rejection::BadValidityWindow("finished_at before started_at")
        );
    }

    #[test]
    fn non_finite_metrics_are_refused_at_signing() {
        let k = SigningKey::generate("cam-01").unwrap();
        let mut r = receipt();
        r.metrics.insert("loss".into(), f64::NAN);
        assert_eq!(sign_receipt(&r, &k).unwrap_err().code(), "invalid-field");
    }
}
