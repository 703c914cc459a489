//! The key a request carries, read from the layer's key header.

use axum::body::Body;
use http::Request;
use idem_core::{IdempotencyKey, KeyError};

use crate::config::Config;

/// The request's key: `None` without one, `Err` (why) when it is sent twice or is not
/// a valid key.
pub(crate) fn read_key(
    config: &Config,
    req: &Request<Body>,
) -> Result<Option<IdempotencyKey>, String> {
    let mut values = req.headers().get_all(&config.protocol.key_header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!(
            "the `{}` header was sent more than once",
            config.protocol.key_header
        ));
    }
    IdempotencyKey::from_bytes(value.as_bytes())
        .map(Some)
        .map_err(|e: KeyError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_keys(keys: &[&str]) -> Request<Body> {
        let mut req = Request::builder().uri("/payments");
        for key in keys {
            req = req.header("idempotency-key", *key);
        }
        req.body(Body::empty()).expect("request")
    }

    #[test]
    fn a_request_without_the_header_has_no_key() {
        assert_eq!(read_key(&Config::default(), &with_keys(&[])), Ok(None));
    }

    #[test]
    fn a_valid_key_is_read_as_sent() {
        let key = read_key(&Config::default(), &with_keys(&["order-4711"])).expect("valid");
        assert_eq!(key.as_ref().map(IdempotencyKey::as_str), Some("order-4711"));
    }

    #[test]
    fn a_key_sent_twice_or_invalid_is_refused_with_the_reason() {
        let twice = read_key(&Config::default(), &with_keys(&["a", "b"]));
        assert!(twice.is_err_and(|why| why.contains("more than once")));
        assert!(read_key(&Config::default(), &with_keys(&[""])).is_err());
    }
}
