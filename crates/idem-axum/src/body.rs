//! Buffering of request and response bodies, each up to its limit.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
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

/// A response body, read up to the storage limit.
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit: what was read so far, followed by the rest of the body.
    TooLarge(Body),
}

/// Reads a response body up to `limit`; past it, hands back a body that streams what
/// was read and then the rest.
pub(crate) async fn buffer(mut body: Body, limit: usize) -> Result<Buffered, axum::Error> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                let head = buf.freeze();
                let stream = futures_util::stream::once(async move { Ok::<_, axum::Error>(head) })
                    .chain(body.into_data_stream());
                return Ok(Buffered::TooLarge(Body::from_stream(stream)));
            }
        }
    }
    Ok(Buffered::Complete(buf.freeze()))
}
