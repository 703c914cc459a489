//! Buffering a final response's body, up to the storage limit and a time bound.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::BodyExt;

/// A response body, read up to the storage limit and the time bound.
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit: what was read so far, followed by the rest of the body.
    TooLarge(Body),
    /// Not ended within the time bound (a stream): what was read so far, followed by
    /// the rest as it comes.
    Unfinished(Body),
}

/// Reads a response body up to `limit` bytes and for at most `wait`; past either, hands
/// back a body that streams what was read and then the rest.
pub(crate) async fn buffer(
    mut body: Body,
    limit: usize,
    wait: Duration,
) -> Result<Buffered, axum::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame?,
            Ok(None) => return Ok(Buffered::Complete(buf.freeze())),
            Err(_elapsed) => return Ok(Buffered::Unfinished(rest(buf, body))),
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Buffered::TooLarge(rest(buf, body)));
            }
        }
    }
}

/// A body that sends `head`, then what is left of `body`.
fn rest(head: BytesMut, body: Body) -> Body {
    let head = head.freeze();
    let stream = futures_util::stream::once(async move { Ok::<_, axum::Error>(head) })
        .chain(body.into_data_stream());
    Body::from_stream(stream)
}
