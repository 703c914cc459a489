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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_a_nested_router_the_uri_is_the_one_the_client_sent() {
        let mut req = Request::builder()
            .uri("/payments?fast=1")
            .body(Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(OriginalUri("/v1/payments?fast=1".parse().expect("uri")));
        assert_eq!(kept_query(&req).as_deref(), Some("fast=1"));
        let (parts, _) = req.into_parts();
        assert_eq!(request_uri(&parts).path(), "/v1/payments");
    }

    #[test]
    fn outside_any_router_the_request_s_own_uri_counts() {
        let req = Request::builder()
            .uri("/payments")
            .body(Body::empty())
            .expect("request");
        assert_eq!(kept_query(&req), None);
        let (parts, _) = req.into_parts();
        assert_eq!(request_uri(&parts).path(), "/payments");
    }
}
