//! [`Protocol`]: the HTTP shape of the layer: the key's header, the methods that take
//! part, the status of a mismatch, the Retry-After of its retryable answers.

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use idem_core::headers::IDEMPOTENCY_KEY;

/// The HTTP shape of the layer; set with
/// [`IdempotencyLayer::protocol`](crate::IdempotencyLayer::protocol). The defaults
/// follow the IETF Idempotency-Key draft.
///
/// ```
/// use std::time::Duration;
///
/// use http::{Method, StatusCode};
/// use idem_axum::Protocol;
///
/// let protocol = Protocol::default()
///     .methods([Method::POST, Method::PUT, Method::PATCH])
///     .mismatch_status(StatusCode::CONFLICT)
///     .retry_after(Duration::from_secs(2));
/// # let _ = protocol;
/// ```
#[derive(Debug, Clone)]
pub struct Protocol {
    pub(crate) key_header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) mismatch_status: StatusCode,
    pub(crate) retry_after: Duration,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            key_header: HeaderName::from_static(IDEMPOTENCY_KEY),
            methods: vec![Method::POST, Method::PATCH],
            mismatch_status: StatusCode::UNPROCESSABLE_ENTITY,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl Protocol {
    /// The header that carries the key. `Idempotency-Key` by default.
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.key_header = name;
        self
    }

    /// The methods that take part; requests with other methods pass through untouched.
    /// POST and PATCH by default.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The status for a key reused with a different request: 422 (the IETF draft's
    /// choice, the default) or 409.
    pub fn mismatch_status(mut self, status: StatusCode) -> Self {
        self.mismatch_status = status;
        self
    }

    /// The Retry-After sent with 409 `in-flight` and 503 answers (whole seconds, at
    /// least 1). 1 s by default.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }
}
