//! Headers as stored in a `jsonb` column (the outbox's and the inbox's): an object of
//! strings.

use serde_json::Value;

/// The `jsonb` object for `headers`.
pub(crate) fn to_json(headers: &[(String, String)]) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The pairs of a stored object (a non-string value as its JSON text; anything but an
/// object, or NULL, as no headers).
pub(crate) fn from_json(stored: Option<Value>) -> Vec<(String, String)> {
    match stored {
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    }
}
