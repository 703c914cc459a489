//! The `Phases` extractor: how a handler on a phased route commits its work in named
//! steps, and the errors a step ends in.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use idem_core::phased::{Journal, PhaseEntry, derived_key, is_phase_name};
use idem_core::{IdempotencyKey, TraceContext};
use idem_sqlx::StoreError;
use idem_sqlx::phased::{Lease, PhaseStart};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};

use crate::Problem;

/// A phased request's steps. Each [`atomic`](Self::atomic) phase is one database
/// transaction that commits its writes with the phase's output in the key's journal;
/// each [`remote`](Self::remote) phase calls another service first, with a key derived
/// from the request's key and the phase, outside any transaction, then commits what it
/// answered the same way. A phase already in the journal (committed by an earlier
/// owner of the key, before it crashed or hung) does not run again: it answers what it
/// answered then, so a resumed handler goes through its code from the top and picks up
/// where the work stopped.
///
/// Write the handler so that its answer follows from the phases' outputs (and the
/// request): a resumed run then answers what the first run would have.
///
/// ```no_run
/// use axum::Json;
/// use axum::http::StatusCode;
/// use idem_axum::{PhaseError, Phases};
///
/// async fn charge(phases: Phases, Json(amount): Json<i64>) -> Result<StatusCode, PhaseError> {
///     let id: i64 = phases
///         .atomic("pending", async |tx| {
///             let id = sqlx::query_scalar("INSERT INTO charges (amount) VALUES ($1) RETURNING id")
///                 .bind(amount)
///                 .fetch_one(&mut *tx)
///                 .await?;
///             Ok(id)
///         })
///         .await?;
///     let charge_id: String = phases
///         .remote(
///             "charge",
///             async |key| Ok(format!("ch_{key}")), // call the provider with `key`
///             async |tx, charge_id: String| {
///                 sqlx::query("UPDATE charges SET charge_id = $2 WHERE id = $1")
///                     .bind(id)
///                     .bind(&charge_id)
///                     .execute(&mut *tx)
///                     .await?;
///                 Ok(charge_id)
///             },
///         )
///         .await?;
///     # let _ = charge_id;
///     Ok(StatusCode::CREATED)
/// }
/// ```
#[derive(Clone)]
pub struct Phases {
    inner: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    lease: Lease,
    journal: Mutex<Journal>,
    resumed: bool,
    trace: Option<TraceContext>,
}

impl std::fmt::Debug for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phases")
            .field("fence", &self.inner.lease.fence)
            .field("resumed", &self.inner.resumed)
            .finish_non_exhaustive()
    }
}

impl Phases {
    pub(crate) fn new(
        pool: PgPool,
        lease: Lease,
        journal: Journal,
        resumed: bool,
        trace: Option<TraceContext>,
    ) -> Self {
        Phases {
            inner: Arc::new(Shared {
                pool,
                lease,
                journal: Mutex::new(journal),
                resumed,
                trace,
            }),
        }
    }

    /// Whether this request took the key over from an earlier owner (and resumes its
    /// work).
    pub fn resumed(&self) -> bool {
        self.inner.resumed
    }

    /// Whether the phase `name` has committed (by this owner or an earlier one).
    pub fn committed(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }

    /// The key to send to another service for the phase `name`
    /// ([`derived_key`]): the same on every run of the phase, so that service
    /// dedupes the call. It is derived from the key as it was stored when the key was
    /// claimed, so rewriting stored keys (turning key protection on) changes it for no
    /// key in progress.
    pub fn derived_key(&self, name: &str) -> IdempotencyKey {
        derived_key(&self.inner.lease.tenant, &self.inner.lease.binding, name)
    }

    /// The journal as this owner knows it: the phases that committed before it, and
    /// its own.
    pub(crate) fn journal(&self) -> Journal {
        self.inner
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The request's trace context and correlation id, to pass on to the services the
    /// phases call.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.inner.trace.as_ref()
    }

    /// The fencing token this request owns the key with (operators see it on the row).
    pub fn fence(&self) -> i64 {
        self.inner.lease.fence
    }

    fn entry(&self, name: &str) -> Option<PhaseEntry> {
        let journal = self
            .inner
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        journal.entry(name).cloned()
    }

    fn remember(&self, name: &str, entry: PhaseEntry) {
        self.inner
            .journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(name, entry);
    }

    /// What the journal says of `name`: its output, its failure, or `None` (run it).
    fn journaled<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, PhaseError> {
        if !is_phase_name(name) {
            return Err(PhaseError::InvalidName(name.to_owned()));
        }
        self.entry(name)
            .map(|entry| entry_output(name, entry))
            .transpose()
    }

    /// Runs the phase `name` once: `work` gets a transaction (after the layer checked,
    /// under the key row's lock, that this request still owns the key), and what it
    /// returns commits with its writes, as the phase's output in the journal. A phase
    /// already in the journal returns its output without running.
    ///
    /// `work` ending in [`PhaseError::Permanent`] rolls its writes back and records
    /// the failure, so every later run gets [`PhaseError::Failed`] from this phase
    /// (compensate, then answer). Any other error rolls back and records nothing: a
    /// retry runs the phase again.
    pub async fn atomic<T, F>(&self, name: &str, work: F) -> Result<T, PhaseError>
    where
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce(&mut PgConnection) -> Result<T, PhaseError>,
    {
        if let Some(output) = self.journaled(name)? {
            return Ok(output);
        }
        self.commit(name, work).await
    }

    /// Runs the phase `name` once, around a call to another service: `call` gets the
    /// phase's [`derived_key`](Self::derived_key) and runs outside any transaction (a
    /// transaction is never held across a network call); `record` then gets its answer
    /// in the phase's transaction, and what it returns commits as the phase's output.
    /// A phase already in the journal returns its output without calling again.
    ///
    /// When the process dies between the call and the commit, the resumed phase calls
    /// again with the same key, and the other service answers what it answered the
    /// first time. `call` ending in [`PhaseError::Permanent`] records the failure, as
    /// in [`atomic`](Self::atomic).
    pub async fn remote<C, T, Call, Record>(
        &self,
        name: &str,
        call: Call,
        record: Record,
    ) -> Result<T, PhaseError>
    where
        T: Serialize + DeserializeOwned,
        Call: AsyncFnOnce(IdempotencyKey) -> Result<C, PhaseError>,
        Record: AsyncFnOnce(&mut PgConnection, C) -> Result<T, PhaseError>,
    {
        if let Some(output) = self.journaled(name)? {
            return Ok(output);
        }
        let answered = match call(self.derived_key(name)).await {
            Ok(answered) => answered,
            Err(PhaseError::Permanent(reason)) => return Err(self.fail(name, reason).await),
            Err(e) => return Err(e),
        };
        self.commit(name, async move |tx| record(tx, answered).await)
            .await
    }

    /// Runs `work` in the phase's transaction and commits it with its output.
    async fn commit<T, F>(&self, name: &str, work: F) -> Result<T, PhaseError>
    where
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce(&mut PgConnection) -> Result<T, PhaseError>,
    {
        let lease = &self.inner.lease;
        let mut tx = match idem_sqlx::phased::begin(&self.inner.pool, lease, name).await? {
            PhaseStart::Open(tx) => tx,
            PhaseStart::Recorded(entry) => {
                // Committed meanwhile (another call of the same phase won the row's
                // lock): its writes stand, these are never made.
                self.remember(name, entry.clone());
                return entry_output(name, entry);
            }
        };
        let output = match work(&mut tx).await {
            Ok(output) => output,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(match e {
                    PhaseError::Permanent(reason) => self.fail(name, reason).await,
                    other => other,
                });
            }
        };
        let value = serde_json::to_value(&output)
            .map_err(|e| PhaseError::Journal(format!("phase `{name}`: {e}")))?;
        let entry = PhaseEntry::Done(value);
        idem_sqlx::phased::commit(tx, lease, name, &entry).await?;
        self.remember(name, entry);
        Ok(output)
    }

    /// Records the phase's permanent failure; the error the handler gets.
    async fn fail(&self, name: &str, reason: String) -> PhaseError {
        let lease = &self.inner.lease;
        match idem_sqlx::phased::record_failure(&self.inner.pool, lease, name, &reason).await {
            Ok(entry) => {
                self.remember(name, entry.clone());
                match entry_output::<serde_json::Value>(name, entry) {
                    Err(failed) => failed,
                    // Another call of the phase committed it first: its output stands,
                    // and this call's failure is the handler's to see.
                    Ok(_) => PhaseError::Failed {
                        phase: name.to_owned(),
                        reason,
                    },
                }
            }
            Err(e) => e.into(),
        }
    }
}

/// A journal entry as a phase answers it: its output, or its failure.
fn entry_output<T: DeserializeOwned>(name: &str, entry: PhaseEntry) -> Result<T, PhaseError> {
    match entry {
        PhaseEntry::Done(value) => serde_json::from_value(value)
            .map_err(|e| PhaseError::Journal(format!("phase `{name}`: {e}"))),
        PhaseEntry::Failed(reason) => Err(PhaseError::Failed {
            phase: name.to_owned(),
            reason,
        }),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Phases {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Phases>()
            .cloned()
            .ok_or(Problem::PhasesUnavailable)
    }
}

/// How a phase (or a call between phases) ended, when it did not succeed. Handlers
/// return it with `?`; as a response it is problem+json, and the layer treats each kind
/// as its own: a permanent failure is final (stored and replayed), anything else
/// leaves the committed phases for a retry to resume after.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhaseError {
    /// Returned by a phase's work (or call) to say that retrying will not help (a card
    /// declined, a request the other service refuses): the phase records it.
    #[error("{0}")]
    Permanent(String),
    /// Returned by a phase's work (or call) to say that a retry may succeed (a timeout,
    /// a 503 from another service): nothing is recorded.
    #[error("{0}")]
    Transient(String),
    /// The phase failed permanently, now or in an earlier run (from the journal).
    #[error("phase `{phase}` failed: {reason}")]
    Failed {
        /// The phase.
        phase: String,
        /// Why.
        reason: String,
    },
    /// Another request took the key over after this one's lease passed: nothing more
    /// of this request commits.
    #[error("the key was taken over by another request")]
    LeaseLost,
    /// A statement of the phase failed (rolled back; a retry runs the phase again).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The store failed around the phase.
    #[error("store error: {0}")]
    Store(StoreError),
    /// A phase's output could not be written to or read from the journal as JSON.
    #[error("journal: {0}")]
    Journal(String),
    /// A phase name that is not 1 to 64 of `a-z`, `0-9`, `_`, `-`, `.`.
    #[error("invalid phase name {0:?}")]
    InvalidName(String),
}

impl From<StoreError> for PhaseError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced => PhaseError::LeaseLost,
            other => PhaseError::Store(other),
        }
    }
}

/// What a [`PhaseError`] answer tells the layer, as a response extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhaseAnswer {
    /// A permanent phase failure: final (stored), although its status is a 5xx.
    PermanentFailure,
    /// The key was taken over: this request committed nothing more.
    LeaseLost,
}

/// How long a client waits before resuming an interrupted request.
const RESUME_AFTER: Duration = Duration::from_secs(1);

impl IntoResponse for PhaseError {
    fn into_response(self) -> Response {
        match self {
            PhaseError::Failed { phase, reason } => {
                let mut response = Problem::PhaseFailed { phase, reason }.into_response();
                response
                    .extensions_mut()
                    .insert(PhaseAnswer::PermanentFailure);
                response
            }
            PhaseError::Permanent(reason) => {
                // Returned outside a phase: nothing recorded it, so it is final only
                // as an answer; a retry runs the handler's phases again.
                tracing::warn!(%reason, "a permanent failure outside any phase");
                Problem::PhaseFailed {
                    phase: "-".into(),
                    reason,
                }
                .into_response()
            }
            PhaseError::LeaseLost => {
                let mut response = Problem::LeaseLost {
                    retry_after: RESUME_AFTER,
                }
                .into_response();
                response.extensions_mut().insert(PhaseAnswer::LeaseLost);
                response
            }
            PhaseError::Store(ref e) if e.kind() == idem_core::FailureKind::Fault => {
                tracing::error!(error = %self, "a phase failed");
                Problem::StoreFault.into_response()
            }
            PhaseError::Journal(_) | PhaseError::InvalidName(_) => {
                tracing::error!(error = %self, "a phase cannot run");
                Problem::StoreFault.into_response()
            }
            other => {
                tracing::warn!(error = %other, "a phase was interrupted");
                Problem::PhaseInterrupted {
                    retry_after: RESUME_AFTER,
                }
                .into_response()
            }
        }
    }
}
