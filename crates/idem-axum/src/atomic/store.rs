//! The layer's work with the store before the handler (the replay lookup, the
//! transaction and the claim), and the bound every store wait runs under.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use chrono::{DateTime, Utc};
use http::Response;
use idem_core::{FailureKind, Record, decide};
use idem_sqlx::keys::Claim;
use idem_sqlx::{Backend, StoreError};
use sqlx::PgPool;
use tracing::Instrument;

use crate::config::Config;
use crate::replay::answer::{
    corrupt, decided, expired, in_flight, mismatched, replay, store_fault, unavailable,
};
use crate::replay::flight::Landed;
use crate::replay::seal;
use crate::request::Keyed;

/// How many transactions a claim may take when serialization failures make it start
/// over (only under REPEATABLE READ or SERIALIZABLE).
const CLAIM_TRANSACTIONS: usize = 4;

/// The request's transaction.
pub(crate) type PgTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Where the store left a request before its handler.
pub(crate) enum BeforeHandler {
    /// The transaction the handler runs in (with the key claimed, when keyed).
    Tx(PgTx),
    /// The layer's answer, with no handler to run (a replay, a mismatch, in flight...),
    /// and what it tells the request's duplicates.
    Answer(Response<Body>, Landed),
    /// No transaction could be opened, so nothing was claimed: fail closed, or open
    /// when the route allows it and the database cannot be reached at all. The
    /// store's error, or `None` when it stayed silent past `Timeouts::store`.
    Unreached(Option<StoreError>),
}

/// Why a request's transaction did not begin.
pub(crate) enum NotBegun {
    /// The store failed in a way that is answered at once (a fault).
    Answer(Response<Body>),
    /// No transaction could be opened: the store's error, or `None` when it was
    /// silent past `Timeouts::store`.
    Unreached(Option<StoreError>),
}

impl From<NotBegun> for BeforeHandler {
    fn from(not_begun: NotBegun) -> Self {
        match not_begun {
            NotBegun::Answer(answer) => BeforeHandler::Answer(answer, Landed::Unknown),
            NotBegun::Unreached(cause) => BeforeHandler::Unreached(cause),
        }
    }
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

/// Opens the request's transaction at the configured isolation level, bounded by
/// `Timeouts::store`. `Err(NotBegun::Unreached)` when no transaction could be opened (the
/// only case a route may fail open), an answer when the store failed otherwise.
pub(crate) async fn begin(pool: &PgPool, config: &Config) -> Result<PgTx, NotBegun> {
    let beginning = {
        let pool = pool.clone();
        let isolation = config.storage.isolation;
        async move { idem_sqlx::transaction::begin(&pool, isolation).await }
    };
    let begun = bounded(config.timeouts.store, beginning, |begun| async move {
        if let Ok(tx) = begun {
            discard(tx).await;
        }
    })
    .await;
    match begun {
        Some(Ok(tx)) => Ok(tx),
        Some(Err(e)) if e.is_unavailable() => {
            tracing::warn!(error = %e, "idempotency store unavailable");
            Err(NotBegun::Unreached(Some(e)))
        }
        Some(Err(e)) => Err(NotBegun::Answer(store_fault(&e))),
        None => {
            tracing::warn!("idempotency store did not answer within the store timeout");
            Err(NotBegun::Unreached(None))
        }
    }
}

/// Everything before a keyed request's handler: the replay lookup (with
/// `Storage::lookup_first`), the transaction, and the claim, started over in a new
/// transaction when a stricter isolation level makes the claim fail to serialize.
pub(crate) async fn open_keyed(
    pool: &PgPool,
    config: &Arc<Config>,
    keyed: &Keyed,
) -> BeforeHandler {
    if let Some(answer) = answer_without_transaction(pool, config, keyed).await {
        return answer;
    }
    // Asked of the store once (the first keyed request), within the same bound as
    // opening a transaction.
    let detecting = {
        let (config, pool) = (config.clone(), pool.clone());
        async move { config.backend(&pool).await }
    };
    let backend = match bounded(config.timeouts.store, detecting, |_| async {}).await {
        Some(Ok(backend)) => backend,
        Some(Err(e)) if e.is_unavailable() => return BeforeHandler::Unreached(Some(e)),
        Some(Err(e)) => return BeforeHandler::Answer(store_fault(&e), Landed::Unknown),
        None => return BeforeHandler::Unreached(None),
    };
    for _ in 0..CLAIM_TRANSACTIONS {
        let tx = match begin(pool, config).await {
            Ok(tx) => tx,
            Err(not_begun) => return not_begun.into(),
        };
        match claim(tx, config, keyed, backend).await {
            ClaimAttempt::Tx(tx) => return BeforeHandler::Tx(tx),
            ClaimAttempt::Answer(answer, landed) => return BeforeHandler::Answer(answer, landed),
            ClaimAttempt::StartOver => continue,
        }
    }
    tracing::error!("the claim kept failing to serialize; giving up");
    BeforeHandler::Answer(in_flight(config), Landed::Unknown)
}

/// The outcome of one claim attempt.
enum ClaimAttempt {
    Tx(PgTx),
    Answer(Response<Body>, Landed),
    /// A serialization failure: start over in a new transaction.
    StartOver,
}

/// Claims the key on `tx`, bounded by `Timeouts::in_flight_wait` plus `Timeouts::store`. Past the
/// bound the answer is 503: the transaction was open, so this is no longer a store
/// that could not be reached, and the route never fails open from here (another
/// request may hold the key).
async fn claim(tx: PgTx, config: &Arc<Config>, keyed: &Keyed, backend: Backend) -> ClaimAttempt {
    let sent = Utc::now();
    let claiming = {
        let (config, keyed) = (config.clone(), keyed.clone());
        async move {
            let mut tx = tx;
            let request = keyed.claim_request(&config);
            let claimed = idem_sqlx::keys::claim_on(&mut tx, &request, backend).await;
            (tx, claimed)
        }
    };
    let limit = config
        .timeouts
        .store
        .saturating_add(config.timeouts.in_flight_wait);
    let Some((tx, claimed)) = bounded(limit, claiming, |(tx, _)| discard(tx)).await else {
        tracing::warn!("the claim did not finish within the in-flight wait and the store timeout");
        return ClaimAttempt::Answer(unavailable(config), Landed::Unknown);
    };
    if let Ok(Claim::Claimed) = claimed {
        return ClaimAttempt::Tx(tx);
    }
    discard(tx).await;
    // A stored body is opened here, before anything answers from it.
    let claimed = match claimed {
        Ok(Claim::Replay(record, now)) => match open_record(config, keyed, record) {
            Some(record) => Ok(Claim::Replay(record, now)),
            None => return ClaimAttempt::Answer(corrupt(), Landed::Unknown),
        },
        Ok(Claim::Mismatch(record, now)) => match open_record(config, keyed, record) {
            Some(record) => Ok(Claim::Mismatch(record, now)),
            None => return ClaimAttempt::Answer(corrupt(), Landed::Unknown),
        },
        other => other,
    };
    match claimed {
        Ok(Claim::Replay(record, now)) => {
            let answer = replay(config, &record);
            ClaimAttempt::Answer(answer, landed_record(record, now, sent))
        }
        Ok(Claim::Mismatch(record, now)) => {
            let answer = mismatched(config, &record);
            ClaimAttempt::Answer(answer, landed_record(record, now, sent))
        }
        Ok(Claim::Expired(record, now)) => {
            let answer = expired(&record);
            ClaimAttempt::Answer(answer, landed_record(record, now, sent))
        }
        Ok(Claim::InFlight | Claim::Claimed) => {
            ClaimAttempt::Answer(in_flight(config), Landed::Busy)
        }
        Err(e) => match e.kind() {
            FailureKind::Serialization => {
                tracing::debug!(error = %e, "the claim failed to serialize; starting over");
                ClaimAttempt::StartOver
            }
            FailureKind::Unavailable => {
                tracing::warn!(error = %e, "idempotency claim failed");
                ClaimAttempt::Answer(unavailable(config), Landed::Unknown)
            }
            FailureKind::Fault => ClaimAttempt::Answer(store_fault(&e), Landed::Unknown),
        },
    }
}

/// With `Storage::lookup_first`, answers a replay or a mismatch from one read on the
/// pool, with no transaction at all. `None`: the request needs its transaction (also
/// when the read failed; the transaction reports the store's state).
async fn answer_without_transaction(
    pool: &PgPool,
    config: &Config,
    keyed: &Keyed,
) -> Option<BeforeHandler> {
    if !config.storage.lookup_first {
        return None;
    }
    let sent = Utc::now();
    let (record, now) = idem_sqlx::keys::lookup(pool, &keyed.tenant, &keyed.key)
        .await
        .ok()??;
    let record = record.tombstone_kept(config.policy.tombstones.is_some());
    let Some(record) = open_record(config, keyed, record) else {
        return Some(BeforeHandler::Answer(corrupt(), Landed::Unknown));
    };
    let answer = decided(
        config,
        decide(Some(&record), &keyed.fingerprint, now),
        &record,
    )?;
    Some(BeforeHandler::Answer(
        answer,
        landed_record(record, now, sent),
    ))
}

/// A record read from the store with its body opened; `None` when it is sealed under a
/// key this layer does not have.
pub(crate) fn open_record(config: &Config, keyed: &Keyed, record: Record) -> Option<Record> {
    let bound = std::iter::once(&keyed.key).chain(keyed.sent.as_ref());
    seal::from_store(
        config.protection.bodies.as_ref(),
        &keyed.tenant,
        bound,
        record,
    )
}

/// A record read from the store, as this process's duplicates and its memory keep it:
/// with its expiry on the local clock (`sent`: the local time before the read).
pub(crate) fn landed_record(
    record: Record,
    store_now: DateTime<Utc>,
    sent: DateTime<Utc>,
) -> Landed {
    Landed::Record(Arc::new(record.on_local_clock(store_now, sent)))
}

/// Rolls `tx` back, however long that takes (see `handler::roll_back` for the bounded
/// one); a rollback that fails closes the connection.
pub(crate) async fn discard(tx: PgTx) {
    if let Err(e) = tx.rollback().await {
        // The connection is closed rather than returned to the pool in a bad state.
        tracing::warn!(error = %e, "rollback failed");
    }
}
