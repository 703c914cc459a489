//! Phased keys: a claim that commits at once with a lease and a fencing token, phases
//! that each commit their writes with the key's journal, and the fenced completion.
//!
//! Every write a phase owner makes to the key row is guarded by its fencing token: a
//! phase locks the row first (`FOR UPDATE`) and finds its token there, or commits
//! nothing. A take-over waits on that lock and re-checks the lease after it, and every
//! phase commit renews the lease: an owner that keeps committing is never taken over,
//! and one that was cannot commit again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_core::phased::{Journal, PhaseEntry, PhasedDecision, decide_phased};
use idem_core::{IdempotencyKey, Record, TenantId};
use sqlx::{PgPool, PgTransaction, Row};

use crate::StoreError;
use crate::keys::{ClaimRequest, Completion, CompletionParts, decode_record};

/// How many times a phased claim re-reads a key that changed under it.
const CLAIM_ATTEMPTS: usize = 4;

/// What a request asks of the store when it claims a key on a phased route.
#[derive(Debug, Clone)]
pub struct PhasedClaim<'a> {
    /// The key, its request and its retention (`wait` is not used: the claim never
    /// waits on a lock, it answers [`Phased::Busy`]).
    pub request: ClaimRequest<'a>,
    /// How long the owner holds the key without committing a phase.
    pub lease: Duration,
    /// The request's body, kept so the completer can finish the key.
    pub body: &'a [u8],
    /// The request's `Content-Type`, kept with the body.
    pub content_type: Option<&'a str>,
}

/// The ownership of a phased key: its fencing token, and how long a lease lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key's tenant.
    pub tenant: TenantId,
    /// The key (as stored).
    pub key: IdempotencyKey,
    /// The fencing token: the row must still carry it for this owner to commit.
    pub fence: i64,
    /// How long each renewal lasts.
    pub duration: Duration,
}

/// The outcome of [`claim_phased`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phased {
    /// The key is this request's: run the handler's phases. `resumed` when it was taken
    /// over from an owner whose lease passed; the journal holds what its phases left.
    Owned {
        /// The new owner's lease.
        lease: Lease,
        /// The phases that committed before.
        journal: Journal,
        /// Whether an earlier owner had the key.
        resumed: bool,
    },
    /// Finished, same request: answer from the record (with the store's time).
    Replay(Record, DateTime<Utc>),
    /// A live record of a different request (with the store's time).
    Mismatch(Record, DateTime<Utc>),
    /// Another owner holds the key and its lease has not passed.
    Busy {
        /// When the lease passes, unless the owner commits another phase.
        until: DateTime<Utc>,
    },
}

/// Claims `(tenant, key)` for a phased request, committing at once (each statement is
/// its own transaction): a new key's row is inserted in progress with the first
/// fencing token and a lease; a key whose lease passed is taken over with the next
/// token. What to do with an existing row is [`decide_phased`]'s.
pub async fn claim_phased(pool: &PgPool, req: &PhasedClaim<'_>) -> Result<Phased, StoreError> {
    let (tenant, key) = (req.request.tenant, req.request.key);
    for _ in 0..CLAIM_ATTEMPTS {
        if let Some(fence) = insert_new(pool, req).await? {
            return Ok(owned(req, fence, Journal::default(), false));
        }
        let Some((record, lease_until, fence, now)) = lookup_phased(pool, tenant, key).await?
        else {
            continue; // swept between the two statements
        };
        match decide_phased(Some(&record), lease_until, &req.request.fingerprint, now) {
            PhasedDecision::Replay => return Ok(Phased::Replay(record, now)),
            PhasedDecision::Mismatch => return Ok(Phased::Mismatch(record, now)),
            PhasedDecision::Wait => {
                let until = lease_until.unwrap_or(now);
                return Ok(Phased::Busy { until });
            }
            PhasedDecision::TakeOver => {
                if let Some((fence, journal)) = take_over(pool, req, fence).await? {
                    return Ok(owned(req, fence, journal, true));
                }
            }
            PhasedDecision::Execute => {
                if let Some(fence) = replace_expired(pool, req).await? {
                    return Ok(owned(req, fence, Journal::default(), false));
                }
            }
        }
    }
    Err(StoreError::Contended)
}

fn owned(req: &PhasedClaim<'_>, fence: i64, journal: Journal, resumed: bool) -> Phased {
    Phased::Owned {
        lease: Lease {
            tenant: req.request.tenant.clone(),
            key: req.request.key.clone(),
            fence,
            duration: req.lease,
        },
        journal,
        resumed,
    }
}

/// Seconds, as Postgres intervals take them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn insert_new(pool: &PgPool, req: &PhasedClaim<'_>) -> Result<Option<i64>, StoreError> {
    let r = &req.request;
    let fence = sqlx::query_scalar(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, created_at, \
           expires_at, retention, fence, locked_until, phases, request_body, \
           request_content_type) \
         VALUES ($1, $2, $3, $4, $5, $6, now(), now() + make_interval(secs => $7), \
           make_interval(secs => $7), 1, now() + make_interval(secs => $8), '{}', $9, $10) \
         ON CONFLICT (tenant_id, key) DO NOTHING RETURNING fence",
    )
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
    .fetch_optional(pool)
    .await?;
    Ok(fence)
}

/// A finished key past its retention becomes this request's, as new.
async fn replace_expired(pool: &PgPool, req: &PhasedClaim<'_>) -> Result<Option<i64>, StoreError> {
    let r = &req.request;
    let fence = sqlx::query_scalar(
        "UPDATE idem.keys SET fingerprint = $3, method = $4, path = $5, route = $6, \
           replays = 0, mismatches = 0, created_at = now(), \
           expires_at = now() + make_interval(secs => $7), retention = make_interval(secs => $7), \
           completed_at = NULL, response_status = NULL, response_header_names = NULL, \
           response_header_values = NULL, response_body = NULL, recovery_point = NULL, \
           fence = coalesce(fence, 0) + 1, locked_until = now() + make_interval(secs => $8), \
           phases = '{}', request_body = $9, request_content_type = $10 \
         WHERE tenant_id = $1 AND key = $2 AND completed_at IS NOT NULL \
           AND greatest(expires_at, completed_at + retention) <= now() \
         RETURNING fence",
    )
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
    .fetch_optional(pool)
    .await?;
    Ok(fence)
}

/// Takes over an in-progress key whose lease passed, if it still carries the token
/// `seen` (else another request took it first, or it finished): the next token, a new
/// lease, and the journal the earlier owners left.
async fn take_over(
    pool: &PgPool,
    req: &PhasedClaim<'_>,
    seen: Option<i64>,
) -> Result<Option<(i64, Journal)>, StoreError> {
    let row = sqlx::query(
        "UPDATE idem.keys SET fence = coalesce(fence, 0) + 1, \
           locked_until = now() + make_interval(secs => $4) \
         WHERE tenant_id = $1 AND key = $2 AND completed_at IS NULL \
           AND fence IS NOT DISTINCT FROM $3 \
           AND (locked_until IS NULL OR locked_until <= now()) \
         RETURNING fence, phases",
    )
    .bind(req.request.tenant.as_str())
    .bind(req.request.key.as_str())
    .bind(seen)
    .bind(secs(req.lease))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let fence: i64 = row.try_get("fence")?;
    let journal = journal(row.try_get("phases")?)?;
    Ok(Some((fence, journal)))
}

fn journal(value: Option<serde_json::Value>) -> Result<Journal, StoreError> {
    match value {
        None => Ok(Journal::default()),
        Some(value) => serde_json::from_value(value)
            .map_err(|e| StoreError::Corrupt(format!("phase journal: {e}"))),
    }
}

/// The key's record, the end of its lease, its fencing token, and the store's time.
type PhasedRow = (Record, Option<DateTime<Utc>>, Option<i64>, DateTime<Utc>);

async fn lookup_phased(
    pool: &PgPool,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<PhasedRow>, StoreError> {
    let row = sqlx::query(
        "SELECT fingerprint, response_status, response_header_names, response_header_values, \
           response_body, completed_at, greatest(expires_at, completed_at + retention) \
           AS expires_at, now() AS db_now, locked_until, fence \
         FROM idem.keys WHERE tenant_id = $1 AND key = $2",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (record, now) = decode_record(&row)?;
    Ok(Some((
        record,
        row.try_get("locked_until")?,
        row.try_get("fence")?,
        now,
    )))
}

/// Opens a phase: a transaction that holds the key row locked, after checking that it
/// still carries `lease`'s token and is not finished ([`StoreError::Fenced`] if not).
/// Do the phase's writes on it, then [`commit_phase`].
pub async fn begin_phase(
    pool: &PgPool,
    lease: &Lease,
) -> Result<PgTransaction<'static>, StoreError> {
    let mut tx = pool.begin().await?;
    fenced(&mut tx, lease).await?;
    Ok(tx)
}

/// Checks, under the row's lock, that `lease` still owns the key.
async fn fenced(tx: &mut PgTransaction<'_>, lease: &Lease) -> Result<(), StoreError> {
    let owner: Option<(Option<i64>, bool)> = sqlx::query_as(
        "SELECT fence, completed_at IS NOT NULL FROM idem.keys \
         WHERE tenant_id = $1 AND key = $2 FOR UPDATE",
    )
    .bind(lease.tenant.as_str())
    .bind(lease.key.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    match owner {
        Some((Some(fence), false)) if fence == lease.fence => Ok(()),
        _ => Err(StoreError::Fenced),
    }
}

/// Records the phase `name`'s entry in the key's journal, makes it the recovery point,
/// renews the lease, and commits, with the phase's writes. A phase that already has an
/// entry keeps it (a phase commits once).
pub async fn commit_phase(
    mut tx: PgTransaction<'static>,
    lease: &Lease,
    name: &str,
    entry: &PhaseEntry,
) -> Result<(), StoreError> {
    let entry = serde_json::to_value(entry)
        .map_err(|e| StoreError::Corrupt(format!("phase entry: {e}")))?;
    let done = sqlx::query(
        "UPDATE idem.keys SET \
           phases = jsonb_build_object($4::text, $5::jsonb) || coalesce(phases, '{}'), \
           recovery_point = $4, locked_until = now() + make_interval(secs => $6) \
         WHERE tenant_id = $1 AND key = $2 AND fence = $3 AND completed_at IS NULL",
    )
    .bind(lease.tenant.as_str())
    .bind(lease.key.as_str())
    .bind(lease.fence)
    .bind(name)
    .bind(entry)
    .bind(secs(lease.duration))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Fenced);
    }
    tx.commit().await?;
    Ok(())
}

/// Records a phase's permanent failure in the journal, in a transaction of its own
/// (the phase's writes rolled back): a resumed handler then gets the same failure.
pub async fn record_failure(
    pool: &PgPool,
    lease: &Lease,
    name: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let tx = begin_phase(pool, lease).await?;
    commit_phase(tx, lease, name, &PhaseEntry::Failed(reason.to_owned())).await
}

/// Stores the final response of a phased key and ends its lease, if `lease` still owns
/// it ([`StoreError::Fenced`] if not). Its retention counts from now.
pub async fn finish_phased(
    pool: &PgPool,
    lease: &Lease,
    completion: Completion<'_>,
) -> Result<(), StoreError> {
    let parts = CompletionParts::new(completion)?;
    let done = sqlx::query(
        "UPDATE idem.keys SET response_status = $4, response_header_names = $5, \
           response_header_values = $6, response_body = $7, completed_at = now(), \
           locked_until = NULL \
         WHERE tenant_id = $1 AND key = $2 AND fence = $3 AND completed_at IS NULL",
    )
    .bind(lease.tenant.as_str())
    .bind(lease.key.as_str())
    .bind(lease.fence)
    .bind(parts.status)
    .bind(parts.names)
    .bind(parts.values)
    .bind(parts.body)
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Fenced)
    }
}

/// Ends `lease` early without finishing the key (the handler answered something that
/// is not final): a retry takes it over at once and resumes. Does nothing when another
/// owner has the key.
pub async fn release_lease(pool: &PgPool, lease: &Lease) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.keys SET locked_until = now() \
         WHERE tenant_id = $1 AND key = $2 AND fence = $3 AND completed_at IS NULL",
    )
    .bind(lease.tenant.as_str())
    .bind(lease.key.as_str())
    .bind(lease.fence)
    .execute(pool)
    .await?;
    Ok(())
}
