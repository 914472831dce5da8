//! `lethe-proto`: the wire protocol between the operator and the cameras. Wire types and
//! checks only: no I/O, no clock, no async, no model code (see docs/design.md, decision 4).
//!
//! Key decisions:
//! - **Verify the exact bytes.** A command is an envelope around payload bytes; the Ed25519
//!   signatures cover the envelope header and those bytes as received, one contiguous slice.
//!   Nothing is parsed before the signatures check out, and nothing is re-serialised to check
//!   them, so there is no second reading of the payload that could differ from the signed one.
//! - **Typed rejections.** Every way to say no is one variant of [`Rejection`] with a stable
//!   short code; a rejection changes nothing (the replay state is returned, never mutated).
//! - **Bounded parsing.** Caps are checked before decoding: the envelope length, the payload
//!   length, base64 text length before decoding an image, the image header's dimensions before
//!   any pixel. Identifiers and the concept live in fixed-capacity `heapless` strings.
//! - **Pure checks.** `now` is an argument; the caller persists state.
//!
//! Entry points: [`authenticate_command`] (signatures only, before storing anything),
//! [`verify_command`] / [`sign_command`], [`TrustStore`],
//! [`ReplayState`], [`sign_receipt`] / [`verify_receipt`]. The wire format, caps and codes
//! are written down in PROTOCOL.md.
//!
//! `no_std`: everything except `image_check` (which needs `std::io` for the `image` crate)
//! is written against `core` and `alloc` only.

#![forbid(unsafe_code)]

extern crate alloc;

pub mod command;
pub mod envelope;
mod error;
pub mod ident;
pub mod image_check;
pub mod keys;
pub mod receipt;
pub mod replay;
mod strict_json;
pub mod trust;
pub mod verify;

pub use command::{
    parse_command, Action, ActionSpec, Command, CommandSpec, Forget, ForgetSpec, Method, Revert,
    RevertSpec, RevertTo, Target, TargetSpec,
};
pub use error::Rejection;
pub use keys::{KeyId, PublicKey, SigningKey};
pub use receipt::{sign_receipt, verify_receipt, Receipt, UndoneForget, Verdict};
pub use replay::ReplayState;
pub use trust::{sign_rotation, RotationSpec, TrustStore};
pub use verify::{
    authenticate_command, sign_command, verify_command, DeviceContext, ModelContext, Verified,
};
