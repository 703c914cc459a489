//! A key on an atomic route, in the caller's transaction: its [`claim`], the
//! [`complete`]d answer (or one [`record`]ed on its own), the [`lookup`] a replay
//! answers from; the sightings of observe mode ([`observe`]); the [`live_keys`] count and
//! [`sweep_expired`]. What an operator reads of one key, and its eviction, are in
//! [`inspect`].

pub mod inspect;
mod observed;

use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_core::{
    Decision, Fingerprint, IdempotencyKey, Record, RecordState, StoredResponse, TenantId,
    Tombstone, decide,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgExecutor, PgTransaction, Postgres, Row};

use crate::sql::{expiry, keep_tombstones, reset, tombstone_until};
use crate::{Backend, StoreError};

pub use observed::observe;

/// SQLSTATE `lock_not_available`: the lock wait passed `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How many times a claim re-reads a key that vanished or was replaced under it.
const CLAIM_ATTEMPTS: usize = 4;

/// The rest of a claiming statement after its `tomb` CTE (the key's standing tombstone,
/// when the route keeps them) and its `ins` CTE (an `INSERT .. RETURNING` of the key's
/// row): one row saying the key was inserted, or the existing row as [`decode_record`]
/// reads it (with `inserted` false) when it was not, or the tombstone as one (a
/// finished record whose response is gone, expired at the read) when the key has no
/// row. An inserted row says `raced` when the route keeps tombstones and the
/// statement's snapshot still saw a row of the key: the insert won because that row was
/// deleted meanwhile (swept, and its tombstone written, in a transaction that committed
/// after the snapshot), so the tombstone must be read again in a new statement.
macro_rules! inserted_or_existing {
    () => {
        concat!(
            " SELECT true AS inserted, NULL::bytea AS fingerprint, \
               NULL::smallint AS response_status, NULL::text[] AS response_header_names, \
               NULL::bytea[] AS response_header_values, NULL::bytea AS response_body, \
               NULL::timestamptz AS completed_at, NULL::timestamptz AS expires_at, \
               now() AS db_now, NULL::timestamptz AS tombstone_until, \
               ($7::float8 IS NOT NULL AND EXISTS ( \
                 SELECT 1 FROM idem.keys WHERE tenant_id = $1 AND key = $2)) AS raced \
             FROM ins \
             UNION ALL \
             SELECT false, fingerprint, response_status, response_header_names, \
               response_header_values, response_body, completed_at, ",
            expiry!(),
            ", now(), ",
            tombstone_until!(),
            ", false FROM idem.keys WHERE tenant_id = $1 AND key = $2 \
               AND NOT EXISTS (SELECT 1 FROM ins) \
             UNION ALL \
             SELECT false, fingerprint, response_status, NULL, NULL, NULL, completed_at, now(), \
               now(), expires_at, false \
             FROM tomb WHERE NOT EXISTS (SELECT 1 FROM ins) \
               AND NOT EXISTS (SELECT 1 FROM idem.keys WHERE tenant_id = $1 AND key = $2)"
        )
    };
}

/// The claiming statement's `tomb` CTE: the key's tombstone while it stands, read only
/// when the route keeps tombstones (`$7`, its window, is not `NULL`).
macro_rules! tomb_cte {
    () => {
        "tomb AS MATERIALIZED ( \
           SELECT fingerprint, completed_at, response_status, expires_at FROM idem.tombstones \
           WHERE $7::float8 IS NOT NULL AND tenant_id = $1 AND key = $2 AND expires_at > now()) "
    };
}

/// The `SET` list that makes an expired key's row a new claim of this request
/// (`$3` fingerprint, `$4` method, `$5` path, `$6` retention in seconds, `$7` tombstone
/// window in seconds, `$8` route): everything of the earlier request is cleared.
macro_rules! claimed_row {
    () => {
        concat!(
            "fingerprint = $3, method = $4, path = $5, route = $8, created_at = now(), \
             expires_at = now() + make_interval(secs => $6), \
             retention = make_interval(secs => $6), \
             tombstone_window = make_interval(secs => $7), ",
            reset!()
        )
    };
}

/// What a request asks of the store when it claims a key.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The tenant that owns the key.
    pub tenant: &'a TenantId,
    /// The idempotency key.
    pub key: &'a IdempotencyKey,
    /// The request's fingerprint.
    pub fingerprint: Fingerprint,
    /// The request method, kept for operators.
    pub method: &'a str,
    /// The request path, kept for operators.
    pub path: &'a str,
    /// The route template the request matched (for example `/payments/{id}`), kept so
    /// storage can be told per endpoint; `None` outside a matched route.
    pub route: Option<&'a str>,
    /// How long the key counts after its request completes.
    pub retention: Duration,
    /// How long after its retention the finished key leaves a tombstone, and whether
    /// the claim answers from a standing one ([`Claim::Expired`]); `None` for a route
    /// that keeps none.
    pub tombstones: Option<Duration>,
    /// How long to wait for a transaction that holds the same key to finish before
    /// answering [`Claim::InFlight`]. Zero waits (almost) not at all.
    pub wait: Duration,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this transaction's: run the handler, then [`complete`] and commit.
    Claimed,
    /// A finished record with the same fingerprint: answer from it. With the store's
    /// time of the read (see [`Record::on_local_clock`]).
    Replay(Record, DateTime<Utc>),
    /// A live record of a different request, with the store's time of the read.
    Mismatch(Record, DateTime<Utc>),
    /// Another transaction holds the key and did not finish within the wait.
    InFlight,
    /// The same request finished long enough ago that its key expired, and its
    /// tombstone still stands (see [`ClaimRequest::tombstones`]): refuse it. The record
    /// is what is left (its fingerprint, status and [`Tombstone`](idem_core::Tombstone)),
    /// with the store's time of the read.
    Expired(Record, DateTime<Utc>),
}

/// Claims `(tenant, key)` inside the caller's transaction.
///
/// The claim is a unique-constraint `INSERT`. When another transaction holds the same
/// key, the insert waits for it (at most `wait`, through a transaction-local
/// `lock_timeout`), then sees its committed row. The existing row is read in a new
/// statement (the inserting statement's snapshot predates that commit), and
/// [`idem_core::decide`] says what to do with it. An expired row is replaced by an
/// `UPDATE` that only matches while it is still expired, so two requests cannot both
/// take it over.
///
/// On [`Claim::Claimed`] the transaction's `lock_timeout` is back at what it was before
/// the claim (a session's own setting included), so the handler's own statements are
/// not bound by the claim's wait. On the other outcomes
/// the caller should roll the transaction back.
///
/// The claim takes a transaction, never a bare connection: outside a transaction the
/// claim would commit at once and the key would answer "in flight" until it expires.
/// It is sound under READ COMMITTED (see [`Isolation`](crate::Isolation)). Under a
/// stricter level a key committed after the transaction's snapshot fails the claim
/// with a serialization failure ([`FailureKind::Serialization`](idem_core::FailureKind));
/// roll back and claim again in a new transaction.
pub async fn claim(
    tx: &mut PgTransaction<'_>,
    req: &ClaimRequest<'_>,
) -> Result<Claim, StoreError> {
    claim_on(tx, req, Backend::Postgres).await
}

/// [`claim`], worded for `backend`. On a Citus coordinator the wait bound is a
/// `SET LOCAL lock_timeout` that Citus passes on to the worker holding the key's shard
/// (`citus.propagate_set_commands = 'local'` for the transaction), the claim's own
/// statements call no function Citus refuses on a distributed table, and on
/// [`Claim::Claimed`] the transaction's `lock_timeout` is set back to its default
/// (the database's or role's; a value the session `SET` itself is not restored) in one
/// more statement: three round trips where plain Postgres takes one (four on a route
/// that keeps tombstones: a winning insert reads the key's tombstone after it).
pub async fn claim_on(
    tx: &mut PgTransaction<'_>,
    req: &ClaimRequest<'_>,
    backend: Backend,
) -> Result<Claim, StoreError> {
    let claimed = match backend {
        Backend::Postgres => claim_inner(tx, req).await,
        Backend::Citus => claim_citus(tx, req).await,
    };
    match claimed {
        Err(StoreError::Database(sqlx::Error::Database(e)))
            if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
        {
            Ok(Claim::InFlight)
        }
        other => other,
    }
}

async fn claim_inner(
    tx: &mut PgTransaction<'_>,
    req: &ClaimRequest<'_>,
) -> Result<Claim, StoreError> {
    let conn = &mut **tx;
    // lock_timeout = 0 disables the timeout; a zero wait means "do not wait".
    let wait_ms = req.wait.as_millis().clamp(1, i32::MAX as u128);
    let lock_timeout = format!("{wait_ms}ms");

    for _ in 0..CLAIM_ATTEMPTS {
        // One statement claims the key or, when a committed row is already visible to
        // it, returns that row: a replay costs no second round trip. The value of
        // lock_timeout before the first claim of the transaction is saved once (a
        // claim that did not insert leaves the wait in force) and put back on success.
        let row = bind_claim(sqlx::query(concat!(
            "WITH saved AS MATERIALIZED ( \
               SELECT set_config('idem.lock_timeout', coalesce( \
                 nullif(current_setting('idem.lock_timeout', true), ''), \
                 current_setting('lock_timeout')), true) AS v), \
             cfg AS MATERIALIZED (SELECT set_config('lock_timeout', $8, true) AS applied FROM saved), ",
            tomb_cte!(),
            ", ins AS ( \
               INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, \
                 created_at, expires_at, retention, tombstone_window) \
               SELECT $1, $2, $3, $4, $5, $9, now(), now() + make_interval(secs => $6), \
                 make_interval(secs => $6), make_interval(secs => $7) FROM cfg \
               WHERE NOT EXISTS (SELECT 1 FROM tomb) \
               ON CONFLICT (tenant_id, key) DO NOTHING \
               RETURNING set_config('lock_timeout', current_setting('idem.lock_timeout'), true)) ",
            inserted_or_existing!()
        )), req)
        .bind(&lock_timeout)
        .bind(req.route)
        .fetch_optional(&mut *conn)
        .await?;
        let existing = match row {
            Some(row) if row.try_get::<bool, _>("inserted")? => {
                if row.try_get::<bool, _>("raced")? {
                    return claimed_unless_tombstoned(&mut *conn, req).await;
                }
                return Ok(Claim::Claimed);
            }
            Some(row) => Some(decode_record(&row)?),
            // Nothing visible to that statement: the insert waited for a transaction
            // that committed the row after the statement's snapshot was taken. A new
            // statement, so a new snapshot, sees it.
            None => lookup(&mut *conn, req.tenant, req.key).await?,
        };
        let Some((record, now)) = existing else {
            continue; // swept between the two statements; claim again
        };
        let record = for_route(record, req);
        match answered_by(record, now, &req.fingerprint) {
            Some(answered) => return Ok(answered),
            None => {
                let replaced = bind_claim(sqlx::query(concat!(
                    "UPDATE idem.keys SET ",
                    claimed_row!(),
                    " WHERE tenant_id = $1 AND key = $2 AND ", expiry!(), " <= now() \
                       AND completed_at IS NOT NULL \
                     RETURNING set_config('lock_timeout', current_setting('idem.lock_timeout'), true)"
                )), req)
                .bind(req.route)
                .fetch_optional(&mut *conn)
                .await?;
                if replaced.is_some() {
                    return Ok(Claim::Claimed);
                }
                // Someone else replaced it first; read it again.
            }
        }
    }
    Err(StoreError::Contended)
}

/// The claim on a Citus coordinator (see [`claim_on`]).
async fn claim_citus(
    tx: &mut PgTransaction<'_>,
    req: &ClaimRequest<'_>,
) -> Result<Claim, StoreError> {
    let conn = &mut **tx;
    let wait_ms = req.wait.as_millis().clamp(1, i32::MAX as u128);
    // A number the layer chose, formatted: nothing of the request is in this text.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL citus.propagate_set_commands = 'local'; \
         SET LOCAL lock_timeout = '{wait_ms}ms'"
    )))
    .execute(&mut *conn)
    .await?;
    for _ in 0..CLAIM_ATTEMPTS {
        // Two statements where Postgres takes one: Citus plans a modifying CTE read
        // beside another query in steps (the CTE's rows sent back to the worker as an
        // intermediate result), while a bare INSERT is one statement routed to the
        // key's worker; a new key, the common case, needs nothing else.
        let inserted = bind_claim(
            sqlx::query(
                "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, \
               created_at, expires_at, retention, tombstone_window) \
             VALUES ($1, $2, $3, $4, $5, $8, now(), now() + make_interval(secs => $6), \
               make_interval(secs => $6), make_interval(secs => $7)) \
             ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1",
            ),
            req,
        )
        .bind(req.route)
        .fetch_optional(&mut *conn)
        .await?;
        if inserted.is_some() {
            return match claimed_unless_tombstoned(&mut *conn, req).await? {
                Claim::Claimed => claimed_on_citus(conn).await,
                tombstoned => Ok(tombstoned),
            };
        }
        let Some(row) = lookup_row(&mut *conn, req.tenant, req.key).await? else {
            continue;
        };
        let (record, now) = decode_record(&row)?;
        if let Some(answered) = answered_by(for_route(record, req), now, &req.fingerprint) {
            return Ok(answered);
        }
        let completed_at: Option<DateTime<Utc>> = row.try_get("completed_at")?;
        if replace_expired(&mut *conn, req, completed_at).await? {
            return claimed_on_citus(conn).await;
        }
    }
    Err(StoreError::Contended)
}

/// A claim whose insert won, unless the key's tombstone stands: then what the tombstone
/// answers (the caller rolls back, and its inserted row with it). Read in a statement
/// of its own, after the insert: an insert that won over a row being swept waited for
/// the sweep to commit, so the tombstone the sweep wrote is visible now.
pub(crate) async fn claimed_unless_tombstoned(
    conn: &mut sqlx::PgConnection,
    req: &ClaimRequest<'_>,
) -> Result<Claim, StoreError> {
    if let Some((record, now)) = standing_tombstone(conn, req).await?
        && let Some(answered) = answered_by(record, now, &req.fingerprint)
    {
        return Ok(answered);
    }
    Ok(Claim::Claimed)
}

/// The key's standing tombstone as a record (finished, its response gone, expired at
/// the read) with the store's time, when the route keeps tombstones; `None` otherwise.
/// One round trip, only on such routes.
async fn standing_tombstone(
    conn: &mut sqlx::PgConnection,
    req: &ClaimRequest<'_>,
) -> Result<Option<(Record, DateTime<Utc>)>, StoreError> {
    if req.tombstones.is_none() {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT fingerprint, response_status, NULL::text[] AS response_header_names, \
           NULL::bytea[] AS response_header_values, NULL::bytea AS response_body, completed_at, \
           now() AS expires_at, now() AS db_now, expires_at AS tombstone_until \
         FROM idem.tombstones WHERE tenant_id = $1 AND key = $2 AND expires_at > now()",
    )
    .bind(req.tenant.as_str())
    .bind(req.key.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| decode_record(&row)).transpose()
}

/// `query` with a claim's first seven parameters bound: `$1` tenant, `$2` key, `$3`
/// fingerprint, `$4` method, `$5` path, `$6` retention in seconds, `$7` tombstone
/// window in seconds (`NULL`: none).
fn bind_claim<'q>(
    query: Query<'q, Postgres, PgArguments>,
    req: &'q ClaimRequest<'_>,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(req.tenant.as_str())
        .bind(req.key.as_str())
        .bind(req.fingerprint.as_bytes().as_slice())
        .bind(req.method)
        .bind(req.path)
        .bind(req.retention.as_secs_f64())
        .bind(req.tombstones.map(|window| window.as_secs_f64()))
}

/// `record` as a claim on `req`'s route decides with it: a route that keeps no
/// tombstones does not answer from one, whatever the key's row kept.
pub(crate) fn for_route(record: Record, req: &ClaimRequest<'_>) -> Record {
    record.tombstone_kept(req.tombstones.is_some())
}

/// What a key's existing row answers a claim with (a replay, a mismatch, or in
/// flight), or `None` when it expired and this request may take it over.
fn answered_by(record: Record, now: DateTime<Utc>, fingerprint: &Fingerprint) -> Option<Claim> {
    match decide(Some(&record), fingerprint, now) {
        Decision::Replay => Some(Claim::Replay(record, now)),
        Decision::Mismatch => Some(Claim::Mismatch(record, now)),
        Decision::InFlight => Some(Claim::InFlight),
        Decision::Expired => Some(Claim::Expired(record, now)),
        Decision::Execute => None,
    }
}

/// The key's row as [`lookup`] reads it.
async fn lookup_row<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<PgRow>, StoreError> {
    Ok(sqlx::query(concat!(
        "SELECT fingerprint, response_status, response_header_names, response_header_values, \
           response_body, completed_at, ",
        expiry!(),
        " AS expires_at, now() AS db_now, ",
        tombstone_until!(),
        " AS tombstone_until FROM idem.keys WHERE tenant_id = $1 AND key = $2"
    ))
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(executor)
    .await?)
}

/// A claim on Citus won: the handler's statements get the transaction's default
/// `lock_timeout` back.
async fn claimed_on_citus(conn: &mut sqlx::PgConnection) -> Result<Claim, StoreError> {
    sqlx::raw_sql("SET LOCAL lock_timeout TO DEFAULT")
        .execute(conn)
        .await?;
    Ok(Claim::Claimed)
}

/// Replaces an expired finished key with this request's claim, Citus's wording; whether
/// it did. The row was read expired in this transaction; it is replaced only while it
/// still has the completion time read then (a compare-and-set: Citus refuses the
/// expiry's `completed_at + retention`, a stable operator on columns, in an `UPDATE`),
/// so two requests cannot both take it over.
async fn replace_expired(
    conn: &mut sqlx::PgConnection,
    req: &ClaimRequest<'_>,
    completed_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let replaced = bind_claim(
        sqlx::query(concat!(
            "UPDATE idem.keys SET ",
            claimed_row!(),
            " WHERE tenant_id = $1 AND key = $2 AND completed_at = $9"
        )),
        req,
    )
    .bind(req.route)
    .bind(completed_at)
    .execute(conn)
    .await?;
    Ok(replaced.rows_affected() == 1)
}

/// What [`complete`] stores for a request.
#[derive(Debug, Clone, Copy)]
pub enum Completion<'a> {
    /// The whole response, to be replayed byte for byte.
    Response(&'a StoredResponse),
    /// Only the status: the body was larger than the storage limit.
    StatusOnly(u16),
}

/// Stores the final response on the key this transaction claimed, and starts the key's
/// retention: it counts from completion (this statement's start, not the
/// transaction's), so a duplicate waiting on a request slower than the retention never
/// finds the key expired. (`statement_timestamp()`, not `clock_timestamp()`: Citus
/// refuses volatile functions in an `UPDATE` of a distributed table.) Commit afterwards: the response becomes visible together with the
/// handler's writes.
///
/// Fails with [`StoreError::is_transaction_aborted`] when a statement of the handler
/// had already aborted the transaction (nothing of it can commit; see [`record`]).
pub async fn complete(
    tx: &mut PgTransaction<'_>,
    req: &ClaimRequest<'_>,
    completion: Completion<'_>,
) -> Result<(), StoreError> {
    let parts = CompletionParts::new(completion)?;
    let statement = sqlx::query(
        "UPDATE idem.keys SET response_status = $3, response_header_names = $4, \
           response_header_values = $5, response_body = $6, completed_at = statement_timestamp() \
         WHERE tenant_id = $1 AND key = $2 AND completed_at IS NULL",
    )
    .bind(req.tenant.as_str())
    .bind(req.key.as_str());
    let done = parts.bind(statement).execute(&mut **tx).await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::NotClaimed)
    }
}

/// Records a finished request's answer in a statement of its own, outside the request's
/// transaction: for a request whose transaction was aborted by one of its handler's
/// statements (so none of its writes commit) but whose answer is final, such as a
/// unique violation the handler maps to 422. A retry then replays that answer.
///
/// Waits at most `req.wait` for a transaction that holds the key. Returns `false` when
/// the key is taken (another request claimed it meanwhile, or its live record exists):
/// the answer is then not recorded.
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    req: &ClaimRequest<'_>,
    completion: Completion<'_>,
) -> Result<bool, StoreError> {
    let parts = CompletionParts::new(completion)?;
    let wait_ms = req.wait.as_millis().clamp(1, i32::MAX as u128);
    // Outside an explicit transaction the statement is its own transaction, so the
    // local lock_timeout lasts exactly as long as the statement.
    let statement = sqlx::query(concat!(
        "WITH cfg AS MATERIALIZED (SELECT set_config('lock_timeout', $12, true) AS applied) \
         INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, \
           response_status, response_header_names, response_header_values, response_body, \
           created_at, completed_at, expires_at, retention, tombstone_window) \
         SELECT $1, $2, $3, $4, $5, $13, $8, $9, $10, $11, now(), now(), \
           now() + make_interval(secs => $6), make_interval(secs => $6), \
           make_interval(secs => $7) FROM cfg \
         ON CONFLICT (tenant_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
           method = EXCLUDED.method, path = EXCLUDED.path, route = EXCLUDED.route, \
           response_status = EXCLUDED.response_status, \
           response_header_names = EXCLUDED.response_header_names, \
           response_header_values = EXCLUDED.response_header_values, \
           response_body = EXCLUDED.response_body, created_at = EXCLUDED.created_at, \
           completed_at = EXCLUDED.completed_at, expires_at = EXCLUDED.expires_at, \
           retention = EXCLUDED.retention, tombstone_window = EXCLUDED.tombstone_window, ",
        reset!(but answer),
        " WHERE ",
        expiry!("idem.keys."),
        " <= now() AND idem.keys.completed_at IS NOT NULL"
    ));
    let written = parts
        .bind(bind_claim(statement, req))
        .bind(format!("{wait_ms}ms"))
        .bind(req.route)
        .execute(executor)
        .await;
    match written {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// [`record`], worded for `backend`. On a Citus coordinator the answer is claimed and
/// completed in a short transaction of its own ([`claim_on`], then [`complete`]):
/// Citus refuses the clock in an `ON CONFLICT DO UPDATE`.
pub async fn record_on(
    pool: &sqlx::PgPool,
    req: &ClaimRequest<'_>,
    completion: Completion<'_>,
    backend: Backend,
) -> Result<bool, StoreError> {
    if backend == Backend::Postgres {
        return record(pool, req, completion).await;
    }
    let mut tx = crate::transaction::begin(pool, crate::Isolation::ReadCommitted).await?;
    match claim_on(&mut tx, req, backend).await? {
        Claim::Claimed => {
            complete(&mut tx, req, completion).await?;
            tx.commit().await?;
            Ok(true)
        }
        Claim::Replay(..) | Claim::Mismatch(..) | Claim::InFlight | Claim::Expired(..) => {
            tx.rollback().await?;
            Ok(false)
        }
    }
}

/// A [`Completion`] as the columns store it.
pub(crate) struct CompletionParts<'a> {
    pub(crate) status: i16,
    pub(crate) names: Option<Vec<String>>,
    pub(crate) values: Option<Vec<Vec<u8>>>,
    pub(crate) body: Option<&'a [u8]>,
}

impl<'a> CompletionParts<'a> {
    pub(crate) fn new(completion: Completion<'a>) -> Result<Self, StoreError> {
        let (status, names, values, body) = match completion {
            Completion::Response(r) => {
                let (names, values): (Vec<String>, Vec<Vec<u8>>) =
                    r.headers.iter().cloned().unzip();
                (r.status, Some(names), Some(values), Some(r.body.as_slice()))
            }
            Completion::StatusOnly(status) => (status, None, None, None),
        };
        let status = i16::try_from(status)
            .map_err(|_| StoreError::Corrupt(format!("status {status} out of range")))?;
        Ok(CompletionParts {
            status,
            names,
            values,
            body,
        })
    }

    /// `query` with the answer bound as its next four parameters, in column order:
    /// `response_status`, `response_header_names`, `response_header_values`,
    /// `response_body`.
    pub(crate) fn bind<'q>(
        self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments>
    where
        'a: 'q,
    {
        query
            .bind(self.status)
            .bind(self.names)
            .bind(self.values)
            .bind(self.body)
    }
}

/// Reads the committed record of `(tenant, key)`, with the store's current time.
/// Expired records are returned as they are; [`idem_core::decide`] treats them as absent.
pub async fn lookup<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<(Record, DateTime<Utc>)>, StoreError> {
    let row = lookup_row(executor, tenant, key).await?;
    row.map(|row| decode_record(&row)).transpose()
}

/// A row's stored response headers, names and values paired in order.
pub(crate) fn stored_headers(row: &PgRow) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let names: Vec<String> = row
        .try_get::<Option<Vec<String>>, _>("response_header_names")?
        .unwrap_or_default();
    let values: Vec<Vec<u8>> = row
        .try_get::<Option<Vec<Vec<u8>>>, _>("response_header_values")?
        .unwrap_or_default();
    if names.len() != values.len() {
        return Err(StoreError::Corrupt(
            "header names and values differ in number".into(),
        ));
    }
    Ok(names.into_iter().zip(values).collect())
}

/// A record from a row with the columns [`lookup`] reads (`tombstone_until` among
/// them, `NULL` where the statement keeps no tombstone), and the store's time.
pub(crate) fn decode_record(row: &PgRow) -> Result<(Record, DateTime<Utc>), StoreError> {
    let fingerprint: Vec<u8> = row.try_get("fingerprint")?;
    let fingerprint =
        Fingerprint::from_slice(&fingerprint).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let completed_at: Option<DateTime<Utc>> = row.try_get("completed_at")?;
    let status: Option<i16> = row.try_get("response_status")?;
    let state = match (completed_at, status) {
        (None, _) => RecordState::InFlight,
        (Some(_), None) => {
            return Err(StoreError::Corrupt("completed without a status".into()));
        }
        (Some(_), Some(status)) => {
            let status = u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("status {status}")))?;
            let body: Option<Vec<u8>> = row.try_get("response_body")?;
            match body {
                None => RecordState::CompletedUnstored { status },
                Some(body) => RecordState::Completed(StoredResponse {
                    status,
                    headers: stored_headers(row)?,
                    body,
                }),
            }
        }
    };
    let tombstone_until: Option<DateTime<Utc>> = row.try_get("tombstone_until")?;
    let tombstone = completed_at
        .zip(tombstone_until)
        .map(|(completed_at, until)| Tombstone {
            completed_at,
            until,
        });
    let record = Record {
        fingerprint,
        state,
        expires_at: row.try_get("expires_at")?,
        tombstone,
    };
    Ok((record, row.try_get("db_now")?))
}

/// How many live keys (in flight or completed, not expired) `tenant` holds. Through
/// the primary key's index: it reads the tenant's keys.
pub async fn live_keys<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
) -> Result<u64, StoreError> {
    let live: i64 = sqlx::query_scalar(concat!(
        "SELECT count(*) FROM idem.keys WHERE tenant_id = $1 AND ",
        expiry!(),
        " > now()"
    ))
    .bind(tenant.as_str())
    .fetch_one(executor)
    .await?;
    Ok(live.unsigned_abs())
}

/// Deletes up to `limit` expired keys and returns how many it deleted. Safe to run
/// from several processes at once (`FOR UPDATE SKIP LOCKED`); run it periodically to
/// keep the table small. Expired keys count as absent whether or not they are swept.
/// A phased key still in progress is never swept: its work is half done, and only
/// finishing it (a retry, or the completer) ends it.
pub async fn sweep_expired<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<u64, StoreError> {
    sweep_expired_postgres(executor, limit).await
}

/// [`sweep_expired`], worded for a Citus coordinator, on `conn` (the sweeper's
/// transaction, whose propagated `lock_timeout` bounds the delete's wait on a key a
/// request holds). The batch is read first, without locks, across the shards (Citus
/// takes no `FOR UPDATE` across them), then deleted where each row still has the
/// completion time read (the same generation of the key, so still expired).
pub(crate) async fn sweep_expired_citus(
    conn: &mut sqlx::PgConnection,
    limit: i64,
) -> Result<u64, StoreError> {
    // A key that never completed is read with the epoch as its completion time, so one
    // comparison guards both kinds (Citus takes no function over columns here). What
    // a tombstone needs is read here too: Citus takes no stable function in a
    // distributed DELETE's RETURNING, and the guard makes the deleted row the one read.
    let found: Vec<Gone> = sqlx::query_as(concat!(
        "SELECT tenant_id, key, coalesce(completed_at, 'epoch') AS guard, fingerprint, \
           completed_at, response_status, ",
        tombstone_until!(),
        " AS until FROM idem.keys WHERE expires_at <= now() AND ",
        expiry!(),
        " <= now() AND (completed_at IS NOT NULL OR fence IS NULL) \
         ORDER BY expires_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if found.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut keys, mut guards) = (Vec::new(), Vec::new(), Vec::new());
    for g in &found {
        tenants.push(g.tenant_id.as_str());
        keys.push(g.key.as_str());
        guards.push(g.guard);
    }
    let deleted: std::collections::HashSet<(String, String)> = sqlx::query_as(
        "DELETE FROM idem.keys WHERE (tenant_id, key, coalesce(completed_at, 'epoch')) IN \
           (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])) \
           AND (completed_at IS NOT NULL OR fence IS NULL) \
         RETURNING tenant_id, key",
    )
    .bind(&tenants)
    .bind(&keys)
    .bind(&guards)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let read = found.len();
    let gone = found
        .into_iter()
        .filter(|g| deleted.contains(&(g.tenant_id.clone(), g.key.clone())))
        .collect();
    keep_tombstones_citus(conn, gone).await?;
    Ok(crate::citus::swept(deleted.len() as u64, read))
}

/// A key the Citus sweeper read expired, as its tombstone needs it.
#[derive(sqlx::FromRow)]
struct Gone {
    tenant_id: String,
    key: String,
    /// Its completion time, or the epoch: the delete's guard.
    guard: DateTime<Utc>,
    fingerprint: Vec<u8>,
    completed_at: Option<DateTime<Utc>>,
    response_status: Option<i16>,
    until: Option<DateTime<Utc>>,
}

/// The tombstones of the keys a Citus sweep deleted, in the sweep's transaction
/// (`keep_tombstones!` decides which keys leave one).
async fn keep_tombstones_citus(
    conn: &mut sqlx::PgConnection,
    gone: Vec<Gone>,
) -> Result<(), StoreError> {
    if gone.iter().all(|g| g.until.is_none()) {
        return Ok(());
    }
    let mut rows = TombstoneRows::default();
    for g in gone {
        rows.tenants.push(g.tenant_id);
        rows.keys.push(g.key);
        rows.fingerprints.push(g.fingerprint);
        rows.completed.push(g.completed_at);
        rows.statuses.push(g.response_status);
        rows.until.push(g.until);
    }
    sqlx::query(keep_tombstones!(
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[], \
           $5::smallint[], $6::timestamptz[]) \
           AS gone (tenant_id, key, fingerprint, completed_at, response_status, until)"
    ))
    .bind(rows.tenants)
    .bind(rows.keys)
    .bind(rows.fingerprints)
    .bind(rows.completed)
    .bind(rows.statuses)
    .bind(rows.until)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`Gone`] rows as the columns of an `unnest`.
#[derive(Default)]
struct TombstoneRows {
    tenants: Vec<String>,
    keys: Vec<String>,
    fingerprints: Vec<Vec<u8>>,
    completed: Vec<Option<DateTime<Utc>>>,
    statuses: Vec<Option<i16>>,
    until: Vec<Option<DateTime<Utc>>>,
}

async fn sweep_expired_postgres<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<u64, StoreError> {
    // expires_at <= now() lets the index find the candidates; the expiry decides. A
    // finished key whose route keeps tombstones leaves one, in the same statement.
    let swept: i64 = sqlx::query_scalar(concat!(
        "WITH gone AS ( \
           DELETE FROM idem.keys WHERE (tenant_id, key) IN ( \
             SELECT tenant_id, key FROM idem.keys WHERE expires_at <= now() AND ",
        expiry!(),
        " <= now() AND (completed_at IS NOT NULL OR fence IS NULL) \
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
           RETURNING tenant_id, key, fingerprint, completed_at, response_status, ",
        tombstone_until!(),
        " AS until), \
         kept AS (",
        keep_tombstones!(
            "SELECT tenant_id, key, fingerprint, completed_at, response_status, until FROM gone"
        ),
        ") SELECT count(*) FROM gone"
    ))
    .bind(limit)
    .fetch_one(executor)
    .await?;
    Ok(swept.unsigned_abs())
}
