//! (h) and (s): the layer's new keys on a crowded table. [`fill`] writes millions of
//! finished keys into `idem.keys` (four retention classes, a tenth of them expired),
//! then the new-key scenario runs again on it (h), and once more while an
//! [`idem_sqlx::Sweeper`] removes the expired ones (s): the cost of a new key should
//! stay flat as the table grows and while it is swept.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows written per statement while filling (one transaction each).
const FILL_CHUNK: i64 = 500_000;

/// What [`fill`] wrote.
#[derive(Debug, Serialize)]
pub struct Filled {
    /// Keys written.
    pub keys: i64,
    /// Of them, already past their retention.
    pub expired: i64,
    /// Seconds the filling took.
    pub secs: f64,
}

/// Writes `count` finished keys spread over `tenants` tenants (the requests' own, so
/// new keys land among them in the primary key): retention 1 hour, 1 day, 7 days or
/// 30 days in turn, completed within the last ten minutes (none expires during a run),
/// except every tenth key, which completed its retention and an hour more ago (expired,
/// for the sweeper). The expired tenth spreads over every tenant and retention class.
pub async fn fill(pool: &PgPool, count: i64, tenants: usize) -> Result<Filled, sqlx::Error> {
    let started = Instant::now();
    let tenants = i64::try_from(tenants.max(1)).unwrap_or(1);
    let mut first = 0;
    while first < count {
        let last = (first + FILL_CHUNK).min(count) - 1;
        sqlx::query(
            "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, \
               response_status, response_header_names, response_header_values, response_body, \
               created_at, completed_at, expires_at, retention) \
             SELECT 'tenant-' || (g / 10 % $3), 'filled-' || g, sha256(int8send(g)), 'POST', \
               '/payments', '/payments', 201, ARRAY['content-type'], \
               ARRAY['application/json'::bytea], \
               convert_to('{\"id\":\"' || g || '\",\"amount\":1250,\"currency\":\"EUR\"}', 'UTF8'), \
               at, at, at + retention, retention \
             FROM generate_series($1::bigint, $2::bigint) AS g, \
               LATERAL (SELECT (ARRAY[interval '1 hour', interval '1 day', interval '7 days', \
                 interval '30 days'])[1 + g / 10 / $3 % 4] AS retention) AS class, \
               LATERAL (SELECT CASE WHEN g % 10 = 0 THEN now() - retention - interval '1 hour' \
                 ELSE now() - (g % 600) * interval '1 second' END AS at) AS finished \
             ON CONFLICT (tenant_id, key) DO NOTHING",
        )
        .bind(first)
        .bind(last)
        .bind(tenants)
        .execute(pool)
        .await?;
        first = last + 1;
    }
    sqlx::raw_sql("ANALYZE idem.keys").execute(pool).await?;
    Ok(Filled {
        keys: count,
        expired: expired(pool).await?,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Keys past their retention, swept or not yet.
pub async fn expired(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM idem.keys \
         WHERE greatest(expires_at, completed_at + retention) <= now()",
    )
    .fetch_one(pool)
    .await
}

/// A sweeper running in the background, as an application runs it.
pub struct Sweeping {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    expired_before: i64,
    started: Instant,
}

/// What the sweeper removed while a scenario ran.
#[derive(Debug, Serialize)]
pub struct Swept {
    /// Expired keys removed.
    pub keys: i64,
    /// Over this many seconds.
    pub secs: f64,
    /// Expired keys still in the table when it was stopped (0: it finished).
    pub left: i64,
}

impl Sweeping {
    /// Starts an [`idem_sqlx::Sweeper`] with its defaults (batches of 500 until a
    /// batch comes back short), passes one second apart.
    pub async fn start(pool: &PgPool) -> Result<Sweeping, sqlx::Error> {
        let expired_before = expired(pool).await?;
        let stop = CancellationToken::new();
        let sweeper = idem_sqlx::Sweeper::new(pool.clone()).interval(Duration::from_secs(1));
        let task = tokio::spawn(sweeper.run(stop.clone()));
        Ok(Sweeping {
            stop,
            task,
            expired_before,
            started: Instant::now(),
        })
    }

    /// Counts what the sweeper removed so far, then stops it: the stop ends a pause
    /// between batches, and a batch under way is cut off (a benchmark's shortcut: each
    /// batch is a statement of its own, so the rows stay consistent).
    pub async fn stop(self, pool: &PgPool) -> Result<Swept, sqlx::Error> {
        let secs = self.started.elapsed().as_secs_f64();
        let left = expired(pool).await?;
        self.stop.cancel();
        self.task.abort();
        let _ = self.task.await;
        Ok(Swept {
            keys: self.expired_before - left,
            secs,
            left,
        })
    }
}
