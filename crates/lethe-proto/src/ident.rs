//! Fixed-capacity, validated text fields: identifiers (device, group, issuer, key name, model,
//! command id) and free text (the concept name).
//!
//! Invariant: a value of these types has passed its length and character checks; there is no
//! way to build one that has not (no `Deserialize`, no unchecked constructor).

use crate::Rejection;
use core::fmt;
use core::ops::Deref;

/// Capacity of an identifier in bytes.
pub const IDENT_CAP: usize = 64;
/// Capacity of a concept name in bytes (UTF-8).
pub const CONCEPT_CAP: usize = 128;

/// An identifier: 1..=64 bytes of `A-Za-z0-9._-`, not starting with `.` or `-`.
///
/// Safe to place in file names, MQTT topic levels and the colon-separated key files.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Ident(heapless::String<IDENT_CAP>);

impl Ident {
    /// Checks `s` and stores it; `field` names the field in the rejection.
    pub fn new(field: &'static str, s: &str) -> Result<Ident, Rejection> {
        if s.len() > IDENT_CAP {
            return Err(Rejection::FieldTooLong {
                field,
                len: s.len(),
                cap: IDENT_CAP,
            });
        }
        if s.is_empty() {
            return Err(Rejection::InvalidField {
                field,
                why: "empty",
            });
        }
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok || s.starts_with(['.', '-']) {
            return Err(Rejection::InvalidField {
                field,
                why: "allowed characters are A-Z a-z 0-9 . _ - (not leading . or -)",
            });
        }
        let mut h = heapless::String::new();
        h.push_str(s).map_err(|_| Rejection::FieldTooLong {
            field,
            len: s.len(),
            cap: IDENT_CAP,
        })?;
        Ok(Ident(h))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for Ident {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A concept name: 1..=128 bytes of UTF-8 without control characters, not blank.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Concept(heapless::String<CONCEPT_CAP>);

impl Concept {
    pub fn new(s: &str) -> Result<Concept, Rejection> {
        let field = "concept";
        if s.len() > CONCEPT_CAP {
            return Err(Rejection::FieldTooLong {
                field,
                len: s.len(),
                cap: CONCEPT_CAP,
            });
        }
        if s.trim().is_empty() {
            return Err(Rejection::InvalidField {
                field,
                why: "blank",
            });
        }
        if s.chars().any(char::is_control) {
            return Err(Rejection::InvalidField {
                field,
                why: "control characters",
            });
        }
        let mut h = heapless::String::new();
        h.push_str(s).map_err(|_| Rejection::FieldTooLong {
            field,
            len: s.len(),
            cap: CONCEPT_CAP,
        })?;
        Ok(Concept(h))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for Concept {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Concept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Concept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_the_documented_alphabet() {
        assert!(Ident::new("f", "cam-01.lobby_A").is_ok());
        for bad in ["", "-x", ".x", "a b", "a:b", "a/b", "é"] {
            assert!(Ident::new("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_identifier_over_capacity_is_field_too_long() {
        let long = "a".repeat(IDENT_CAP + 1);
        assert_eq!(Ident::new("f", &long).unwrap_err().code(), "field-too-long");
        assert!(Ident::new("f", &"a".repeat(IDENT_CAP)).is_ok());
    }

    #[test]
    fn identifiers_and_concepts_print_as_their_text() {
        let id = Ident::new("f", "cam-01").unwrap();
        assert_eq!(
            (alloc::format!("{id}"), alloc::format!("{id:?}")),
            ("cam-01".into(), "\"cam-01\"".into())
        );
        assert_eq!((&*id, id.as_str()), ("cam-01", "cam-01"));
        let c = Concept::new("Émile Zola").unwrap();
        assert_eq!(
            (alloc::format!("{c}"), alloc::format!("{c:?}")),
            ("Émile Zola".into(), "\"Émile Zola\"".into())
        );
        assert_eq!((&*c, c.as_str()), ("Émile Zola", "Émile Zola"));
    }

    #[test]
    fn a_concept_of_exactly_its_capacity_is_accepted() {
        let c = "é".repeat(CONCEPT_CAP / 2);
        assert_eq!(Concept::new(&c).unwrap().as_str(), c);
    }

    #[test]
    fn concepts_allow_unicode_but_not_control_characters() {
        assert!(Concept::new("Émile Zola").is_ok());
        assert_eq!(Concept::new("a\nb").unwrap_err().code(), "invalid-field");
        assert_eq!(Concept::new("  ").unwrap_err().code(), "invalid-field");
        assert_eq!(
            Concept::new(&"x".repeat(CONCEPT_CAP + 1))
                .unwrap_err()
                .code(),
            "field-too-long"
        );
    }
}
