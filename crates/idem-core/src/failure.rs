//! How a store failure is classified: which failures mean "the store is unavailable,
//! try again" and which are faults that retrying does not cure.

/// What kind of failure a store error is, as the layer answers it.
///
/// | kind | examples | answer |
/// |---|---|---|
/// | [`Unavailable`](Self::Unavailable) | connection lost or refused, pool timed out, server shutting down, statement timeout, a read-only standby | 503 + Retry-After (or fail open before the handler) |
/// | [`Serialization`](Self::Serialization) | serialization failure, deadlock | retried in a new transaction; when it persists, not final (rolled back) |
/// | [`Fault`](Self::Fault) | missing table (migrations not run), permission denied, constraint or type errors | 500, logged with its cause |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The store cannot be reached or is shedding load: retrying later helps.
    Unavailable,
    /// A concurrent transaction won (SQLSTATE class 40): the same work in a new
    /// transaction may succeed.
    Serialization,
    /// A bug or a misconfiguration (for example migrations not run, or a missing
    /// permission): retrying does not help, an operator must act.
    Fault,
}

/// Classifies a Postgres SQLSTATE (five characters) reported by the store.
///
/// ```
/// use idem_core::{FailureKind, classify_sqlstate};
///
/// assert_eq!(classify_sqlstate("08006"), FailureKind::Unavailable); // connection failure
/// assert_eq!(classify_sqlstate("57P01"), FailureKind::Unavailable); // admin shutdown
/// assert_eq!(classify_sqlstate("40001"), FailureKind::Serialization);
/// assert_eq!(classify_sqlstate("42P01"), FailureKind::Fault); // undefined table
/// assert_eq!(classify_sqlstate("42501"), FailureKind::Fault); // permission denied
/// ```
pub fn classify_sqlstate(code: &str) -> FailureKind {
    match code {
        // 57014 query_canceled (statement_timeout), 57P01..57P05 shutdowns, cannot
        // connect now, idle session timeouts.
        "57014" | "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => FailureKind::Unavailable,
        // too_many_connections, out of memory, disk full.
        "53300" | "53200" | "53100" => FailureKind::Unavailable,
        // read_only_sql_transaction: the primary failed over to a standby.
        "25006" => FailureKind::Unavailable,
        // idle_in_transaction_session_timeout ended the session.
        "25P03" => FailureKind::Unavailable,
        _ if code.starts_with("08") => FailureKind::Unavailable,
        _ if code.starts_with("40") => FailureKind::Serialization,
        _ => FailureKind::Fault,
    }
}

/// Whether a final answer can stand when the handler's transaction was aborted by one
/// of its own statements (so none of its writes can commit).
///
/// Only an answer that reports a client error (4xx) can: a handler that hit a unique
/// violation and answers 422 "reference already used" told the truth, and that answer
/// is recorded so a retry replays it. A success or a redirect (2xx, 3xx) would claim an
/// effect that never committed, so it never stands: the layer answers 500
/// `transaction-aborted` instead, stores nothing, and a retry runs again.
///
/// ```
/// use idem_core::aborted_answer_stands;
///
/// assert!(aborted_answer_stands(422));
/// assert!(!aborted_answer_stands(201));
/// assert!(!aborted_answer_stands(303));
/// ```
pub fn aborted_answer_stands(status: u16) -> bool {
    (400..500).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_errors_stand_after_an_aborted_transaction() {
        for status in [400, 404, 409, 422] {
            assert!(aborted_answer_stands(status), "{status}");
        }
        for status in [200, 201, 204, 301, 303, 500, 503] {
            assert!(!aborted_answer_stands(status), "{status}");
        }
    }

    #[test]
    fn connection_failures_are_unavailable_and_schema_errors_are_faults() {
        for code in [
            "08000", "08003", "08006", "08001", "57P01", "57014", "53300",
        ] {
            assert_eq!(classify_sqlstate(code), FailureKind::Unavailable, "{code}");
        }
        for code in ["40001", "40P01"] {
            assert_eq!(
                classify_sqlstate(code),
                FailureKind::Serialization,
                "{code}"
            );
        }
        for code in ["42P01", "42501", "42703", "23505", "25P02", "22P02", ""] {
            assert_eq!(classify_sqlstate(code), FailureKind::Fault, "{code}");
        }
    }
}
