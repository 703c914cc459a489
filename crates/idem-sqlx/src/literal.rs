//! Values written into SQL text, for the few statements sent in the simple-query
//! protocol (which has no parameters). Each value is hex-encoded and decoded by the
//! server, so the only characters of a value in the text are `0-9a-f`: nothing a
//! request carries can end the literal, whatever the server's
//! `standard_conforming_strings`.

use std::fmt::Write;

/// `value` as a SQL `text` expression.
pub(crate) fn text(value: &str) -> String {
    format!("convert_from({}, 'UTF8')", bytes(value.as_bytes()))
}

/// `value` as a SQL `text` expression, or `NULL`.
pub(crate) fn optional_text(value: Option<&str>) -> String {
    value.map_or_else(|| "NULL".to_owned(), text)
}

/// `value` as a SQL `bytea` expression.
pub(crate) fn bytes(value: &[u8]) -> String {
    let mut sql = String::with_capacity(value.len() * 2 + 16);
    sql.push_str("decode('");
    sql.push_str(&hex::encode(value));
    sql.push_str("', 'hex')");
    sql
}

/// `value` as a SQL `double precision` literal (finite values only; others are 0).
pub(crate) fn float(value: f64) -> String {
    let value = if value.is_finite() { value } else { 0.0 };
    let mut sql = String::new();
    // `{:?}` keeps a decimal point or exponent, so the literal is never an integer.
    let _ = write!(sql, "{value:?}::float8");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reaches_the_text_as_hex_digits_only() {
        let sql = text("o'brien\\; DROP TABLE idem.keys; --");
        let inner = sql
            .strip_prefix("convert_from(decode('")
            .and_then(|s| s.strip_suffix("', 'hex'), 'UTF8')"))
            .expect("the text expression's shape");
        assert!(inner.chars().all(|c| c.is_ascii_hexdigit()), "{inner}");
        assert_eq!(
            hex::decode(inner).expect("hex"),
            b"o'brien\\; DROP TABLE idem.keys; --"
        );
    }

    #[test]
    fn a_missing_text_is_null_and_bytes_are_decoded_from_hex() {
        assert_eq!(optional_text(None), "NULL");
        assert_eq!(bytes(&[0, 255, 16]), "decode('00ff10', 'hex')");
    }

    #[test]
    fn a_float_stays_a_float_and_non_finite_values_become_zero() {
        assert_eq!(float(86400.0), "86400.0::float8");
        assert_eq!(float(0.25), "0.25::float8");
        assert_eq!(float(f64::NAN), "0.0::float8");
    }
}
