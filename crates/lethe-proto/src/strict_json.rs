//! Strict JSON reading: duplicate keys and unknown fields are typed rejections.
//!
//! serde_json keeps the last of two equal keys without a word, so `{"seq":1,"seq":9}` could
//! mean different things to two readers. Here a document is first read into a `Value` by a
//! visitor that refuses duplicate keys at every depth; callers then check field names per
//! object with `check_fields` before handing the value to a `deny_unknown_fields` struct.
//!
//! Invariant: a `Value` returned by `parse` came from a document with no duplicate keys and no
//! trailing bytes; nesting depth is bounded by serde_json's recursion limit (128).

use crate::Rejection;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Prefix of our custom serde error; lets `classify` tell a duplicate key from other errors.
const DUP_MARKER: &str = "lethe-duplicate-field:";

/// Parses `bytes` as one JSON document, refusing duplicate keys and trailing bytes.
pub fn parse(bytes: &[u8]) -> Result<Value, Rejection> {
    let s = core::str::from_utf8(bytes)
        .map_err(|_| Rejection::MalformedPayload("not UTF-8".to_string()))?;
    let mut de = serde_json::Deserializer::from_str(s);
    let v = StrictValue::deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(v.0)
}

/// Refuses any key of `obj` not in `allowed`.
pub fn check_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), Rejection> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Rejection::UnknownField(k.clone())),
        None => Ok(()),
    }
}

/// Reads a value into a `deny_unknown_fields` struct; errors are malformed payloads.
pub fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Rejection> {
    serde_json::from_value(v).map_err(|e| Rejection::MalformedPayload(e.to_string()))
}

fn classify(e: serde_json::Error) -> Rejection {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix(DUP_MARKER) {
        let key = rest.rfind(" at line ").map_or(rest, |i| &rest[..i]);
        Rejection::DuplicateField(key.to_string())
    } else {
        Rejection::MalformedPayload(msg)
    }
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUP_MARKER}{key}")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_key_is_a_duplicate_field_even_when_nested() {
        assert_eq!(
            parse(br#"{"a":1,"a":2}"#).unwrap_err(),
            Rejection::DuplicateField("a".into())
        );
        assert_eq!(
            parse(br#"{"x":[{"b":{"c":1,"c":1}}]}"#).unwrap_err(),
            Rejection::DuplicateField("c".into())
        );
    }

    #[test]
    fn every_kind_of_value_reads_as_serde_json_reads_it() {
        let doc = br#"{"t":true,"f":false,"n":null,"i":-7,"u":18446744073709551615,"x":-0.5,
            "s":"plain","e":"esc\"aped\u00e9","a":[1,"two",null,[],{}],"o":{"k":{}}}"#;
        let want: Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(parse(doc).unwrap(), want);
        assert_eq!(want["i"], -7);
        assert_eq!(want["e"], "esc\"aped\u{e9}");
    }

    #[test]
    fn trailing_bytes_and_bad_utf8_are_malformed() {
        for bad in [&b"{} {}"[..], b"{\"a\":1", b"\xff", b"", b"[1,]"] {
            assert_eq!(parse(bad).unwrap_err().code(), "malformed-payload");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert_eq!(
            parse(deep.as_bytes()).unwrap_err().code(),
            "malformed-payload"
        );
    }

    #[test]
    fn check_fields_names_the_first_unknown_field() {
        let v = parse(br#"{"a":1,"zz":2}"#).unwrap();
        assert_eq!(
            check_fields(v.as_object().unwrap(), &["a"]).unwrap_err(),
            Rejection::UnknownField("zz".into())
        );
    }
}
