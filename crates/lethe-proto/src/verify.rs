//! The verifier: bytes in, `Verified<Command>` and the next replay state out, or one typed
//! rejection. Also the signer, so both sides share one encoding.
//!
//! Order of checks (each step only sees what the previous ones accepted):
//! 1. framing and caps (`envelope::parse`), 2. signatures against the trust store, key
//!    validity and the k-of-n threshold, 3. the payload (only authentic bytes are parsed),
//! 4. issuer bound to a signer, 5. freshness, 6. target device/group, 7. model,
//! 8. replay. Time is an argument (`now`, unix seconds): nothing here reads a clock.
//!
//! Invariant: a `Verified<T>` can only be built inside this crate, after every check above;
//! a rejection never returns a new replay state.

use crate::command::{parse_command, Command, CommandSpec, Target};
#[cfg(test)]
use crate::envelope::HEADER_LEN;
use crate::envelope::{self, Kind, MAX_SIGNATURES};
use crate::keys::{KeyId, SigningKey};
use crate::replay::ReplayState;
use crate::trust::{TrustStore, TrustedKey};
use crate::Rejection;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Deref;

/// Tolerated clock difference between operator and device, in seconds.
pub const CLOCK_SKEW_S: u64 = 120;
/// Longest allowed `expires_at - issued_at` (a freeze attack cannot keep a command alive).
pub const MAX_LIFETIME_S: u64 = 7 * 24 * 3600;

/// A value that passed verification. Only this crate can build one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T> {
    value: T,
    signers: heapless::Vec<KeyId, MAX_SIGNATURES>,
}

impl<T> Verified<T> {
    pub(crate) fn new(value: T, signers: heapless::Vec<KeyId, MAX_SIGNATURES>) -> Self {
        Verified { value, signers }
    }

    /// The keys whose signatures were checked.
    pub fn signers(&self) -> &[KeyId] {
        &self.signers
    }

    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// What the verifying device is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceContext {
    pub device_id: String,
    pub groups: Vec<String>,
    /// The model the device runs. `None` skips the model check: only for offline inspection
    /// (`lethectl verify` without `--model-id`); the agent always passes it.
    pub model: Option<ModelContext>,
}

/// The model a device runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelContext {
    pub id: String,
    pub version: Option<String>,
}

/// Checks the validity window at `now` with the bounded skew.
pub fn check_freshness(issued_at: u64, expires_at: u64, now: u64) -> Result<(), Rejection> {
    if expires_at <= issued_at {
        return Err(Rejection::BadValidityWindow(
            "expires_at is not after issued_at",
        ));
    }
    if expires_at - issued_at > MAX_LIFETIME_S {
        return Err(Rejection::BadValidityWindow("lifetime longer than 7 days"));
    }
    if issued_at > now.saturating_add(CLOCK_SKEW_S) {
        return Err(Rejection::NotYetValid { issued_at, now });
    }
    if now > expires_at.saturating_add(CLOCK_SKEW_S) {
        return Err(Rejection::Expired { expires_at, now });
    }
    Ok(())
}

/// Checks that `cmd` is addressed to this device and its model.
pub fn check_target(cmd: &Command, device: &DeviceContext) -> Result<(), Rejection> {
    match &cmd.target {
        Target::Device(d) if d.as_str() != device.device_id => {
            return Err(Rejection::WrongDevice {
                expected: device.device_id.clone(),
                got: d.to_string(),
            })
        }
        Target::Group(g) if !device.groups.iter().any(|x| x == g.as_str()) => {
            return Err(Rejection::WrongGroup(g.to_string()))
        }
        _ => {}
    }
    if let Some(m) = &device.model {
        if cmd.model.id.as_str() != m.id {
            return Err(Rejection::WrongModel {
                expected: m.id.clone(),
                got: cmd.model.id.to_string(),
            });
        }
        if let Some(want) = &cmd.model.version {
            if m.version.as_deref() != Some(want.as_str()) {
                return Err(Rejection::WrongModelVersion {
                    expected: m.version.clone().unwrap_or_else(|| "(unknown)".into()),
                    got: want.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Steps 1 and 2 of [`verify_command`] alone: `bytes` are framed as a command envelope and
/// signed by trusted keys (every signature valid, keys in their windows, the threshold met)
/// at time `now`. Nothing of the payload is parsed. A receiver runs this first, before it
/// stores, journals or answers anything: what fails it speaks for nobody the device trusts.
pub fn authenticate_command(bytes: &[u8], trust: &TrustStore, now: u64) -> Result<(), Rejection> {
    authenticated(bytes, trust, now).map(|_| ())
}

/// The envelope and its signers, once framing and signatures check out.
fn authenticated<'b, 's>(
    bytes: &'b [u8],
    trust: &'s TrustStore,
    now: u64,
) -> Result<
    (
        envelope::Envelope<'b>,
        heapless::Vec<&'s TrustedKey, MAX_SIGNATURES>,
    ),
    Rejection,
> {
    let env = envelope::parse(bytes, Kind::Command)?;
    let signers = trust.check_signatures(&env, now)?;
    Ok((env, signers))
}

/// Verifies a command envelope for `device` at time `now`. On success returns the command and
/// the replay state to persist once the command has been journaled; `replay` is not changed.
pub fn verify_command(
    bytes: &[u8],
    trust: &TrustStore,
    device: &DeviceContext,
    replay: &ReplayState,
    now: u64,
) -> Result<(Verified<Command>, ReplayState), Rejection> {
    let (env, signers) = authenticated(bytes, trust, now)?;
    let cmd = parse_command(env.payload)?;
    if !signers.iter().any(|k| k.name == cmd.issuer) {
        return Err(Rejection::IssuerMismatch(cmd.issuer.to_string()));
    }
    check_freshness(cmd.issued_at, cmd.expires_at, now)?;
    check_target(&cmd, device)?;
    let next = replay.check(&cmd.issuer, cmd.seq)?;
    let ids = signers.iter().map(|k| k.id).collect();
    Ok((Verified::new(cmd, ids), next))
}

/// Encodes and signs a command with one key, or several for k-of-n. The issuer must be the
/// name of one of the keys.
pub fn sign_command(spec: &CommandSpec, keys: &[&SigningKey]) -> Result<Vec<u8>, Rejection> {
    if !keys.iter().any(|k| k.name() == spec.issuer) {
        return Err(Rejection::IssuerMismatch(spec.issuer.clone()));
    }
    let payload = spec.to_payload()?;
    envelope::sign(Kind::Command, &payload, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_tolerates_the_skew_and_no_more() {
        assert!(check_freshness(1000, 2000, 1000 - CLOCK_SKEW_S).is_ok());
        assert_eq!(
            check_freshness(1000, 2000, 1000 - CLOCK_SKEW_S - 1)
                .unwrap_err()
                .code(),
            "not-yet-valid"
        );
        assert!(check_freshness(1000, 2000, 2000 + CLOCK_SKEW_S).is_ok());
        assert_eq!(
            check_freshness(1000, 2000, 2000 + CLOCK_SKEW_S + 1)
                .unwrap_err()
                .code(),
            "expired"
        );
    }

    #[test]
    fn an_empty_or_too_long_window_is_refused() {
        assert_eq!(
            check_freshness(1000, 1000, 1000).unwrap_err().code(),
            "bad-validity-window"
        );
        assert_eq!(
            check_freshness(0, MAX_LIFETIME_S + 1, 10)
                .unwrap_err()
                .code(),
            "bad-validity-window"
        );
    }

    #[test]
    fn authentication_accepts_a_trusted_signature_whatever_the_payload_says() {
        let op = SigningKey::generate("op").unwrap();
        let mut trust = TrustStore::new();
        trust.add(&op.public(), None, None).unwrap();
        // Authentic, though its payload is not a command: the payload is not read here.
        let signed = envelope::sign(Kind::Command, b"{}", &[&op]).unwrap();
        assert_eq!(authenticate_command(&signed, &trust, 0), Ok(()));
        let forger = SigningKey::generate("op").unwrap();
        let forged = envelope::sign(Kind::Command, b"{}", &[&forger]).unwrap();
        let mut tampered = signed.clone();
        tampered[HEADER_LEN] ^= 1;
        let receipt = envelope::sign(Kind::Receipt, b"{}", &[&op]).unwrap();
        for (bytes, code) in [
            (&b"random bytes"[..], "bad-magic"),
            (&forged[..], "unknown-key"),
            (&tampered[..], "bad-signature"),
            (&receipt[..], "wrong-kind"),
            (&signed[..signed.len() - 1], "truncated"),
        ] {
            assert_eq!(
                authenticate_command(bytes, &trust, 0).unwrap_err().code(),
                code
            );
        }
        // A threshold of two: one trusted signature is not enough to speak for the operators.
        let op2 = SigningKey::generate("op2").unwrap();
        trust.add(&op2.public(), None, None).unwrap();
        trust.set_threshold(2).unwrap();
        assert_eq!(
            authenticate_command(&signed, &trust, 0).unwrap_err().code(),
            "insufficient-signatures"
        );
        let both = envelope::sign(Kind::Command, b"{}", &[&op, &op2]).unwrap();
        assert_eq!(authenticate_command(&both, &trust, 0), Ok(()));
    }

    #[test]
    fn a_lifetime_of_exactly_seven_days_is_allowed() {
        assert_eq!(MAX_LIFETIME_S, 604_800);
        assert!(check_freshness(1000, 1000 + 604_800, 2000).is_ok());
        assert_eq!(
            check_freshness(1000, 1000 + 604_801, 2000).unwrap_err(),
            Rejection::BadValidityWindow("lifetime longer than 7 days")
        );
    }

    #[test]
    fn freshness_does_not_overflow_at_the_end_of_time() {
        assert!(check_freshness(u64::MAX - 10, u64::MAX, u64::MAX - 5).is_ok());
    }
}
