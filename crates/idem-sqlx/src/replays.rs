//! Replays counted on the key rows, in batches written after the replays: a replay
//! itself never writes (it may be answered from memory without the store at all).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use idem_core::observe::names;
use idem_core::{IdempotencyKey, TenantId};
use sqlx::PgPool;
use tracing::Instrument;

use crate::StoreError;
use crate::observe;

/// How long replays gather before their batch is written, by default.
pub const REPLAY_FLUSH_DELAY: Duration = Duration::from_secs(1);

type Pending = HashMap<(TenantId, IdempotencyKey), i32>;

/// Counts replays in `idem.keys.replays`. [`add`](Self::add) only counts in memory;
/// the first replay of a batch starts a task that writes the whole batch after
/// `delay` in one statement, so however many replays a second brings, they cost one
/// write. A key replayed for the first time counts in `idem_keys_retried_total`.
///
/// Counts are for operators and metrics, never for decisions: a batch that cannot be
/// written (the store is away, the process ends first) is dropped with a log line.
#[derive(Debug, Clone)]
pub struct ReplayTally {
    pool: PgPool,
    delay: Duration,
    pending: Arc<Mutex<Pending>>,
}

impl ReplayTally {
    /// A tally that writes through `pool`, [`REPLAY_FLUSH_DELAY`] after a batch's first
    /// replay.
    pub fn new(pool: PgPool) -> Self {
        ReplayTally {
            pool,
            delay: REPLAY_FLUSH_DELAY,
            pending: Arc::default(),
        }
    }

    /// How long replays gather before their batch is written.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Counts one replay of (tenant, key). Must be called within a Tokio runtime.
    pub fn add(&self, tenant: &TenantId, key: &IdempotencyKey) {
        let first_of_batch = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let first = pending.is_empty();
            *pending.entry((tenant.clone(), key.clone())).or_insert(0) += 1;
            first
        };
        if first_of_batch {
            let tally = self.clone();
            tokio::spawn(
                async move {
                    tokio::time::sleep(tally.delay).await;
                    if let Err(e) = tally.flush().await {
                        tracing::warn!(error = %e, "replay counts not written");
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Writes the replays counted so far. Rows are locked in key order, so two
    /// processes writing overlapping batches never deadlock.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return Ok(());
        }
        let mut tenants = Vec::with_capacity(batch.len());
        let mut keys = Vec::with_capacity(batch.len());
        let mut counts = Vec::with_capacity(batch.len());
        for ((tenant, key), n) in batch {
            tenants.push(tenant.as_str().to_owned());
            keys.push(key.as_str().to_owned());
            counts.push(n);
        }
        // `first`: the key had no replay counted before this batch.
        let rows: Vec<(Option<String>, bool)> = sqlx::query_as(
            "WITH t AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int4[]) \
               AS t(tenant_id, key, n)), \
             locked AS (SELECT k.tenant_id, k.key, t.n FROM idem.keys k \
               JOIN t ON k.tenant_id = t.tenant_id AND k.key = t.key \
               WHERE k.completed_at IS NOT NULL \
               ORDER BY k.tenant_id, k.key FOR UPDATE OF k) \
             UPDATE idem.keys k SET replays = k.replays + locked.n FROM locked \
             WHERE k.tenant_id = locked.tenant_id AND k.key = locked.key \
             RETURNING k.route, k.replays = locked.n AS first",
        )
        .bind(&tenants)
        .bind(&keys)
        .bind(&counts)
        .fetch_all(&self.pool)
        .await?;
        for (route, first) in rows {
            if first {
                let route = route.as_deref().unwrap_or(names::UNMATCHED_ROUTE);
                observe::count(names::KEYS_RETRIED, names::ROUTE, route, 1);
            }
        }
        Ok(())
    }
}
