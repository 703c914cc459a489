//! Keys seen in observe mode (passive key logging): their first fingerprint and how
//! often they came. Nothing here is ever replayed.

use std::time::Duration;

use idem_core::{Fingerprint, IdempotencyKey, TenantId};
use sqlx::PgExecutor;

use crate::StoreError;

/// Records one sighting of (tenant, key) with `fingerprint`, in one statement (its
/// `DO UPDATE` reads the clock from the row it would insert: Citus takes no function
/// there), and
/// tells what came before: `None` when the key is new (or its last sighting is past
/// `retention`, which starts it over), else whether the earlier request had the same
/// fingerprint. Feed it to [`idem_core::policy::Would::from_observation`].
pub async fn observe<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
    route: Option<&str>,
    retention: Duration,
) -> Result<Option<bool>, StoreError> {
    let (seen_before, same): (bool, bool) = sqlx::query_as(
        "INSERT INTO idem.observed_keys AS o (tenant_id, key, fingerprint, route, first_seen, \
           last_seen, expires_at) \
         VALUES ($1, $2, $3, $4, now(), now(), now() + make_interval(secs => $5)) \
         ON CONFLICT (tenant_id, key) DO UPDATE SET \
           seen = CASE WHEN o.expires_at <= EXCLUDED.last_seen THEN 1 ELSE o.seen + 1 END, \
           first_seen = CASE WHEN o.expires_at <= EXCLUDED.last_seen THEN EXCLUDED.first_seen \
             ELSE o.first_seen END, \
           fingerprint = CASE WHEN o.expires_at <= EXCLUDED.last_seen THEN EXCLUDED.fingerprint \
             ELSE o.fingerprint END, \
           last_seen = EXCLUDED.last_seen, expires_at = EXCLUDED.expires_at, \
           route = EXCLUDED.route \
         RETURNING o.seen > 1, o.fingerprint = $3",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .bind(fingerprint.as_bytes().as_slice())
    .bind(route)
    .bind(retention.as_secs_f64())
    .fetch_one(executor)
    .await?;
    Ok(seen_before.then_some(same))
}
