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

#[cfg(test)]
mod tests {
    use axum::extract::OriginalUri;
    use http::Request;
    use idem_core::policy::Policy;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).expect("request").into_parts().0
    }

    fn config(policy: Policy) -> Arc<Config> {
        Arc::new(Config {
            policy,
            ..Config::default()
        })
    }

    #[tokio::test]
    async fn the_query_and_the_covered_headers_make_two_requests_differ() {
        let plain = config(Policy::default());
        let body = Bytes::from_static(b"{}");
        let a = fingerprint(&plain, &parts("/pay?x=1", &[]), &body).await;
        assert_ne!(a, fingerprint(&plain, &parts("/pay?x=2", &[]), &body).await);
        let account = &[("x-account", "7")];
        assert_eq!(
            a,
            fingerprint(&plain, &parts("/pay?x=1", account), &body).await
        );
        let covered = config(Policy::default().fingerprint_header("X-Account"));
        let seven = fingerprint(&covered, &parts("/pay?x=1", account), &body).await;
        let eight = parts("/pay?x=1", &[("x-account", "8")]);
        assert_ne!(seven, fingerprint(&covered, &eight, &body).await);
    }

    #[tokio::test]
    async fn inside_a_nested_router_the_path_the_client_sent_counts() {
        let plain = config(Policy::default());
        let body = Bytes::new();
        let mut nested = parts("/pay", &[]);
        nested
            .extensions
            .insert(OriginalUri("/v1/pay".parse().expect("uri")));
        let direct = fingerprint(&plain, &parts("/v1/pay", &[]), &body).await;
        assert_eq!(fingerprint(&plain, &nested, &body).await, direct);
    }

    #[tokio::test]
    async fn a_large_body_hashed_off_the_workers_fingerprints_as_a_small_one_would() {
        let canonical = config(Policy::default().canonical_json());
        let large = format!(
            "{{\"pad\":\"{}\"}}",
            "x".repeat(Fingerprint::BLOCKING_BODY_BYTES)
        );
        let builder = Fingerprint::builder("POST", "/pay");
        let expected = canonical.policy.fingerprint_body(builder, large.as_bytes());
        let body = Bytes::from(large);
        assert_eq!(
            fingerprint(&canonical, &parts("/pay", &[]), &body).await,
            expected
        );
    }
}
