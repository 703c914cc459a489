//! The answers the layer makes itself: `application/problem+json` (RFC 9457), one
//! stable `type` per case.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// The media type of every answer the layer makes itself.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every case in which the layer answers instead of (or after) the handler.
///
/// The `type` of each is `urn:idem:problem:<slug>`, stable across releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// 400 `key-missing`: the route requires an idempotency key and none was sent.
    KeyMissing {
        /// The header that was expected.
        header: String,
    },
    /// 400 `key-invalid`: the key is empty, too long, not visible ASCII, a malformed
    /// quoted string, or sent more than once.
    KeyInvalid {
        /// What is wrong with it.
        reason: String,
    },
    /// 401 `tenant-unresolved`: no tenant could be resolved for the request.
    TenantUnresolved,
    /// 413 `body-too-large`: the request body is over the limit.
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 400 `body-unreadable`: the request body could not be read.
    BodyUnreadable,
    /// 422 (or 409) `key-mismatch`: the key was used for a different request.
    KeyMismatch {
        /// The status configured for mismatches.
        status: StatusCode,
    },
    /// 429 `new-key-rate`: the tenant claimed new keys faster than the route allows;
    /// nothing ran. Replays of keys already used are not limited.
    NewKeyRateExceeded {
        /// When to retry.
        retry_after: Duration,
    },
    /// 507 `key-quota`: the tenant holds as many live keys as its quota allows; nothing
    /// ran. Keys free up as they expire. Replays are not limited.
    KeyQuotaExceeded,
    /// 409 `in-flight`: a request with the same key is still running.
    InFlight {
        /// When to retry.
        retry_after: Duration,
    },
    /// 410 `response-not-stored`: the original request completed (its effects are
    /// committed) but its response was not stored (a stream, or a body over the storage
    /// limit), so it cannot be replayed. 410 rather than 409, which clients following
    /// the IETF draft retry: retrying cannot bring the response back, so stop. The
    /// body's `original_status` member says how the request was answered.
    ResponseNotStored {
        /// The status the original request answered with.
        original_status: u16,
    },
    /// 410 `key-expired`: the same request completed long enough ago that its key's
    /// retention passed, and the route keeps tombstones: it is neither replayed (the
    /// response is gone) nor run again. The body's `original_status` and
    /// `original_completed_at` members say how and when it was answered. Final: a new
    /// request needs a new key.
    KeyExpired {
        /// The status the original request answered with.
        original_status: u16,
        /// When the original request completed.
        completed_at: chrono::DateTime<chrono::Utc>,
    },
    /// 503 `store-unavailable`: the store could not be reached or failed; nothing ran.
    StoreUnavailable {
        /// When to retry.
        retry_after: Duration,
    },
    /// 503 `commit-failed`: the handler ran but its commit failed or was not confirmed
    /// within the store timeout. A retry with the same key is safe either way: it
    /// replays the request if the commit went through and runs it if not.
    CommitFailed {
        /// When to retry.
        retry_after: Duration,
    },
    /// 500 `handler-panicked`: the handler panicked; its writes were rolled back.
    HandlerPanicked,
    /// 500 `transaction-aborted`: the handler answered a success (2xx or 3xx) although
    /// one of its statements had failed and aborted the transaction, so nothing it did
    /// committed. Nothing is stored; a retry runs again.
    TransactionAborted,
    /// 500 `store-fault`: the store failed in a way retrying does not fix (for example
    /// idem's tables are missing because the migrations were not run, or the database
    /// role lacks a privilege); the log names the cause. Nothing committed.
    StoreFault,
    /// 500 `transaction-held`: the handler kept its `Tx` beyond the request (for example
    /// by moving it into a spawned task); the layer cannot commit, so nothing happened.
    TransactionHeld,
    /// 500 `response-unreadable`: the handler's response body failed while it was being
    /// buffered; its writes were rolled back.
    ResponseUnreadable,
    /// 500 `record-corrupt`: a stored record could not be replayed.
    RecordCorrupt,
    /// 500 `transaction-unavailable`: a handler asked for `Tx` where the layer gave none
    /// (the route is not behind the layer, the method does not take part, or the store
    /// was unreachable on a route that fails open; such handlers take `Option<Tx>`).
    TransactionUnavailable,
    /// 500 `phase-failed`: a phase of a phased request failed permanently (and the
    /// handler did not answer otherwise, say after compensating). Final: stored, and
    /// replayed to retries.
    PhaseFailed {
        /// The phase.
        phase: String,
        /// Why, as the phase said.
        reason: String,
    },
    /// 503 `phase-interrupted`: a phase of a phased request failed in a way a retry may
    /// not (the store was away, a call failed); the phases that committed stay, and a
    /// retry with the same key resumes after them.
    PhaseInterrupted {
        /// When to retry.
        retry_after: Duration,
    },
    /// 409 `lease-lost`: this request's lease on a phased key passed and another
    /// request took the key over; this one committed nothing more. A retry with the
    /// same key waits for the new owner and gets its answer.
    LeaseLost {
        /// When to retry.
        retry_after: Duration,
    },
    /// 500 `phases-unavailable`: a handler asked for `Phases` on a route that is not
    /// phased (or a request without a key).
    PhasesUnavailable,
    /// 404 `operation-unknown`: no operation of the tenant has this id (or it expired).
    OperationUnknown,
}

#[derive(Serialize)]
struct Body9457<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_completed_at: Option<String>,
}

impl Problem {
    /// The stable slug of this case; the problem `type` is `urn:idem:problem:<slug>`.
    pub fn slug(&self) -> &'static str {
        match self {
            Problem::KeyMissing { .. } => "key-missing",
            Problem::KeyInvalid { .. } => "key-invalid",
            Problem::TenantUnresolved => "tenant-unresolved",
            Problem::BodyTooLarge { .. } => "body-too-large",
            Problem::BodyUnreadable => "body-unreadable",
            Problem::KeyMismatch { .. } => "key-mismatch",
            Problem::InFlight { .. } => "in-flight",
            Problem::NewKeyRateExceeded { .. } => "new-key-rate",
            Problem::KeyQuotaExceeded => "key-quota",
            Problem::ResponseNotStored { .. } => "response-not-stored",
            Problem::KeyExpired { .. } => "key-expired",
            Problem::StoreUnavailable { .. } => "store-unavailable",
            Problem::CommitFailed { .. } => "commit-failed",
            Problem::HandlerPanicked => "handler-panicked",
            Problem::TransactionAborted => "transaction-aborted",
            Problem::StoreFault => "store-fault",
            Problem::TransactionHeld => "transaction-held",
            Problem::ResponseUnreadable => "response-unreadable",
            Problem::RecordCorrupt => "record-corrupt",
            Problem::TransactionUnavailable => "transaction-unavailable",
            Problem::PhaseFailed { .. } => "phase-failed",
            Problem::PhaseInterrupted { .. } => "phase-interrupted",
            Problem::LeaseLost { .. } => "lease-lost",
            Problem::PhasesUnavailable => "phases-unavailable",
            Problem::OperationUnknown => "operation-unknown",
        }
    }

    /// The HTTP status of this case.
    pub fn status(&self) -> StatusCode {
        match self {
            Problem::KeyMissing { .. } | Problem::KeyInvalid { .. } | Problem::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Problem::TenantUnresolved => StatusCode::UNAUTHORIZED,
            Problem::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::KeyMismatch { status } => *status,
            Problem::InFlight { .. } => StatusCode::CONFLICT,
            Problem::NewKeyRateExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::KeyQuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
            Problem::ResponseNotStored { .. } | Problem::KeyExpired { .. } => StatusCode::GONE,
            Problem::StoreUnavailable { .. }
            | Problem::CommitFailed { .. }
            | Problem::PhaseInterrupted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Problem::LeaseLost { .. } => StatusCode::CONFLICT,
            Problem::OperationUnknown => StatusCode::NOT_FOUND,
            Problem::HandlerPanicked
            | Problem::TransactionAborted
            | Problem::StoreFault
            | Problem::TransactionHeld
            | Problem::ResponseUnreadable
            | Problem::RecordCorrupt
            | Problem::TransactionUnavailable
            | Problem::PhaseFailed { .. }
            | Problem::PhasesUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem's `type`: `urn:idem:problem:<slug>`.
    pub fn type_uri(&self) -> String {
        format!("urn:idem:problem:{}", self.slug())
    }

    /// The problem's `title`, the same for every problem of its kind.
    pub fn title(&self) -> &'static str {
        match self {
            Problem::KeyMissing { .. } => "Idempotency key missing",
            Problem::KeyInvalid { .. } => "Idempotency key invalid",
            Problem::TenantUnresolved => "Tenant not resolved",
            Problem::BodyTooLarge { .. } => "Request body too large",
            Problem::BodyUnreadable => "Request body unreadable",
            Problem::KeyMismatch { .. } => "Idempotency key reused for a different request",
            Problem::InFlight { .. } => "Request with this idempotency key in progress",
            Problem::NewKeyRateExceeded { .. } => "Too many new idempotency keys",
            Problem::KeyQuotaExceeded => "Idempotency key quota reached",
            Problem::ResponseNotStored { .. } => "Original response not stored",
            Problem::KeyExpired { .. } => "Idempotency key expired",
            Problem::StoreUnavailable { .. } => "Idempotency store unavailable",
            Problem::CommitFailed { .. } => "Request not committed",
            Problem::HandlerPanicked => "Handler failed",
            Problem::TransactionAborted => "Transaction aborted",
            Problem::StoreFault => "Idempotency store failed",
            Problem::TransactionHeld => "Transaction still held",
            Problem::ResponseUnreadable => "Response body failed",
            Problem::RecordCorrupt => "Stored response unreadable",
            Problem::TransactionUnavailable => "No transaction for this request",
            Problem::PhaseFailed { .. } => "Request failed",
            Problem::PhaseInterrupted { .. } => "Request interrupted",
            Problem::LeaseLost { .. } => "Request taken over",
            Problem::PhasesUnavailable => "No phases for this request",
            Problem::OperationUnknown => "Operation unknown",
        }
    }

    fn detail(&self) -> String {
        match self {
            Problem::KeyMissing { header } => {
                format!("This endpoint requires an `{header}` header.")
            }
            Problem::KeyInvalid { reason } => format!("{reason}."),
            Problem::TenantUnresolved => {
                "The request is not associated with a tenant; authenticate first.".into()
            }
            Problem::BodyTooLarge { limit } => {
                format!("The request body is larger than {limit} bytes.")
            }
            Problem::BodyUnreadable => "The request body could not be read.".into(),
            Problem::KeyMismatch { .. } => "This idempotency key was already used with a \
                different request (method, path, body or headers differ). Use a new key."
                .into(),
            Problem::InFlight { retry_after } => format!(
                "A request with this idempotency key is still being processed. Retry in {} s.",
                retry_after.as_secs().max(1)
            ),
            Problem::NewKeyRateExceeded { retry_after } => format!(
                "Too many requests with new idempotency keys; retry in {} s. Retries of \
                 requests already made are not limited.",
                retry_after.as_secs().max(1)
            ),
            Problem::KeyQuotaExceeded => "This tenant holds as many idempotency keys as its \
                quota allows; new keys are accepted again as older ones expire."
                .into(),
            Problem::ResponseNotStored { original_status } => format!(
                "The original request completed with status {original_status}, but its \
                 response was not stored and cannot be replayed. Do not retry this key."
            ),
            Problem::KeyExpired {
                original_status,
                completed_at,
            } => format!(
                "A request with this idempotency key completed at {} with status \
                 {original_status}; the key has expired since, so the request is neither \
                 replayed nor run again. Send a new request with a new key.",
                rfc3339(completed_at)
            ),
            Problem::StoreUnavailable { .. } => {
                "The request was not processed; retry with the same idempotency key.".into()
            }
            Problem::CommitFailed { .. } => "The request's commit could not be confirmed; retry \
                with the same idempotency key, which returns its result if it committed and \
                runs it if it did not."
                .into(),
            Problem::HandlerPanicked => {
                "The request failed and had no effect; it may be retried.".into()
            }
            Problem::TransactionAborted => "A statement of the request failed, so nothing it \
                did was committed; it may be retried."
                .into(),
            Problem::StoreFault => "The request was not processed because of a server-side \
                fault; retrying will not help until it is fixed."
                .into(),
            Problem::TransactionHeld => "The request's transaction was still in use when the \
                handler returned, so nothing was committed."
                .into(),
            Problem::ResponseUnreadable => {
                "The response failed while it was produced; the request had no effect.".into()
            }
            Problem::RecordCorrupt => "The stored response for this key cannot be read.".into(),
            Problem::TransactionUnavailable => "This request has no idempotent transaction.".into(),
            Problem::PhaseFailed { phase, reason } => {
                format!("Step `{phase}` of the request failed for good: {reason}.")
            }
            Problem::PhaseInterrupted { .. } => "The request was interrupted; retry with the \
                same idempotency key to resume it."
                .into(),
            Problem::LeaseLost { .. } => "Another attempt with this idempotency key took the \
                request over; retry with the same key to get its result."
                .into(),
            Problem::PhasesUnavailable => "This request is not processed in phases.".into(),
            Problem::OperationUnknown => "No operation with this id is known.".into(),
        }
    }

    /// The `Retry-After` the answer carries, for the kinds that have one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Problem::InFlight { retry_after }
            | Problem::NewKeyRateExceeded { retry_after }
            | Problem::StoreUnavailable { retry_after }
            | Problem::CommitFailed { retry_after }
            | Problem::PhaseInterrupted { retry_after }
            | Problem::LeaseLost { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The problem+json response.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let body = Body9457 {
            kind: self.type_uri(),
            title: self.title(),
            status: status.as_u16(),
            detail: self.detail(),
            original_status: match &self {
                Problem::ResponseNotStored { original_status }
                | Problem::KeyExpired {
                    original_status, ..
                } => Some(*original_status),
                _ => None,
            },
            original_completed_at: match &self {
                Problem::KeyExpired { completed_at, .. } => Some(rfc3339(completed_at)),
                _ => None,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(after) = self.retry_after() {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}

/// A time as problem bodies write it: RFC 3339, UTC, whole seconds.
fn rfc3339(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        Problem::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_expired_type_is_the_one_clients_stop_at() {
        let problem = Problem::KeyExpired {
            original_status: 201,
            completed_at: chrono::DateTime::UNIX_EPOCH,
        };
        assert_eq!(problem.type_uri(), idem_core::retry::KEY_EXPIRED_PROBLEM);
        assert_eq!(problem.status(), StatusCode::GONE);
    }

    #[test]
    fn the_in_flight_type_is_the_one_clients_retry_on() {
        let problem = Problem::InFlight {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(problem.type_uri(), idem_core::retry::IN_FLIGHT_PROBLEM);
    }
}
