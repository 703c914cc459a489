//! Scaling out on Citus: idem's tables distributed by tenant, co-located with the
//! application's tenant-distributed tables, so that a keyed request (the claim, the
//! handler's writes, the outbox message, the stored response) is one transaction on
//! one worker.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::{Backend, StoreError};

/// SQLSTATE `lock_not_available`: a lock wait passed `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// idem's tables that are distributed by `tenant_id`, in the order [`distribute`]
/// distributes them. `idem.inbox` is keyed by the tenant its messages name, so a
/// consumer's inbox row lives on the worker of the tenant its work writes for.
pub const DISTRIBUTED_TABLES: [&str; 5] = [
    "idem.keys",
    "idem.tombstones",
    "idem.outbox",
    "idem.observed_keys",
    "idem.inbox",
];

/// What [`distribute`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    /// The database has no `citus` extension: plain Postgres, nothing to do.
    NotCitus,
    /// idem's tables are distributed by `tenant_id`; `newly` lists those this call
    /// distributed (empty when they already were).
    Distributed {
        /// The tables distributed by this call.
        newly: Vec<&'static str>,
    },
}

/// Distributes idem's tables by `tenant_id` when the database is a Citus coordinator
/// (its `citus` extension is installed), co-located with `colocate_with` (an
/// application table distributed by its tenant column, as `"public.payments"`) or, with
/// `None`, in Citus's default co-location group for text columns. Idempotent: run it
/// at every start, after [`MIGRATOR`](crate::MIGRATOR). On plain Postgres it does
/// nothing and answers [`Distribution::NotCitus`]. Tables distributed earlier in
/// another co-location group (or `colocate_with` not distributed) are refused with
/// [`StoreError::NotColocated`]: each keyed request would be a two-phase commit.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// idem_sqlx::MIGRATOR.run(&pool).await?;
/// // The application's own tables first, distributed by their tenant column; then idem's
/// // beside them.
/// idem_sqlx::citus::distribute(&pool, Some("public.payments")).await?;
/// # Ok(())
/// # }
/// ```
pub async fn distribute(
    pool: &PgPool,
    colocate_with: Option<&str>,
) -> Result<Distribution, StoreError> {
    if Backend::detect(pool).await? == Backend::Postgres {
        return Ok(Distribution::NotCitus);
    }
    let mut newly = Vec::new();
    for table in DISTRIBUTED_TABLES {
        if is_distributed(pool, table).await? {
            continue;
        }
        sqlx::query(
            "SELECT create_distributed_table($1::regclass, 'tenant_id', \
               colocate_with => coalesce($2, 'default'))",
        )
        .bind(table)
        .bind(colocate_with)
        .execute(pool)
        .await?;
        newly.push(table);
    }
    check_colocation(pool, colocate_with).await?;
    Ok(Distribution::Distributed { newly })
}

/// That idem's tables, and `colocate_with` when named, share one co-location group.
async fn check_colocation(pool: &PgPool, colocate_with: Option<&str>) -> Result<(), StoreError> {
    let tables: Vec<&str> = colocate_with
        .into_iter()
        .chain(DISTRIBUTED_TABLES)
        .collect();
    let groups: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT t, (SELECT colocationid FROM pg_dist_partition \
                    WHERE logicalrelid = t::regclass) \
         FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await?;
    let Some((first, group)) = groups.first() else {
        return Ok(());
    };
    let apart: Vec<&str> = groups
        .iter()
        .filter(|(_, g)| g != group || g.is_none())
        .map(|(t, _)| t.as_str())
        .collect();
    match apart.is_empty() {
        true => Ok(()),
        false => Err(StoreError::NotColocated(format!(
            "{} not in the co-location group of {first}",
            apart.join(", ")
        ))),
    }
}

/// Whether `table` is a Citus distributed table (on a coordinator; the catalog it reads
/// exists only where the `citus` extension is installed).
pub(crate) async fn is_distributed<'e>(
    executor: impl PgExecutor<'e>,
    table: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
    )
    .bind(table)
    .fetch_one(executor)
    .await?)
}

/// How many rows a sweep's batch on Citus counts for: read across the shards first,
/// then deleted by key where each row is still the one read, a batch read full counts
/// as full (more may wait) even where a row changed meanwhile and stayed.
pub(crate) fn swept(deleted: u64, read: usize) -> u64 {
    deleted.max(u64::try_from(read).unwrap_or(u64::MAX))
}

/// Bounds every lock wait of the rest of `conn`'s transaction by `wait` (at least a
/// millisecond: zero would mean no bound), on the coordinator and on the workers the
/// transaction reaches (`citus.propagate_set_commands = 'local'` passes the `SET LOCAL`
/// on). A wait past it fails with SQLSTATE `lock_not_available` ([`is_lock_timeout`]).
pub(crate) async fn bounded_wait(
    conn: &mut PgConnection,
    wait: Duration,
) -> Result<(), StoreError> {
    let wait_ms = wait.as_millis().clamp(1, i32::MAX as u128);
    // A number, formatted: no caller's text is in this statement.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL citus.propagate_set_commands = 'local'; \
         SET LOCAL lock_timeout = '{wait_ms}ms'"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether `error` is a lock wait that passed `lock_timeout` (on the coordinator or
/// on a worker: Citus passes the worker's SQLSTATE on).
pub(crate) fn is_lock_timeout(error: &StoreError) -> bool {
    error.sqlstate().as_deref() == Some(LOCK_NOT_AVAILABLE)
}

/// `tenants` grouped by the shard of `table` that holds their rows, each group sorted
/// (so a statement that names one group's tenants is a router query, on one shard,
/// where Citus takes `FOR UPDATE`). Read from the coordinator's metadata: no worker is
/// asked.
pub(crate) async fn by_shard(
    pool: &PgPool,
    table: &str,
    tenants: &[String],
) -> Result<Vec<Vec<String>>, StoreError> {
    let shards: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t, get_shard_id_for_distribution_column($1::regclass, t) \
         FROM unnest($2::text[]) t",
    )
    .bind(table)
    .bind(tenants)
    .fetch_all(pool)
    .await?;
    let mut groups: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (tenant, shard) in shards {
        groups.entry(shard).or_default().push(tenant);
    }
    Ok(groups
        .into_values()
        .map(|mut tenants| {
            tenants.sort();
            tenants.dedup();
            tenants
        })
        .collect())
}
