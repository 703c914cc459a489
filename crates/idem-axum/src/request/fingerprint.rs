//! A request's fingerprint, as the route's policy covers it.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use idem_core::Fingerprint;

use super::uri::request_uri;
use crate::config::Config;

/// The request's fingerprint: its method, the path and query the client sent, the
/// configured headers, and its body. A body of [`Fingerprint::BLOCKING_BODY_BYTES`] or
/// more is hashed on tokio's blocking pool, off the async workers (canonical JSON of
/// a large body takes milliseconds).
pub(crate) async fn fingerprint(config: &Arc<Config>, parts: &Parts, body: &Bytes) -> Fingerprint {
    let uri = request_uri(parts);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |pq| pq.as_str());
    let mut builder = Fingerprint::builder(parts.method.as_str(), path);
    for name in &config.policy.fingerprint_headers {
        let values = parts.headers.get_all(name.as_str()).iter();
        builder = builder.header_values(name, values.map(|v| v.as_bytes()));
    }
    if body.len() < Fingerprint::BLOCKING_BODY_BYTES {
        return config.policy.fingerprint_body(builder, body);
    }
    let hashing = {
        let (builder, config, body) = (builder.clone(), config.clone(), body.clone());
        tokio::task::spawn_blocking(move || config.policy.fingerprint_body(builder, &body))
    };
    match hashing.await {
        Ok(fingerprint) => fingerprint,
        // The blocking pool would not run it (the runtime is shutting down): here, then.
        Err(e) if e.is_cancelled() => config.policy.fingerprint_body(builder, body),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
