//! The layer's work with the store before the handler (the replay lookup, the
//! transaction and the claim), and the bound every store wait runs under.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Response;
use idem_core::{Decision, Fingerprint, IdempotencyKey, TenantId, decide};
use idem_sqlx::{Claim, ClaimRequest};
use sqlx::PgPool;
use tracing::Instrument;

use crate::Problem;
use crate::answer::{outcome, replay};
use crate::layer::Config;

/// What identifies a keyed request.
#[derive(Clone)]
pub(crate) struct Keyed {
    pub(crate) tenant: TenantId,
    pub(crate) key: IdempotencyKey,
    pub(crate) fingerprint: Fingerprint,
}

/// The request's transaction.
pub(crate) type PgTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Where the store left a request before its handler.
pub(crate) enum Opened {
    /// The transaction the handler runs in (with the key claimed, when keyed).
    Tx(PgTx),
    /// The layer's answer, with no handler to run (a replay, a mismatch, in flight...).
    Answer(Response<Body>),
    /// The store failed: fail closed or open.
    Unavailable,
}

/// Waits for `work` (store work) at most `limit`. Past the limit it answers `None` and
/// moves the work, still pending, into a task of its own: a sqlx future is never
/// dropped in the middle of a statement (which could hand a connection back to the
/// pool inside a transaction). `late` gets the work's result when it finishes.
pub(crate) async fn bounded<T, L>(
    limit: Duration,
    work: impl Future<Output = T> + Send + 'static,
    late: impl FnOnce(T) -> L + Send + 'static,
) -> Option<T>
where
    T: Send + 'static,
    L: Future<Output = ()> + Send + 'static,
{
    let mut work = Box::pin(work);
    match tokio::time::timeout(limit, &mut work).await {
        Ok(done) => Some(done),
        Err(_elapsed) => {
            tokio::spawn(async move { late(work.await).await }.in_current_span());
            None
        }
    }
}

/// Everything before the handler: the replay lookup (with `replay_lookup_first`), the
/// transaction, and the claim.
pub(crate) async fn open(
    pool: PgPool,
    config: Arc<Config>,
    keyed: Option<Keyed>,
    method: String,
    path: String,
) -> Opened {
    if let Some(answer) = answer_without_transaction(&pool, &config, keyed.as_ref()).await {
        return Opened::Answer(answer);
    }
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::warn!(error = %e, "idempotency store unavailable");
            return Opened::Unavailable;
        }
    };
    let Some(keyed) = keyed else {
        return Opened::Tx(tx);
    };
    let claim = ClaimRequest {
        tenant: &keyed.tenant,
        key: &keyed.key,
        fingerprint: keyed.fingerprint,
        method: &method,
        path: &path,
        retention: config.retention,
        wait: config.in_flight_wait,
    };
    let claimed = idem_sqlx::claim(&mut tx, &claim).await;
    if let Ok(Claim::Claimed) = claimed {
        return Opened::Tx(tx);
    }
    rollback(tx).await;
    let retry_after = config.retry_after;
    let answer = match claimed {
        Ok(Claim::Replay(record)) => replay(&config, &record),
        Ok(Claim::Mismatch(_)) => {
            let problem = Problem::KeyMismatch {
                status: config.mismatch_status,
            };
            outcome(problem.into_response(), "mismatch")
        }
        Ok(Claim::InFlight | Claim::Claimed) => {
            let problem = Problem::InFlight { retry_after };
            outcome(problem.into_response(), "in_flight")
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "idempotency claim failed");
            return Opened::Unavailable;
        }
        Err(e) => {
            tracing::error!(error = %e, "idempotency claim failed");
            outcome(Problem::RecordCorrupt.into_response(), "store_error")
        }
    };
    Opened::Answer(answer)
}

/// With `replay_lookup_first`, answers a replay or a mismatch from one read on the
/// pool, with no transaction at all. `None`: the request needs its transaction (also
/// when the read failed; the transaction reports the store's state).
pub(crate) async fn answer_without_transaction(
    pool: &PgPool,
    config: &Config,
    keyed: Option<&Keyed>,
) -> Option<Response<Body>> {
    let keyed = keyed.filter(|_| config.replay_lookup_first)?;
    let (record, now) = idem_sqlx::lookup(pool, &keyed.tenant, &keyed.key)
        .await
        .ok()??;
    match decide(Some(&record), &keyed.fingerprint, now) {
        Decision::Replay => Some(replay(config, &record)),
        Decision::Mismatch => {
            let problem = Problem::KeyMismatch {
                status: config.mismatch_status,
            };
            Some(outcome(problem.into_response(), "mismatch"))
        }
        Decision::Execute | Decision::InFlight => None,
    }
}

pub(crate) async fn rollback(tx: PgTx) {
    if let Err(e) = tx.rollback().await {
        // The connection is closed rather than returned to the pool in a bad state.
        tracing::warn!(error = %e, "rollback failed");
    }
}
