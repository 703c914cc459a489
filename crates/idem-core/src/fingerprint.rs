//! The request fingerprint: SHA-256 over what makes two requests "the same request".

use std::fmt;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 digest identifying a request's content.
///
/// Built with [`FingerprintBuilder`] over the method, the path and query, any configured
/// headers (every value of a repeated header, in order:
/// [`header_values`](FingerprintBuilder::header_values)) and the body. Every part is length-prefixed and tagged, so no two different
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
    /// The body as canonical JSON (see [`canonical_json`]: object keys sorted, no
    /// insignificant whitespace, every number compared by its exact text), so key order
    /// and formatting do not make two requests differ. A body that is not canonical JSON
    /// (not JSON at all, or an object that repeats a key) is hashed raw, under a
    /// distinct tag.
    CanonicalJson,
}

impl Fingerprint {
    /// The body length, in bytes, from which fingerprinting a body is worth moving off
    /// the async workers (to `tokio::task::spawn_blocking`, say): 16 KiB. Compare before
    /// fingerprinting: `body.len() >= Fingerprint::BLOCKING_BODY_BYTES`.
    ///
    /// Fingerprinting costs time linear in the body's length in every [`BodyMode`] and
    /// with [`body_fields`](FingerprintBuilder::body_fields), whatever the body's
    /// nesting. Canonical JSON is the dearest: in an optimised build a body of small
    /// objects and numbers takes some 5 to 10 µs a KiB (so up to about 150 µs at this
    /// bound, and 5 to 20 ms at a 1 MiB body limit), plain strings far less; raw bytes
    /// hash at about 0.5 µs a KiB. Below the bound a body costs about the most an
    /// async worker should run between two awaits.
    pub const BLOCKING_BODY_BYTES: usize = 16 * 1024;

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

    /// Adds a header (name lower-cased by the caller) with at most one value: the same
    /// as [`header_values`](Self::header_values) with `value` as the only value, or with
    /// none when `value` is `None` (the header is absent).
    pub fn header(self, name: &str, value: Option<&[u8]>) -> Self {
        self.header_values(name, value)
    }

    /// Adds a header (name lower-cased by the caller) with every value it has, in the
    /// order they were received; no values means the header is absent. Call it for every
    /// configured header in a fixed order, absent ones included.
    ///
    /// Each value is a part of its own, so a header sent twice (`a`, then `b`) differs
    /// from one value `a,b`, from one value `a`, and from the same values in the other
    /// order.
    ///
    /// ```
    /// use idem_core::{BodyMode, Fingerprint};
    ///
    /// let fp = |values: &[&[u8]]| {
    ///     Fingerprint::builder("POST", "/payments")
    ///         .header_values("x-account", values.iter().copied())
    ///         .body(b"{}", BodyMode::Raw)
    ///         .finish()
    /// };
    /// assert_ne!(fp(&[b"a", b"b"]), fp(&[b"a,b"]));
    /// assert_ne!(fp(&[b"a", b"b"]), fp(&[b"a"]));
    /// assert_ne!(fp(&[b"a", b"b"]), fp(&[b"b", b"a"]));
    /// let one = Fingerprint::builder("POST", "/payments")
    ///     .header("x-account", Some(b"a"))
    ///     .body(b"{}", BodyMode::Raw)
    ///     .finish();
    /// assert_eq!(fp(&[b"a"]), one);
    /// ```
    pub fn header_values<'v>(
        mut self,
        name: &str,
        values: impl IntoIterator<Item = &'v [u8]>,
    ) -> Self {
        // Stream: "header", name, then ("present", value) per value, or "absent". The
        // tags that can follow a value ("present", "header", a body tag) all differ, so
        // where one header's values end is never in doubt. One value hashes exactly as
        // `header(name, Some(value))` always has, so stored fingerprints stay valid.
        self.part(b"header");
        self.part(name.as_bytes());
        let mut any = false;
        for value in values {
            any = true;
            self.part(b"present");
            self.part(value);
        }
        if !any {
            self.part(b"absent");
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

    /// Adds only some fields of a JSON body, each named by a JSON pointer (RFC 6901,
    /// `/amount`, `/items/0/sku`), as canonical JSON: for clients that add volatile
    /// fields (timestamps, trace ids) to the bodies of their retries. A field that is
    /// absent counts as absent (so adding it makes a different request); a body that
    /// is not canonical JSON is hashed raw, under a distinct tag.
    ///
    /// ```
    /// use idem_core::Fingerprint;
    ///
    /// let fields = ["/amount", "/currency"];
    /// let a = Fingerprint::builder("POST", "/payments")
    ///     .body_fields(br#"{"amount":100,"currency":"EUR","sent_at":"10:00:01"}"#, &fields)
    ///     .finish();
    /// let b = Fingerprint::builder("POST", "/payments")
    ///     .body_fields(br#"{"sent_at":"10:00:07","currency":"EUR","amount":100}"#, &fields)
    ///     .finish();
    /// assert_eq!(a, b);
    /// ```
    pub fn body_fields<P: AsRef<str>>(mut self, body: &[u8], pointers: &[P]) -> Self {
        let Some(root) = parse_canonical(body) else {
            self.part(b"body-raw-not-json");
            self.part(body);
            return self;
        };
        self.part(b"body-fields");
        let mut canonical = Vec::new();
        for pointer in pointers {
            let pointer = pointer.as_ref();
            self.part(pointer.as_bytes());
            canonical.clear();
            match root
                .pointer(pointer)
                .and_then(|value| value.write(&mut canonical))
            {
                Some(()) => {
                    self.part(b"present");
                    self.part(&canonical);
                }
                None => self.part(b"absent"),
            }
        }
        self
    }

    /// Produces the digest.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hasher.finalize().into())
    }
}

/// How deeply arrays and objects may nest in a body that [`canonical_json`] accepts:
/// the same bound serde_json's own parser applies. A deeper body is not canonical JSON.
const MAX_JSON_DEPTH: usize = 127;

/// Canonical JSON bytes of `body`, or `None` when `body` is not canonical JSON.
///
/// The canonical form keeps what the request means and drops how it was written:
///
/// - object members are sorted by key (by the bytes of the key's UTF-8 text, after
///   escapes are decoded);
/// - insignificant whitespace is removed;
/// - strings, keys included, are written as serde_json writes them, so `"\u0041"` and
///   `"A"` are the same string;
/// - every number keeps its exact JSON text. `1`, `1.0`, `1e0` and `10e-1` are four
///   different numbers here, and integers and decimals of any length are compared
///   digit by digit, never rounded through a float: two amounts are the same only when
///   they are written the same.
///
/// `None` when `body` is not JSON (including invalid UTF-8, lone surrogate escapes,
/// trailing characters, or nesting deeper than serde_json accepts: more than 127
/// arrays and objects inside each other), and when an object repeats a key: what such
/// a body means depends on the parser that reads it (the first value, the last, or an
/// error), so it is not the same request as any other text, and
/// [`FingerprintBuilder::body`] hashes it raw. Neither is an error: such a body still
/// has a fingerprint, its raw bytes under a tag of their own.
///
/// For a body of plain objects, arrays, strings, integers, booleans and nulls without
/// repeated keys, the output is what serde_json's compact printer writes for it with
/// keys sorted.
///
/// The cost is linear in the body's length, whatever its nesting: serde_json reads the
/// body once to validate it, one more pass builds a tree of its values (each string
/// decoded once), each object's keys are sorted once (the only part that is not
/// linear: `k log k` comparisons for an object of `k` members), and the tree is written
/// out once.
/// A body of [`Fingerprint::BLOCKING_BODY_BYTES`] or more is worth fingerprinting off
/// the async workers.
///
/// ```
/// use idem_core::canonical_json;
///
/// let c = canonical_json(br#"{ "b": [1, 2.50], "a": "\u00e9" }"#);
/// assert_eq!(c.as_deref(), Some(r#"{"a":"é","b":[1,2.50]}"#.as_bytes()));
/// assert_ne!(canonical_json(b"12345678901234567890123"), canonical_json(b"12345678901234567890124"));
/// assert_eq!(canonical_json(br#"{"a":1,"a":2}"#), None);
/// ```
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let root = parse_canonical(body)?;
    let mut out = Vec::with_capacity(body.len());
    root.write(&mut out)?;
    Some(out)
}

/// The tree of `body`'s values, each object's members sorted, or `None` when `body` is
/// not canonical JSON (see [`canonical_json`]).
fn parse_canonical(body: &[u8]) -> Option<Node<'_>> {
    // serde_json (without its `arbitrary_precision` feature) reads numbers into u64, i64
    // or f64; reading the body as a `RawValue` validates all of it (structure, numbers,
    // string syntax, UTF-8) and keeps its text as it was sent, which `Scanner` then
    // walks once. Object keys are sorted here, never by feature unification of
    // serde_json's map.
    let root: &RawValue = serde_json::from_slice(body).ok()?;
    let mut scanner = Scanner {
        text: root.get(),
        pos: 0,
    };
    let node = scanner.value(MAX_JSON_DEPTH)?;
    scanner.skip_whitespace();
    (scanner.pos == scanner.text.len()).then_some(node)
}

/// One JSON value of a body, as [`canonical_json`] compares it.
enum Node<'a> {
    /// A number, `true`, `false` or `null`: its exact text.
    Literal(&'a str),
    /// A string, escapes decoded.
    String(Text<'a>),
    /// An array's items, in order.
    Array(Vec<Node<'a>>),
    /// An object's members, sorted by key (escapes decoded), no key repeated.
    Object(Vec<(Text<'a>, Node<'a>)>),
}

impl Node<'_> {
    /// Appends the canonical form of this value to `out`.
    fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Node::Literal(text) => out.extend_from_slice(text.as_bytes()),
            Node::String(string) => string.write(out)?,
            Node::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out)?;
                }
                out.push(b']');
            }
            Node::Object(members) => {
                out.push(b'{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    key.write(out)?;
                    out.push(b':');
                    value.write(out)?;
                }
                out.push(b'}');
            }
        }
        Some(())
    }

    /// The value `pointer` (RFC 6901: `/amount`, `/items/0/sku`, `~1` for `/` and `~0`
    /// for `~` in a key) names inside this one; `""` names this value itself. `None`
    /// when it names nothing. An array index is any text Rust reads as a `usize`.
    fn pointer(&self, pointer: &str) -> Option<&Self> {
        if pointer.is_empty() {
            return Some(self);
        }
        let mut current = self;
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            current = match current {
                Node::Object(members) => {
                    let i = members
                        .binary_search_by(|(key, _)| key.as_str().cmp(token.as_str()))
                        .ok()?;
                    &members[i].1
                }
                Node::Array(items) => items.get(token.parse::<usize>().ok()?)?,
                Node::Literal(_) | Node::String(_) => return None,
            };
        }
        Some(current)
    }
}

/// A JSON string, escapes decoded.
enum Text<'a> {
    /// A string written without escapes: its text as sent, which holds nothing
    /// serde_json escapes (no `"`, no `\`, no control character).
    Plain(&'a str),
    /// A string written with escapes, decoded.
    Decoded(String),
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        match self {
            Text::Plain(text) => text,
            Text::Decoded(text) => text,
        }
    }

    /// Appends the string as serde_json writes it.
    fn write(&self, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Text::Plain(text) => {
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
            }
            Text::Decoded(text) => serde_json::to_writer(&mut *out, text).ok()?,
        }
        Some(())
    }
}

/// Reads the text of one JSON value that serde_json has validated, front to back,
/// each byte once.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace, then consumes `byte`, or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Reads one value, after any whitespace. `depth_left` is how many more arrays or
    /// objects may nest from here.
    fn value(&mut self, depth_left: usize) -> Option<Node<'a>> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => {
                let depth_left = depth_left.checked_sub(1)?;
                self.pos += 1;
                let mut members = Vec::new();
                self.skip_whitespace();
                if self.peek()? == b'}' {
                    self.pos += 1;
                } else {
                    loop {
                        self.skip_whitespace();
                        let key = self.string()?;
                        self.expect(b':')?;
                        members.push((key, self.value(depth_left)?));
                        self.skip_whitespace();
                        match self.peek()? {
                            b',' => self.pos += 1,
                            b'}' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                // Stable sort, then reject a repeated key.
                members.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                if members
                    .windows(2)
                    .any(|pair| pair[0].0.as_str() == pair[1].0.as_str())
                {
                    return None;
                }
                Some(Node::Object(members))
            }
            b'[' => {
                let depth_left = depth_left.checked_sub(1)?;
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_whitespace();
                if self.peek()? == b']' {
                    self.pos += 1;
                } else {
                    loop {
                        items.push(self.value(depth_left)?);
                        self.skip_whitespace();
                        match self.peek()? {
                            b',' => self.pos += 1,
                            b']' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                Some(Node::Array(items))
            }
            b'"' => self.string().map(Node::String),
            // A number, `true`, `false` or `null`: up to the next delimiter.
            _ => {
                let start = self.pos;
                while let Some(byte) = self.peek() {
                    if matches!(byte, b',' | b']' | b'}' | b' ' | b'\n' | b'\t' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                let text = self.text.get(start..self.pos)?;
                (!text.is_empty()).then_some(Node::Literal(text))
            }
        }
    }

    /// Reads one string at the current position, escapes decoded. A string without
    /// escapes is its own text (serde_json has checked it is UTF-8 without control
    /// characters); one with escapes is decoded by serde_json, which refuses a lone
    /// surrogate.
    fn string(&mut self) -> Option<Text<'a>> {
        let start = self.pos;
        if self.peek()? != b'"' {
            return None;
        }
        self.pos += 1;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
        self.pos += 1;
        let quoted = self.text.get(start..self.pos)?;
        if escaped {
            serde_json::from_str::<String>(quoted)
                .ok()
                .map(Text::Decoded)
        } else {
            quoted.get(1..quoted.len() - 1).map(Text::Plain)
        }
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

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

    fn with_values(values: &[&[u8]]) -> Fingerprint {
        Fingerprint::builder("POST", "/a")
            .header_values("x-account", values.iter().copied())
            .header("x-other", Some(b"o"))
            .body(b"{}", BodyMode::Raw)
            .finish()
    }

    #[test]
    fn every_value_of_a_repeated_header_counts_in_order() {
        let both = with_values(&[b"a", b"b"]);
        assert_ne!(both, with_values(&[b"a"]));
        assert_ne!(both, with_values(&[b"b"]));
        assert_ne!(both, with_values(&[b"b", b"a"]));
        assert_ne!(both, with_values(&[b"a", b"b", b"b"]));
        assert_eq!(both, with_values(&[b"a", b"b"]));
    }

    #[test]
    fn repeated_header_values_differ_from_their_joined_or_split_forms() {
        assert_ne!(with_values(&[b"a", b"b"]), with_values(&[b"a,b"]));
        assert_ne!(with_values(&[b"a", b"b"]), with_values(&[b"a, b"]));
        assert_ne!(with_values(&[b"ab"]), with_values(&[b"a", b"b"]));
        assert_ne!(with_values(&[b""]), with_values(&[]));
        assert_ne!(with_values(&[b"", b""]), with_values(&[b""]));
    }

    #[test]
    fn header_is_header_values_with_one_value_or_none() {
        let single = |value: Option<&[u8]>| {
            Fingerprint::builder("POST", "/a")
                .header("x-account", value)
                .header("x-other", Some(b"o"))
                .body(b"{}", BodyMode::Raw)
                .finish()
        };
        assert_eq!(single(Some(b"a")), with_values(&[b"a"]));
        assert_eq!(single(Some(b"")), with_values(&[b""]));
        assert_eq!(single(None), with_values(&[]));
        assert_ne!(single(None), with_values(&[b""]));
    }

    #[test]
    fn header_digest_is_unchanged_from_earlier_releases() {
        // Fingerprints are stored beside keys: one value or an absent header must keep
        // hashing as before, or retries across an upgrade would be refused as reuse.
        let mut expected = Sha256::new();
        for part in [
            &b"idem-fingerprint-v1"[..],
            b"POST",
            b"/a",
            b"header",
            b"x-account",
            b"present",
            b"a",
            b"header",
            b"x-missing",
            b"absent",
        ] {
            expected.update((part.len() as u64).to_be_bytes());
            expected.update(part);
        }
        let expected = Fingerprint(expected.finalize().into());
        let got = Fingerprint::builder("POST", "/a")
            .header_values("x-account", [&b"a"[..]])
            .header_values("x-missing", [])
            .finish();
        assert_eq!(got, expected);
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

    fn fields(body: &str, pointers: &[&str]) -> Fingerprint {
        Fingerprint::builder("POST", "/p")
            .body_fields(body.as_bytes(), pointers)
            .finish()
    }

    #[test]
    fn selected_fields_ignore_the_others_but_not_their_own_values() {
        let pointers = ["/amount", "/payee/iban"];
        let a = fields(
            r#"{"amount":100,"payee":{"iban":"DE1","name":"A"},"ts":1}"#,
            &pointers,
        );
        let b = fields(
            r#"{"ts":2,"payee":{"name":"B","iban":"DE1"},"amount":100}"#,
            &pointers,
        );
        assert_eq!(a, b, "other fields and key order do not count");
        let c = fields(r#"{"amount":101,"payee":{"iban":"DE1"}}"#, &pointers);
        assert_ne!(a, c, "a selected field's value counts");
        let d = fields(r#"{"amount":100}"#, &pointers);
        assert_ne!(a, d, "an absent field is not the same as a present one");
        let big = fields(r#"{"amount":12345678901234567890123}"#, &["/amount"]);
        let bigger = fields(r#"{"amount":12345678901234567890124}"#, &["/amount"]);
        assert_ne!(big, bigger, "numbers compare by their exact text");
    }

    /// The canonical text of the value `pointer` names in `body`.
    fn pointed(body: &[u8], pointer: &str) -> Option<String> {
        let mut out = Vec::new();
        parse_canonical(body)?.pointer(pointer)?.write(&mut out)?;
        Some(String::from_utf8(out).expect("UTF-8"))
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let body = br#"{"a/b":{"m~n":[10,{"x":true}]}}"#;
        assert_eq!(pointed(body, "/a~1b/m~0n/1/x").as_deref(), Some("true"));
        assert_eq!(pointed(body, "/a~1b/m~0n/0").as_deref(), Some("10"));
        assert_eq!(pointed(body, "/a~1b/m~0n/2"), None);
        assert_eq!(pointed(body, "/missing"), None);
        assert_eq!(pointed(body, "no-slash"), None);
        assert_eq!(
            pointed(body, "").as_deref(),
            Some(r#"{"a/b":{"m~n":[10,{"x":true}]}}"#)
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_hashed_raw_in_fields_mode() {
        assert_ne!(fields("not json", &["/a"]), fields("not jsoN", &["/a"]));
        assert_eq!(fields("not json", &["/a"]), fields("not json", &["/a"]));
    }

    fn canonical(text: &str) -> Option<String> {
        canonical_json(text.as_bytes()).map(|c| String::from_utf8(c).expect("UTF-8"))
    }

    #[test]
    fn canonical_json_tells_apart_integers_beyond_64_bits() {
        let a = canonical("12345678901234567890123");
        let b = canonical("12345678901234567890124");
        assert_eq!(a.as_deref(), Some("12345678901234567890123"));
        assert_ne!(a, b);
        assert_ne!(
            fp(
                "POST",
                "/p",
                br#"{"amount":12345678901234567890123}"#,
                BodyMode::CanonicalJson
            ),
            fp(
                "POST",
                "/p",
                br#"{"amount":12345678901234567890124}"#,
                BodyMode::CanonicalJson
            )
        );
        // Beyond what a u64 holds, and beyond what an f64 tells apart.
        assert_ne!(
            canonical("18446744073709551616"),
            canonical("18446744073709551617")
        );
        assert_ne!(
            canonical("-9223372036854775809"),
            canonical("-9223372036854775810")
        );
    }

    #[test]
    fn canonical_json_tells_apart_decimals_a_float_would_round_together() {
        assert_eq!(
            canonical("0.1000000000000000000001").as_deref(),
            Some("0.1000000000000000000001")
        );
        assert_ne!(canonical("0.1000000000000000000001"), canonical("0.1"));
        assert_ne!(
            fp(
                "POST",
                "/p",
                br#"{"rate":0.1000000000000000000001}"#,
                BodyMode::CanonicalJson
            ),
            fp("POST", "/p", br#"{"rate":0.1}"#, BodyMode::CanonicalJson)
        );
    }

    #[test]
    fn canonical_json_keeps_number_text_so_differently_written_numbers_differ() {
        let forms = [
            "1", "1.0", "1.00", "1e0", "1E0", "1e+0", "10e-1", "0.1e1", "-0", "0",
        ];
        for (i, a) in forms.iter().enumerate() {
            assert_eq!(canonical(a).as_deref(), Some(*a), "{a} keeps its text");
            for b in &forms[i + 1..] {
                assert_ne!(canonical(a), canonical(b), "{a} and {b}");
            }
        }
        // A number too large for an f64 is still JSON, kept as written.
        assert_eq!(canonical(" [ 1e400 ] ").as_deref(), Some("[1e400]"));
    }

    #[test]
    fn canonical_json_decodes_string_escapes_before_comparing_and_sorting() {
        assert_eq!(canonical(r#""\u0041\/""#), canonical(r#""A/""#));
        assert_eq!(canonical(r#""\u00e9""#).as_deref(), Some(r#""é""#));
        assert_eq!(
            canonical(r#""a\u0000\n""#).as_deref(),
            Some(r#""a\u0000\n""#)
        );
        // "\u0062" is "b": it sorts after "a" and before "c".
        assert_eq!(
            canonical(r#"{"c":3,"\u0062":2,"a":1}"#).as_deref(),
            Some(r#"{"a":1,"b":2,"c":3}"#)
        );
        // A lone surrogate is not a string.
        assert_eq!(canonical(r#""\ud800""#), None);
    }

    #[test]
    fn an_object_with_a_repeated_key_is_hashed_as_raw_bytes() {
        assert_eq!(canonical(r#"{"a":1,"a":2}"#), None);
        assert_eq!(canonical(r#"[{"x":{"a":1,"\u0061":1}}]"#), None);
        let json = |body: &[u8]| fp("POST", "/p", body, BodyMode::CanonicalJson);
        let repeated = json(br#"{"a":1,"a":2}"#);
        assert_eq!(repeated, json(br#"{"a":1,"a":2}"#));
        // Not the same request as either reading of it, nor as another text of it.
        assert_ne!(repeated, json(br#"{"a":2}"#));
        assert_ne!(repeated, json(br#"{"a":1}"#));
        assert_ne!(repeated, json(br#"{ "a":1,"a":2}"#));
    }

    #[test]
    fn canonical_json_accepts_the_nesting_serde_json_accepts() {
        for depth in [1, 2, 100, 126, 127, 128, 129, 200, 10_000] {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let mut text = open.repeat(depth);
                text.push('1');
                text.push_str(&close.repeat(depth));
                let serde_accepts = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                assert_eq!(
                    canonical(&text).is_some(),
                    serde_accepts,
                    "depth {depth} of {open}"
                );
            }
        }
    }

    /// `members` (a JSON array's text) inside `depth` objects, padded with whitespace
    /// to `len` bytes.
    fn nested_in_objects(depth: usize, members: &str, len: usize) -> String {
        let mut text = "{\"a\":".repeat(depth);
        text.push_str(members);
        text.push_str(&"}".repeat(depth));
        let padding = len.checked_sub(text.len()).expect("room to pad");
        text.push_str(&" ".repeat(padding));
        text
    }

    /// The least time `cost` took on `a` and on `b` over seven runs, interleaved so
    /// that a busy moment slows both alike.
    fn fastest(cost: &dyn Fn(&str), a: &str, b: &str) -> (Duration, Duration) {
        let time = |body: &str| {
            let start = Instant::now();
            cost(body);
            start.elapsed()
        };
        (0..7).fold((Duration::MAX, Duration::MAX), |(least_a, least_b), _| {
            (least_a.min(time(a)), least_b.min(time(b)))
        })
    }

    #[test]
    fn canonical_json_costs_linear_time_in_nesting_depth() {
        // Two bodies of the same length holding the same members: one nested one object
        // deep, one 120 deep. Reading every object's text once per level above it (the
        // implementation before issue 21) made the deep one cost 18 times the shallow
        // one in a debug build and 15 times in a release build (13 and 16 times with
        // `body_fields`); read in one pass, they cost the same (1.0 to 1.1 times). The
        // bound is on a ratio of the fastest of several interleaved runs, generous so
        // that a busy machine cannot fail it; it does not time anything absolutely.
        let mut members = String::from("[");
        for i in 0..2_000 {
            if i > 0 {
                members.push_str(", ");
            }
            members.push_str(&format!(
                r#"{{"n": {i}, "k{}": "value", "x": [true]}}"#,
                i % 7
            ));
        }
        members.push(']');
        let len = members.len() + 200 * 6;
        let shallow = nested_in_objects(1, &members, len);
        let deep = nested_in_objects(120, &members, len);
        assert_eq!(shallow.len(), deep.len());

        let canonical_of = |body: &str| {
            let canonical = canonical_json(body.as_bytes()).expect("canonical JSON");
            assert!(canonical.len() < body.len());
        };
        let fields_of = |body: &str| {
            Fingerprint::builder("POST", "/p")
                .body_fields(body.as_bytes(), &["", "/a"])
                .finish();
        };
        for (what, cost) in [
            ("canonical_json", &canonical_of as &dyn Fn(&str)),
            ("body_fields", &fields_of),
        ] {
            let (one, many) = fastest(cost, &shallow, &deep);
            let ratio = many.as_secs_f64() / one.as_secs_f64().max(1e-9);
            assert!(
                ratio < 5.0,
                "{what}: 120 levels deep cost {ratio:.1} times one level ({many:?} against {one:?})"
            );
        }
    }

    /// The canonical form before numbers kept their text: through `serde_json::Value`.
    fn through_value(body: &[u8]) -> Option<Vec<u8>> {
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
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        serde_json::to_vec(&sorted(value)).ok()
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
        fn canonical_json_of_plain_json_is_what_serde_json_prints(value in json_value()) {
            let pretty = serde_json::to_vec_pretty(&value).expect("serialize");
            prop_assert_eq!(canonical_json(&pretty), through_value(&pretty));
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
