//! The answers the layer makes from the store (replays of stored responses,
//! mismatches, in flight, the store unavailable or at fault), each paired with the
//! outcome the request records.

use axum::body::Body;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use idem_core::headers::IDEMPOTENT_REPLAYED;
use idem_core::policy::HashPolicy;
use idem_core::{Decision, Outcome, Record, RecordState, StoredResponse};
use idem_sqlx::StoreError;

use crate::Problem;
use crate::config::Config;

/// Marks the response with its outcome (an extension, reported when the request
/// finishes) and passes it on.
pub(crate) fn outcome(mut response: Response<Body>, outcome: Outcome) -> Response<Body> {
    tracing::debug!(
        status = response.status().as_u16(),
        %outcome,
        "idempotency outcome"
    );
    response.extensions_mut().insert(outcome);
    response
}

/// The layer's own answer for `problem`, marked with its outcome (see [`outcome_of`]).
pub(crate) fn problem_answer(problem: Problem) -> Response<Body> {
    let kind = outcome_of(&problem);
    outcome(problem.into_response(), kind)
}

/// The outcome the layer reports for each of its own answers: the one place that
/// pairs them. A problem a handler answers with (a failed or interrupted phase, a `Tx`
/// it could not have) is the handler's answer, reported as what its path did with it
/// (the atomic path rolls it back, `RolledBack` here); a phased route whose answer's
/// body failed keeps its phases and reports `Suspended` instead (`phased::run`).
fn outcome_of(problem: &Problem) -> Outcome {
    match problem {
        Problem::KeyMissing { .. }
        | Problem::KeyInvalid { .. }
        | Problem::TenantUnresolved
        | Problem::BodyTooLarge { .. }
        | Problem::BodyUnreadable
        | Problem::OperationUnknown => Outcome::Rejected,
        Problem::KeyMismatch { .. } => Outcome::Mismatch,
        Problem::NewKeyRateExceeded { .. } => Outcome::RateLimited,
        Problem::KeyQuotaExceeded => Outcome::QuotaExceeded,
        Problem::InFlight { .. } => Outcome::InFlight,
        Problem::ResponseNotStored { .. } => Outcome::ReplayedUnstored,
        Problem::KeyExpired { .. } => Outcome::Expired,
        Problem::StoreUnavailable { .. } => Outcome::StoreUnavailable,
        Problem::CommitFailed { .. } => Outcome::CommitFailed,
        Problem::HandlerPanicked => Outcome::Panicked,
        Problem::TransactionAborted => Outcome::TransactionAborted,
        Problem::StoreFault => Outcome::StoreFault,
        Problem::TransactionHeld => Outcome::TransactionHeld,
        Problem::RecordCorrupt => Outcome::RecordCorrupt,
        Problem::LeaseLost { .. } => Outcome::LeaseLost,
        Problem::ResponseUnreadable
        | Problem::TransactionUnavailable
        | Problem::PhaseFailed { .. }
        | Problem::PhaseInterrupted { .. }
        | Problem::PhasesUnavailable => Outcome::RolledBack,
    }
}

/// The answer from a committed record: its stored response (marked replayed), 410
/// `response-not-stored` when only its status was kept, or 409 `in-flight`.
pub(crate) fn replay(config: &Config, record: &Record) -> Response<Body> {
    match &record.state {
        RecordState::Completed(stored) => match replay_response(stored) {
            Some(mut response) => {
                response.headers_mut().insert(
                    HeaderName::from_static(IDEMPOTENT_REPLAYED),
                    HeaderValue::from_static("true"),
                );
                outcome(response, Outcome::Replayed)
            }
            None => {
                tracing::error!("stored response cannot be rebuilt");
                corrupt()
            }
        },
        RecordState::CompletedUnstored { status } => {
            let problem = Problem::ResponseNotStored {
                original_status: *status,
            };
            let mut response = problem.into_response();
            response.headers_mut().insert(
                HeaderName::from_static(IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            );
            outcome(response, Outcome::ReplayedUnstored)
        }
        RecordState::InFlight => in_flight(config),
    }
}

/// What a record answers by itself: a replay, a mismatch, or 410 `key-expired` from
/// its tombstone. `None` when the request goes on (no live record, or the same
/// request still in flight).
pub(crate) fn decided(
    config: &Config,
    decision: Decision,
    record: &Record,
) -> Option<Response<Body>> {
    match decision {
        Decision::Replay => Some(replay(config, record)),
        Decision::Mismatch => Some(mismatched(config, record)),
        Decision::Expired => Some(expired(record)),
        Decision::Execute | Decision::InFlight => None,
    }
}

/// 410 `key-expired`: the same request finished long enough ago that its key expired;
/// its tombstone says when, and with which status. A record without a tombstone (which
/// no decision makes `Expired`) is answered as corrupt.
pub(crate) fn expired(record: &Record) -> Response<Body> {
    let status = match &record.state {
        RecordState::Completed(stored) => Some(stored.status),
        RecordState::CompletedUnstored { status } => Some(*status),
        RecordState::InFlight => None,
    };
    match (status, record.tombstone) {
        (Some(original_status), Some(tombstone)) => problem_answer(Problem::KeyExpired {
            original_status,
            completed_at: tombstone.completed_at,
        }),
        _ => corrupt(),
    }
}

/// 500 `record-corrupt`: a stored response cannot be replayed.
pub(crate) fn corrupt() -> Response<Body> {
    problem_answer(Problem::RecordCorrupt)
}

/// 409 `in-flight` + Retry-After: the key is held by a request that has not finished.
pub(crate) fn in_flight(config: &Config) -> Response<Body> {
    let problem = Problem::InFlight {
        retry_after: config.protocol.retry_after,
    };
    problem_answer(problem)
}

/// A key reused with a different request: refused under the strict hash policy;
/// logged and answered with the stored response under report-only.
pub(crate) fn mismatched(config: &Config, record: &Record) -> Response<Body> {
    match config.policy.hash {
        HashPolicy::Strict => mismatch(config),
        HashPolicy::ReportOnly => {
            tracing::warn!(
                "idempotency key reused for a different request; replaying the stored \
                 response (hash policy: report only)"
            );
            let mut response = replay(config, record);
            if response.extensions().get::<Outcome>() == Some(&Outcome::Replayed) {
                response.extensions_mut().insert(Outcome::MismatchReported);
            }
            response
        }
    }
}

/// 422 (or the configured status) `key-mismatch`.
fn mismatch(config: &Config) -> Response<Body> {
    let problem = Problem::KeyMismatch {
        status: config.protocol.mismatch_status,
    };
    problem_answer(problem)
}

/// 503 `store-unavailable` + Retry-After.
pub(crate) fn unavailable(config: &Config) -> Response<Body> {
    let problem = Problem::StoreUnavailable {
        retry_after: config.protocol.retry_after,
    };
    problem_answer(problem)
}

/// 500 `store-fault`, with a log line that names the cause: retrying does not help.
pub(crate) fn store_fault(e: &StoreError) -> Response<Body> {
    let hint = match e.sqlstate().as_deref() {
        Some("42P01" | "3F000") => "; are idem's migrations applied (idem_sqlx::MIGRATOR)?",
        Some("42501") => "; the database role lacks a privilege on the idem schema",
        _ => "",
    };
    tracing::error!(error = %e, sqlstate = e.sqlstate().as_deref(), "idempotency store fault{hint}");
    problem_answer(Problem::StoreFault)
}

/// The stored response as it was sent; `None` when a stored part no longer parses.
fn replay_response(stored: &StoredResponse) -> Option<Response<Body>> {
    let mut response = Response::new(Body::from(stored.body.clone()));
    *response.status_mut() = StatusCode::from_u16(stored.status).ok()?;
    for (name, value) in &stored.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        response.headers_mut().append(name, value);
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use http::header::{CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
    use idem_core::Fingerprint;
    use idem_core::policy::Policy;

    use crate::config::Protocol;

    use super::*;

    fn record(state: RecordState) -> Record {
        Record {
            fingerprint: Fingerprint::builder("POST", "/payments").finish(),
            state,
            expires_at: Utc::now(),
            tombstone: None,
        }
    }

    fn completed(headers: Vec<(String, Vec<u8>)>) -> Record {
        record(RecordState::Completed(StoredResponse {
            status: 201,
            headers,
            body: b"{\"id\":1}".to_vec(),
        }))
    }

    fn replayed(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_replay_is_the_stored_status_and_headers_in_order_marked_replayed() {
        let stored = completed(vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("set-cookie".into(), b"a=1".to_vec()),
            ("set-cookie".into(), b"b=2".to_vec()),
        ]);
        let response = replay(&Config::default(), &stored);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let cookies: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(replayed(&response), Some("true"));
        assert_eq!(response.extensions().get(), Some(&Outcome::Replayed));
    }

    #[test]
    fn a_stored_header_that_no_longer_parses_is_a_corrupt_record_not_a_panic() {
        let stored = completed(vec![("bad name".into(), b"x".to_vec())]);
        let response = replay(&Config::default(), &stored);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.extensions().get(), Some(&Outcome::RecordCorrupt));
    }

    #[test]
    fn a_final_answer_too_large_to_store_is_replayed_as_410_with_its_status() {
        let stored = record(RecordState::CompletedUnstored { status: 200 });
        let response = replay(&Config::default(), &stored);
        assert_eq!(response.status(), StatusCode::GONE);
        assert_eq!(replayed(&response), Some("true"));
        assert_eq!(
            response.extensions().get(),
            Some(&Outcome::ReplayedUnstored)
        );
    }

    #[test]
    fn a_key_in_flight_is_answered_409_with_retry_after() {
        let config = Config {
            protocol: Protocol::default().retry_after(std::time::Duration::from_secs(3)),
            ..Config::default()
        };
        let response = replay(&config, &record(RecordState::InFlight));
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        assert_eq!(response.extensions().get(), Some(&Outcome::InFlight));
    }

    #[test]
    fn a_mismatch_is_refused_with_the_configured_status_unless_report_only() {
        let stored = completed(Vec::new());
        let strict = Config {
            protocol: Protocol::default().mismatch_status(StatusCode::BAD_REQUEST),
            ..Config::default()
        };
        let refused = mismatched(&strict, &stored);
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refused.extensions().get(), Some(&Outcome::Mismatch));

        let report_only = Config {
            policy: Policy::default().hash(HashPolicy::ReportOnly),
            ..Config::default()
        };
        let replayed_anyway = mismatched(&report_only, &stored);
        assert_eq!(replayed_anyway.status(), StatusCode::CREATED);
        assert_eq!(
            replayed_anyway.extensions().get(),
            Some(&Outcome::MismatchReported)
        );
    }

    #[test]
    fn a_refusal_of_the_request_itself_is_counted_rejected_and_keeps_its_status() {
        let refusals = [
            Problem::KeyMissing {
                header: "idempotency-key".to_owned(),
            },
            Problem::TenantUnresolved,
            Problem::BodyTooLarge { limit: 10 },
        ];
        for problem in refusals {
            let status = problem.status();
            let response = problem_answer(problem);
            assert_eq!(response.status(), status);
            assert_eq!(response.extensions().get(), Some(&Outcome::Rejected));
        }
        let quota = problem_answer(Problem::KeyQuotaExceeded);
        assert_eq!(quota.extensions().get(), Some(&Outcome::QuotaExceeded));
    }

    #[test]
    fn only_a_replay_or_a_mismatch_answers_without_the_handler() {
        let stored = completed(Vec::new());
        let config = Config::default();
        assert!(decided(&config, Decision::Replay, &stored).is_some());
        assert!(decided(&config, Decision::Mismatch, &stored).is_some());
        assert!(decided(&config, Decision::Execute, &stored).is_none());
        assert!(decided(&config, Decision::InFlight, &stored).is_none());
    }
}
