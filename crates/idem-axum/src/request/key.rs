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
