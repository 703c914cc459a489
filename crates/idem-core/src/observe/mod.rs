//! What operators see of `idem`: the outcome of every request the layer handles, the
//! names of the metrics the other crates emit, and the bounded label values they use.
//!
//! The names and label sets are stable; dashboards and alert rules are written
//! against them. No label ever holds a key, a tenant or a raw path: routes are route
//! templates, client versions fold into a configured set.

mod client_version;
pub mod names;

pub use client_version::{ClientVersions, NO_VERSION, OTHER_VERSION};

/// How the layer left a request: the `outcome` label of
/// [`names::REQUESTS`], and the `idem.outcome` field of the request's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// A keyed request ran its handler, and its final answer committed with the key.
    Executed,
    /// A request without a key (on a route where it is optional) ran and committed.
    Committed,
    /// A retry was answered with the stored response.
    Replayed,
    /// A retry of a request whose response was not stored (a stream, or too large):
    /// 410 `response-not-stored`.
    ReplayedUnstored,
    /// A retry of a request whose key expired, answered from its tombstone: 410
    /// `key-expired`, nothing ran.
    Expired,
    /// The key was reused for a different request: 422 (or 409) `key-mismatch`.
    Mismatch,
    /// The key was reused for a different request on a route whose hash policy only
    /// reports it: logged, and the stored response replayed.
    MismatchReported,
    /// The key was held by a request that did not finish within the wait: 409.
    InFlight,
    /// The request was refused before anything ran: key missing or invalid, tenant
    /// unresolved, body too large or unreadable.
    Rejected,
    /// The tenant claimed new keys faster than its configured rate: 429 + Retry-After,
    /// nothing ran (replays are never limited).
    RateLimited,
    /// The tenant holds as many live keys as its quota allows: 507, nothing ran.
    QuotaExceeded,
    /// The handler answered something that is not final (a 5xx, 408, 409, 425, 429)
    /// or its response body failed: its writes were rolled back, nothing stored.
    RolledBack,
    /// A handler's statement aborted the transaction but its answer is a final client
    /// error: recorded in a statement of its own, and replayed to retries.
    RecordedAfterAbort,
    /// The store could not be reached or did not answer in time: 503, nothing ran.
    StoreUnavailable,
    /// The store failed in a way a retry does not fix (tables or privileges missing).
    StoreFault,
    /// The handler ran but its commit failed or was not confirmed: 503.
    CommitFailed,
    /// The store was unreachable on a route that fails open: the handler ran without
    /// idempotency.
    FailedOpen,
    /// The handler answered a success after a failed statement aborted its
    /// transaction: 500, nothing committed.
    TransactionAborted,
    /// The handler kept its `Tx` past the request: 500, nothing committed.
    TransactionHeld,
    /// The handler panicked: 500, its writes rolled back.
    Panicked,
    /// The wrapped service returned an error instead of a response.
    HandlerError,
    /// A stored response could not be rebuilt for a replay: 500.
    RecordCorrupt,
    /// A phased key whose owner's lease had passed was taken over, its handler resumed
    /// from the journal, and its final answer stored.
    Resumed,
    /// A phased request answered something that is not final, or was interrupted: its
    /// committed phases stay, its lease ends, and a retry resumes from them.
    Suspended,
    /// A phased request's key was taken over by another request after its lease
    /// passed: this owner commits nothing more (409 `lease-lost`).
    LeaseLost,
    /// A phased request still running after the route's `accept_after` was answered
    /// 202 Accepted with its status URL; its phases go on.
    Accepted,
}

impl Outcome {
    /// Every outcome, in the order of the outcome table in docs/observability.md.
    pub const ALL: [Outcome; 26] = [
        Outcome::Executed,
        Outcome::Committed,
        Outcome::Replayed,
        Outcome::ReplayedUnstored,
        Outcome::Expired,
        Outcome::Mismatch,
        Outcome::MismatchReported,
        Outcome::InFlight,
        Outcome::Rejected,
        Outcome::RateLimited,
        Outcome::QuotaExceeded,
        Outcome::RolledBack,
        Outcome::RecordedAfterAbort,
        Outcome::StoreUnavailable,
        Outcome::StoreFault,
        Outcome::CommitFailed,
        Outcome::FailedOpen,
        Outcome::TransactionAborted,
        Outcome::TransactionHeld,
        Outcome::Panicked,
        Outcome::HandlerError,
        Outcome::RecordCorrupt,
        Outcome::Resumed,
        Outcome::Suspended,
        Outcome::LeaseLost,
        Outcome::Accepted,
    ];

    /// The label value: stable, snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Committed => "committed",
            Outcome::Replayed => "replayed",
            Outcome::ReplayedUnstored => "replayed_unstored",
            Outcome::Expired => "key_expired",
            Outcome::Mismatch => "mismatch",
            Outcome::MismatchReported => "mismatch_reported",
            Outcome::InFlight => "in_flight",
            Outcome::Rejected => "rejected",
            Outcome::RateLimited => "rate_limited",
            Outcome::QuotaExceeded => "quota_exceeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::RecordedAfterAbort => "recorded_after_abort",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::StoreFault => "store_fault",
            Outcome::CommitFailed => "commit_failed",
            Outcome::FailedOpen => "failed_open",
            Outcome::TransactionAborted => "transaction_aborted",
            Outcome::TransactionHeld => "transaction_held",
            Outcome::Panicked => "panicked",
            Outcome::HandlerError => "handler_error",
            Outcome::RecordCorrupt => "record_corrupt",
            Outcome::Resumed => "resumed",
            Outcome::Suspended => "suspended",
            Outcome::LeaseLost => "lease_lost",
            Outcome::Accepted => "accepted",
        }
    }

    /// Whether the store decided what the keyed request does: claim it (and run the
    /// handler), replay it, refuse it as a mismatch, or answer that it is in flight.
    /// These requests are timed by [`names::DECISION_SECONDS`].
    pub fn is_decision(self) -> bool {
        matches!(
            self,
            Outcome::Executed
                | Outcome::Resumed
                | Outcome::RecordedAfterAbort
                | Outcome::Replayed
                | Outcome::ReplayedUnstored
                | Outcome::Expired
                | Outcome::Mismatch
                | Outcome::MismatchReported
                | Outcome::InFlight
        )
    }

    /// Whether a second execution was prevented: the request was a duplicate and its
    /// handler did not run again.
    pub fn prevented_duplicate(self) -> bool {
        matches!(
            self,
            Outcome::Replayed
                | Outcome::ReplayedUnstored
                | Outcome::Expired
                | Outcome::MismatchReported
                | Outcome::InFlight
        )
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_outcome_has_its_own_snake_case_label() {
        let labels: HashSet<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
        for label in labels {
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }

    #[test]
    fn decisions_are_what_the_store_decided_for_a_keyed_request() {
        let decided: HashSet<Outcome> = Outcome::ALL
            .into_iter()
            .filter(|o| o.is_decision())
            .collect();
        let expected = HashSet::from([
            Outcome::Executed,
            Outcome::Resumed,
            Outcome::RecordedAfterAbort,
            Outcome::Replayed,
            Outcome::ReplayedUnstored,
            Outcome::Expired,
            Outcome::Mismatch,
            Outcome::MismatchReported,
            Outcome::InFlight,
        ]);
        assert_eq!(decided, expected);
        assert!(!Outcome::Committed.is_decision(), "no key, nothing decided");
    }

    #[test]
    fn only_answers_without_a_second_run_count_as_prevented_duplicates() {
        assert!(Outcome::Replayed.prevented_duplicate());
        assert!(Outcome::InFlight.prevented_duplicate());
        assert!(
            Outcome::Expired.prevented_duplicate(),
            "a late retry did not run"
        );
        assert!(!Outcome::Mismatch.prevented_duplicate());
        assert!(!Outcome::Executed.prevented_duplicate());
    }
}
