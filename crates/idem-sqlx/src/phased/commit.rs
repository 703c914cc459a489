//! Phase commits and the key's completion, each guarded by the owner's fencing token.

use chrono::{DateTime, Utc};
use idem_core::phased::PhaseEntry;
use sqlx::postgres::types::PgInterval;
use sqlx::{FromRow, PgPool, PgTransaction};

use super::{Lease, secs};
use crate::StoreError;
use crate::keys::{Completion, CompletionParts};

/// Where [`begin`] left a phase.
#[derive(Debug)]
pub enum PhaseStart {
    /// The phase's transaction, holding the key row locked: do the phase's writes on
    /// it, then [`commit`].
    Open(PgTransaction<'static>),
    /// The phase is in the journal already (it committed, or failed for good, under
    /// this owner or an earlier one): run nothing, answer this.
    Recorded(PhaseEntry),
}

/// Opens the phase `name`: a transaction that holds the key row locked, after checking
/// that it still carries `lease`'s token and is not finished ([`StoreError::Fenced`] if
/// not), and that the phase is not in the journal yet ([`PhaseStart::Recorded`] if it
/// is: a phase commits its writes once, even when two calls of it race).
pub async fn begin(pool: &PgPool, lease: &Lease, name: &str) -> Result<PhaseStart, StoreError> {
    // READ COMMITTED whatever the server's default: the row's newest version, read
    // under its lock, is what a racing call of the same phase committed.
    let mut tx = crate::transaction::begin(pool, crate::Isolation::ReadCommitted).await?;
    match fenced(&mut tx, lease, name).await? {
        None => Ok(PhaseStart::Open(tx)),
        Some(entry) => {
            tx.rollback().await?;
            Ok(PhaseStart::Recorded(entry))
        }
    }
}

/// Checks, under the row's lock, that `lease` still owns the key; the journal's entry
/// for `name`, if it has one.
async fn fenced(
    tx: &mut PgTransaction<'_>,
    lease: &Lease,
    name: &str,
) -> Result<Option<PhaseEntry>, StoreError> {
    let owner: Option<(Option<i64>, bool, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT fence, completed_at IS NOT NULL, phases -> $3 FROM idem.keys \
         WHERE tenant_id = $1 AND key = $2 FOR UPDATE",
    )
    .bind(lease.tenant.as_str())
    .bind(lease.key.as_str())
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?;
    match owner {
        Some((Some(fence), false, entry)) if fence == lease.fence => entry
            .map(|entry| {
                serde_json::from_value(entry)
                    .map_err(|e| StoreError::Corrupt(format!("phase `{name}` entry: {e}")))
            })
            .transpose(),
        _ => Err(StoreError::Fenced),
    }
}

/// Records the phase `name`'s entry in the key's journal, makes it the recovery point,
/// renews the lease, and commits, with the phase's writes. `tx` is the one
/// [`begin`] opened, which holds the row locked and found no entry for `name`.
pub async fn commit(
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
/// The phase's entry as the journal keeps it: this failure, or the entry it had
/// already.
pub async fn record_failure(
    pool: &PgPool,
    lease: &Lease,
    name: &str,
    reason: &str,
) -> Result<PhaseEntry, StoreError> {
    let entry = PhaseEntry::Failed(reason.to_owned());
    match begin(pool, lease, name).await? {
        PhaseStart::Open(tx) => {
            commit(tx, lease, name, &entry).await?;
            Ok(entry)
        }
        PhaseStart::Recorded(recorded) => Ok(recorded),
    }
}

/// Stores the final response of a phased key and ends its lease, if `lease` still owns
/// it ([`StoreError::Fenced`] if not). Its retention counts from now. The request kept
/// for the completer (query, body, content type) and the binding are cleared: a
/// finished key keeps only its answer. `journal`, when given, replaces the journal (the
/// layer passes it sealed, when it seals bodies). When the finished key expires, by
/// the row's own retention (set when it was claimed, whatever this process's is).
pub async fn finish(
    pool: &PgPool,
    lease: &Lease,
    completion: Completion<'_>,
    journal: Option<serde_json::Value>,
) -> Result<Expiry, StoreError> {
    let parts = CompletionParts::new(completion)?;
    let statement = sqlx::query(
        "UPDATE idem.keys SET response_status = $4, response_header_names = $5, \
           response_header_values = $6, response_body = $7, completed_at = now(), \
           locked_until = NULL, request_query = NULL, request_body = NULL, \
           request_content_type = NULL, binding = NULL, phases = coalesce($8, phases) \
         WHERE tenant_id = $1 AND key = $2 AND fence = $3 AND completed_at IS NULL \
         RETURNING expires_at, retention, completed_at",
    )
    .bind(lease.tenant.as_str())
    .bind(lease.key.as_str())
    .bind(lease.fence);
    let done = parts
        .bind(statement)
        .bind(journal)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::Fenced)?;
    // The expiry rule (`greatest(expires_at, completed_at + retention)`) is computed
    // here from the plain columns: Citus takes no function in `RETURNING`.
    let (expires_at, retention, completed_at): (DateTime<Utc>, PgInterval, DateTime<Utc>) =
        FromRow::from_row(&done)?;
    let retained = completed_at
        .checked_add_signed(interval(retention))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    Ok(Expiry {
        expires_at: expires_at.max(retained),
        store_now: completed_at,
    })
}

/// An interval as a duration (months as 30 days, days as 24 hours: retentions are
/// stored in seconds, so these are 0).
fn interval(interval: PgInterval) -> chrono::TimeDelta {
    let days = i64::from(interval.months) * 30 + i64::from(interval.days);
    chrono::TimeDelta::try_days(days)
        .and_then(|days| days.checked_add(&chrono::TimeDelta::microseconds(interval.microseconds)))
        .unwrap_or(chrono::TimeDelta::MAX)
}

/// When a finished key expires, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// When the key expires.
    pub expires_at: DateTime<Utc>,
    /// The store's time when it finished.
    pub store_now: DateTime<Utc>,
}

/// Ends `lease` early without finishing the key (the handler answered something that
/// is not final): a retry takes it over at once and resumes. Does nothing when another
/// owner has the key. Whether it ended the lease.
pub async fn release_lease(pool: &PgPool, lease: &Lease) -> Result<bool, StoreError> {
    fenced_change(
        pool,
        lease,
        "UPDATE idem.keys SET locked_until = now() \
         WHERE tenant_id = $1 AND key = $2 AND fence = $3 AND completed_at IS NULL",
    )
    .await
}

/// Undoes a phased claim nothing ran under (it committed after its request stopped
/// waiting for it): deletes the row while it still carries `lease`'s token and no
/// phase committed. Whether it deleted the row.
pub async fn unclaim(pool: &PgPool, lease: &Lease) -> Result<bool, StoreError> {
    fenced_change(
        pool,
        lease,
        "DELETE FROM idem.keys WHERE tenant_id = $1 AND key = $2 AND fence = $3 \
           AND completed_at IS NULL AND recovery_point IS NULL",
    )
    .await
}

/// Runs `statement` on `lease`'s key (`$1` tenant, `$2` key, `$3` the fencing token);
/// whether it changed the row.
async fn fenced_change(
    pool: &PgPool,
    lease: &Lease,
    statement: &'static str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(statement)
        .bind(lease.tenant.as_str())
        .bind(lease.key.as_str())
        .bind(lease.fence)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
