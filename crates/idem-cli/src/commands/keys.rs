//! `idem keys show | evict | stats`.

use idem_core::protect::KeyProtection;
use idem_core::seal::{BodySealing, Opened, is_sealed};
use idem_core::{IdempotencyKey, TenantId};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{FromRow, PgPool};

use super::{Error, Failure, report};
use crate::args::{KeyRef, KeysCommand, ProtectArgs};

/// How much of a stored body `keys show` prints.
const BODY_PREVIEW: usize = 200;

pub(super) async fn run(pool: &PgPool, command: &KeysCommand) -> Result<Value, Failure> {
    match command {
        KeysCommand::Show(key) => show(pool, key).await,
        KeysCommand::Evict(key) => evict(pool, key).await,
        KeysCommand::Protect(args) => protect(pool, args).await,
        KeysCommand::Stats { days } => stats(pool, *days).await,
    }
}

/// The layer's key protection from `hex` and `id`.
fn protection(id: &str, hex: &str) -> Result<KeyProtection, Error> {
    let secret = hex::decode(hex.trim())
        .map_err(|_| Error::Invalid("--key-secret-hex is not hex".into()))?;
    KeyProtection::hmac(id, &secret).map_err(|e| Error::Invalid(e.to_string()))
}

/// The (tenant, key) as the store keeps it: protected with the layer's secret, when
/// one is given.
fn stored(key: &KeyRef) -> Result<(TenantId, IdempotencyKey), Error> {
    let tenant = TenantId::new(key.tenant.clone()).map_err(|e| Error::Invalid(e.to_string()))?;
    let raw = IdempotencyKey::parse(&key.key).map_err(|e| Error::Invalid(e.to_string()))?;
    let Some(secret) = &key.key_secret_hex else {
        return Ok((tenant, raw));
    };
    let protection = protection(&key.key_secret_id, secret)?;
    let protected = protection.protect(&tenant, &raw);
    Ok((tenant, protected))
}

/// The body keys given as `ID=HEX`, the first sealing new bodies and the others only
/// opening; `None` when none are given.
fn sealing(keys: &[String]) -> Result<Option<BodySealing>, Error> {
    let mut sealing: Option<BodySealing> = None;
    for given in keys {
        let (id, key) = given
            .split_once('=')
            .ok_or_else(|| Error::Invalid("--body-key must be ID=HEX".into()))?;
        let key = hex::decode(key.trim())
            .map_err(|_| Error::Invalid("--body-key's key is not hex".into()))?;
        let added = match sealing {
            None => BodySealing::new(id, &key),
            Some(s) => s.previous(id, &key),
        };
        sealing = Some(added.map_err(|e| Error::Invalid(e.to_string()))?);
    }
    Ok(sealing)
}

/// What `keys show` prints of a stored body: its start, opened when it is sealed and a
/// body key opens it (`None` when it is sealed and none does), and whether it was
/// sealed.
fn preview(
    sealing: Option<&BodySealing>,
    tenant: &TenantId,
    key: &IdempotencyKey,
    body: &[u8],
) -> (Option<String>, bool) {
    let opened = match sealing {
        Some(sealing) => sealing.open(tenant, key, body),
        None if is_sealed(body) => Opened::Unreadable,
        None => Opened::Plain,
    };
    let shown = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(BODY_PREVIEW)]).into_owned();
    match opened {
        Opened::Plain => (Some(shown(body)), false),
        Opened::Sealed(plain) => (Some(shown(&plain)), true),
        Opened::Unreadable => (None, true),
    }
}

fn not_found(tenant: &TenantId, key: &IdempotencyKey) -> Failure {
    Failure::NotFound(json!({
        "found": false,
        "tenant": tenant.as_str(),
        "key": key.as_str(),
    }))
}

async fn show(pool: &PgPool, key: &KeyRef) -> Result<Value, Failure> {
    let sealing = sealing(&key.body_keys)?;
    let (tenant, key) = stored(key)?;
    let Some(details) = idem_sqlx::keys::inspect::details(pool, &tenant, &key).await? else {
        return match idem_sqlx::keys::inspect::tombstone(pool, &tenant, &key).await? {
            Some(tombstone) => Ok(json!({
                "found": true,
                "tenant": tenant.as_str(),
                "key": key.as_str(),
                "status": "tombstone",
                "response_status": tombstone.response_status,
                "completed_at": tombstone.completed_at,
                "tombstone_until": tombstone.until,
                "standing": tombstone.standing,
            })),
            None => Err(not_found(&tenant, &key)),
        };
    };
    let headers: Vec<Value> = details
        .response_headers
        .iter()
        .map(|(n, v)| json!([n, String::from_utf8_lossy(v)]))
        .collect();
    let (preview, sealed) = match &details.response_body {
        Some(body) => preview(sealing.as_ref(), &tenant, &key, body),
        None => (None, false),
    };
    let phased = details.phased.as_ref().map_or(Value::Null, |p| {
        json!({
            "fence": p.fence,
            "recovery_point": p.recovery_point,
            "lease_until": p.lease_until,
            "journal": p.journal,
            "operation": p.operation,
        })
    });
    Ok(json!({
        "found": true,
        "tenant": tenant.as_str(),
        "key": key.as_str(),
        "status": details.status(),
        "method": details.method,
        "path": details.path,
        "route": details.route,
        "response_status": details.response_status,
        "response_headers": headers,
        "body_bytes": details.response_body.as_ref().map(Vec::len),
        "body_preview": preview,
        "body_sealed": sealed,
        "created_at": details.created_at,
        "completed_at": details.completed_at,
        "expires_at": details.expires_at,
        "replays": details.replays,
        "mismatches": details.mismatches,
        "phased": phased,
    }))
}

async fn evict(pool: &PgPool, key: &KeyRef) -> Result<Value, Failure> {
    let (tenant, key) = stored(key)?;
    if !idem_sqlx::keys::inspect::evict(pool, &tenant, &key).await? {
        return Err(not_found(&tenant, &key));
    }
    Ok(json!({ "evicted": true, "tenant": tenant.as_str(), "key": key.as_str() }))
}

/// Rewrites each key stored in the clear (of `args.tenant`, if given) as the layer
/// stores it with `Protection::keys`: the HMAC computed here by the layer's own code, the
/// rows changed by (tenant, clear key), a batch at a time. An in-progress phased key
/// keeps its clear key in `binding` (its derived keys and kept request stay bound to
/// it). Tombstones are rewritten too. The same statements on plain Postgres and on a Citus coordinator (no function
/// runs over the table's columns); a key claimed in the clear meanwhile is left for
/// the next run.
async fn protect(pool: &PgPool, args: &ProtectArgs) -> Result<Value, Failure> {
    let protection = protection(&args.key_secret_id, &args.key_secret_hex)?;
    let mut skipped = Vec::new();
    let protected = rewrite(pool, args, &protection, &KEYS, &mut skipped).await?;
    let tombstones = rewrite(pool, args, &protection, &TOMBSTONES, &mut skipped).await?;
    Ok(json!({
        "protected": protected,
        "tombstones": tombstones,
        "secret_id": protection.id(),
        "tenant": args.tenant,
        "skipped": skipped,
    }))
}

/// A table whose clear keys `keys protect` rewrites: how a batch of them is found
/// (`$1` tenant or `NULL`, `$2`/`$3` the last (tenant, key) of the batch before, `$4`
/// the batch size), and how they are rewritten (`$1` tenants, `$2` clear keys, `$3`
/// protected keys).
struct Rewrite {
    find: &'static str,
    update: &'static str,
}

const KEYS: Rewrite = Rewrite {
    find: "SELECT tenant_id, key FROM idem.keys \
           WHERE key NOT LIKE 'hmac:%' AND ($1::text IS NULL OR tenant_id = $1) \
             AND ($2::text IS NULL OR (tenant_id, key) > ($2, $3)) \
           ORDER BY tenant_id, key LIMIT $4",
    update: "UPDATE idem.keys k SET \
               binding = CASE WHEN k.completed_at IS NULL AND k.fence IS NOT NULL \
                 THEN coalesce(k.binding, k.key) END, \
               key = u.protected \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tenant_id, clear, protected) \
             WHERE k.tenant_id = u.tenant_id AND k.key = u.clear",
};

/// Tombstones left before the switch: under their clear key a late retry, looked up
/// under its HMAC, would not find them and would run again.
const TOMBSTONES: Rewrite = Rewrite {
    find: "SELECT tenant_id, key FROM idem.tombstones \
           WHERE key NOT LIKE 'hmac:%' AND ($1::text IS NULL OR tenant_id = $1) \
             AND ($2::text IS NULL OR (tenant_id, key) > ($2, $3)) \
           ORDER BY tenant_id, key LIMIT $4",
    update: "UPDATE idem.tombstones t SET key = u.protected \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tenant_id, clear, protected) \
             WHERE t.tenant_id = u.tenant_id AND t.key = u.clear",
};

/// Rewrites the clear keys of `table` as `protection` stores them, a batch at a time;
/// how many rows changed. Keys the layer would refuse are added to `skipped`.
async fn rewrite(
    pool: &PgPool,
    args: &ProtectArgs,
    protection: &KeyProtection,
    table: &Rewrite,
    skipped: &mut Vec<Value>,
) -> Result<u64, Failure> {
    let batch_size = args.batch_size.max(1);
    let mut protected = 0u64;
    let mut after: Option<(String, String)> = None;
    loop {
        let clear: Vec<(String, String)> = sqlx::query_as(table.find)
            .bind(args.tenant.as_deref())
            .bind(after.as_ref().map(|(tenant, _)| tenant))
            .bind(after.as_ref().map(|(_, key)| key))
            .bind(batch_size)
            .fetch_all(pool)
            .await?;
        let full = clear.len() == usize::try_from(batch_size).unwrap_or(usize::MAX);
        after = clear.last().cloned();
        let (mut tenants, mut keys, mut hashed) = (Vec::new(), Vec::new(), Vec::new());
        for (tenant, key) in clear {
            match (TenantId::new(tenant.clone()), IdempotencyKey::parse(&key)) {
                (Ok(t), Ok(k)) => {
                    hashed.push(protection.protect(&t, &k).as_str().to_owned());
                    tenants.push(tenant);
                    keys.push(key);
                }
                // Not a key the layer accepts: no request can look it up either way.
                _ => skipped.push(json!({ "tenant": tenant, "key": key })),
            }
        }
        if !tenants.is_empty() {
            let done = sqlx::query(table.update)
                .bind(&tenants)
                .bind(&keys)
                .bind(&hashed)
                .execute(pool)
                .await?;
            protected += done.rows_affected();
        }
        if !full {
            return Ok(protected);
        }
    }
}

/// One day's keys of one route, as `keys stats` reports them.
#[derive(Debug, Serialize, FromRow)]
struct DayStats {
    day: String,
    route: String,
    keys: i64,
    bytes: i64,
    replays: i64,
    mismatches: i64,
    in_flight: i64,
}

async fn stats(pool: &PgPool, days: i32) -> Result<Value, Failure> {
    let query = sqlx::query_as::<_, DayStats>(
        "SELECT to_char(date_trunc('day', created_at), 'YYYY-MM-DD') AS day, \
           coalesce(route, 'unmatched') AS route, count(*) AS keys, \
           coalesce(sum(pg_column_size(k.*)), 0)::int8 AS bytes, \
           coalesce(sum(replays), 0)::int8 AS replays, \
           coalesce(sum(mismatches), 0)::int8 AS mismatches, \
           count(*) FILTER (WHERE completed_at IS NULL) AS in_flight \
         FROM idem.keys k WHERE created_at >= now() - make_interval(days => $1) \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(days);
    report(pool, query).await
}
