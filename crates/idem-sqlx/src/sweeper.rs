//! The sweeper: removes expired keys, delivered outbox rows past their retention and
//! inbox rows past their window, in small batches that never wait on a lock.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::citus::{bounded_wait, is_lock_timeout, swept};
use crate::keys::{sweep_expired, sweep_expired_citus};
use crate::{Backend, StoreError};

/// The statements that sweep a table keyed by `(tenant_id, key)` past its `expires_at`
/// (observe mode's keys, tombstones): `.0` the Citus pair (read up to `$1` rows, then
/// delete those that still have the expiry read: a key seen again, or swept again into
/// a new tombstone, has moved it), `.1` the plain Postgres delete of up to `$1` rows.
macro_rules! past_expiry {
    ($table:literal) => {
        (
            (
                concat!(
                    "SELECT tenant_id, key, expires_at FROM ",
                    $table,
                    " WHERE expires_at <= now() LIMIT $1"
                ),
                concat!(
                    "DELETE FROM ",
                    $table,
                    " WHERE (tenant_id, key, expires_at) IN \
                       (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]))"
                ),
            ),
            concat!(
                "DELETE FROM ",
                $table,
                " WHERE (tenant_id, key) IN (SELECT tenant_id, key FROM ",
                $table,
                " WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ),
        )
    };
}

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
    /// Tombstones past their window (the keys that left them are in `keys`).
    pub tombstones: u64,
}

/// Keeps idem's tables from growing forever. Each pass deletes, in batches of
/// `batch_size` rows (`FOR UPDATE SKIP LOCKED`, so it never waits on a request, a relay
/// or a consumer, and each batch is a short transaction of its own; on a Citus
/// coordinator a batch waits on a locked row at most [`lock_timeout`](Self::lock_timeout)
/// and is otherwise left for the next pass), pausing after each full batch so that
/// deleting takes a tenth of the pass's time ([`share`](Self::share)):
///
/// - keys past their expiry (retention counted from completion); a finished key whose
///   route keeps tombstones leaves one in `idem.tombstones`, in the same batch;
/// - outbox messages delivered longer ago than `outbox_retention` (default 1 day);
///   pending and dead-lettered messages are never swept;
/// - inbox rows first received longer ago than `inbox_window` (default 7 days); dead
///   letters stay until redriven or purged;
/// - keys seen in observe mode, past their retention;
/// - tombstones past their window.
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
    lock_timeout: Duration,
    share: f64,
}

impl Sweeper {
    /// A sweeper over `pool`: a pass every minute, batches of 500 rows deleting a tenth
    /// of the time, outbox retention 1 day, inbox window 7 days, on Citus a lock wait
    /// of at most 1 s.
    pub fn new(pool: PgPool) -> Self {
        Sweeper {
            pool,
            interval: Duration::from_secs(60),
            batch_size: 500,
            outbox_retention: Duration::from_secs(24 * 3600),
            inbox_window: Duration::from_secs(7 * 24 * 3600),
            lock_timeout: Duration::from_secs(1),
            share: idem_core::pace::SWEEP_SHARE,
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

    /// The share of a pass's time spent deleting (default 0.1): after a full batch the
    /// sweeper waits so that batches take this share of the time, nine times as long
    /// as the batch took by default (see [`idem_core::pace::pause_after`]; a pause is at
    /// most [`interval`](Self::interval), and shutting [`run`](Self::run) down ends it).
    /// A backlog of expired keys is then swept beside the traffic instead of competing
    /// with it, at a bounded rate: when keys expire faster than that, raise the share.
    /// `1.0` sweeps without pausing (as an operator's one-off sweep should).
    pub fn share(mut self, share: f64) -> Self {
        self.share = share;
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
            match self.pass(&shutdown).await {
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

    /// How long a batch on a Citus coordinator may wait for a row lock (default 1 s):
    /// there a batch is read without locks and then deleted by key, and the delete
    /// waits on a row a request or a consumer holds. A batch whose wait passes this
    /// bound is left for the next pass (the rest of the pass goes on). Plain Postgres
    /// never waits: its batches skip locked rows.
    pub fn lock_timeout(mut self, wait: Duration) -> Self {
        self.lock_timeout = wait;
        self
    }

    /// One pass: each table until a batch comes back short. On a Citus coordinator
    /// each batch is read first across the shards, without locks, then deleted by
    /// its keys (Citus takes no `FOR UPDATE` across shards), in a transaction whose
    /// lock waits, on the workers too, end after [`lock_timeout`](Self::lock_timeout):
    /// a table whose batch timed out is left until the next pass.
    pub async fn sweep_once(&self) -> Result<Swept, StoreError> {
        self.pass(&CancellationToken::new()).await
    }

    /// One pass, which `stop` ends early (in a pause between batches).
    async fn pass(&self, stop: &CancellationToken) -> Result<Swept, StoreError> {
        let backend = Backend::detect(&self.pool).await?;
        Ok(Swept {
            keys: self.drain(Table::Keys, backend, stop).await?,
            outbox: self.drain(Table::Outbox, backend, stop).await?,
            inbox: self.drain(Table::Inbox, backend, stop).await?,
            observed: self.drain(Table::Observed, backend, stop).await?,
            tombstones: self.drain(Table::Tombstones, backend, stop).await?,
        })
    }

    /// Batches of `table` until one comes back short; on Citus, until one waits past
    /// the lock timeout too (its rows are left for the next pass). After a full batch
    /// it pauses (see [`share`](Self::share); at most `interval`), and ends there when
    /// `stop` is cancelled.
    async fn drain(
        &self,
        table: Table,
        backend: Backend,
        stop: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        while !stop.is_cancelled() {
            let started = tokio::time::Instant::now();
            let n = match backend {
                Backend::Postgres => self.batch_postgres(table).await?,
                Backend::Citus => match self.batch_citus(table).await {
                    Ok(n) => n,
                    Err(e) if is_lock_timeout(&e) => {
                        tracing::debug!(
                            ?table,
                            "a row to sweep is locked; its batch is left for the next pass"
                        );
                        return Ok(total);
                    }
                    Err(e) => return Err(e),
                },
            };
            total += n;
            if n < self.batch_size.unsigned_abs() {
                return Ok(total);
            }
            let pause = idem_core::pace::pause_after(started.elapsed(), self.share);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(pause.min(self.interval)) => {}
            }
        }
        Ok(total)
    }

    async fn batch_postgres(&self, table: Table) -> Result<u64, StoreError> {
        match table {
            Table::Keys => sweep_expired(&self.pool, self.batch_size).await,
            Table::Outbox => self.delivered_outbox_postgres().await,
            Table::Inbox => self.old_inbox_postgres().await,
            Table::Observed => {
                self.past_expiry_postgres(past_expiry!("idem.observed_keys").1)
                    .await
            }
            Table::Tombstones => {
                self.past_expiry_postgres(past_expiry!("idem.tombstones").1)
                    .await
            }
        }
    }

    /// One batch of `table` on Citus, in a transaction of its own whose lock waits are
    /// bounded by `lock_timeout`.
    async fn batch_citus(&self, table: Table) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        bounded_wait(&mut tx, self.lock_timeout).await?;
        let n = match table {
            Table::Keys => sweep_expired_citus(&mut tx, self.batch_size).await?,
            Table::Outbox => self.delivered_outbox_citus(&mut tx).await?,
            Table::Inbox => self.old_inbox_citus(&mut tx).await?,
            Table::Observed => {
                self.past_expiry_citus(&mut tx, past_expiry!("idem.observed_keys").0)
                    .await?
            }
            Table::Tombstones => {
                self.past_expiry_citus(&mut tx, past_expiry!("idem.tombstones").0)
                    .await?
            }
        };
        tx.commit().await?;
        Ok(n)
    }

    async fn delivered_outbox_citus(&self, conn: &mut PgConnection) -> Result<u64, StoreError> {
        // Delivered messages never change again: no guard is needed.
        let found: Vec<(String, uuid::Uuid)> = sqlx::query_as(
            "SELECT tenant_id, id FROM idem.outbox \
             WHERE delivered_at IS NOT NULL \
               AND delivered_at < now() - make_interval(secs => $1) LIMIT $2",
        )
        .bind(self.outbox_retention.as_secs_f64())
        .bind(self.batch_size)
        .fetch_all(&mut *conn)
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
        .execute(&mut *conn)
        .await?;
        Ok(swept(done.rows_affected(), tenants.len()))
    }

    async fn delivered_outbox_postgres(&self) -> Result<u64, StoreError> {
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

    /// One batch of a table keyed by `(tenant_id, key)` past its `expires_at`, on Citus,
    /// with the statements [`past_expiry!`] words for it: `find` reads up to `$1` rows
    /// (tenant, key, expiry), `delete` deletes those that still have the expiry read.
    async fn past_expiry_citus(
        &self,
        conn: &mut PgConnection,
        (find, delete): (&'static str, &'static str),
    ) -> Result<u64, StoreError> {
        let found: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(find)
            .bind(self.batch_size)
            .fetch_all(&mut *conn)
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
        let done = sqlx::query(delete)
            .bind(&tenants)
            .bind(&keys)
            .bind(&expiries)
            .execute(&mut *conn)
            .await?;
        Ok(swept(done.rows_affected(), tenants.len()))
    }

    /// One batch on plain Postgres: `delete` ([`past_expiry!`]'s) removes up to `$1` rows.
    async fn past_expiry_postgres(&self, delete: &'static str) -> Result<u64, StoreError> {
        let done = sqlx::query(delete)
            .bind(self.batch_size)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn old_inbox_citus(&self, conn: &mut PgConnection) -> Result<u64, StoreError> {
        // A row redriven and received again since the read has a new received_at, and
        // one dead-lettered meanwhile has a dead_at: neither is deleted.
        let found: Vec<(String, String, uuid::Uuid, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as(
                "SELECT tenant_id, consumer, message_id, received_at FROM idem.inbox \
                 WHERE dead_at IS NULL AND received_at < now() - make_interval(secs => $1) \
                 LIMIT $2",
            )
            .bind(self.inbox_window.as_secs_f64())
            .bind(self.batch_size)
            .fetch_all(&mut *conn)
            .await?;
        let (mut tenants, mut consumers, mut ids, mut received) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (tenant, consumer, id, at) in found {
            tenants.push(tenant);
            consumers.push(consumer);
            ids.push(id);
            received.push(at);
        }
        if tenants.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM idem.inbox WHERE dead_at IS NULL \
               AND (tenant_id, consumer, message_id, received_at) IN \
               (SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::timestamptz[]))",
        )
        .bind(&tenants)
        .bind(&consumers)
        .bind(&ids)
        .bind(&received)
        .execute(&mut *conn)
        .await?;
        Ok(swept(done.rows_affected(), tenants.len()))
    }

    async fn old_inbox_postgres(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idem.inbox WHERE (tenant_id, consumer, message_id) IN ( \
               SELECT tenant_id, consumer, message_id FROM idem.inbox \
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

/// The tables a pass sweeps, in order.
#[derive(Debug, Clone, Copy)]
enum Table {
    Keys,
    Outbox,
    Inbox,
    Observed,
    Tombstones,
}
