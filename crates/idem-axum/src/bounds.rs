//! What every step of a request needs of the service the layer wraps and of its
//! response bodies: a leaf module, so the steps (job, handler, settle, phased) need not
//! import the service that runs them.

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tower::Service;

/// Any error a body or service may fail with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the layer needs of the service it wraps (axum's routers meet it).
pub(crate) trait Inner<B>:
    Service<Request<Body>, Response = Response<B>, Future: Send + 'static, Error: Send + 'static>
    + Send
    + 'static
{
}

impl<S, B> Inner<B> for S
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

/// What the layer needs of the wrapped service's response bodies.
pub(crate) trait ResponseBody:
    HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}
