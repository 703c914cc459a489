//! The URI the client sent, as everything that identifies a request reads it: a leaf
//! module.

use axum::body::Body;
use axum::extract::OriginalUri;
use http::Request;
use http::request::Parts;

/// The URI the client sent: inside `Router::nest`, axum strips the prefix from the
/// request's URI before inner layers run, and keeps the original as [`OriginalUri`].
/// Everything that identifies the request (its fingerprint, its stored path, the
/// completer's kept request) reads this one.
pub(crate) fn request_uri(parts: &Parts) -> &http::Uri {
    original_uri(&parts.extensions, &parts.uri)
}

pub(crate) fn original_uri<'a>(
    extensions: &'a http::Extensions,
    uri: &'a http::Uri,
) -> &'a http::Uri {
    extensions
        .get::<OriginalUri>()
        .map_or(uri, |original| &original.0)
}

/// The query string the client sent (without `?`), as a phased claim keeps it.
pub(crate) fn kept_query(req: &Request<Body>) -> Option<String> {
    original_uri(req.extensions(), req.uri())
        .query()
        .map(str::to_owned)
}
