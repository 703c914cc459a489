//! The phased claim: a new key's row committed at once with a lease and the first
//! fencing token, or an in-progress key taken over after its lease passed.

use chrono::{DateTime, Utc};
use idem_core::phased::{Journal, PhasedDecision, decide_phased};
use idem_core::{IdempotencyKey, Record, TenantId};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres, Row};
use uuid::Uuid;

use super::{Lease, Phased, PhasedClaim, secs};
use crate::StoreError;
use crate::keys::{Claim, claimed_unless_tombstoned, decode_record, for_route};
use crate::sql::{expiry, reset, tombstone_until};

/// How many times a phased claim re-reads a key that changed under it.
const CLAIM_ATTEMPTS: usize = 4;

/// Claims `(tenant, key)` for a phased request on `conn`, inside a transaction of the
/// caller's (READ COMMITTED), which the caller commits before the work starts: a new
/// key's row is inserted in progress with a fresh fencing token and a lease; a key
/// whose lease passed is taken over with another fresh token. What to do with an
/// existing row is [`decide_phased`]'s.
///
/// Until that transaction commits, nothing of the claim exists: a caller that gives up
/// on it (a timeout) rolls it back and can truthfully say the request did not run.
pub async fn claim(conn: &mut PgConnection, req: &PhasedClaim<'_>) -> Result<Phased, StoreError> {
    let (tenant, key) = (req.request.tenant, req.request.key);
    for _ in 0..CLAIM_ATTEMPTS {
        if let Some((fence, operation)) = insert_new(conn, req).await? {
            // The caller rolls back an answer that is not `Owned`, the new row with it.
            return Ok(match claimed_unless_tombstoned(conn, &req.request).await? {
                Claim::Expired(record, now) => Phased::Expired(record, now),
                Claim::Mismatch(record, now) => Phased::Mismatch(record, now),
                _ => owned_new(req, fence, operation),
            });
        }
        let Some(mut found) = lookup_phased(conn, tenant, key).await? else {
            continue; // swept between the two statements
        };
        found.record = for_route(found.record, &req.request);
        let (lease_until, now) = (found.lease_until, found.now);
        match decide_phased(
            Some(&found.record),
            lease_until,
            &req.request.fingerprint,
            now,
        ) {
            PhasedDecision::Replay => return Ok(Phased::Replay(found.record, now)),
            PhasedDecision::Mismatch => return Ok(Phased::Mismatch(found.record, now)),
            PhasedDecision::Expired => return Ok(Phased::Expired(found.record, now)),
            PhasedDecision::Wait => {
                let until = lease_until.unwrap_or(now);
                return Ok(Phased::Busy { until });
            }
            PhasedDecision::TakeOver => {
                if let Some((owner, operation, journal)) = take_over(conn, req, found.fence).await?
                {
                    return Ok(owned(req, owner, operation, journal, true));
                }
            }
            PhasedDecision::Execute => {
                if let Some((fence, operation)) =
                    replace_expired(conn, req, found.completed_at).await?
                {
                    return Ok(owned_new(req, fence, operation));
                }
            }
        }
    }
    Err(StoreError::Contended)
}

/// An owner's fencing token, and what the key's derived keys are bound to.
type Owner = (i64, IdempotencyKey);

/// The key claimed as new (inserted, or an expired one replaced): its first owner, bound
/// to the key as stored now, with an empty journal.
fn owned_new(req: &PhasedClaim<'_>, fence: i64, operation: Uuid) -> Phased {
    let binding = req.request.key.clone();
    owned(req, (fence, binding), operation, Journal::default(), false)
}

fn owned(
    req: &PhasedClaim<'_>,
    (fence, binding): Owner,
    operation: Uuid,
    journal: Journal,
    resumed: bool,
) -> Phased {
    Phased::Owned {
        lease: Lease {
            tenant: req.request.tenant.clone(),
            key: req.request.key.clone(),
            binding,
            fence,
            duration: req.lease,
            operation,
        },
        journal,
        resumed,
    }
}

/// A new claim's fencing token and operation id.
type Claimed = Option<(i64, Uuid)>;

/// A claiming statement's parameters, in the order both statements number them:
/// $1 tenant, $2 key, $3 fingerprint, $4 method, $5 path, $6 route, $7 retention
/// (seconds), $8 lease (seconds), $9 body, $10 content type, $11 query, $12 tombstone
/// window (seconds, `NULL`: none).
fn with_claim<'q, O>(
    statement: QueryAs<'q, Postgres, O, PgArguments>,
    req: &'q PhasedClaim<'q>,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let r = &req.request;
    statement
        .bind(r.tenant.as_str())
        .bind(r.key.as_str())
        .bind(r.fingerprint.as_bytes().as_slice())
        .bind(r.method)
        .bind(r.path)
        .bind(r.route)
        .bind(secs(r.retention))
        .bind(secs(req.lease))
        .bind(req.body)
        .bind(req.content_type)
        .bind(req.query)
        .bind(r.tombstones.map(secs))
}

async fn insert_new(conn: &mut PgConnection, req: &PhasedClaim<'_>) -> Result<Claimed, StoreError> {
    let statement = sqlx::query_as(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, created_at, \
           expires_at, retention, fence, locked_until, phases, request_body, \
           request_content_type, request_query, operation_id, owners, tombstone_window) \
         VALUES ($1, $2, $3, $4, $5, $6, now(), now() + make_interval(secs => $7), \
           make_interval(secs => $7), nextval('idem.fences'), now() + make_interval(secs => $8), \
           '{}', $9, $10, $11, gen_random_uuid(), 1, make_interval(secs => $12)) \
         ON CONFLICT (tenant_id, key) DO NOTHING RETURNING fence, operation_id",
    );
    Ok(with_claim(statement, req).fetch_optional(conn).await?)
}

/// A fencing token no claim or take-over of any key had before. (Values the
/// statements on a distributed table need are made apart, never by a volatile
/// function inside an `UPDATE`, which Citus refuses; operation ids come from Rust.)
async fn next_fence(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT nextval('idem.fences')")
        .fetch_one(conn)
        .await?)
}

/// A finished key past its retention becomes this request's, as new, while it is the
/// one read expired in this transaction: it still has the completion time read then (a
/// compare-and-set, so two requests cannot both take it over; Citus refuses the
/// expiry's arithmetic on columns in an `UPDATE`).
async fn replace_expired(
    conn: &mut PgConnection,
    req: &PhasedClaim<'_>,
    completed_at: Option<DateTime<Utc>>,
) -> Result<Claimed, StoreError> {
    let fence = next_fence(conn).await?;
    let statement = sqlx::query_as(concat!(
        "UPDATE idem.keys SET fingerprint = $3, method = $4, path = $5, route = $6, \
           created_at = now(), expires_at = now() + make_interval(secs => $7), \
           retention = make_interval(secs => $7), tombstone_window = make_interval(secs => $12), \
           fence = $13, owners = 1, locked_until = now() + make_interval(secs => $8), \
           phases = '{}', request_body = $9, request_content_type = $10, request_query = $11, \
           operation_id = $14, ",
        reset!(but lease),
        " WHERE tenant_id = $1 AND key = $2 AND completed_at = $15 \
         RETURNING fence, operation_id"
    ));
    Ok(with_claim(statement, req)
        .bind(fence)
        .bind(Uuid::new_v4())
        .bind(completed_at)
        .fetch_optional(conn)
        .await?)
}

/// Takes over an in-progress key whose lease passed, if it still carries the token
/// `seen` (else another request took it first, or it finished): a fresh token, a new
/// lease, and the journal the earlier owners left.
async fn take_over(
    conn: &mut PgConnection,
    req: &PhasedClaim<'_>,
    seen: Option<i64>,
) -> Result<Option<(Owner, Uuid, Journal)>, StoreError> {
    let fence = next_fence(conn).await?;
    let row = sqlx::query(
        "UPDATE idem.keys SET fence = $5, owners = coalesce(owners, 1) + 1, \
           locked_until = now() + make_interval(secs => $4), \
           operation_id = coalesce(operation_id, $6) \
         WHERE tenant_id = $1 AND key = $2 AND completed_at IS NULL \
           AND fence IS NOT DISTINCT FROM $3 \
           AND (locked_until IS NULL OR locked_until <= now()) \
         RETURNING fence, phases, operation_id, coalesce(binding, key) AS binding",
    )
    .bind(req.request.tenant.as_str())
    .bind(req.request.key.as_str())
    .bind(seen)
    .bind(secs(req.lease))
    .bind(fence)
    .bind(Uuid::new_v4())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let fence: i64 = row.try_get("fence")?;
    let binding = IdempotencyKey::parse(&row.try_get::<String, _>("binding")?)
        .map_err(|e| StoreError::Corrupt(format!("binding: {e}")))?;
    let journal = journal(row.try_get("phases")?)?;
    Ok(Some((
        (fence, binding),
        row.try_get("operation_id")?,
        journal,
    )))
}

fn journal(value: Option<serde_json::Value>) -> Result<Journal, StoreError> {
    match value {
        None => Ok(Journal::default()),
        Some(value) => serde_json::from_value(value)
            .map_err(|e| StoreError::Corrupt(format!("phase journal: {e}"))),
    }
}

/// The key's record, the end of its lease, its fencing token, and the store's time.
/// A phased key's row as the claim reads it.
struct PhasedRow {
    record: Record,
    /// The end of its owner's lease.
    lease_until: Option<DateTime<Utc>>,
    /// Its fencing token.
    fence: Option<i64>,
    /// The store's time of the read.
    now: DateTime<Utc>,
    /// When it finished (`None`: in progress).
    completed_at: Option<DateTime<Utc>>,
}

async fn lookup_phased(
    conn: &mut PgConnection,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<PhasedRow>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT fingerprint, response_status, response_header_names, response_header_values, \
           response_body, completed_at, ",
        expiry!(),
        " AS expires_at, now() AS db_now, ",
        tombstone_until!(),
        " AS tombstone_until, locked_until, fence \
         FROM idem.keys WHERE tenant_id = $1 AND key = $2"
    ))
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (record, now) = decode_record(&row)?;
    Ok(Some(PhasedRow {
        record,
        lease_until: row.try_get("locked_until")?,
        fence: row.try_get("fence")?,
        now,
        completed_at: row.try_get("completed_at")?,
    }))
}
