//! The canonical JSON idem computed before issue 21 made it linear, kept as it was: the
//! reference the linear implementation must agree with byte for byte, since stored
//! fingerprints depend on it. It re-read each array's and object's text once per level
//! above it, so its cost was the body's length times its nesting depth.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{BodyMode, FingerprintBuilder};

/// [`FingerprintBuilder::body`] as it was.
pub(super) fn body(
    mut builder: FingerprintBuilder,
    body: &[u8],
    mode: BodyMode,
) -> FingerprintBuilder {
    match mode {
        BodyMode::Raw => {
            builder.part(b"body-raw");
            builder.part(body);
        }
        BodyMode::CanonicalJson => match canonical_json(body) {
            Some(canonical) => {
                builder.part(b"body-json");
                builder.part(&canonical);
            }
            None => {
                builder.part(b"body-raw-not-json");
                builder.part(body);
            }
        },
    }
    builder
}

/// [`FingerprintBuilder::body_fields`] as it was.
pub(super) fn body_fields<P: AsRef<str>>(
    mut builder: FingerprintBuilder,
    body: &[u8],
    pointers: &[P],
) -> FingerprintBuilder {
    if canonical_json(body).is_none() {
        builder.part(b"body-raw-not-json");
        builder.part(body);
        return builder;
    }
    builder.part(b"body-fields");
    for pointer in pointers {
        let pointer = pointer.as_ref();
        builder.part(pointer.as_bytes());
        match json_pointer(body, pointer).and_then(|raw| canonical_json(raw.as_bytes())) {
            Some(canonical) => {
                builder.part(b"present");
                builder.part(&canonical);
            }
            None => builder.part(b"absent"),
        }
    }
    builder
}

/// The text of the value `pointer` (RFC 6901) names in the JSON document `body`, as
/// sent. `None` when it names nothing. `""` names the whole document.
pub(super) fn json_pointer<'a>(body: &'a [u8], pointer: &str) -> Option<&'a str> {
    let mut current: &RawValue = serde_json::from_slice(body).ok()?;
    if pointer.is_empty() {
        return Some(current.get());
    }
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = current.get();
        current = if text.starts_with('{') {
            let object: std::collections::BTreeMap<String, &RawValue> =
                serde_json::from_str(text).ok()?;
            object.get(&token).copied()?
        } else if text.starts_with('[') {
            let array: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            let index: usize = token.parse().ok()?;
            array.get(index).copied()?
        } else {
            return None;
        };
    }
    Some(current.get())
}

/// How deeply arrays and objects may nest in a body that [`canonical_json`] accepts:
/// the same bound serde_json's own parser applies. A deeper body is not canonical JSON.
const MAX_JSON_DEPTH: usize = 127;

/// [`crate::canonical_json`] as it was.
pub(super) fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    // serde_json (without its `arbitrary_precision` feature) reads numbers into u64, i64
    // or f64; going through `RawValue` keeps each value's text as it was sent, which
    // serde_json has validated, and object keys are sorted here, never by feature
    // unification of serde_json's map.
    let root: &RawValue = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(root.get().len());
    write_canonical(root.get(), MAX_JSON_DEPTH, &mut out)?;
    Some(out)
}

/// Appends the canonical form of `text`, one JSON value as serde_json validated it
/// (no surrounding whitespace). `depth_left` is how many more arrays or objects may
/// nest from here. Each array or object reads its own text once more, so the work is at
/// most the body's length times its nesting depth, which [`MAX_JSON_DEPTH`] bounds.
fn write_canonical(text: &str, depth_left: usize, out: &mut Vec<u8>) -> Option<()> {
    match text.as_bytes().first()? {
        b'{' => {
            let depth_left = depth_left.checked_sub(1)?;
            let Members(mut members) = serde_json::from_str(text).ok()?;
            // Stable sort, then reject a repeated key.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
                return None;
            }
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).ok()?;
                out.push(b':');
                write_canonical(value.get(), depth_left, out)?;
            }
            out.push(b'}');
        }
        b'[' => {
            let depth_left = depth_left.checked_sub(1)?;
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item.get(), depth_left, out)?;
            }
            out.push(b']');
        }
        b'"' => {
            let string: String = serde_json::from_str(text).ok()?;
            serde_json::to_writer(&mut *out, &string).ok()?;
        }
        // A number, `true`, `false` or `null`: the exact text.
        _ => out.extend_from_slice(text.as_bytes()),
    }
    Some(())
}

/// The members of one JSON object in the order they were written, repeats included,
/// each value left unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Fingerprint, canonical_json as linear_canonical_json};
    use super::*;
    use proptest::prelude::*;

    const POINTERS: &[&str] = &[
        "/amount",
        "/payee",
        "/items/1/sku",
        "/items/+1",
        "",
        "/a",
        "/b/2",
        "nope",
        "/missing",
    ];

    /// Fingerprints computed by the implementation above before it was replaced:
    /// (body, in `CanonicalJson` mode, with `body_fields(POINTERS)`).
    const PINNED: &[(&str, &str, &str)] = &[
        (
            r#"{"b": [1, 2.50, {"z": null, "y": true}], "a": "\u00e9\n", "c": -0.1e+5}"#,
            "786dcfaa498a111b7c1bcee37a3dfa9c642fd1ea2f6fe38f14a177459b7060b8",
            "8290ab4b6dffd5a12669119e4b10f36e9c25cfcaed47c8d579cc7ecc3a75007b",
        ),
        (
            r#" [ 1e400 , "\ud83d\ude00" , {} , [] , "" ] "#,
            "a19f08a26fdfc931b9fccbcec538306e9f446bec672cccaa525591df2059b821",
            "180e315e4a5a2d0fdb5436a23cfb5d20b7f50c4c99a7ab6376c5f32de433db40",
        ),
        (
            r#"{"a":1,"a":2}"#,
            "a32769c50bdc7cb066752e1d0e201943c23dcbf5bc487335153945311ea831b7",
            "a32769c50bdc7cb066752e1d0e201943c23dcbf5bc487335153945311ea831b7",
        ),
        (
            r#""\ud800""#,
            "5521ab0bd01ba717775611b6c95a5236ecfe449093361e3cd8c8fa596c5aad1a",
            "5521ab0bd01ba717775611b6c95a5236ecfe449093361e3cd8c8fa596c5aad1a",
        ),
        (
            "not json",
            "17edd5fe2357e3a93aa7fc2c0d09f597b6e2f0b7088759c25aec4d31c5b17a5e",
            "17edd5fe2357e3a93aa7fc2c0d09f597b6e2f0b7088759c25aec4d31c5b17a5e",
        ),
        (
            r#"{"amount":12345678901234567890123,"payee":{"iban":"DE1","name":"A"},"items":[{"sku":"x"},{"sku":"y"}]}"#,
            "7a42fc2431441436d2cb124c6384164a91ce1c6b5899b6f6af003d0acfb35763",
            "fe94460e6f7b99760b096b13b1756721f0054cf26d156c491fd4d0be2e55e616",
        ),
    ];

    fn builder() -> FingerprintBuilder {
        Fingerprint::builder("POST", "/p")
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn fingerprints_are_those_of_earlier_releases() {
        for (body, json, fields) in PINNED {
            let body = body.as_bytes();
            let new_json = builder().body(body, BodyMode::CanonicalJson).finish();
            let new_fields = builder().body_fields(body, POINTERS).finish();
            assert_eq!(new_json.to_string(), *json, "{body:?}");
            assert_eq!(new_fields.to_string(), *fields, "{body:?}");
            // And the reference is the code that computed them.
            let old_json = super::body(builder(), body, BodyMode::CanonicalJson).finish();
            assert_eq!(old_json, new_json);
            assert_eq!(
                super::body_fields(builder(), body, POINTERS).finish(),
                new_fields
            );
        }
        // 127 arrays deep is canonical JSON; 128 is hashed raw.
        for (depth, expected) in [
            (
                127,
                "b410f9293b672ed5d06a8abc49cc34030b961dbf265d50b9209c8ca8564120b0",
            ),
            (
                128,
                "e4ba397635ff6285de2980b92ed1e1a8822296f508d8afed313e1dabba6fb23c",
            ),
        ] {
            let body = nested(depth);
            let fingerprint = builder()
                .body(body.as_bytes(), BodyMode::CanonicalJson)
                .finish();
            assert_eq!(fingerprint.to_string(), expected, "depth {depth}");
        }
        assert!(linear_canonical_json(nested(127).as_bytes()).is_some());
        assert_eq!(linear_canonical_json(nested(128).as_bytes()), None);
    }

    /// Insignificant whitespace, sometimes none.
    fn ws() -> impl Strategy<Value = String> {
        prop_oneof![3 => Just(String::new()), 1 => "[ \t\r\n]{1,2}"]
    }

    /// A string's text, quotes included, with escapes that decode to the same text
    /// as plain characters (so keys repeat after decoding), surrogate pairs, lone
    /// surrogates, control characters and text beyond ASCII.
    fn string_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("a"),
            Just("b"),
            Just("\\u0061"),
            Just("\\u0062"),
            Just("\\n"),
            Just("\\u0000"),
            Just("\\\""),
            Just("\\\\"),
            Just("\\/"),
            Just("/"),
            Just("é"),
            Just("\\u00e9"),
            Just("😀"),
            Just("\\ud83d\\ude00"),
            Just("\\ud800"),
            Just("\\udc00x"),
            Just("\u{7f}"),
        ];
        proptest::collection::vec(piece, 0..4).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
    }

    fn number_text() -> impl Strategy<Value = String> {
        "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?"
    }

    /// A JSON text, valid or (rarely) not, with repeated keys now and then.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            number_text(),
            string_text(),
        ];
        leaf.prop_recursive(5, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, item, b)| format!("{a}{item}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                proptest::collection::vec(
                    (
                        ws(),
                        prop_oneof![string_text(), Just("\"k\"".to_owned())],
                        ws(),
                        inner,
                        ws()
                    ),
                    0..5
                )
                .prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(a, key, b, value, c)| format!("{a}{key}{b}:{value}{c}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    /// A text of `json_text`, nested some 120 to 135 arrays and objects deep.
    fn deep_text() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(any::<bool>(), 120..136),
            json_text(),
            ws(),
        )
            .prop_map(|(levels, inner, ws)| {
                let mut text = String::new();
                for &object in &levels {
                    text.push_str(if object { "{\"k\":" } else { "[" });
                    text.push_str(&ws);
                }
                text.push_str(&inner);
                for &object in levels.iter().rev() {
                    text.push_str(&ws);
                    text.push(if object { '}' } else { ']' });
                }
                text
            })
    }

    /// An edit of a text: a byte replaced, inserted or removed.
    fn mutated(text: Vec<u8>, at: usize, byte: u8, how: u8) -> Vec<u8> {
        let mut text = text;
        if text.is_empty() {
            return vec![byte];
        }
        let at = at % text.len();
        match how % 3 {
            0 => text[at] = byte,
            1 => text.insert(at, byte),
            _ => {
                text.remove(at);
            }
        }
        text
    }

    fn pointers() -> impl Strategy<Value = Vec<String>> {
        let pointer = prop_oneof![
            Just(String::new()),
            Just("/k".to_owned()),
            Just("/a".to_owned()),
            Just("/0".to_owned()),
            Just("/1".to_owned()),
            Just("/+1".to_owned()),
            Just("/01".to_owned()),
            Just("/k/0".to_owned()),
            Just("/0/k".to_owned()),
            Just("/é".to_owned()),
            Just("/~1".to_owned()),
            Just("/".to_owned()),
            Just("nope".to_owned()),
            "(/(k|a|b|ab|0|1|2|~0|~1|\u{0}|é)){1,4}",
        ];
        proptest::collection::vec(pointer, 0..4)
    }

    fn assert_same(body: &[u8], pointers: &[String]) -> Result<(), TestCaseError> {
        prop_assert_eq!(linear_canonical_json(body), canonical_json(body));
        prop_assert_eq!(
            builder().body(body, BodyMode::CanonicalJson).finish(),
            super::body(builder(), body, BodyMode::CanonicalJson).finish()
        );
        prop_assert_eq!(
            builder().body_fields(body, pointers).finish(),
            super::body_fields(builder(), body, pointers).finish()
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn linear_canonical_json_agrees_with_the_reference(
            text in json_text(),
            pointers in pointers(),
        ) {
            assert_same(text.as_bytes(), &pointers)?;
        }

        #[test]
        fn linear_canonical_json_agrees_with_the_reference_on_edited_texts(
            text in json_text(),
            at in any::<usize>(),
            byte in prop_oneof![
                Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'),
                Just(b','), Just(b':'), Just(b' '), Just(b'1'), Just(b'e'), Just(b'.'),
                Just(0xff), any::<u8>()
            ],
            how in any::<u8>(),
            pointers in pointers(),
        ) {
            assert_same(&mutated(text.into_bytes(), at, byte, how), &pointers)?;
        }

        #[test]
        fn linear_canonical_json_agrees_with_the_reference_on_any_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            pointers in pointers(),
        ) {
            assert_same(&bytes, &pointers)?;
        }
    }

    proptest! {
        // Each case reads some 130 levels with the reference, which costs the body's
        // length times its depth: fewer cases.
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn linear_canonical_json_agrees_with_the_reference_at_the_depth_bound(
            text in deep_text(),
            pointers in pointers(),
        ) {
            assert_same(text.as_bytes(), &pointers)?;
        }
    }
}
