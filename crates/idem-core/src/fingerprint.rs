//! The request fingerprint: SHA-256 over what makes two requests "the same request".

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 digest identifying a request's content.
///
/// Built with [`FingerprintBuilder`] over the method, the path and query, any configured
/// headers and the body. Every part is length-prefixed and tagged, so no two different
/// requests can produce the same byte stream to hash.
///
/// ```
/// use idem_core::{BodyMode, Fingerprint};
///
/// let a = Fingerprint::builder("POST", "/payments")
///     .body(br#"{"amount": 100, "currency": "EUR"}"#, BodyMode::CanonicalJson)
///     .finish();
/// let b = Fingerprint::builder("POST", "/payments")
///     .body(br#"{"currency":"EUR","amount":100}"#, BodyMode::CanonicalJson)
///     .finish();
/// assert_eq!(a, b);
/// assert_eq!(a.to_string().len(), 64);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why stored bytes are not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a fingerprint is 32 bytes, got {0}")]
pub struct FingerprintLenError(pub usize);

/// How the request body enters the fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyMode {
    /// The raw body bytes.
    #[default]
    Raw,
    /// The body as canonical JSON (object keys sorted, no insignificant whitespace), so
    /// key order and formatting do not make two requests differ. A body that is not JSON
    /// is hashed raw, under a distinct tag.
    CanonicalJson,
}

impl Fingerprint {
    /// Starts a fingerprint over a method and a path-and-query.
    pub fn builder(method: &str, path_and_query: &str) -> FingerprintBuilder {
        let mut builder = FingerprintBuilder {
            hasher: Sha256::new(),
        };
        builder.part(b"idem-fingerprint-v1");
        builder.part(method.as_bytes());
        builder.part(path_and_query.as_bytes());
        builder
    }

    /// Wraps 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// Reads a fingerprint back from a stored byte slice.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, FingerprintLenError> {
        <[u8; 32]>::try_from(bytes)
            .map(Fingerprint)
            .map_err(|_| FingerprintLenError(bytes.len()))
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes as hex: enough to tell requests apart in logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Accumulates the parts of a [`Fingerprint`].
#[derive(Clone)]
pub struct FingerprintBuilder {
    hasher: Sha256,
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintBuilder").finish_non_exhaustive()
    }
}

impl FingerprintBuilder {
    fn part(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_be_bytes());
        self.hasher.update(bytes);
    }

    /// Adds a header (name lower-cased by the caller) and its value. Call it for every
    /// configured header in a fixed order; an absent header should be passed as `None`.
    pub fn header(mut self, name: &str, value: Option<&[u8]>) -> Self {
        self.part(b"header");
        self.part(name.as_bytes());
        match value {
            Some(v) => {
                self.part(b"present");
                self.part(v);
            }
            None => self.part(b"absent"),
        }
        self
    }

    /// Adds the body, raw or as canonical JSON.
    pub fn body(mut self, body: &[u8], mode: BodyMode) -> Self {
        match mode {
            BodyMode::Raw => {
                self.part(b"body-raw");
                self.part(body);
            }
            BodyMode::CanonicalJson => match canonical_json(body) {
                Some(canonical) => {
                    self.part(b"body-json");
                    self.part(&canonical);
                }
                None => {
                    self.part(b"body-raw-not-json");
                    self.part(body);
                }
            },
        }
        self
    }

    /// Produces the digest.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hasher.finalize().into())
    }
}

/// Canonical JSON bytes of `body`: object keys sorted, no insignificant whitespace,
/// numbers and strings as serde_json prints them. `None` when `body` is not JSON.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    // serde_json's map is ordered by key unless its `preserve_order` feature is on;
    // sort explicitly so the result never depends on feature unification.
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::to_vec(&sorted(value)).ok()
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(method: &str, path: &str, body: &[u8], mode: BodyMode) -> Fingerprint {
        Fingerprint::builder(method, path).body(body, mode).finish()
    }

    #[test]
    fn differs_by_method_path_body_and_header() {
        let base = fp("POST", "/a", b"{}", BodyMode::Raw);
        assert_ne!(base, fp("PATCH", "/a", b"{}", BodyMode::Raw));
        assert_ne!(base, fp("POST", "/a?x=1", b"{}", BodyMode::Raw));
        assert_ne!(base, fp("POST", "/a", b"{ }", BodyMode::Raw));
        let with_header = Fingerprint::builder("POST", "/a")
            .header("x-account", Some(b"1"))
            .body(b"{}", BodyMode::Raw)
            .finish();
        assert_ne!(base, with_header);
        let absent = Fingerprint::builder("POST", "/a")
            .header("x-account", None)
            .body(b"{}", BodyMode::Raw)
            .finish();
        assert_ne!(with_header, absent);
    }

    #[test]
    fn parts_cannot_be_shifted_into_each_other() {
        assert_ne!(
            fp("POST", "/ab", b"", BodyMode::Raw),
            fp("POST", "/a", b"b", BodyMode::Raw)
        );
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace_but_not_values() {
        let a = fp(
            "POST",
            "/p",
            br#"{"b": [1, {"y":1,"x":2}], "a": "s"}"#,
            BodyMode::CanonicalJson,
        );
        let b = fp(
            "POST",
            "/p",
            br#"{"a":"s","b":[1,{"x":2,"y":1}]}"#,
            BodyMode::CanonicalJson,
        );
        assert_eq!(a, b);
        let c = fp(
            "POST",
            "/p",
            br#"{"a":"s","b":[{"x":2,"y":1},1]}"#,
            BodyMode::CanonicalJson,
        );
        assert_ne!(a, c);
        assert_ne!(
            a,
            fp(
                "POST",
                "/p",
                br#"{"a":"s","b":[1,{"x":2,"y":1}]}"#,
                BodyMode::Raw
            )
        );
    }

    #[test]
    fn non_json_bodies_fall_back_to_raw_bytes() {
        let a = fp("POST", "/p", b"not json", BodyMode::CanonicalJson);
        let b = fp("POST", "/p", b"not json", BodyMode::CanonicalJson);
        assert_eq!(a, b);
        assert_ne!(a, fp("POST", "/p", b"not  json", BodyMode::CanonicalJson));
    }

    #[test]
    fn round_trips_through_bytes_and_hex() {
        let a = fp("POST", "/p", b"x", BodyMode::Raw);
        assert_eq!(Fingerprint::from_slice(a.as_bytes()), Ok(a));
        assert_eq!(
            Fingerprint::from_slice(&[0; 31]),
            Err(FingerprintLenError(31))
        );
        assert_eq!(a.to_string().len(), 64);
        assert!(a.to_string().starts_with(&a.short()));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_json_is_stable_under_pretty_printing(value in json_value()) {
            let compact = serde_json::to_vec(&value).expect("serialize");
            let pretty = serde_json::to_vec_pretty(&value).expect("serialize");
            prop_assert_eq!(
                fp("POST", "/p", &compact, BodyMode::CanonicalJson),
                fp("POST", "/p", &pretty, BodyMode::CanonicalJson)
            );
            prop_assert_eq!(canonical_json(&pretty), canonical_json(&compact));
        }

        #[test]
        fn canonical_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = fp("POST", "/p", &bytes, BodyMode::CanonicalJson);
            if let Some(c) = canonical_json(&bytes) {
                // Canonical output is itself canonical.
                prop_assert_eq!(canonical_json(&c), Some(c.clone()));
            }
        }
    }
}
