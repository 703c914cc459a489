//! The answers the layer makes from the store: replays of stored responses, and the
//! outcome each request records on its span.

use axum::body::Body;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use idem_core::policy::HashPolicy;
use idem_core::{Decision, Outcome, Record, RecordState, StoredResponse};

use crate::Problem;
use crate::config::{Config, IDEMPOTENT_REPLAYED};

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

/// What a live record answers by itself: a replay, or a mismatch. `None` when the
/// request goes on (no live record, or the same request still in flight).
pub(crate) fn decided(
    config: &Config,
    decision: Decision,
    record: &Record,
) -> Option<Response<Body>> {
    match decision {
        Decision::Replay => Some(replay(config, record)),
        Decision::Mismatch => Some(mismatched(config, record)),
        Decision::Execute | Decision::InFlight => None,
    }
}

/// 500 `record-corrupt`: a stored response cannot be replayed.
pub(crate) fn corrupt() -> Response<Body> {
    outcome(
        Problem::RecordCorrupt.into_response(),
        Outcome::RecordCorrupt,
    )
}

/// 409 `in-flight` + Retry-After: the key is held by a request that has not finished.
pub(crate) fn in_flight(config: &Config) -> Response<Body> {
    let problem = Problem::InFlight {
        retry_after: config.retry_after,
    };
    outcome(problem.into_response(), Outcome::InFlight)
}

/// A key reused with a different request: refused under the strict hash policy;
/// logged and answered with the stored response under report-only.
pub(crate) fn mismatched(config: &Config, record: &Record) -> Response<Body> {
    match config.hash_policy {
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
        status: config.mismatch_status,
    };
    outcome(problem.into_response(), Outcome::Mismatch)
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
