//! Reading what an attempt brought back: the problem type of a 409, the Retry-After,
//! whether a failure without an answer may be retried.

use std::time::{Duration, SystemTime};

use http::header;
use idem_core::retry::RetryStatuses;
use reqwest::ResponseBuilderExt;

/// The media type of idem's own answers.
const PROBLEM_JSON: &str = "application/problem+json";

/// The most of a problem body that is read to find its `type`.
const MAX_PROBLEM_BODY: usize = 64 * 1024;

/// The `type` of an `application/problem+json` body, when the verdict on the answer's
/// status, or the reason to stop at it, depends on it
/// ([`RetryStatuses::reads_problem_type`]: a 409, which may be idem's `in-flight` or
/// `lease-lost` or a conflict that retrying does not resolve, a 5xx, or a 410, which
/// may be `key-expired`), and the response with its body put back. Other responses
/// pass untouched.
pub(crate) async fn problem_type(
    response: reqwest::Response,
    statuses: &RetryStatuses,
) -> Result<(Option<String>, reqwest::Response), reqwest::Error> {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if !is_problem || !statuses.reads_problem_type(response.status().as_u16()) {
        return Ok((None, response));
    }
    let (status, version, url) = (
        response.status(),
        response.version(),
        response.url().clone(),
    );
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    let kind = (body.len() <= MAX_PROBLEM_BODY)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    let mut rebuilt = http::Response::new(body);
    *rebuilt.status_mut() = status;
    *rebuilt.version_mut() = version;
    *rebuilt.headers_mut() = headers;
    // The response keeps its URL (reqwest reads it from an extension the builder sets).
    if let Some(url) = http::Response::builder().url(url).extensions_ref() {
        rebuilt.extensions_mut().extend(url.clone());
    }
    let rebuilt = reqwest::Response::from(rebuilt);
    Ok((kind, rebuilt))
}

/// The response's Retry-After (seconds or an HTTP date), if any.
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    idem_core::delivery::parse_retry_after(value, SystemTime::now())
}

/// Whether a failure without an answer may be retried: the connection could not be
/// made, or broke, or timed out. The dangerous case is the last two: the server may
/// have acted, which is what the key is for.
pub(crate) fn transport_retryable(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Reqwest(e) => {
            !e.is_builder() && (e.is_connect() || e.is_timeout() || e.is_request())
        }
        reqwest_middleware::Error::Middleware(_) => false,
    }
}
