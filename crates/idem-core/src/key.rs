//! The `Idempotency-Key` value: validated, length-bounded, visible ASCII.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// The longest key accepted, in bytes (after removing Structured-Field quotes).
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key.
///
/// A key is 1 to [`MAX_KEY_LEN`] bytes of visible ASCII (`0x21..=0x7E`). The header
/// may carry it bare (`abc-123`) or as an RFC 8941 Structured-Field string
/// (`"abc-123"`, as the IETF Idempotency-Key draft writes it); the quoted form is
/// unquoted (with `\"` and `\\` unescaped) before validation, so both mean the same key.
///
/// ```
/// use idem_core::IdempotencyKey;
///
/// let bare = IdempotencyKey::parse("8e03978e-40d5-43e8-bc93-6894a57f9324")?;
/// let quoted = IdempotencyKey::parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")?;
/// assert_eq!(bare, quoted);
/// assert!(IdempotencyKey::parse("").is_err());
/// # Ok::<(), idem_core::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

/// Why a header value is not a valid idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The value is empty (or an empty quoted string).
    #[error("the idempotency key is empty")]
    Empty,
    /// The value is longer than [`MAX_KEY_LEN`] bytes.
    #[error("the idempotency key is {len} bytes long; at most {MAX_KEY_LEN} are allowed")]
    TooLong {
        /// The length that was received, in bytes.
        len: usize,
    },
    /// A byte outside visible ASCII (`0x21..=0x7E`).
    #[error("the idempotency key has a byte outside visible ASCII at position {position}")]
    InvalidByte {
        /// Zero-based position of the first offending byte in the (unquoted) key.
        position: usize,
    },
    /// A value that opens a Structured-Field string but does not form a valid one.
    #[error("the idempotency key is a malformed quoted string")]
    MalformedQuoted,
}

impl IdempotencyKey {
    /// Parses a header value (as text) into a key.
    pub fn parse(value: &str) -> Result<Self, KeyError> {
        Self::from_bytes(value.as_bytes())
    }

    /// Parses raw header bytes into a key. Bytes that are not ASCII are rejected.
    pub fn from_bytes(value: &[u8]) -> Result<Self, KeyError> {
        let unquoted = match value.first() {
            Some(b'"') => unquote_sf_string(value)?,
            _ => value.to_vec(),
        };
        validate(&unquoted)?;
        // `validate` admits visible ASCII only, so the bytes are valid UTF-8.
        String::from_utf8(unquoted)
            .map(IdempotencyKey)
            .map_err(|e| KeyError::InvalidByte {
                position: e.utf8_error().valid_up_to(),
            })
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short SHA-256 hash of the key (16 hex digits), for logs and spans: it tells
    /// requests apart without revealing the key, which may be a secret-like token.
    pub fn short_hash(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..8])
    }

    /// A protected key (`hmac:<id>:<hex>`), valid by construction.
    pub(crate) fn from_protected(stored: String) -> Self {
        IdempotencyKey(stored)
    }
}

fn validate(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong { len: key.len() });
    }
    if let Some(position) = key.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(KeyError::InvalidByte { position });
    }
    Ok(())
}

/// Unquotes an RFC 8941 sf-string: `"` chars `"`, where chars are 0x20..=0x7E and
/// `\` escapes only `"` and `\`.
fn unquote_sf_string(value: &[u8]) -> Result<Vec<u8>, KeyError> {
    let inner = match value {
        [b'"', inner @ .., b'"'] if value.len() >= 2 => inner,
        _ => return Err(KeyError::MalformedQuoted),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return Err(KeyError::MalformedQuoted),
            },
            b'"' => return Err(KeyError::MalformedQuoted),
            0x20..=0x7e => out.push(b),
            _ => return Err(KeyError::MalformedQuoted),
        }
    }
    Ok(out)
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_bare_and_quoted_forms_as_the_same_key() {
        let bare = IdempotencyKey::parse("abc-123").expect("bare key");
        let quoted = IdempotencyKey::parse("\"abc-123\"").expect("quoted key");
        assert_eq!(bare, quoted);
        assert_eq!(bare.as_str(), "abc-123");
    }

    #[test]
    fn short_hash_hides_the_key_but_is_stable() {
        let key = IdempotencyKey::parse("secret-key").expect("key");
        let hash = key.short_hash();
        assert_eq!(hash.len(), 16);
        assert!(!hash.contains("secret"));
        assert_eq!(
            hash,
            IdempotencyKey::parse("\"secret-key\"")
                .expect("key")
                .short_hash()
        );
        assert_ne!(
            hash,
            IdempotencyKey::parse("secret-kez")
                .expect("key")
                .short_hash()
        );
    }

    #[test]
    fn unescapes_quoted_strings() {
        let key = IdempotencyKey::parse(r#""a\"b\\c""#).expect("escaped key");
        assert_eq!(key.as_str(), r#"a"b\c"#);
    }

    #[test]
    fn rejects_each_invalid_class() {
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse("\"\""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"a".repeat(256)),
            Err(KeyError::TooLong { len: 256 })
        );
        assert_eq!(
            IdempotencyKey::parse("a b"),
            Err(KeyError::InvalidByte { position: 1 })
        );
        assert_eq!(
            IdempotencyKey::parse("\"a b\""),
            Err(KeyError::InvalidByte { position: 1 })
        );
        assert_eq!(
            IdempotencyKey::from_bytes("ké".as_bytes()),
            Err(KeyError::InvalidByte { position: 1 })
        );
        assert_eq!(
            IdempotencyKey::parse("\"abc"),
            Err(KeyError::MalformedQuoted)
        );
        assert_eq!(
            IdempotencyKey::parse("\"a\"b\""),
            Err(KeyError::MalformedQuoted)
        );
        assert_eq!(
            IdempotencyKey::parse(r#""a\b""#),
            Err(KeyError::MalformedQuoted)
        );
        assert!(IdempotencyKey::parse(&"a".repeat(255)).is_ok());
    }

    proptest! {
        #[test]
        fn any_visible_ascii_up_to_255_is_a_key(s in "[\\x21-\\x7e]{1,255}") {
            prop_assume!(!s.starts_with('"'));
            let key = IdempotencyKey::parse(&s).expect("visible ASCII is a key");
            prop_assert_eq!(key.as_str(), s.as_str());
        }

        #[test]
        fn quoting_a_key_yields_the_same_key(s in "[\\x21-\\x7e]{1,255}") {
            let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
            let key = IdempotencyKey::parse(&format!("\"{escaped}\"")).expect("quoted key");
            prop_assert_eq!(key.as_str(), s.as_str());
        }

        #[test]
        fn parsing_never_panics_and_accepted_keys_are_valid(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(key) = IdempotencyKey::from_bytes(&bytes) {
                let k = key.as_str().as_bytes();
                prop_assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN);
                prop_assert!(k.iter().all(|b| (0x21..=0x7e).contains(b)));
            }
        }

        #[test]
        fn keys_with_a_byte_outside_visible_ascii_are_rejected(
            prefix in "[\\x21-\\x7e]{0,10}",
            bad in prop_oneof![0u8..=0x20, 0x7fu8..=0xff],
            suffix in "[\\x21-\\x7e]{0,10}",
        ) {
            prop_assume!(!prefix.starts_with('"'));
            let mut bytes = prefix.clone().into_bytes();
            bytes.push(bad);
            bytes.extend_from_slice(suffix.as_bytes());
            prop_assert!(IdempotencyKey::from_bytes(&bytes).is_err());
        }
    }
}
