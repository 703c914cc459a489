//! [`Timeouts`]: how long a request waits for another one with its key, for the store,
//! and for its handler's body.

use std::time::Duration;

/// How long the layer waits; set with
/// [`IdempotencyLayer::timeouts`](crate::IdempotencyLayer::timeouts).
///
/// ```
/// use std::time::Duration;
///
/// use idem_axum::Timeouts;
///
/// let timeouts = Timeouts::default()
///     .in_flight_wait(Duration::from_secs(2))
///     .store(Duration::from_secs(3));
/// # let _ = timeouts;
/// ```
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub(crate) in_flight_wait: Duration,
    pub(crate) store: Duration,
    pub(crate) response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            in_flight_wait: Duration::from_secs(5),
            store: Duration::from_secs(10),
            response: Duration::from_secs(1),
        }
    }
}

impl Timeouts {
    /// How long a request waits for another one holding the same key to finish
    /// before answering 409 `in-flight` with Retry-After. Zero answers at once. 5 s by
    /// default.
    pub fn in_flight_wait(mut self, wait: Duration) -> Self {
        self.in_flight_wait = wait;
        self
    }

    /// How long a request waits for the store: to open its transaction and claim the
    /// key (on top of [`in_flight_wait`](Self::in_flight_wait)), and to store the
    /// response and commit. 10 s by default. Past it the request gets 503 with
    /// Retry-After (or runs without idempotency under
    /// [`FailureMode::Open`](idem_core::policy::FailureMode::Open), before the handler)
    /// instead of hanging on a store that stopped answering. The store work is not cut
    /// off mid-statement: it goes on in the background, and a transaction it opens too
    /// late is rolled back. A commit that finishes after the answer is found by the
    /// retry, which replays it. The handler's own statements are not bounded by this.
    pub fn store(mut self, timeout: Duration) -> Self {
        self.store = timeout;
        self
    }

    /// How long the layer waits for a final response's body to end before treating it
    /// as a stream: the effects then commit with the status only, and the body passes
    /// through as it comes (a retry gets 410 `response-not-stored`). Bodies of
    /// streaming media types (`text/event-stream`) are never buffered. 1 s by default.
    pub fn response(mut self, timeout: Duration) -> Self {
        self.response = timeout;
        self
    }
}
