//! Fuzzing of the two parsers that read what the network sends: the idempotency key
//! and the JSON body (canonical-JSON fingerprinting). `cargo fuzz` needs a nightly
//! toolchain, so these are property tests with many cases; they run in every
//! `cargo test`, bounded by their case count.

use idem_core::{BodyMode, Fingerprint, IdempotencyKey, MAX_KEY_LEN, canonical_json};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 4096,
        ..ProptestConfig::default()
    }
}

/// Header values as a hostile client might send them: arbitrary bytes, or quoted
/// strings with escapes in odd places.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), 0x20u8..0x7f], 0..40)
            .prop_map(|inner| {
                let mut v = vec![b'"'];
                v.extend(inner);
                v.push(b'"');
                v
            }),
    ]
}

/// A JSON value and a text of it pretty-printed with a random indent (whitespace
/// between tokens, never inside strings).
fn formatted_json() -> impl Strategy<Value = (serde_json::Value, String)> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(serde_json::Value::from),
        "[a-z\"\\\\ é]{0,5}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    (value, 0usize..5).prop_map(|(value, indent)| {
        let indent = " ".repeat(indent);
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        serde::Serialize::serialize(&value, &mut ser).expect("a Value serializes");
        (value, String::from_utf8(out).expect("JSON is UTF-8"))
    })
}

/// JSON number texts as the grammar allows them, with more digits than a u64 holds or
/// an f64 tells apart.
fn number_text() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,4})?"
}

/// Insignificant whitespace as JSON allows it between tokens.
fn whitespace() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,3}"
}

/// How many arrays and objects nest in `value`, itself included.
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `inner` inside one array (`false`) or one object (`true`) per level, outermost
/// first, with `ws` around every bracket.
fn nest(levels: &[bool], inner: &str, ws: &str) -> String {
    let mut text = String::new();
    for &object in levels {
        text.push_str(if object { "{\"k\":" } else { "[" });
        text.push_str(ws);
    }
    text.push_str(inner);
    for &object in levels.iter().rev() {
        text.push_str(ws);
        text.push(if object { '}' } else { ']' });
    }
    text
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn key_parsing_accepts_only_valid_keys_and_never_panics(value in header_value()) {
        match IdempotencyKey::from_bytes(&value) {
            Ok(key) => {
                let k = key.as_str().as_bytes();
                prop_assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN);
                prop_assert!(k.iter().all(|b| (0x21..=0x7e).contains(b)));
                // A parsed key, quoted again, parses to itself.
                let requoted = format!("\"{}\"", key.as_str().replace('\\', "\\\\").replace('"', "\\\""));
                prop_assert_eq!(IdempotencyKey::parse(&requoted), Ok(key.clone()));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn canonical_json_ignores_formatting_and_never_panics((value, text) in formatted_json()) {
        let compact = serde_json::to_vec(&value).unwrap_or_default();
        prop_assert_eq!(canonical_json(text.as_bytes()), canonical_json(&compact));
        let fp = |body: &[u8]| Fingerprint::builder("POST", "/f").body(body, BodyMode::CanonicalJson).finish();
        prop_assert_eq!(fp(text.as_bytes()), fp(&compact));
    }

    #[test]
    fn canonical_json_on_arbitrary_bytes_is_a_fixed_point(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Some(canonical) = canonical_json(&bytes) {
            prop_assert_eq!(canonical_json(&canonical), Some(canonical.clone()));
            prop_assert!(std::str::from_utf8(&canonical).is_ok());
        }
    }

    #[test]
    fn canonical_json_keeps_every_number_as_written(
        a in number_text(),
        b in prop_oneof![number_text(), "[0-9]".prop_map(|d| d)],
        ws in whitespace(),
    ) {
        // `b` is a second number, or `a` with one more digit in its fraction or exponent
        // (a fraction of one digit when `a` is an integer): another text, maybe of the
        // same value.
        let b = match b.len() {
            1 if a.contains(['.', 'e', 'E']) => format!("{a}{b}"),
            1 => format!("{a}.{b}"),
            _ => b,
        };
        let body = format!("{ws}{{{ws}\"n\"{ws}:{ws}[{ws}{a}{ws},{ws}{b}{ws}]{ws}}}{ws}");
        prop_assert_eq!(
            canonical_json(body.as_bytes()),
            Some(format!("{{\"n\":[{a},{b}]}}").into_bytes())
        );
        let fp = |n: &str| {
            Fingerprint::builder("POST", "/f")
                .body(format!("{{\"amount\":{n}}}").as_bytes(), BodyMode::CanonicalJson)
                .finish()
        };
        prop_assert_eq!(fp(&a) == fp(&b), a == b);
        prop_assert_eq!(fp(&a), fp(&format!("{ws}{a}{ws}")));
    }

    #[test]
    fn canonical_json_nests_to_127_levels_and_hashes_deeper_bodies_raw(
        levels in proptest::collection::vec(any::<bool>(), 0..140),
        (value, text) in formatted_json(),
        ws in whitespace(),
    ) {
        // Nesting is bounded as serde_json bounds it: 127 arrays and objects inside each
        // other are canonical JSON; deeper, a body is hashed as raw bytes (so its
        // whitespace counts), never refused.
        let body = nest(&levels, &text, &ws);
        let compact = serde_json::to_string(&value).expect("a Value serializes");
        let canonical = canonical_json(compact.as_bytes()).expect("a Value is canonical JSON");
        let canonical = String::from_utf8(canonical).expect("UTF-8");
        let fp = |body: &str| Fingerprint::builder("POST", "/f").body(body.as_bytes(), BodyMode::CanonicalJson).finish();
        let spaced = nest(&levels, &text, &format!("{ws} "));
        if levels.len() + depth(&value) <= 127 {
            prop_assert_eq!(canonical_json(body.as_bytes()), Some(nest(&levels, &canonical, "").into_bytes()));
            prop_assert_eq!(fp(&body), fp(&spaced));
        } else {
            prop_assert_eq!(canonical_json(body.as_bytes()), None);
            prop_assert_ne!(fp(&body), fp(&spaced));
        }
    }
}
