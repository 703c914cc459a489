//! The store's gauges: what the tables hold, read by a periodic query rather than
//! counted on every request.

use std::collections::BTreeSet;
use std::time::Duration;

use idem_core::observe::names;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::observe;
use crate::sql::expiry;

/// The keys of one route, as [`StoreGauges::read`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKeys {
    /// The route template ([`UNMATCHED_ROUTE`](names::UNMATCHED_ROUTE) for keys
    /// stored without one).
    pub route: String,
    /// Live keys (in flight or completed, not expired).
    pub live: i64,
    /// The bytes their rows take (as stored, compressed).
    pub stored_bytes: i64,
    /// Live keys replayed at least once.
    pub replayed: i64,
    /// Replays of live keys, summed.
    pub replays: i64,
}

/// What the tables held at one reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Live keys per route.
    pub routes: Vec<RouteKeys>,
    /// Outbox messages not yet delivered (nor dead).
    pub outbox_pending: i64,
    /// Age of the oldest of them; `None` when there is none.
    pub outbox_oldest_pending: Option<Duration>,
    /// Dead-lettered outbox messages.
    pub outbox_dead: i64,
    /// Dead-lettered inbox messages per consumer.
    pub inbox_dead: Vec<(String, i64)>,
    /// Phased keys in progress whose owner's lease passed.
    pub phased_abandoned: i64,
}

/// Sets the store's gauges of docs/observability.md's metrics table (`idem_keys_*`,
/// `idem_outbox_pending`, `idem_outbox_oldest_pending_seconds`, the dead-letter
/// counts, `idem_phased_keys_abandoned`) from one reading every `interval` (30 s by
/// default).
///
/// The outbox, inbox and phased readings go through small partial indexes. The keys' reading
/// groups the live keys by route, a scan of `idem.keys`: run one reporter per
/// deployment (not per replica) on a large table, and keep the interval at least as
/// long as the scrape interval. On a Citus coordinator each reading asks every shard
/// (read-only and lock-free, the same statements run there) and adds up their answers.
///
/// ```no_run
/// use std::time::Duration;
///
/// use idem_sqlx::StoreGauges;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run(pool: sqlx::PgPool) {
/// let shutdown = CancellationToken::new();
/// tokio::spawn(StoreGauges::new(pool).interval(Duration::from_secs(15)).run(shutdown.clone()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StoreGauges {
    pool: PgPool,
    interval: Duration,
}

impl StoreGauges {
    /// A reporter over `pool`, reading every 30 s.
    pub fn new(pool: PgPool) -> Self {
        StoreGauges {
            pool,
            interval: Duration::from_secs(30),
        }
    }

    /// The time between readings.
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every;
        self
    }

    /// Reads and sets the gauges every `interval` until `shutdown` is cancelled. A
    /// route whose keys are all gone is set to zero, not left at its last value.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut seen = Seen::default();
        loop {
            match self.read().await {
                Ok(stats) => set_gauges(&stats, &mut seen),
                Err(e) => tracing::warn!(error = %e, "reading the store's gauges failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One reading of the tables.
    pub async fn read(&self) -> Result<StoreStats, StoreError> {
        let routes = sqlx::query_as::<_, (String, i64, i64, i64, i64)>(concat!(
            "SELECT coalesce(route, $1), count(*), \
               coalesce(sum(pg_column_size(k.*)), 0)::int8, \
               count(*) FILTER (WHERE replays > 0), coalesce(sum(replays), 0)::int8 \
             FROM idem.keys k WHERE ",
            expiry!(),
            " > now() GROUP BY 1 ORDER BY 1"
        ))
        .bind(names::UNMATCHED_ROUTE)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(route, live, stored_bytes, replayed, replays)| RouteKeys {
            route,
            live,
            stored_bytes,
            replayed,
            replays,
        })
        .collect();
        let (outbox_pending, oldest_secs, outbox_dead): (i64, Option<f64>, i64) = sqlx::query_as(
            "SELECT \
                   (SELECT count(*) FROM idem.outbox \
                     WHERE delivered_at IS NULL AND dead_lettered_at IS NULL), \
                   (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM idem.outbox \
                     WHERE delivered_at IS NULL AND dead_lettered_at IS NULL), \
                   (SELECT count(*) FROM idem.outbox WHERE dead_lettered_at IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        let inbox_dead = sqlx::query_as(
            "SELECT consumer, count(*) FROM idem.inbox WHERE dead_at IS NOT NULL \
             GROUP BY consumer ORDER BY consumer",
        )
        .fetch_all(&self.pool)
        .await?;
        let phased_abandoned = sqlx::query_scalar(
            "SELECT count(*) FROM idem.keys \
             WHERE completed_at IS NULL AND fence IS NOT NULL AND locked_until <= now()",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StoreStats {
            routes,
            outbox_pending,
            outbox_oldest_pending: oldest_secs.map(|s| Duration::from_secs_f64(s.max(0.0))),
            outbox_dead,
            inbox_dead,
            phased_abandoned,
        })
    }
}

/// The label values set before, so those absent from a reading go to zero instead of
/// keeping their last value.
#[derive(Debug, Default)]
struct Seen {
    routes: BTreeSet<String>,
    consumers: BTreeSet<String>,
}

const ROUTE_GAUGES: [&str; 4] = [
    names::KEYS_LIVE,
    names::KEYS_STORED_BYTES,
    names::KEYS_REPLAYED,
    names::KEY_REPLAYS,
];

/// Sets every gauge of `stats`.
fn set_gauges(stats: &StoreStats, seen: &mut Seen) {
    for keys in &stats.routes {
        let route = Some((names::ROUTE, keys.route.as_str()));
        let values = [keys.live, keys.stored_bytes, keys.replayed, keys.replays];
        for (name, value) in ROUTE_GAUGES.into_iter().zip(values) {
            observe::set(name, route, value as f64);
        }
    }
    let present = stats.routes.iter().map(|k| k.route.as_str());
    for route in gone(&mut seen.routes, present) {
        for name in ROUTE_GAUGES {
            observe::set(name, Some((names::ROUTE, route.as_str())), 0.0);
        }
    }
    observe::set(names::OUTBOX_PENDING, None, stats.outbox_pending as f64);
    let lag = stats.outbox_oldest_pending.unwrap_or_default();
    observe::set(names::OUTBOX_LAG_SECONDS, None, lag.as_secs_f64());
    observe::set(names::OUTBOX_DEAD, None, stats.outbox_dead as f64);
    observe::set(names::PHASED_ABANDONED, None, stats.phased_abandoned as f64);
    for (consumer, dead) in &stats.inbox_dead {
        observe::set(
            names::INBOX_DEAD,
            Some((names::CONSUMER, consumer)),
            *dead as f64,
        );
    }
    let present = stats.inbox_dead.iter().map(|(c, _)| c.as_str());
    for consumer in gone(&mut seen.consumers, present) {
        observe::set(
            names::INBOX_DEAD,
            Some((names::CONSUMER, consumer.as_str())),
            0.0,
        );
    }
}

/// The values in `seen` that are not `present`; `seen` then holds both.
fn gone<'a>(seen: &mut BTreeSet<String>, present: impl Iterator<Item = &'a str>) -> Vec<String> {
    let present: BTreeSet<String> = present.map(str::to_owned).collect();
    let gone = seen.difference(&present).cloned().collect();
    seen.extend(present);
    gone
}
