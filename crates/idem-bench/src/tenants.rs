//! The tenants the benchmark's requests spread over, and on a Citus coordinator where
//! their keys landed: the share of keys each worker holds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Serialize;
use sqlx::PgPool;

/// How many tenants the requests name (`--tenants`), set once at start; the database
/// loops read it from here (their operations take no arguments).
static TENANTS: AtomicUsize = AtomicUsize::new(1);
/// The next tenant a database loop's operation names.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Whether the database is a Citus coordinator, set once by [`distribute`].
static CITUS: AtomicBool = AtomicBool::new(false);

/// Sets how many tenants the requests spread over (at least one).
pub fn set(count: usize) {
    TENANTS.store(count.max(1), Ordering::Relaxed);
}

/// The tenant of request `i`: `tenant-0` ... `tenant-<n-1>`, round robin.
pub fn of(i: usize) -> String {
    format!("tenant-{}", i % TENANTS.load(Ordering::Relaxed).max(1))
}

/// The next tenant, round robin, for operations that take no request index.
pub fn next() -> String {
    of(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The backend [`distribute`] found, for the statements the layer words per backend.
pub fn backend() -> idem_sqlx::Backend {
    match CITUS.load(Ordering::Relaxed) {
        true => idem_sqlx::Backend::Citus,
        false => idem_sqlx::Backend::Postgres,
    }
}

/// The keys one Citus worker holds.
#[derive(Debug, Serialize)]
pub struct WorkerShare {
    /// The worker's address.
    pub worker: String,
    /// Keys in its shards of `idem.keys`.
    pub keys: i64,
    /// Distinct tenants among them.
    pub tenants: i64,
}

/// The Citus tables the benchmark writes, distributed by tenant (the example's, idem's,
/// and the hand-written pattern's keys table), co-located; on plain Postgres nothing.
/// Answers whether the database is a Citus coordinator.
pub async fn distribute(pool: &PgPool) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let idem_sqlx::citus::Distribution::Distributed { .. } = payments::distribute(pool).await?
    else {
        return Ok(false);
    };
    sqlx::query(
        "SELECT create_distributed_table('handwritten_idempotency', 'tenant_id', \
           colocate_with => 'payments') \
         WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition \
           WHERE logicalrelid = 'handwritten_idempotency'::regclass)",
    )
    .execute(pool)
    .await?;
    CITUS.store(true, Ordering::Relaxed);
    Ok(true)
}

/// How `idem.keys` of the benchmark's tenants is spread over the Citus workers.
pub async fn keys_per_worker(pool: &PgPool) -> Result<Vec<WorkerShare>, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT s.nodename || ':' || s.nodeport, count(*), count(DISTINCT k.tenant_id) \
         FROM idem.keys k JOIN citus_shards s \
           ON s.shardid = get_shard_id_for_distribution_column('idem.keys', k.tenant_id) \
         WHERE k.tenant_id LIKE 'tenant-%' \
         GROUP BY s.nodename, s.nodeport ORDER BY s.nodename, s.nodeport",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(worker, keys, tenants)| WorkerShare {
            worker,
            keys,
            tenants,
        })
        .collect())
}
