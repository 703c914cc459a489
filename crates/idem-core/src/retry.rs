//! What a client does with an answer to a request it sent with an idempotency key:
//! the classification `idem-client` retries by, kept here beside the layer's own
//! contract so the two cannot drift apart.

/// The problem `type` of idem's 409 for a key whose first request is still running.
pub const IN_FLIGHT_PROBLEM: &str = "urn:idem:problem:in-flight";

/// The problem `type` of idem's 409 for a phased request whose lease passed to another
/// attempt with the same key: a retry with that key waits for the new owner's answer.
pub const LEASE_LOST_PROBLEM: &str = "urn:idem:problem:lease-lost";

/// The problem `type` of idem's 503 for a phased request interrupted between phases: a
/// retry with the same key resumes after the phases that committed.
pub const PHASE_INTERRUPTED_PROBLEM: &str = "urn:idem:problem:phase-interrupted";

/// The problem `type` of idem's 503 for a commit that failed or was not confirmed: a
/// retry with the same key replays the request if it committed and runs it if not.
pub const COMMIT_FAILED_PROBLEM: &str = "urn:idem:problem:commit-failed";

/// The problem `type` of idem's 503 for a store that could not be reached: nothing ran.
pub const STORE_UNAVAILABLE_PROBLEM: &str = "urn:idem:problem:store-unavailable";

/// The problem `type` of idem's 410 for a late retry of a request whose key expired and
/// left a tombstone: the request completed long ago (the answer says when, and with
/// which status), and with this key it is neither replayed nor run again.
pub const KEY_EXPIRED_PROBLEM: &str = "urn:idem:problem:key-expired";

/// The problem types with which idem's layer says "retry with the same key": the answer
/// is not the request's result, and a retry with the key gets it.
pub const SAME_KEY_RETRY_PROBLEMS: [&str; 5] = [
    IN_FLIGHT_PROBLEM,
    LEASE_LOST_PROBLEM,
    PHASE_INTERRUPTED_PROBLEM,
    COMMIT_FAILED_PROBLEM,
    STORE_UNAVAILABLE_PROBLEM,
];

/// Whether `problem_type` is one with which idem's layer says "retry with the same
/// key" (one of [`SAME_KEY_RETRY_PROBLEMS`]).
///
/// ```
/// use idem_core::retry::{LEASE_LOST_PROBLEM, says_retry_with_the_same_key};
///
/// assert!(says_retry_with_the_same_key(LEASE_LOST_PROBLEM));
/// assert!(!says_retry_with_the_same_key("urn:idem:problem:key-mismatch"));
/// ```
pub fn says_retry_with_the_same_key(problem_type: &str) -> bool {
    SAME_KEY_RETRY_PROBLEMS.contains(&problem_type)
}

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
    /// `application/problem+json` body, which tells idem's answers that say "retry with
    /// the same key" (409 `in-flight` and `lease-lost`, 503 `phase-interrupted`,
    /// `commit-failed`, `store-unavailable`: [`SAME_KEY_RETRY_PROBLEMS`]) from a 409 a
    /// server answers for a conflict that retrying does not resolve.
    ///
    /// Retried: 408, 425, 429, 502, 503, 504; a 409 or any 5xx whose problem type says
    /// "retry with the same key"; and 500 when configured. Never: any other 4xx (400,
    /// 401, 403, 404, 413, 422, the mismatch answer...), whatever its problem type, nor
    /// any other 5xx.
    ///
    /// ```
    /// use idem_core::retry::{IN_FLIGHT_PROBLEM, LEASE_LOST_PROBLEM, RetryStatuses, Verdict};
    ///
    /// let statuses = RetryStatuses::default();
    /// assert_eq!(statuses.verdict(503, None), Verdict::Retry);
    /// assert_eq!(statuses.verdict(409, Some(IN_FLIGHT_PROBLEM)), Verdict::Retry);
    /// assert_eq!(statuses.verdict(409, Some(LEASE_LOST_PROBLEM)), Verdict::Retry);
    /// assert_eq!(statuses.verdict(409, None), Verdict::Final);
    /// assert_eq!(statuses.verdict(422, None), Verdict::Final);
    /// assert_eq!(statuses.verdict(201, None), Verdict::Success);
    /// ```
    pub fn verdict(&self, status: u16, problem_type: Option<&str>) -> Verdict {
        let same_key = problem_type.is_some_and(says_retry_with_the_same_key);
        match status {
            200..=399 => Verdict::Success,
            408 | 425 | 429 | 502 | 503 | 504 => Verdict::Retry,
            409 | 500..=599 if same_key => Verdict::Retry,
            500 if self.retry_500 => Verdict::Retry,
            _ => Verdict::Final,
        }
    }

    /// Whether the verdict for `status` depends on the answer's problem type, so that a
    /// client must read the body of an `application/problem+json` answer with it (and
    /// need not for any other status).
    ///
    /// ```
    /// use idem_core::retry::RetryStatuses;
    ///
    /// let statuses = RetryStatuses::default();
    /// assert!(statuses.depends_on_problem_type(409));
    /// assert!(statuses.depends_on_problem_type(500));
    /// assert!(!statuses.depends_on_problem_type(503));
    /// assert!(!statuses.depends_on_problem_type(422));
    /// ```
    pub fn depends_on_problem_type(&self, status: u16) -> bool {
        self.verdict(status, None) != self.verdict(status, Some(IN_FLIGHT_PROBLEM))
    }

    /// Whether a client reads the problem type of an answer with `status`: when the
    /// verdict depends on it, and for a 410, whose [`stop_reason`] does (`key-expired`
    /// is told apart from other final answers).
    ///
    /// ```
    /// use idem_core::retry::RetryStatuses;
    ///
    /// let statuses = RetryStatuses::default();
    /// assert!(statuses.reads_problem_type(409));
    /// assert!(statuses.reads_problem_type(410));
    /// assert!(!statuses.reads_problem_type(422));
    /// ```
    pub fn reads_problem_type(&self, status: u16) -> bool {
        status == 410 || self.depends_on_problem_type(status)
    }
}

/// Why a client stops at an answer that is not a success and is not retried:
/// [`StopReason::KeyExpired`] for idem's 410 `key-expired`, else
/// [`StopReason::NotRetryable`].
///
/// ```
/// use idem_core::retry::{KEY_EXPIRED_PROBLEM, StopReason, stop_reason};
///
/// assert_eq!(stop_reason(410, Some(KEY_EXPIRED_PROBLEM)), StopReason::KeyExpired);
/// assert_eq!(stop_reason(410, Some("urn:idem:problem:response-not-stored")), StopReason::NotRetryable);
/// assert_eq!(stop_reason(422, None), StopReason::NotRetryable);
/// ```
pub fn stop_reason(status: u16, problem_type: Option<&str>) -> StopReason {
    if status == 410 && problem_type == Some(KEY_EXPIRED_PROBLEM) {
        StopReason::KeyExpired
    } else {
        StopReason::NotRetryable
    }
}

/// Why a client stopped retrying and returned what it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The answer (or failure) is not one a retry can change, or the request's body
    /// could not be sent again.
    NotRetryable,
    /// The server answered 410 `key-expired`: the request with this key completed so
    /// long ago that the key expired (the answer's `original_completed_at` and
    /// `original_status` say when and how). It is neither replayed nor run again with
    /// this key; a new request needs a new key, and its effects may already exist.
    KeyExpired,
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
            StopReason::KeyExpired => "key expired",
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
    fn a_key_expired_answer_is_final_and_named_apart_from_other_final_answers() {
        let statuses = RetryStatuses { retry_500: true };
        assert_eq!(
            statuses.verdict(410, Some(KEY_EXPIRED_PROBLEM)),
            Verdict::Final
        );
        assert!(statuses.reads_problem_type(410));
        assert_eq!(
            stop_reason(410, Some(KEY_EXPIRED_PROBLEM)),
            StopReason::KeyExpired
        );
        for (status, kind) in [
            (410, None),
            (410, Some("urn:idem:problem:response-not-stored")),
            (422, Some(KEY_EXPIRED_PROBLEM)),
        ] {
            assert_eq!(stop_reason(status, kind), StopReason::NotRetryable);
        }
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
    fn every_answer_that_says_retry_with_the_same_key_is_retried() {
        let statuses = RetryStatuses::default();
        // The statuses idem's layer sends them with.
        let sent = [
            (409, IN_FLIGHT_PROBLEM),
            (409, LEASE_LOST_PROBLEM),
            (503, PHASE_INTERRUPTED_PROBLEM),
            (503, COMMIT_FAILED_PROBLEM),
            (503, STORE_UNAVAILABLE_PROBLEM),
        ];
        for (status, kind) in sent {
            assert_eq!(
                statuses.verdict(status, Some(kind)),
                Verdict::Retry,
                "{kind}"
            );
        }
        assert_eq!(sent.map(|(_, kind)| kind), SAME_KEY_RETRY_PROBLEMS);
        // The type says so whatever 5xx it comes with, even with 500s not retried.
        for status in [500, 501, 507] {
            for kind in SAME_KEY_RETRY_PROBLEMS {
                assert_eq!(
                    statuses.verdict(status, Some(kind)),
                    Verdict::Retry,
                    "{status} {kind}"
                );
            }
        }
    }

    #[test]
    fn a_lease_lost_409_is_retried_and_other_409s_are_not() {
        let statuses = RetryStatuses::default();
        assert_eq!(
            statuses.verdict(409, Some(LEASE_LOST_PROBLEM)),
            Verdict::Retry
        );
        for kind in [
            None,
            Some("urn:idem:problem:key-mismatch"),
            Some("urn:idem:problem:lease-lost-but-not-quite"),
            Some("about:blank"),
        ] {
            assert_eq!(statuses.verdict(409, kind), Verdict::Final, "{kind:?}");
        }
    }

    #[test]
    fn other_4xx_are_final_whatever_their_problem_type() {
        let statuses = RetryStatuses::default();
        for status in [400, 404, 410, 422] {
            for kind in SAME_KEY_RETRY_PROBLEMS {
                assert_eq!(
                    statuses.verdict(status, Some(kind)),
                    Verdict::Final,
                    "{status} {kind}"
                );
            }
        }
    }

    #[test]
    fn final_answers_that_may_not_be_retried_with_the_same_key_are_not() {
        let statuses = RetryStatuses::default();
        for kind in [
            "urn:idem:problem:response-not-stored",
            "urn:idem:problem:key-quota",
            "urn:idem:problem:store-fault",
            "urn:idem:problem:phase-failed",
            "urn:idem:problem:handler-panicked",
        ] {
            assert!(!says_retry_with_the_same_key(kind), "{kind}");
        }
        assert_eq!(
            statuses.verdict(410, Some("urn:idem:problem:response-not-stored")),
            Verdict::Final
        );
        assert_eq!(
            statuses.verdict(507, Some("urn:idem:problem:key-quota")),
            Verdict::Final
        );
        assert_eq!(
            statuses.verdict(500, Some("urn:idem:problem:store-fault")),
            Verdict::Final
        );
    }

    #[test]
    fn the_problem_type_is_read_only_where_it_changes_the_verdict() {
        let statuses = RetryStatuses::default();
        for status in [409, 500, 501, 505, 507, 599] {
            assert!(statuses.depends_on_problem_type(status), "{status}");
        }
        for status in [200, 201, 303, 400, 404, 410, 422, 429, 502, 503, 504] {
            assert!(!statuses.depends_on_problem_type(status), "{status}");
        }
        // With 500s retried anyway, a 500's type no longer matters.
        assert!(!RetryStatuses { retry_500: true }.depends_on_problem_type(500));
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
