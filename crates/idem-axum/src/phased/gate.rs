//! The phased claim, committed only while its request still waits for it.
//!
//! A phased key's row commits before the work, so once it has committed the key will
//! be finished: by a retry, or by the completer after the lease. A request told "your
//! request was not processed" (503 `store-unavailable`) must therefore never leave a
//! claim that commits later. The claim runs in its own transaction, and a gate decides
//! between the request giving up (past `Timeouts::store`) and the claim sending its
//! COMMIT: whichever comes first wins. Given up first, the claim rolls back, and the
//! answer is truthfully "not processed". COMMIT sent first, the claim's fate is unknown
//! to the request, which answers 503 `commit-failed` ("retry with the same key") and
//! undoes the claim if it lands, before anything could resume it. A new key is counted
//! against the tenant's limits (new-key rate, key quota) inside the same transaction,
//! before the COMMIT: refused, it rolls back and leaves nothing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::Response;
use idem_sqlx::phased::Phased;
use idem_sqlx::{Isolation, StoreError};
use sqlx::PgPool;
use tracing::Instrument;

/// The claim runs, and may still commit.
const PENDING: u8 = 0;
/// The claim sent its COMMIT.
const COMMITTING: u8 = 1;
/// The request gave up on the claim: it must not commit.
const ABANDONED: u8 = 2;

/// What a claim attempt made of the key, before its COMMIT.
pub(super) enum Attempt {
    /// The store's answer: the key is this request's (owned, to commit), or another's
    /// (read: a replay, a mismatch, a live lease; nothing to commit).
    Answered(Phased),
    /// Claimed as a new key, and refused by the tenant's limits (the new-key rate, the
    /// key quota): rolled back, and this is the answer.
    Refused(Response<Body>),
}

/// Where a gated claim left the request.
pub(super) enum Gated {
    /// The store answered in time: the key is this request's (committed), or it is
    /// another's to replay, refuse or wait for (nothing was written).
    Answered(Phased),
    /// A new key the tenant's limits refused: nothing committed; the answer.
    Refused(Response<Body>),
    /// Nothing was claimed, and nothing will be: the store failed before the commit
    /// (`Some`), or stayed silent past the bound (`None`) and the claim rolls back.
    NotClaimed(Option<StoreError>),
    /// The COMMIT was sent and not confirmed: the claim may have committed. If it did,
    /// it is undone in the background; the request's answer must not say that nothing
    /// ran.
    Unknown(Option<StoreError>),
}

/// What the claim's task reports.
enum Settled {
    Committed(Phased),
    /// Refused by the limits before its COMMIT: rolled back.
    Refused(Response<Body>),
    /// Nothing written (a replay, mismatch or busy key), rolled back.
    Read(Phased),
    /// Failed before its COMMIT was sent: rolled back.
    Failed(StoreError),
    /// Its COMMIT failed: it may or may not have committed.
    CommitFailed(StoreError, Phased),
    /// The request gave up first: rolled back.
    Abandoned,
}

/// Runs `claim` in a transaction of its own and commits it, waiting at most `limit`.
pub(super) async fn claim<F, Fut>(pool: &PgPool, limit: Duration, claim: F) -> Gated
where
    F: FnOnce(sqlx::PgTransaction<'static>) -> Fut + Send + 'static,
    Fut: Future<Output = (sqlx::PgTransaction<'static>, Result<Attempt, StoreError>)>
        + Send
        + 'static,
{
    let gate = Arc::new(AtomicU8::new(PENDING));
    let mut work = Box::pin(run(pool.clone(), gate.clone(), claim));
    let settled = match tokio::time::timeout(limit, &mut work).await {
        Ok(settled) => settled,
        Err(_elapsed) => {
            let gave_up =
                gate.compare_exchange(PENDING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst);
            let pool = pool.clone();
            let late = async move { undo(&pool, work.await).await };
            tokio::spawn(late.in_current_span());
            return match gave_up {
                Ok(_) => Gated::NotClaimed(None),
                Err(_) => Gated::Unknown(None),
            };
        }
    };
    match settled {
        Settled::Committed(phased) | Settled::Read(phased) => Gated::Answered(phased),
        Settled::Refused(answer) => Gated::Refused(answer),
        Settled::Failed(e) => Gated::NotClaimed(Some(e)),
        Settled::CommitFailed(e, phased) => {
            let pool = pool.clone();
            let late = async move { undo(&pool, Settled::Committed(phased)).await };
            tokio::spawn(late.in_current_span());
            Gated::Unknown(Some(e))
        }
        // Only a request that gave up makes the claim abandon itself.
        Settled::Abandoned => Gated::NotClaimed(None),
    }
}

/// The claim's transaction: begin (READ COMMITTED, which the claim needs), claim, and
/// commit unless the request gave up first.
async fn run<F, Fut>(pool: PgPool, gate: Arc<AtomicU8>, claim: F) -> Settled
where
    F: FnOnce(sqlx::PgTransaction<'static>) -> Fut,
    Fut: Future<Output = (sqlx::PgTransaction<'static>, Result<Attempt, StoreError>)>,
{
    let tx = match idem_sqlx::transaction::begin(&pool, Isolation::ReadCommitted).await {
        Ok(tx) => tx,
        Err(e) => return Settled::Failed(e),
    };
    if gate.load(Ordering::SeqCst) == ABANDONED {
        // The request stopped waiting while a connection was found: claim nothing.
        crate::atomic::store::discard(tx).await;
        return Settled::Abandoned;
    }
    let (tx, claimed) = claim(tx).await;
    let phased = match claimed {
        Ok(Attempt::Answered(phased @ Phased::Owned { .. })) => phased,
        Ok(Attempt::Refused(answer)) => {
            crate::atomic::store::discard(tx).await;
            return Settled::Refused(answer);
        }
        Ok(Attempt::Answered(read)) => {
            crate::atomic::store::discard(tx).await;
            return Settled::Read(read);
        }
        Err(e) => {
            crate::atomic::store::discard(tx).await;
            return Settled::Failed(e);
        }
    };
    if gate
        .compare_exchange(PENDING, COMMITTING, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        crate::atomic::store::discard(tx).await;
        return Settled::Abandoned;
    }
    match tx.commit().await {
        Ok(()) => Settled::Committed(phased),
        Err(e) => Settled::CommitFailed(e.into(), phased),
    }
}

/// Undoes a claim that committed after its request stopped waiting for it: a new key
/// is deleted (nothing ran under it), a key taken over gets its lease back at once
/// (it resumes as it would have without this request).
async fn undo(pool: &PgPool, settled: Settled) {
    let Settled::Committed(Phased::Owned { lease, resumed, .. }) = settled else {
        return;
    };
    let undone = if resumed {
        idem_sqlx::phased::release_lease(pool, &lease).await
    } else {
        idem_sqlx::phased::unclaim(pool, &lease).await
    };
    match undone {
        Ok(true) => tracing::info!(
            key_hash = %lease.key.short_hash(),
            "a phased claim that committed after its request gave up was undone"
        ),
        Ok(false) => tracing::warn!(
            key_hash = %lease.key.short_hash(),
            "a late phased claim was not found to undo (its commit may still land; it \
             then resumes after its lease)"
        ),
        Err(e) => tracing::error!(
            error = %e,
            key_hash = %lease.key.short_hash(),
            "undoing a late phased claim failed; the key resumes after its lease"
        ),
    }
}
