//! `idem reconcile`, `idem sweep`, `idem migrate`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use idem_sqlx::Backend;
use idem_sqlx::citus::Distribution;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Failure};

/// How many delivered messages `reconcile` reads at a time.
const RECONCILE_PAGE: i64 = 1000;

/// Messages delivered since `since` (of `topic`, if given) that `consumer`'s inbox
/// never recorded: the ones an incident playbook replays or investigates.
///
/// The delivered messages are read a page at a time, and each page looked up in the
/// inbox by its primary key (the tenant the message names, the consumer, the id); the
/// few not found there are looked up by consumer and id alone (a consumer that
/// recorded a message under another tenant recorded it all the same). Statements that
/// each read one table: the same wording on plain Postgres and on Citus, where both
/// tables are distributed by tenant (or the inbox is the coordinator's).
pub(super) async fn reconcile(
    pool: &PgPool,
    consumer: &str,
    since: DateTime<Utc>,
    topic: Option<&str>,
) -> Result<Value, Failure> {
    let mut missing = Vec::new();
    let mut after: Option<(DateTime<Utc>, Uuid)> = None;
    loop {
        let page: Vec<Delivered> = sqlx::query_as(
            "SELECT id, tenant_id, topic, delivered_at FROM idem.outbox \
             WHERE delivered_at >= $1 AND ($2::text IS NULL OR topic = $2) \
               AND ($3::timestamptz IS NULL OR (delivered_at, id) > ($3, $4)) \
             ORDER BY delivered_at, id LIMIT $5",
        )
        .bind(since)
        .bind(topic)
        .bind(after.map(|(at, _)| at))
        .bind(after.map(|(_, id)| id))
        .bind(RECONCILE_PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.3, last.0));
        let full = page.len() == usize::try_from(RECONCILE_PAGE).unwrap_or(usize::MAX);
        let tenants: Vec<&str> = page.iter().map(|m| m.1.as_str()).collect();
        let ids: Vec<Uuid> = page.iter().map(|m| m.0).collect();
        let mut recorded: HashSet<Uuid> = sqlx::query_scalar(
            "SELECT message_id FROM idem.inbox WHERE consumer = $1 \
               AND (tenant_id, message_id) IN (SELECT * FROM unnest($2::text[], $3::uuid[]))",
        )
        .bind(consumer)
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
        let unfound: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| !recorded.contains(id))
            .collect();
        if !unfound.is_empty() {
            let elsewhere: Vec<Uuid> = sqlx::query_scalar(
                "SELECT message_id FROM idem.inbox WHERE consumer = $1 AND message_id = ANY($2)",
            )
            .bind(consumer)
            .bind(&unfound)
            .fetch_all(pool)
            .await?;
            recorded.extend(elsewhere);
        }
        for (id, _, topic, delivered_at) in page {
            if !recorded.contains(&id) {
                missing.push(json!({ "id": id, "topic": topic, "delivered_at": delivered_at }));
            }
        }
        if !full {
            break;
        }
    }
    Ok(json!({
        "consumer": consumer,
        "since": since,
        "missing": missing,
    }))
}

/// A delivered message as `reconcile` reads it: id, tenant, topic, delivery time.
type Delivered = (Uuid, String, String, DateTime<Utc>);

/// Sweeps now: expired keys in batches with a progress bar (the table that grows
/// largest), then the outbox and inbox. On a Citus coordinator the sweeper's own batches
/// (read across the shards without locks, deleted by key) do it all, under a spinner.
/// An operator's sweep does not pace itself (`Sweeper::share(1.0)`): it was asked for now.
pub(super) async fn sweep(pool: &PgPool, batch_size: i64, quiet: bool) -> Result<Value, Failure> {
    let batch_size = batch_size.max(1);
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    let sweeper = idem_sqlx::Sweeper::new(pool.clone())
        .batch_size(batch_size)
        .share(1.0);
    if Backend::detect(pool).await? == Backend::Citus {
        progress.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .map_err(|e| Error::Invalid(e.to_string()))?,
        );
        progress.set_message("sweeping the shards");
        progress.enable_steady_tick(std::time::Duration::from_millis(120));
        let swept = sweeper.sweep_once().await;
        progress.finish_and_clear();
        return Ok(swept_report(0, &swept?));
    }
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} expired keys deleted ({per_sec})")
            .map_err(|e| Error::Invalid(e.to_string()))?,
    );
    progress.set_message("sweeping:");
    let mut keys = 0u64;
    loop {
        let n = idem_sqlx::keys::sweep_expired(pool, batch_size).await?;
        keys += n;
        progress.inc(n);
        if n < batch_size.unsigned_abs() {
            break;
        }
    }
    progress.finish_and_clear();
    let rest = sweeper.sweep_once().await?;
    Ok(swept_report(keys, &rest))
}

/// What `sweep` reports: the rows deleted per table (`keys` swept before `swept`).
fn swept_report(keys: u64, swept: &idem_sqlx::Swept) -> Value {
    json!({
        "keys": keys + swept.keys,
        "outbox": swept.outbox,
        "inbox": swept.inbox,
        "observed": swept.observed,
        "tombstones": swept.tombstones,
    })
}

/// Runs idem's migrations; reports the versions applied.
pub(super) async fn migrate(pool: &PgPool) -> Result<Value, Failure> {
    idem_sqlx::MIGRATOR
        .run(pool)
        .await
        .map_err(Error::Migrate)?;
    let versions: Vec<i64> = idem_sqlx::MIGRATOR.iter().map(|m| m.version).collect();
    Ok(json!({ "migrated": true, "versions": versions }))
}

/// Distributes idem's tables by tenant on a Citus coordinator, co-located with
/// `colocate_with`; reports the backend, the tables this run distributed (none when
/// they already were) and all of idem's distributed tables.
pub(super) async fn distribute(
    pool: &PgPool,
    colocate_with: Option<&str>,
) -> Result<Value, Failure> {
    match idem_sqlx::citus::distribute(pool, colocate_with).await? {
        Distribution::NotCitus => Ok(json!({
            "backend": "postgres",
            "distributed": [],
            "note": "plain Postgres (no citus extension): nothing to distribute",
        })),
        Distribution::Distributed { newly } => {
            let note = match newly.len() {
                0 => "idem's tables were distributed already: nothing to do".to_owned(),
                n => format!("distributed {n} of idem's tables by tenant_id"),
            };
            Ok(json!({
                "backend": "citus",
                "distributed": newly,
                "tables": idem_sqlx::citus::DISTRIBUTED_TABLES,
                "colocate_with": colocate_with,
                "note": note,
            }))
        }
    }
}
