//! The command payload: its JSON wire form (version 1), its caps, and the bounded parser that
//! turns authentic payload bytes into a `Command` of fixed-capacity, checked fields.
//!
//! Invariant: `parse_command` returns a `Command` only if every field is within its cap, no
//! key is duplicated or unknown, and every image's header was read and its dimensions are
//! sane. Images are never decoded here. The operator side (`CommandSpec::to_payload`) runs the
//! same parser over what it wrote, so a signer cannot produce a payload the device would
//! refuse for its content.

use crate::envelope::Kind;
use crate::ident::{Concept, Ident};
use crate::image_check::{check_header, ImageInfo};
use crate::strict_json::{self, check_fields};
use crate::Rejection;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The payload version this build reads and writes.
pub const PAYLOAD_VERSION: u64 = 1;
/// Cap on one image in bytes (before base64).
pub const MAX_IMAGE_BYTES: usize = 512 << 10;
/// Most extra verification images per forget command.
pub const MAX_VERIFY_IMAGES: usize = 4;
/// Largest accepted optimizer-step override (docs/siu.md: ~30 steps work, 80 degenerate).
pub const MAX_STEPS: u32 = 64;

const TOP_FIELDS: &[&str] = &[
    "v",
    "id",
    "issuer",
    "seq",
    "issued_at",
    "expires_at",
    "target",
    "model",
    "action",
];
const TARGET_FIELDS: &[&str] = &["device", "group"];
const MODEL_FIELDS: &[&str] = &["id", "version"];
const FORGET_FIELDS: &[&str] = &["concept", "image", "verify_images", "method", "steps"];
const REVERT_FIELDS: &[&str] = &["to", "undo_forgets"];
const ACTIONS: &[&str] = &["forget", "revert"];

/// A command (forget or revert), every field checked. Get one from `verify_command` (as
/// `Verified<Command>`) or, without any signature check, from `parse_command`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Unique id, used by the agent for idempotency.
    pub id: Ident,
    /// Operator name; must be the name of a signing key.
    pub issuer: Ident,
    /// Per-issuer monotonic sequence number.
    pub seq: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    pub target: Target,
    pub model: ModelRef,
    pub action: Action,
}

/// Who a command is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Device(Ident),
    Group(Ident),
}

/// The model a command expects to find on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRef {
    pub id: Ident,
    pub version: Option<Ident>,
}

/// What to do. Payload version 1 knows two actions; a device that predates `revert`
/// refuses it as `unknown-action` (PROTOCOL.md, "Versions").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Forget(Forget),
    Revert(Revert),
}

impl Action {
    /// The action's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Forget(_) => "forget",
            Action::Revert(_) => "revert",
        }
    }
}

/// Make an adapter version the device still holds current again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revert {
    pub to: RevertTo,
    /// The operator's confirmation that the revert may undo forgets (bring back concepts
    /// that were forgotten). Without it a device refuses such a revert (`undoes-forgets`).
    pub undo_forgets: bool,
}

/// Which version a revert goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevertTo {
    /// The package's own adapter, as shipped.
    Original,
    /// The version with this SHA-256 (64 lowercase hex digits), which the device must hold.
    Version(heapless::String<64>),
    /// The version that was current before the named forget command committed.
    Before(Ident),
}

impl RevertTo {
    /// Parses the wire form: `original`, 64 lowercase hex digits, or `before:<command id>`.
    pub fn parse(s: &str) -> Result<RevertTo, Rejection> {
        let bad = Rejection::InvalidField {
            field: "to",
            why: "not `original`, a 64-digit lowercase sha256 or `before:<command id>`",
        };
        if s == "original" {
            return Ok(RevertTo::Original);
        }
        if let Some(id) = s.strip_prefix("before:") {
            return Ok(RevertTo::Before(Ident::new("to", id)?));
        }
        let hex = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(bad);
        }
        let mut h = heapless::String::new();
        h.push_str(s).map_err(|_| bad)?;
        Ok(RevertTo::Version(h))
    }
}

impl core::fmt::Display for RevertTo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RevertTo::Original => f.write_str("original"),
            RevertTo::Version(h) => f.write_str(h),
            RevertTo::Before(id) => write!(f, "before:{}", id.as_str()),
        }
    }
}

/// Forget one visual concept from one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forget {
    pub concept: Concept,
    pub image: Image,
    pub verify_images: heapless::Vec<Image, MAX_VERIFY_IMAGES>,
    pub method: Option<Method>,
    pub steps: Option<u32>,
}

/// Image bytes whose header has been checked (format, sane dimensions); not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    bytes: Vec<u8>,
    info: ImageInfo,
}

impl Image {
    /// Checks the header of `bytes` (index 0 in any rejection).
    pub fn new(bytes: Vec<u8>) -> Result<Image, Rejection> {
        Image::checked(bytes, 0)
    }

    fn checked(bytes: Vec<u8>, index: usize) -> Result<Image, Rejection> {
        if bytes.len() > MAX_IMAGE_BYTES {
            return Err(Rejection::ImageTooLarge {
                index,
                len: bytes.len(),
                cap: MAX_IMAGE_BYTES,
            });
        }
        let info = check_header(&bytes, index)?;
        Ok(Image { bytes, info })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn info(&self) -> ImageInfo {
        self.info
    }
}

/// Unlearning method override (see docs/siu.md; the device's default is SIU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Siu,
    Ga,
    GaKl,
    Po,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Siu => "siu",
            Method::Ga => "ga",
            Method::GaKl => "ga_kl",
            Method::Po => "po",
        }
    }

    pub fn from_name(s: &str) -> Option<Method> {
        [Method::Siu, Method::Ga, Method::GaKl, Method::Po]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

// ---- wire form ----

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCommand {
    v: u64,
    id: String,
    issuer: String,
    seq: u64,
    issued_at: u64,
    expires_at: u64,
    target: WireTarget,
    model: WireModel,
    action: WireAction,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum WireTarget {
    Device(String),
    Group(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireModel {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum WireAction {
    Forget(WireForget),
    Revert(WireRevert),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRevert {
    to: String,
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    undo_forgets: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireForget {
    concept: String,
    /// base64 (standard alphabet, padded)
    image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    verify_images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    steps: Option<u32>,
}

/// What an operator asks for, in plain types; `to_payload` checks and encodes it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    pub id: String,
    pub issuer: String,
    pub seq: u64,
    pub issued_at: u64,
    pub expires_at: u64,
    pub target: TargetSpec,
    pub model_id: String,
    pub model_version: Option<String>,
    pub action: ActionSpec,
}

/// The action in plain types.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionSpec {
    Forget(ForgetSpec),
    Revert(RevertSpec),
}

/// A forget in plain types.
#[derive(Clone, Debug, PartialEq)]
pub struct ForgetSpec {
    pub concept: String,
    pub image: Vec<u8>,
    pub verify_images: Vec<Vec<u8>>,
    pub method: Option<Method>,
    pub steps: Option<u32>,
}

/// A revert in plain types: `to` is `original`, a version's sha256, or `before:<id>`.
#[derive(Clone, Debug, PartialEq)]
pub struct RevertSpec {
    pub to: String,
    pub undo_forgets: bool,
}

/// Target in plain types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    Device(String),
    Group(String),
}

impl CommandSpec {
    /// Encodes the version-1 JSON payload, then parses it back with the device's parser so
    /// that anything the device would refuse for its content is refused here.
    pub fn to_payload(&self) -> Result<Vec<u8>, Rejection> {
        let wire = WireCommand {
            v: PAYLOAD_VERSION,
            id: self.id.clone(),
            issuer: self.issuer.clone(),
            seq: self.seq,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            target: match &self.target {
                TargetSpec::Device(d) => WireTarget::Device(d.clone()),
                TargetSpec::Group(g) => WireTarget::Group(g.clone()),
            },
            model: WireModel {
                id: self.model_id.clone(),
                version: self.model_version.clone(),
            },
            action: match &self.action {
                ActionSpec::Forget(f) => WireAction::Forget(WireForget {
                    concept: f.concept.clone(),
                    image: B64.encode(&f.image),
                    verify_images: f.verify_images.iter().map(|i| B64.encode(i)).collect(),
                    method: f.method.map(|m| m.name().to_string()),
                    steps: f.steps,
                }),
                ActionSpec::Revert(r) => WireAction::Revert(WireRevert {
                    to: r.to.clone(),
                    undo_forgets: r.undo_forgets,
                }),
            },
        };
        let bytes =
            serde_json::to_vec(&wire).map_err(|e| Rejection::MalformedPayload(e.to_string()))?;
        parse_command(&bytes)?;
        Ok(bytes)
    }
}

/// Parses payload bytes into a checked `Command`. Checks no signature, time or target: use
/// `verify_command` for that.
pub fn parse_command(payload: &[u8]) -> Result<Command, Rejection> {
    let cap = Kind::Command.payload_cap();
    if payload.len() > cap {
        return Err(Rejection::TooLarge {
            len: payload.len(),
            cap,
        });
    }
    let v = strict_json::parse(payload)?;
    precheck(&v)?;
    let wire: WireCommand = strict_json::from_value(v)?;
    wire.into_command()
}

fn malformed(why: &str) -> Rejection {
    Rejection::MalformedPayload(why.to_string())
}

/// Version, field names, action name and image count, so each gets its own reason before
/// serde sees the document.
fn precheck(v: &Value) -> Result<(), Rejection> {
    let obj = v
        .as_object()
        .ok_or_else(|| malformed("payload is not a JSON object"))?;
    match obj.get("v") {
        None => return Err(malformed("missing field `v`")),
        Some(n) => match n.as_u64() {
            Some(PAYLOAD_VERSION) => {}
            Some(other) => return Err(Rejection::UnsupportedVersion(other)),
            None => return Err(malformed("`v` is not an unsigned integer")),
        },
    }
    check_fields(obj, TOP_FIELDS)?;
    if let Some(t) = obj.get("target").and_then(Value::as_object) {
        check_fields(t, TARGET_FIELDS)?;
    }
    if let Some(m) = obj.get("model").and_then(Value::as_object) {
        check_fields(m, MODEL_FIELDS)?;
    }
    match obj.get("action") {
        Some(Value::String(name)) if !ACTIONS.contains(&name.as_str()) => {
            return Err(Rejection::UnknownAction(name.clone()));
        }
        Some(Value::Object(a)) => {
            let mut it = a.iter();
            let (Some((name, body)), None) = (it.next(), it.next()) else {
                return Err(malformed("`action` must hold exactly one action"));
            };
            if !ACTIONS.contains(&name.as_str()) {
                return Err(Rejection::UnknownAction(name.clone()));
            }
            if let (Some(f), "revert") = (body.as_object(), name.as_str()) {
                check_fields(f, REVERT_FIELDS)?;
            } else if let Some(f) = body.as_object() {
                check_fields(f, FORGET_FIELDS)?;
                if let Some(list) = f.get("verify_images").and_then(Value::as_array) {
                    if list.len() > MAX_VERIFY_IMAGES {
                        return Err(Rejection::TooManyImages {
                            got: list.len(),
                            cap: MAX_VERIFY_IMAGES,
                        });
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Length of the base64 text of `MAX_IMAGE_BYTES` bytes.
const MAX_IMAGE_B64: usize = MAX_IMAGE_BYTES.div_ceil(3) * 4;

fn decode_image(b64: &str, index: usize) -> Result<Image, Rejection> {
    // Cap the text before decoding it.
    if b64.len() > MAX_IMAGE_B64 {
        return Err(Rejection::ImageTooLarge {
            index,
            len: b64.len() / 4 * 3,
            cap: MAX_IMAGE_BYTES,
        });
    }
    let bytes = B64.decode(b64).map_err(|_| Rejection::InvalidField {
        field: if index == 0 { "image" } else { "verify_images" },
        why: "not standard padded base64",
    })?;
    Image::checked(bytes, index)
}

impl WireCommand {
    fn into_command(self) -> Result<Command, Rejection> {
        let target = match &self.target {
            WireTarget::Device(d) => Target::Device(Ident::new("target.device", d)?),
            WireTarget::Group(g) => Target::Group(Ident::new("target.group", g)?),
        };
        let model = ModelRef {
            id: Ident::new("model.id", &self.model.id)?,
            version: match &self.model.version {
                Some(v) => Some(Ident::new("model.version", v)?),
                None => None,
            },
        };
        let action = match self.action {
            WireAction::Forget(f) => Action::Forget(f.into_forget()?),
            WireAction::Revert(r) => Action::Revert(Revert {
                to: RevertTo::parse(&r.to)?,
                undo_forgets: r.undo_forgets,
            }),
        };
        Ok(Command {
            id: Ident::new("id", &self.id)?,
            issuer: Ident::new("issuer", &self.issuer)?,
            seq: self.seq,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            target,
            model,
            action,
        })
    }
}

impl WireForget {
    fn into_forget(self) -> Result<Forget, Rejection> {
        let f = self;
        let concept = Concept::new(&f.concept)?;
        let image = decode_image(&f.image, 0)?;
        let mut verify_images = heapless::Vec::new();
        for (i, b64) in f.verify_images.iter().enumerate() {
            let img = decode_image(b64, i + 1)?;
            verify_images
                .push(img)
                .map_err(|_| Rejection::TooManyImages {
                    got: f.verify_images.len(),
                    cap: MAX_VERIFY_IMAGES,
                })?;
        }
        let method = match &f.method {
            Some(m) => Some(Method::from_name(m).ok_or(Rejection::InvalidField {
                field: "method",
                why: "not one of siu, ga, ga_kl, po",
            })?),
            None => None,
        };
        if let Some(s) = f.steps {
            if s == 0 || s > MAX_STEPS {
                return Err(Rejection::InvalidField {
                    field: "steps",
                    why: "outside 1..=64",
                });
            }
        }
        Ok(Forget {
            concept,
            image,
            verify_images,
            method,
            steps: f.steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_check::tests::png;

    fn spec() -> CommandSpec {
        CommandSpec {
            id: "cmd-1".into(),
            issuer: "alice".into(),
            seq: 1,
            issued_at: 1000,
            expires_at: 2000,
            target: TargetSpec::Device("cam-01".into()),
            model_id: "lethe-tiny".into(),
            model_version: None,
            action: ActionSpec::Forget(ForgetSpec {
                concept: "Albin Berg".into(),
                image: png(8, 8),
                verify_images: vec![png(4, 4)],
                method: Some(Method::Siu),
                steps: Some(8),
            }),
        }
    }

    /// The forget of a spec made by `spec()`.
    fn fs(s: &mut CommandSpec) -> &mut ForgetSpec {
        match &mut s.action {
            ActionSpec::Forget(f) => f,
            ActionSpec::Revert(_) => panic!("a forget spec"),
        }
    }

    fn forget_of(c: &Command) -> &Forget {
        match &c.action {
            Action::Forget(f) => f,
            Action::Revert(_) => panic!("a forget"),
        }
    }

    fn revert_spec(to: &str, undo_forgets: bool) -> CommandSpec {
        CommandSpec {
            action: ActionSpec::Revert(RevertSpec {
                to: to.into(),
                undo_forgets,
            }),
            ..spec()
        }
    }

    #[test]
    fn a_revert_round_trips_for_each_kind_of_target_version() {
        let hash = "0123456789abcdef".repeat(4);
        let cases = [
            ("original", RevertTo::Original),
            (
                hash.as_str(),
                RevertTo::Version(hash.as_str().try_into().unwrap()),
            ),
            (
                "before:op-7",
                RevertTo::Before(Ident::new("to", "op-7").unwrap()),
            ),
        ];
        for (to, want) in cases {
            for undo in [false, true] {
                let c = parse_command(&revert_spec(to, undo).to_payload().unwrap()).unwrap();
                let Action::Revert(r) = &c.action else {
                    panic!("{to}: not a revert")
                };
                assert_eq!((&r.to, r.undo_forgets), (&want, undo), "{to}");
                assert_eq!(r.to.to_string(), to);
                assert_eq!(c.action.name(), "revert");
            }
        }
        // `undo_forgets: false` is left out of the wire form.
        let p = revert_spec("original", false).to_payload().unwrap();
        assert!(!String::from_utf8(p).unwrap().contains("undo_forgets"));
    }

    #[test]
    fn a_revert_to_anything_but_a_known_form_is_an_invalid_field() {
        let upper = "0123456789ABCDEF".repeat(4);
        let short = "0123456789abcdef".repeat(3);
        let long = "0".repeat(65);
        for bad in [
            "",
            "Original",
            "latest",
            upper.as_str(),
            short.as_str(),
            long.as_str(),
            "before:",
        ] {
            let err = revert_spec(bad, false).to_payload().unwrap_err();
            assert_eq!(err.code(), "invalid-field", "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_revert_with_a_forget_field_or_an_unknown_field_is_refused() {
        for key in ["concept", "image", "undo"] {
            let mut v: Value =
                serde_json::from_slice(&revert_spec("original", true).to_payload().unwrap())
                    .unwrap();
            v["action"]["revert"][key] = Value::String("x".into());
            let err = parse_command(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert_eq!(err.code(), "unknown-field", "{key}: {err}");
        }
        // And a forget does not take the revert's fields.
        let err = parse_edited(|v| v["action"]["forget"]["to"] = "original".into()).unwrap_err();
        assert_eq!(err.code(), "unknown-field", "{err}");
    }

    #[test]
    fn a_spec_round_trips_through_the_payload() {
        let p = spec().to_payload().unwrap();
        let c = parse_command(&p).unwrap();
        assert_eq!(c.issuer.as_str(), "alice");
        let f = forget_of(&c);
        assert_eq!(f.concept.as_str(), "Albin Berg");
        assert_eq!(f.image.bytes(), &png(8, 8)[..]);
        assert_eq!(f.verify_images.len(), 1);
        assert_eq!(f.method, Some(Method::Siu));
    }

    #[test]
    fn the_signer_refuses_what_the_device_would_refuse() {
        let mut s = spec();
        fs(&mut s).steps = Some(1000);
        assert_eq!(s.to_payload().unwrap_err().code(), "invalid-field");
        let mut s = spec();
        fs(&mut s).image = b"not an image".to_vec();
        assert_eq!(s.to_payload().unwrap_err().code(), "not-an-image");
        let mut s = spec();
        fs(&mut s).verify_images = vec![png(2, 2); MAX_VERIFY_IMAGES + 1];
        assert_eq!(s.to_payload().unwrap_err().code(), "too-many-images");
    }

    #[test]
    fn a_string_action_with_another_name_is_an_unknown_action() {
        let mut v: Value = serde_json::from_slice(&spec().to_payload().unwrap()).unwrap();
        v["action"] = Value::String("reboot".into());
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            parse_command(&bytes).unwrap_err(),
            Rejection::UnknownAction("reboot".into())
        );
    }

    #[test]
    fn an_oversized_image_is_refused_before_base64_decoding() {
        let mut v: Value = serde_json::from_slice(&spec().to_payload().unwrap()).unwrap();
        v["action"]["forget"]["image"] = Value::String("!".repeat(MAX_IMAGE_B64 + 4));
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(parse_command(&bytes).unwrap_err().code(), "image-too-large");
    }

    /// `spec()`'s payload as JSON, edited by `f`, parsed back.
    fn parse_edited(f: impl FnOnce(&mut Value)) -> Result<Command, Rejection> {
        let mut v: Value = serde_json::from_slice(&spec().to_payload().unwrap()).unwrap();
        f(&mut v);
        parse_command(&serde_json::to_vec(&v).unwrap())
    }

    /// A real PNG padded with zeros to exactly `len` bytes (only its header is read).
    fn png_of_len(len: usize) -> Vec<u8> {
        let mut p = png(8, 8);
        p.resize(len, 0);
        p
    }

    #[test]
    fn an_image_of_exactly_the_cap_is_accepted_and_one_byte_more_is_refused() {
        let mut s = spec();
        fs(&mut s).image = png_of_len(MAX_IMAGE_BYTES);
        let c = parse_command(&s.to_payload().unwrap()).unwrap();
        let f = forget_of(&c);
        assert_eq!(f.image.bytes().len(), MAX_IMAGE_BYTES);
        // One byte more still fits the base64 text cap, so the byte cap itself refuses it.
        fs(&mut s).image = png_of_len(MAX_IMAGE_BYTES + 1);
        assert_eq!(B64.encode(&fs(&mut s).image).len(), MAX_IMAGE_B64);
        assert_eq!(
            s.to_payload().unwrap_err(),
            Rejection::ImageTooLarge {
                index: 0,
                len: MAX_IMAGE_BYTES + 1,
                cap: MAX_IMAGE_BYTES
            }
        );
        assert_eq!(
            Image::new(png_of_len(MAX_IMAGE_BYTES + 1)).unwrap_err(),
            Rejection::ImageTooLarge {
                index: 0,
                len: MAX_IMAGE_BYTES + 1,
                cap: MAX_IMAGE_BYTES
            }
        );
        assert_eq!(
            Image::new(png_of_len(MAX_IMAGE_BYTES))
                .unwrap()
                .info()
                .width,
            8
        );
    }

    #[test]
    fn base64_text_over_its_cap_is_refused_with_the_size_it_would_decode_to() {
        let err = parse_edited(|v| {
            v["action"]["forget"]["verify_images"] =
                serde_json::json!(["A".repeat(MAX_IMAGE_B64 + 4)]);
        })
        .unwrap_err();
        assert_eq!(
            err,
            Rejection::ImageTooLarge {
                index: 1,
                len: (MAX_IMAGE_B64 + 4) / 4 * 3,
                cap: MAX_IMAGE_BYTES
            }
        );
    }

    #[test]
    fn a_bad_image_is_named_by_its_field_and_index() {
        let not_base64 = |field| Rejection::InvalidField {
            field,
            why: "not standard padded base64",
        };
        let good = Value::String(B64.encode(png(2, 2)));
        let cases = [
            ("image", Value::String("@@@@".into()), not_base64("image")),
            (
                "verify_images",
                serde_json::json!([good.clone(), "@@@@"]),
                not_base64("verify_images"),
            ),
            (
                "verify_images",
                serde_json::json!([good, B64.encode(b"not an image")]),
                Rejection::NotAnImage { index: 2 },
            ),
        ];
        for (field, value, want) in cases {
            let err = parse_edited(|v| v["action"]["forget"][field] = value).unwrap_err();
            assert_eq!(err, want);
        }
    }

    #[test]
    fn four_verification_images_are_accepted_and_a_fifth_is_refused_before_decoding() {
        let mut s = spec();
        fs(&mut s).verify_images = vec![png(2, 2); MAX_VERIFY_IMAGES];
        let c = parse_command(&s.to_payload().unwrap()).unwrap();
        let f = forget_of(&c);
        assert_eq!(f.verify_images.len(), MAX_VERIFY_IMAGES);
        // The fifth is not even base64: the count is refused first.
        let err = parse_edited(|v| {
            let mut list = vec![Value::String(B64.encode(png(2, 2))); MAX_VERIFY_IMAGES];
            list.push("@@@@".into());
            v["action"]["forget"]["verify_images"] = Value::Array(list);
        })
        .unwrap_err();
        assert_eq!(
            err,
            Rejection::TooManyImages {
                got: MAX_VERIFY_IMAGES + 1,
                cap: MAX_VERIFY_IMAGES
            }
        );
    }

    #[test]
    fn a_payload_over_the_command_cap_is_too_large_before_it_is_read() {
        let cap = Kind::Command.payload_cap();
        assert_eq!(
            parse_command(&vec![b' '; cap + 1]).unwrap_err(),
            Rejection::TooLarge { len: cap + 1, cap }
        );
        assert_eq!(
            parse_command(&vec![b' '; cap]).unwrap_err().code(),
            "malformed-payload"
        );
    }

    #[test]
    fn steps_from_one_to_the_bound_are_accepted_and_zero_or_more_refused() {
        for ok in [1, MAX_STEPS] {
            let c = parse_edited(|v| v["action"]["forget"]["steps"] = ok.into()).unwrap();
            let f = forget_of(&c);
            assert_eq!(f.steps, Some(ok));
        }
        for bad in [0, MAX_STEPS + 1] {
            let err = parse_edited(|v| v["action"]["forget"]["steps"] = bad.into()).unwrap_err();
            assert_eq!(
                err,
                Rejection::InvalidField {
                    field: "steps",
                    why: "outside 1..=64"
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn an_action_given_as_a_known_name_without_a_body_is_malformed() {
        let err = parse_edited(|v| v["action"] = "forget".into()).unwrap_err();
        assert_eq!(err.code(), "malformed-payload", "{err}");
    }

    #[test]
    fn a_missing_field_is_malformed() {
        let mut v: Value = serde_json::from_slice(&spec().to_payload().unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("seq");
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            parse_command(&bytes).unwrap_err().code(),
            "malformed-payload"
        );
    }
}
