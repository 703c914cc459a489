//! (g) Commit-to-publish latency: the layer's app writes payments at full rate while an
//! outbox relay in this process, woken by the layer's `OutboxWaker` after each commit
//! (polling every second as the backstop), publishes them to NATS JetStream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use idem_sqlx::{JetStreamSink, OutboxMessage, OutboxRelay, OutboxWaker, Sink, SinkError};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::BoxError;

/// The stream the scenario publishes to (deleted and created again on each run).
const STREAM: &str = "IDEM_BENCH";
const SUBJECT: &str = "idem-bench.created";

/// How long after enqueueing each message was acknowledged by JetStream.
#[derive(Debug, Serialize)]
pub struct PublishLatency {
    /// Messages the relay published during the scenario.
    pub published: usize,
    /// Messages enqueued during the scenario (warm-up included).
    pub enqueued: i64,
    /// Median, from the enqueueing transaction's start to JetStream's ack, in ms.
    pub p50_ms: f64,
    /// 95th percentile, in ms.
    pub p95_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
}

/// Publishes through JetStream and records each message's age at the ack.
struct Timed {
    inner: JetStreamSink,
    ages: Mutex<Vec<Duration>>,
}

impl Sink for Timed {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.inner.deliver(message).await?;
        let age = (chrono::Utc::now() - message.created_at)
            .to_std()
            .unwrap_or_default();
        if let Ok(mut ages) = self.ages.lock() {
            ages.push(age);
        }
        Ok(())
    }
}

/// A relay to a fresh JetStream stream, running until the returned token is cancelled.
pub struct Running {
    timed: Arc<Timed>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), idem_sqlx::StoreError>>,
    /// The waker to hand to the layer.
    pub waker: OutboxWaker,
    /// The subject to publish on.
    pub subject: &'static str,
}

/// Empties the outbox (the earlier scenarios filled it) and vacuums it, creates the
/// stream and starts the relay.
pub async fn start(pool: &PgPool, nats_url: &str) -> Result<Running, BoxError> {
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["idem-bench.>".to_owned()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    // The earlier scenarios left their messages: delete them, and vacuum, or the
    // relay's first claims wade through their dead index entries.
    sqlx::query("DELETE FROM idem.outbox").execute(pool).await?;
    sqlx::raw_sql("VACUUM idem.outbox").execute(pool).await?;
    let timed = Arc::new(Timed {
        inner: JetStreamSink::new(js),
        ages: Mutex::new(Vec::new()),
    });
    let waker = OutboxWaker::new();
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::builder(pool.clone(), timed.clone())
        .waker(waker.clone())
        .build()?;
    let task = tokio::spawn(relay.run(shutdown.clone()));
    Ok(Running {
        timed,
        shutdown,
        task,
        waker,
        subject: SUBJECT,
    })
}

impl Running {
    /// Lets the relay catch up (at most 30 s), stops it, and sums up.
    pub async fn finish(self, pool: &PgPool) -> Result<PublishLatency, BoxError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM idem.outbox WHERE delivered_at IS NULL")
                    .fetch_one(pool)
                    .await?;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shutdown.cancel();
        self.task.await??;
        let enqueued: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.outbox")
            .fetch_one(pool)
            .await?;
        let mut ages = self
            .timed
            .ages
            .lock()
            .map_err(|_| "latency samples poisoned")?
            .clone();
        ages.sort_unstable();
        let at = |p: f64| {
            if ages.is_empty() {
                return f64::NAN;
            }
            let rank = ((ages.len() as f64 - 1.0) * p).round() as usize;
            ages[rank.min(ages.len() - 1)].as_secs_f64() * 1000.0
        };
        Ok(PublishLatency {
            published: ages.len(),
            enqueued,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        })
    }
}
