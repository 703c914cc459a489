//! What a client does with an answer to a request it sent with an idempotency key:
//! the classification `idem-client` retries by, kept here beside the layer's own
//! contract so the two cannot drift apart.

/// The problem `type` of idem's 409 for a key whose first request is still running.
pub const IN_FLIGHT_PROBLEM: &str = "urn:idem:problem:in-flight";

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request succeeded (2xx, 3xx): done.
    Success,
    /// The answer is final and retrying cannot change it (a validation failure, an
    /// unknown resource, a key reused for a different request...): return it.
    Final,
    /// Retrying the same request with the same key is safe and may succeed.
    Retry,
}

/// How a client classifies statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryStatuses {
    /// Whether a 500 is retried (off by default: a 500 usually means a bug that a
    /// retry repeats; with idem's layer a 500 also means nothing was committed).
    pub retry_500: bool,
}

impl RetryStatuses {
    /// The verdict for `status`. `problem_type` is the `type` of an
    /// `application/problem+json` body, which tells idem's 409 `in-flight` (retry: the
    /// first request is still running) from a 409 a server answers for a conflict that
    /// retrying does not resolve.
    ///
    /// Retried: 408, 425, 429, 502, 503, 504, idem's 409 `in-flight`, and 500 when
    /// configured. Never: any other 4xx (400, 401, 403, 404, 413, 422, the mismatch
    /// answer...) or 5xx.
    ///
    /// ```
    /// use idem_core::retry::{IN_FLIGHT_PROBLEM, RetryStatuses, Verdict};
    ///
    /// let statuses = RetryStatuses::default();
    /// assert_eq!(statuses.verdict(503, None), Verdict::Retry);
    /// assert_eq!(statuses.verdict(409, Some(IN_FLIGHT_PROBLEM)), Verdict::Retry);
    /// assert_eq!(statuses.verdict(409, None), Verdict::Final);
    /// assert_eq!(statuses.verdict(422, None), Verdict::Final);
    /// assert_eq!(statuses.verdict(201, None), Verdict::Success);
    /// ```
    pub fn verdict(&self, status: u16, problem_type: Option<&str>) -> Verdict {
        match status {
            200..=399 => Verdict::Success,
            408 | 425 | 429 | 502 | 503 | 504 => Verdict::Retry,
            409 if problem_type == Some(IN_FLIGHT_PROBLEM) => Verdict::Retry,
            500 if self.retry_500 => Verdict::Retry,
            _ => Verdict::Final,
        }
    }
}

/// Why a client stopped retrying and returned what it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The answer (or failure) is not one a retry can change, or the request's body
    /// could not be sent again.
    NotRetryable,
    /// The request used its attempts.
    Attempts,
    /// The next attempt would start after the request's deadline.
    Deadline,
    /// The retry budget was empty: retries were already a large share of requests.
    Budget,
}

impl StopReason {
    /// A short name, for logs and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not retryable",
            StopReason::Attempts => "attempts used",
            StopReason::Deadline => "deadline passed",
            StopReason::Budget => "retry budget empty",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_failures_and_the_mismatch_answer_are_never_retried() {
        let statuses = RetryStatuses { retry_500: true };
        for status in [400, 401, 403, 404, 405, 410, 413, 415, 422] {
            assert_eq!(statuses.verdict(status, None), Verdict::Final, "{status}");
        }
        let mismatch = Some("urn:idem:problem:key-mismatch");
        assert_eq!(statuses.verdict(409, mismatch), Verdict::Final);
        assert_eq!(statuses.verdict(422, mismatch), Verdict::Final);
    }

    #[test]
    fn transient_statuses_and_in_flight_are_retried() {
        let statuses = RetryStatuses::default();
        for status in [408, 425, 429, 502, 503, 504] {
            assert_eq!(statuses.verdict(status, None), Verdict::Retry, "{status}");
        }
        assert_eq!(
            statuses.verdict(409, Some(IN_FLIGHT_PROBLEM)),
            Verdict::Retry
        );
    }

    #[test]
    fn a_500_is_retried_only_when_configured() {
        assert_eq!(RetryStatuses::default().verdict(500, None), Verdict::Final);
        let statuses = RetryStatuses { retry_500: true };
        assert_eq!(statuses.verdict(500, None), Verdict::Retry);
        assert_eq!(statuses.verdict(501, None), Verdict::Final);
    }

    #[test]
    fn successes_and_redirects_end_the_request() {
        for status in [200, 201, 204, 303] {
            assert_eq!(
                RetryStatuses::default().verdict(status, None),
                Verdict::Success
            );
        }
    }
}
