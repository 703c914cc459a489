//! After the handler gave a final answer: store it with the key and commit, or, when a
//! handler's statement had aborted the transaction, refuse a success that did not
//! commit and record a failure that stands.

use std::sync::Arc;

use axum::body::Body;
use chrono::{DateTime, Utc};
use http::response::Parts;
use http::{Response, header};
use idem_core::{
    FailureKind, Outcome, Record, RecordState, StoredResponse, aborted_answer_stands,
    streams_by_media_type,
};
use idem_sqlx::StoreError;
use idem_sqlx::keys::Completion;

use crate::Problem;
use crate::atomic::buffer::{Buffered, buffer};
use crate::atomic::handler::roll_back;
use crate::atomic::store::{PgTx, bounded, discard};
use crate::bounds::ResponseBody;
use crate::config::Config;
use crate::job::Job;
use crate::replay::answer::{outcome, problem_answer, store_fault};
use crate::replay::flight::Landed;
use crate::replay::seal;
use crate::request::Keyed;

/// Why a final answer did not commit.
enum Unsettled {
    /// A statement of the handler had aborted the transaction: nothing of it commits.
    Aborted,
    /// Storing the response or the commit failed.
    Failed(StoreError),
    /// Not confirmed within `Timeouts::store` (the commit goes on in its own task).
    TimedOut,
}

impl Job {
    /// Stores the final response (or only its status, for a stream or a body over the
    /// limit) on the claimed key and commits, with the handler's writes.
    pub(crate) async fn settle_keyed<B: ResponseBody>(
        &self,
        keyed: &Keyed,
        response: Response<B>,
        tx: PgTx,
        enqueued: bool,
    ) -> (Response<Body>, Landed) {
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let (stored, body) = match collect(&self.config, status, &parts, body).await {
            Ok(collected) => collected,
            Err(e) => {
                tracing::warn!(error = %e, "response body failed; rolling back");
                roll_back(&self.config, tx).await;
                let answer = problem_answer(Problem::ResponseUnreadable);
                return (answer, Landed::Unknown);
            }
        };
        let stored_size = stored.as_ref().map(StoredResponse::size);
        // Before the store's clock starts the key's retention.
        let sent = Utc::now();
        match self
            .store_and_commit(keyed, status, stored.clone(), tx)
            .await
        {
            Ok(()) => {
                self.wake_relays(enqueued);
                if let Some(size) = stored_size {
                    self.observed.record_stored(size);
                }
                let landed = self.landed_answer(keyed, status, stored, sent);
                let answer = outcome(Response::from_parts(parts, body), Outcome::Executed);
                (answer, landed)
            }
            Err(Unsettled::Aborted) => {
                self.after_abort(keyed, status, stored, Response::from_parts(parts, body))
                    .await
            }
            Err(Unsettled::Failed(e)) => (self.commit_failed(Some(&e)), Landed::Unknown),
            Err(Unsettled::TimedOut) => (self.commit_failed(None), Landed::Unknown),
        }
    }

    /// Commits a request without a key. sqlx's `commit()` does not notice that Postgres
    /// answers the COMMIT of an aborted transaction with ROLLBACK, so one statement
    /// first tells whether the transaction can still commit.
    pub(crate) async fn settle_unkeyed<B: ResponseBody>(
        &self,
        response: Response<B>,
        tx: PgTx,
        enqueued: bool,
    ) -> Response<Body> {
        let status = response.status().as_u16();
        let work = async move {
            let mut tx = tx;
            if let Err(e) = sqlx::query("SELECT 1").execute(&mut *tx).await {
                discard(tx).await;
                return Err(StoreError::from(e));
            }
            tx.commit().await.map_err(StoreError::from)
        };
        match bounded(self.config.timeouts.store, work, |_| async {}).await {
            Some(Ok(())) => {
                self.wake_relays(enqueued);
                outcome(response.map(Body::new), Outcome::Committed)
            }
            Some(Err(e)) if e.is_transaction_aborted() => {
                if aborted_answer_stands(status) {
                    outcome(response.map(Body::new), Outcome::RolledBack)
                } else {
                    transaction_aborted(status)
                }
            }
            Some(Err(e)) => self.commit_failed(Some(&e)),
            None => self.commit_failed(None),
        }
    }

    async fn store_and_commit(
        &self,
        keyed: &Keyed,
        status: u16,
        stored: Option<StoredResponse>,
        tx: PgTx,
    ) -> Result<(), Unsettled> {
        let (config, keyed) = (self.config.clone(), keyed.clone());
        let work = async move {
            let mut tx = tx;
            let stored = stored.and_then(|s| seal_for_store(&config, &keyed, s));
            let completion = completion(status, stored.as_ref());
            let request = keyed.claim_request(&config);
            if let Err(e) = idem_sqlx::keys::complete(&mut tx, &request, completion).await {
                discard(tx).await;
                return Err(e);
            }
            tx.commit().await.map_err(StoreError::from)
        };
        match bounded(self.config.timeouts.store, work, |_| async {}).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if e.is_transaction_aborted() => Err(Unsettled::Aborted),
            Some(Err(e)) => Err(Unsettled::Failed(e)),
            None => Err(Unsettled::TimedOut),
        }
    }

    /// A handler's statement had aborted the transaction. A client error (say a unique
    /// violation answered 422) is true and final: it is recorded in a statement of its
    /// own, so a retry replays it. A success that did not commit is never answered.
    async fn after_abort(
        &self,
        keyed: &Keyed,
        status: u16,
        stored: Option<StoredResponse>,
        response: Response<Body>,
    ) -> (Response<Body>, Landed) {
        if !aborted_answer_stands(status) {
            return (transaction_aborted(status), Landed::Unknown);
        }
        let sent = Utc::now();
        let work = {
            let (pool, config, keyed) = (self.pool.clone(), self.config.clone(), keyed.clone());
            let stored = stored.clone();
            async move {
                let stored = stored.and_then(|s| seal_for_store(&config, &keyed, s));
                let completion = completion(status, stored.as_ref());
                let backend = config.backend(&pool).await?;
                idem_sqlx::keys::record_on(
                    &pool,
                    &keyed.claim_request(&config),
                    completion,
                    backend,
                )
                .await
            }
        };
        let limit = self
            .config
            .timeouts
            .store
            .saturating_add(self.config.timeouts.in_flight_wait);
        let landed = match bounded(limit, work, |_| async {}).await {
            Some(Ok(true)) => self.landed_answer(keyed, status, stored, sent),
            Some(Ok(false)) => {
                tracing::info!("the key was taken meanwhile; the answer is not recorded");
                Landed::Unknown
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "recording the answer failed; a retry runs again");
                Landed::Unknown
            }
            None => {
                tracing::warn!("recording the answer was not confirmed within the store timeout");
                Landed::Unknown
            }
        };
        (outcome(response, Outcome::RecordedAfterAbort), landed)
    }

    /// What the duplicates waiting in this process (and its memory) learn of a
    /// committed answer. Its expiry counts from `sent`, the local time before the
    /// statement that started the key's retention on the store's clock.
    pub(crate) fn landed_answer(
        &self,
        keyed: &Keyed,
        status: u16,
        stored: Option<StoredResponse>,
        sent: DateTime<Utc>,
    ) -> Landed {
        let retention = chrono::Duration::from_std(self.config.policy.retention)
            .unwrap_or(chrono::Duration::MAX);
        let expires_at = sent
            .checked_add_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        Landed::Record(Arc::new(finished_record(keyed, status, stored, expires_at)))
    }

    /// 503 `commit-failed` (retrying is safe), or 500 `store-fault` when the store
    /// failed in a way retrying does not fix.
    pub(crate) fn commit_failed(&self, error: Option<&StoreError>) -> Response<Body> {
        match error {
            Some(e) if e.kind() == FailureKind::Fault => return store_fault(e),
            Some(e) => tracing::warn!(error = %e, "commit failed"),
            None => tracing::warn!("commit not confirmed within the store timeout"),
        }
        let problem = Problem::CommitFailed {
            retry_after: self.config.protocol.retry_after,
        };
        problem_answer(problem)
    }
}

/// The record of a key that finished with `status` (and `stored`, when its answer was
/// stored), expiring at `expires_at`.
pub(crate) fn finished_record(
    keyed: &Keyed,
    status: u16,
    stored: Option<StoredResponse>,
    expires_at: DateTime<Utc>,
) -> Record {
    let state = match stored {
        Some(stored) => RecordState::Completed(stored),
        None => RecordState::CompletedUnstored { status },
    };
    Record {
        fingerprint: keyed.fingerprint,
        state,
        expires_at,
        tombstone: None,
    }
}

/// The response as written to the store (sealed when the layer seals bodies).
pub(crate) fn seal_for_store(
    config: &Config,
    keyed: &Keyed,
    stored: StoredResponse,
) -> Option<StoredResponse> {
    seal::for_store(
        config.protection.bodies.as_ref(),
        &keyed.tenant,
        &keyed.key,
        stored,
    )
}

pub(crate) fn completion(status: u16, stored: Option<&StoredResponse>) -> Completion<'_> {
    match stored {
        Some(stored) => Completion::Response(stored),
        None => Completion::StatusOnly(status),
    }
}

/// 500 `transaction-aborted`: the handler answered a success after one of its
/// statements had aborted the transaction, so nothing it did committed.
fn transaction_aborted(status: u16) -> Response<Body> {
    tracing::error!(
        status,
        "the handler answered a success after a failed statement had aborted its \
         transaction; nothing committed"
    );
    problem_answer(Problem::TransactionAborted)
}

/// The response as stored (`None` for a stream, a body over the size limit, or one
/// that did not end within `Timeouts::response`), and the body to send on.
pub(crate) async fn collect<B: ResponseBody>(
    config: &Config,
    status: u16,
    parts: &Parts,
    body: B,
) -> Result<(Option<StoredResponse>, Body), axum::Error> {
    let body = Body::new(body);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if streams_by_media_type(content_type) {
        return Ok((None, body));
    }
    match buffer(body, config.limits.response_body, config.timeouts.response).await? {
        Buffered::Complete(bytes) => {
            let mut stored = StoredResponse {
                status,
                headers: parts
                    .headers
                    .iter()
                    .filter(|(name, _)| config.policy.replayed_headers.allows(name.as_str()))
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect(),
                body: bytes.to_vec(),
            };
            if let Some(redact) = &config.protection.redact {
                (redact.0)(&mut stored);
            }
            Ok((Some(stored), Body::from(bytes)))
        }
        Buffered::TooLarge(body) => Ok((None, body)),
        Buffered::Unfinished(body) => {
            tracing::debug!(
                "the response body did not end within the response timeout; streaming it"
            );
            Ok((None, body))
        }
    }
}
