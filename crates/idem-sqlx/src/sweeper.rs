//! The sweeper: removes expired keys, delivered outbox rows past their retention and
//! inbox rows past their window, in small batches that never wait on a lock.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::citus::swept;
use crate::keys::sweep_expired_on;
use crate::{Backend, StoreError};

/// What one [`Sweeper::sweep_once`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired idempotency keys.
    pub keys: u64,
    /// Delivered outbox messages past the outbox retention.
    pub outbox: u64,
    /// Inbox rows past the inbox window.
    pub inbox: u64,
    /// Keys seen in observe mode, past their retention.
    pub observed: u64,
}

/// Keeps idem's tables from growing forever. Each pass deletes, in batches of
/// `batch_size` rows (`FOR UPDATE SKIP LOCKED`, so it never waits on a request, a relay
/// or a consumer, and each batch is a short transaction of its own):
///
/// - keys past their expiry (retention counted from completion);
/// - outbox messages delivered longer ago than `outbox_retention` (default 1 day);
///   pending and dead-lettered messages are never swept;
/// - inbox rows first received longer ago than `inbox_window` (default 7 days); dead
///   letters stay until redriven or purged;
/// - keys seen in observe mode, past their retention.
///
/// **The inbox window must exceed the broker's redelivery horizon**: the longest time
/// after a message's first delivery at which the broker may still deliver it again
/// (JetStream: `max_deliver` x `ack_wait` plus backoff, or the stream's `max_age` when
/// redeliveries are unbounded), or a late redelivery would find no row and run the
/// work twice. The same holds for a publisher's duplicates: a copy published again
/// after the broker's duplicate window reaches the consumer as a new delivery, and
/// only the inbox row stops it.
///
/// ```no_run
/// use std::time::Duration;
///
/// use idem_sqlx::Sweeper;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run(pool: sqlx::PgPool) {
/// let shutdown = CancellationToken::new();
/// tokio::spawn(
///     Sweeper::new(pool)
///         .outbox_retention(Duration::from_secs(3600))
///         .inbox_window(Duration::from_secs(3 * 24 * 3600))
///         .run(shutdown.clone()),
/// );
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Sweeper {
    pool: PgPool,
    interval: Duration,
    batch_size: i64,
    outbox_retention: Duration,
    inbox_window: Duration,
}

impl Sweeper {
    /// A sweeper over `pool`: a pass every minute, batches of 500 rows, outbox
    /// retention 1 day, inbox window 7 days.
    pub fn new(pool: PgPool) -> Self {
        Sweeper {
            pool,
            interval: Duration::from_secs(60),
            batch_size: 500,
            outbox_retention: Duration::from_secs(24 * 3600),
            inbox_window: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// The time between passes.
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every;
        self
    }

    /// Rows deleted per statement.
    pub fn batch_size(mut self, n: i64) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long a delivered outbox message is kept (for inspection) before it is swept.
    pub fn outbox_retention(mut self, retention: Duration) -> Self {
        self.outbox_retention = retention;
        self
    }

    /// How long an inbox row is kept after its message was first received; see the rule
    /// above.
    pub fn inbox_window(mut self, window: Duration) -> Self {
        self.inbox_window = window;
        self
    }

    /// Sweeps every `interval` until `shutdown` is cancelled. Errors are logged and
    /// retried on the next pass.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.sweep_once().await {
                Ok(swept) if swept != Swept::default() => {
                    tracing::debug!(?swept, "swept idem tables");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweeping idem tables failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One pass: each table until a batch comes back short. On a Citus coordinator
    /// each batch is read first across the shards, without locks, then deleted by
    /// its keys (Citus takes no `FOR UPDATE` across shards).
    pub async fn sweep_once(&self) -> Result<Swept, StoreError> {
        let backend = Backend::detect(&self.pool).await?;
        Ok(Swept {
            keys: self
                .drain(|| sweep_expired_on(&self.pool, self.batch_size, backend))
                .await?,
            outbox: self.drain(|| self.delivered_outbox(backend)).await?,
            inbox: self.drain(|| self.old_inbox()).await?,
            observed: self.drain(|| self.old_observations(backend)).await?,
        })
    }

    async fn drain<F, Fut>(&self, mut batch: F) -> Result<u64, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let mut total = 0;
        loop {
            let n = batch().await?;
            total += n;
            if n < self.batch_size.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    async fn delivered_outbox(&self, backend: Backend) -> Result<u64, StoreError> {
        if backend == Backend::Citus {
            // Delivered messages never change again: no guard is needed.
            let found: Vec<(String, uuid::Uuid)> = sqlx::query_as(
                "SELECT tenant_id, id FROM idem.outbox \
                 WHERE delivered_at IS NOT NULL \
                   AND delivered_at < now() - make_interval(secs => $1) LIMIT $2",
            )
            .bind(self.outbox_retention.as_secs_f64())
            .bind(self.batch_size)
            .fetch_all(&self.pool)
            .await?;
            let (tenants, ids): (Vec<String>, Vec<uuid::Uuid>) = found.into_iter().unzip();
            if tenants.is_empty() {
                return Ok(0);
            }
            let done = sqlx::query(
                "DELETE FROM idem.outbox WHERE (tenant_id, id) IN \
                   (SELECT * FROM unnest($1::text[], $2::uuid[]))",
            )
            .bind(&tenants)
            .bind(&ids)
            .execute(&self.pool)
            .await?;
            return Ok(swept(done.rows_affected(), tenants.len()));
        }
        let done = sqlx::query(
            "DELETE FROM idem.outbox WHERE id IN ( \
               SELECT id FROM idem.outbox \
               WHERE delivered_at IS NOT NULL AND delivered_at < now() - make_interval(secs => $1) \
               LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(self.outbox_retention.as_secs_f64())
        .bind(self.batch_size)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn old_observations(&self, backend: Backend) -> Result<u64, StoreError> {
        if backend == Backend::Citus {
            // A key seen again moves its expiry: deleted only while it has the one read.
            let found: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                "SELECT tenant_id, key, expires_at FROM idem.observed_keys \
                 WHERE expires_at <= now() LIMIT $1",
            )
            .bind(self.batch_size)
            .fetch_all(&self.pool)
            .await?;
            let (mut tenants, mut keys, mut expiries) = (Vec::new(), Vec::new(), Vec::new());
            for (tenant, key, expires_at) in found {
                tenants.push(tenant);
                keys.push(key);
                expiries.push(expires_at);
            }
            if tenants.is_empty() {
                return Ok(0);
            }
            let done = sqlx::query(
                "DELETE FROM idem.observed_keys WHERE (tenant_id, key, expires_at) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]))",
            )
            .bind(&tenants)
            .bind(&keys)
            .bind(&expiries)
            .execute(&self.pool)
            .await?;
            return Ok(swept(done.rows_affected(), tenants.len()));
        }
        let done = sqlx::query(
            "DELETE FROM idem.observed_keys WHERE (tenant_id, key) IN ( \
               SELECT tenant_id, key FROM idem.observed_keys WHERE expires_at <= now() \
               LIMIT $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(self.batch_size)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn old_inbox(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idem.inbox WHERE (consumer, message_id) IN ( \
               SELECT consumer, message_id FROM idem.inbox \
               WHERE dead_at IS NULL AND received_at < now() - make_interval(secs => $1) \
               LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(self.inbox_window.as_secs_f64())
        .bind(self.batch_size)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
