//! The `Tx` extractor: the handler's view of the request's transaction.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::Problem;

type PgTx = Transaction<'static, Postgres>;

/// Where the layer keeps the request's transaction while the handler runs, and
/// whether the handler took it.
#[derive(Clone)]
pub(crate) struct TxSlot {
    tx: Arc<Mutex<Option<PgTx>>>,
    taken: Arc<AtomicBool>,
}

impl TxSlot {
    pub(crate) fn new(tx: PgTx) -> Self {
        TxSlot {
            tx: Arc::new(Mutex::new(Some(tx))),
            taken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the handler extracted a [`Tx`] from it.
    pub(crate) fn was_taken(&self) -> bool {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes the transaction back once the handler is done. `None` when a `Tx` is still
    /// alive somewhere (moved into a task that outlived the handler).
    pub(crate) fn take(&self) -> Option<PgTx> {
        self.tx.try_lock().ok().and_then(|mut guard| guard.take())
    }
}

/// The request's database transaction, shared with the idempotency layer.
///
/// The layer begins the transaction, claims the key on it, and hands it to the handler
/// through this extractor. The handler does its writes on it (and may enqueue outbox
/// messages) but never commits: the layer stores the response on the same transaction
/// and commits everything at once, or rolls everything back when the response is not
/// final (5xx), the handler fails or panics.
///
/// `Tx` dereferences to [`PgConnection`], so `&mut *tx` is an executor:
///
/// ```no_run
/// use axum::http::StatusCode;
/// use idem_axum::Tx;
///
/// async fn create(mut tx: Tx) -> Result<StatusCode, StatusCode> {
///     sqlx::query("INSERT INTO orders (id) VALUES (gen_random_uuid())")
///         .execute(&mut *tx)
///         .await
///         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
///     Ok(StatusCode::CREATED)
/// }
/// ```
///
/// Drop `Tx` before the handler returns (the usual case). A `Tx` still alive when the
/// handler's response is ready makes the layer answer 500 `transaction-held` and
/// commit nothing. Extracting `Tx` twice in one request is rejected the same way.
/// A request without a key on a route where the key is optional also gets a `Tx`
/// (committed on a final response; nothing is claimed or stored). On a request the
/// layer does not handle (not behind the layer, or a method that does not take part)
/// extraction fails with 500 `transaction-unavailable`.
///
/// `Option<Tx>` is `None` where the layer gave no transaction: a handler on a route
/// that fails open ([`FailureMode::Open`](crate::FailureMode)) takes `Option<Tx>` and
/// does its work without the store's transaction when the store is unreachable.
pub struct Tx {
    guard: OwnedMappedMutexGuard<Option<PgTx>, PgTx>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tx {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let slot = parts
            .extensions
            .get::<TxSlot>()
            .ok_or(Problem::TransactionUnavailable)?;
        slot.taken.store(true, Ordering::Relaxed);
        let guard = slot
            .tx
            .clone()
            .try_lock_owned()
            .map_err(|_| Problem::TransactionHeld)?;
        OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map(|guard| Tx { guard })
            .map_err(|_| Problem::TransactionUnavailable)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Tx {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.extensions.get::<TxSlot>().is_none() {
            return Ok(None);
        }
        <Tx as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.guard
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.guard
    }
}
