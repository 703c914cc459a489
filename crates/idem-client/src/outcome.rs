//! What a request through the middleware tells its caller: how many attempts it took,
//! with which key, whether the answer was a replay, and why retrying stopped.

use idem_core::retry::StopReason;

/// How a request went: a response extension (`response.extensions().get::<Attempts>()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts {
    /// The idempotency key every attempt carried (`None` for a method that takes no
    /// key, or when the request's own key header was not text).
    pub key: Option<String>,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Whether the server answered from its stored response (`Idempotent-Replayed:
    /// true`): an earlier attempt had already succeeded.
    pub replayed: bool,
    /// Why the middleware stopped with this answer when it was not a success: it is
    /// final ([`StopReason::NotRetryable`]; [`StopReason::KeyExpired`] for a 410
    /// `key-expired`, whose request completed long ago), or a retry was not allowed.
    pub stopped: Option<StopReason>,
}

/// The error of a request that failed without an answer (a connection failure, a
/// timeout) and was not retried again: why, after how many attempts, with which key.
/// It comes as `reqwest_middleware::Error::Middleware`; [`RetryError::of`] finds it.
#[derive(Debug, thiserror::Error)]
#[error("request failed after {attempts} attempt(s), {reason}: {source}")]
pub struct RetryError {
    /// Why retrying stopped.
    pub reason: StopReason,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// The idempotency key every attempt carried.
    pub key: Option<String>,
    /// The last attempt's failure.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl RetryError {
    /// The [`RetryError`] inside an error of the middleware stack, if there is one.
    pub fn of(error: &reqwest_middleware::Error) -> Option<&RetryError> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<RetryError>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// An attempt that did not finish within its time (`attempt_timeout`, or what was left
/// of the deadline).
#[derive(Debug, thiserror::Error)]
#[error("the attempt did not finish within {0:?}")]
pub struct AttemptTimedOut(pub std::time::Duration);
