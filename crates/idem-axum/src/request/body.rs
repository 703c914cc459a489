//! Reading the request body, up to its limit.

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::Problem;

/// Reads the request body into memory, up to a limit (413 beyond).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Problem> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Problem::BodyTooLarge { limit })
        }
        Err(e) => {
            tracing::debug!(error = %e, "request body unreadable");
            Err(Problem::BodyUnreadable)
        }
    }
}
