//! `idem reconcile`, `idem sweep`, `idem migrate`.

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{Error, Failure};

/// Messages delivered since `since` (of `topic`, if given) that `consumer`'s inbox
/// never recorded: the ones an incident playbook replays or investigates.
pub(super) async fn reconcile(
    pool: &PgPool,
    consumer: &str,
    since: DateTime<Utc>,
    topic: Option<&str>,
) -> Result<Value, Failure> {
    let rows = sqlx::query(
        "SELECT o.id, o.topic, o.delivered_at FROM idem.outbox o \
         WHERE o.delivered_at >= $2 AND ($3::text IS NULL OR o.topic = $3) \
           AND NOT EXISTS (SELECT 1 FROM idem.inbox i \
             WHERE i.consumer = $1 AND i.message_id = o.id) \
         ORDER BY o.delivered_at, o.id",
    )
    .bind(consumer)
    .bind(since)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    let mut missing = Vec::with_capacity(rows.len());
    for row in rows {
        missing.push(json!({
            "id": row.try_get::<Uuid, _>("id")?,
            "topic": row.try_get::<String, _>("topic")?,
            "delivered_at": row.try_get::<DateTime<Utc>, _>("delivered_at")?,
        }));
    }
    Ok(json!({
        "consumer": consumer,
        "since": since,
        "missing": missing,
    }))
}

/// Sweeps now: expired keys in batches with a progress bar (the table that grows
/// largest), then the outbox and inbox.
pub(super) async fn sweep(pool: &PgPool, batch_size: i64, quiet: bool) -> Result<Value, Failure> {
    let batch_size = batch_size.max(1);
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} expired keys deleted ({per_sec})")
            .map_err(|e| Error::Invalid(e.to_string()))?,
    );
    progress.set_message("sweeping:");
    let mut keys = 0u64;
    loop {
        let n = idem_sqlx::sweep_expired(pool, batch_size).await?;
        keys += n;
        progress.inc(n);
        if n < batch_size.unsigned_abs() {
            break;
        }
    }
    progress.finish_and_clear();
    let rest = idem_sqlx::Sweeper::new(pool.clone())
        .batch_size(batch_size)
        .sweep_once()
        .await?;
    Ok(json!({
        "keys": keys + rest.keys,
        "outbox": rest.outbox,
        "inbox": rest.inbox,
        "observed": rest.observed,
    }))
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
