//! Replays and mismatches counted on the key rows, in batches written after the
//! answers: a replay itself never writes (it may be answered from memory without the
//! store at all).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use idem_core::observe::names;
use idem_core::{IdempotencyKey, TenantId};
use sqlx::PgPool;
use tracing::Instrument;

use crate::citus::by_shard;
use crate::observe;
use crate::{Backend, StoreError};

/// How long replays gather before their batch is written, by default.
pub const REPLAY_FLUSH_DELAY: Duration = Duration::from_secs(1);

/// What was answered from a key's stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tallied {
    /// The stored response was replayed to a retry.
    Replay,
    /// The key came back with a different request: refused, or answered with the
    /// stored response under the report-only hash policy.
    Mismatch,
    /// Both: a mismatch answered with the stored response (report-only).
    ReplayedMismatch,
}

impl Tallied {
    /// (replays, mismatches) it adds to the key's counts.
    fn counts(self) -> (i32, i32) {
        match self {
            Tallied::Replay => (1, 0),
            Tallied::Mismatch => (0, 1),
            Tallied::ReplayedMismatch => (1, 1),
        }
    }
}

type Pending = HashMap<(TenantId, IdempotencyKey), (i32, i32)>;

/// Counts replays in `idem.keys.replays` and mismatches in `idem.keys.mismatches`.
/// [`add`](Self::add) only counts in memory; the first answer of a batch starts a task
/// that writes the whole batch after `delay` in one statement, so however many replays
/// a second brings, they cost one write. A key replayed for the first time counts in
/// `idem_keys_retried_total`.
///
/// Counts are for operators and metrics, never for decisions: a batch that cannot be
/// written (the store is away, the process ends first) is dropped with a log line.
#[derive(Debug, Clone)]
pub struct ReplayTally {
    pool: PgPool,
    delay: Duration,
    pending: Arc<Mutex<Pending>>,
    backend: Arc<OnceLock<Backend>>,
}

impl ReplayTally {
    /// A tally that writes through `pool`, [`REPLAY_FLUSH_DELAY`] after a batch's first
    /// replay.
    pub fn new(pool: PgPool) -> Self {
        ReplayTally {
            pool,
            delay: REPLAY_FLUSH_DELAY,
            pending: Arc::default(),
            backend: Arc::default(),
        }
    }

    /// How long replays gather before their batch is written.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Counts one answer from (tenant, key)'s record. Must be called within a Tokio
    /// runtime.
    pub fn add(&self, tenant: &TenantId, key: &IdempotencyKey, what: Tallied) {
        let (replays, mismatches) = what.counts();
        let first_of_batch = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let first = pending.is_empty();
            let counts = pending
                .entry((tenant.clone(), key.clone()))
                .or_insert((0, 0));
            counts.0 = counts.0.saturating_add(replays);
            counts.1 = counts.1.saturating_add(mismatches);
            first
        };
        if first_of_batch {
            let tally = self.clone();
            tokio::spawn(
                async move {
                    tokio::time::sleep(tally.delay).await;
                    if let Err(e) = tally.flush().await {
                        tracing::warn!(error = %e, "replay and mismatch counts not written");
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Writes the replays and mismatches counted so far. Rows are locked in key order, so two
    /// processes writing overlapping batches never deadlock. On a Citus coordinator
    /// (which takes `FOR UPDATE` only in a statement on one shard) the batch is written
    /// one shard at a time, each statement naming that shard's tenants and locking its
    /// rows in key order, committed on its own.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return Ok(());
        }
        // Found once per tally (and its clones), as plain Postgres or as a coordinator
        // whose keys are distributed; a coordinator whose keys are not distributed yet
        // (distribute runs after the service started) is written to as plain Postgres
        // and asked again at the next flush.
        let sharded = match self.backend.get() {
            Some(backend) => *backend == Backend::Citus,
            None => {
                let backend = Backend::detect(&self.pool).await?;
                let sharded = backend == Backend::Citus
                    && crate::citus::is_distributed(&self.pool, "idem.keys").await?;
                if backend == Backend::Postgres || sharded {
                    self.backend.get_or_init(|| backend);
                }
                sharded
            }
        };
        match sharded {
            false => count_retried(write(&self.pool, &batch, None).await?),
            true => {
                let tenants: Vec<String> = batch
                    .keys()
                    .map(|(tenant, _)| tenant.as_str().to_owned())
                    .collect();
                // Each shard's statement commits on its own: one that fails loses its
                // shard's counts only, and the first failure is reported at the end.
                let mut failed = None;
                for shard in by_shard(&self.pool, "idem.keys", &tenants).await? {
                    match write(&self.pool, &batch, Some(&shard)).await {
                        Ok(rows) => count_retried(rows),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Counts in `idem_keys_retried_total` the keys of `rows` replayed for the first time.
fn count_retried(rows: Vec<(Option<String>, bool)>) {
    for (route, first) in rows {
        if first {
            let route = route.as_deref().unwrap_or(names::UNMATCHED_ROUTE);
            observe::count(names::KEYS_RETRIED, names::ROUTE, route, 1);
        }
    }
}

/// The tally's statement; `$tenants` narrows it to some tenants' keys (on Citus, one
/// shard's, so that the statement is routed to that shard).
macro_rules! tally_sql {
    ($tenants:literal) => {
        concat!(
            "WITH t AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[]) \
               AS t(tenant_id, key, n, m)), \
             locked AS (SELECT k.tenant_id, k.key, t.n, t.m FROM idem.keys k \
               JOIN t ON k.tenant_id = t.tenant_id AND k.key = t.key \
               WHERE k.completed_at IS NOT NULL",
            $tenants,
            " ORDER BY k.tenant_id, k.key FOR UPDATE OF k) \
             UPDATE idem.keys k SET replays = k.replays + locked.n, \
               mismatches = k.mismatches + locked.m FROM locked \
             WHERE k.tenant_id = locked.tenant_id AND k.key = locked.key",
            $tenants,
            " RETURNING k.route, locked.n > 0 AND k.replays = locked.n AS first"
        )
    };
}

/// Adds `batch`'s counts to its keys (with `tenants`, sorted, only the keys of those
/// tenants, named in the statement so that Citus routes it to their shard); each
/// written key's route, and whether the batch replayed it and no replay was counted
/// before it.
async fn write(
    pool: &PgPool,
    batch: &Pending,
    tenants: Option<&[String]>,
) -> Result<Vec<(Option<String>, bool)>, StoreError> {
    let mut tenant_ids = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    let mut replays = Vec::with_capacity(batch.len());
    let mut mismatches = Vec::with_capacity(batch.len());
    for ((tenant, key), (r, m)) in batch {
        let listed = |only: &[String]| {
            only.binary_search_by(|t| t.as_str().cmp(tenant.as_str()))
                .is_ok()
        };
        if tenants.is_some_and(|only| !listed(only)) {
            continue;
        }
        tenant_ids.push(tenant.as_str().to_owned());
        keys.push(key.as_str().to_owned());
        replays.push(*r);
        mismatches.push(*m);
    }
    // `first`: the batch replayed the key, and no replay was counted before it.
    let query = match tenants {
        None => sqlx::query_as(tally_sql!("")),
        Some(_) => sqlx::query_as(tally_sql!(" AND k.tenant_id = ANY($5::text[])")),
    }
    .bind(&tenant_ids)
    .bind(&keys)
    .bind(&replays)
    .bind(&mismatches);
    let query = match tenants {
        None => query,
        Some(only) => query.bind(only),
    };
    Ok(query.fetch_all(pool).await?)
}
