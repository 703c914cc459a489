//! Delivery outside database transactions: the relay claims a batch under a lease in a
//! short statement, delivers with no transaction open and a per-message timeout, and
//! records each outcome on its own; the messages of a relay that hangs or dies are
//! taken by another once the lease ends. (Relay processes SIGKILLed mid-batch: the
//! example's `relay_crash.rs`.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_sqlx::{JetStreamSink, OutboxMessage, OutboxRelay, Sink, SinkError};
use idem_tests::{TestStream, test_db};
use sqlx::postgres::PgPoolOptions;

/// Publishes through JetStream after a pause; counts calls per message id.
struct Slow {
    inner: JetStreamSink,
    pause: Duration,
    calls: Mutex<HashMap<uuid::Uuid, usize>>,
}

impl Sink for Slow {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(message.id)
            .or_default() += 1;
        tokio::time::sleep(self.pause).await;
        self.inner.deliver(message).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_idle_in_transaction_session_timeout_is_delivered_once() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 5).await;
    // The README recommends this timeout; a relay holding a transaction across its
    // deliveries (1.5 s here) would lose its connection every round. Set for the
    // database, it binds every connection the relay opens, its own included.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} SET idle_in_transaction_session_timeout = '200ms'",
        db.name
    )))
    .execute(&db.pool)
    .await
    .expect("timeout");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone())
        .await
        .expect("pool");
    let timeout: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(timeout, "200ms");
    let sink = Arc::new(Slow {
        inner: JetStreamSink::new(stream.js.clone()),
        pause: Duration::from_millis(300),
        calls: Mutex::new(HashMap::new()),
    });
    let relay = OutboxRelay::new(pool, sink.clone()).concurrency(1);
    assert_eq!(relay.relay_once().await.expect("one round"), 5);
    assert_eq!(db.undelivered().await, 0, "every outcome was recorded");
    let calls = sink.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 5);
    assert!(calls.values().all(|&n| n == 1), "delivered once each");
    assert_eq!(stream.messages().await, 5);
    stream.delete().await;
}

/// Never answers for the first `hangs` calls.
struct HangsFirst {
    inner: JetStreamSink,
    hangs: AtomicUsize,
}

impl Sink for HangsFirst {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        if self
            .hangs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        self.inner.deliver(message).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_its_timeout_counts_as_a_failed_attempt_and_is_retried() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 1).await;
    let relay = OutboxRelay::new(
        db.pool.clone(),
        HangsFirst {
            inner: JetStreamSink::new(stream.js.clone()),
            hangs: AtomicUsize::new(1),
        },
    )
    .delivery_timeout(Duration::from_millis(300))
    .backoff(Duration::ZERO, Duration::ZERO);
    let round = tokio::time::timeout(Duration::from_secs(10), relay.relay_once()).await;
    assert_eq!(
        round.expect("the timeout ended the round").expect("round"),
        1
    );
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM idem.outbox")
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!(attempts, 1);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("timed out")),
        "{error:?}"
    );
    relay.relay_once().await.expect("retry");
    assert_eq!(db.undelivered().await, 0);
    assert_eq!(stream.messages().await, 1);
    stream.delete().await;
}

/// Publishes `before_hang` messages, then never returns: holds the relay mid-batch.
struct HangsAfter {
    inner: JetStreamSink,
    before_hang: AtomicUsize,
    calls: Mutex<HashSet<uuid::Uuid>>,
}

impl Sink for HangsAfter {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.calls.lock().expect("lock").insert(message.id);
        let left = self.before_hang.fetch_sub(1, Ordering::SeqCst);
        self.inner.deliver(message).await?;
        if left <= 1 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_leaves_its_messages_to_another_after_the_lease() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 20).await;
    let stuck = Arc::new(
        OutboxRelay::new(
            db.pool.clone(),
            HangsAfter {
                inner: JetStreamSink::new(stream.js.clone()),
                before_hang: AtomicUsize::new(5),
                calls: Mutex::new(HashSet::new()),
            },
        )
        .batch_size(20)
        .concurrency(1)
        .lease(Duration::from_secs(3))
        .delivery_timeout(Duration::from_secs(1)),
    );
    let task = tokio::spawn({
        let stuck = stuck.clone();
        async move { stuck.relay_once().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream.messages().await < 5 {
        assert!(tokio::time::Instant::now() < deadline, "it never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed while the fifth hangs, before the round's delivered mark: nothing is
    // marked, and no transaction was open.
    task.abort();
    let _ = task.await;
    assert_eq!(db.undelivered().await, 20);
    assert_eq!(db.transactions_left_open().await, 0);
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.outbox WHERE leased_by = $1")
        .bind(stuck.id())
        .fetch_one(&db.pool)
        .await
        .expect("leased");
    assert_eq!(held, 20, "its whole batch is leased to it");

    // Another relay finds nothing due until the lease ends, then takes them all.
    let other = OutboxRelay::new(db.pool.clone(), JetStreamSink::new(stream.js.clone()));
    assert_eq!(other.relay_once().await.expect("round"), 0);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    while other.relay_once().await.expect("round") > 0 {}
    assert_eq!(db.undelivered().await, 0);
    assert_eq!(
        stream.messages().await,
        20,
        "the five it had published, published again, are stored once"
    );
    stream.delete().await;
}

/// Counts calls, then fails as if the relay had died before recording anything.
struct Crashes {
    calls: AtomicUsize,
}

impl Sink for Crashes {
    async fn deliver(&self, _: &OutboxMessage) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_lease_runs_out_max_attempts_times_is_dead_lettered() {
    let db = test_db().await;
    db.enqueue_many("orders", 1).await;
    let sink = Arc::new(Crashes {
        calls: AtomicUsize::new(0),
    });
    for attempt in 1..=3 {
        let relay = OutboxRelay::new(db.pool.clone(), sink.clone())
            .max_attempts(3)
            .lease(Duration::from_secs(1))
            .delivery_timeout(Duration::from_millis(100));
        // Each round is abandoned mid-delivery, as by a relay that dies.
        let round = tokio::spawn(async move { relay.relay_once().await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.calls.load(Ordering::SeqCst) < attempt {
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempt {attempt} never came"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        round.abort();
        let _ = round.await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // past the lease
    }
    let relay = OutboxRelay::new(db.pool.clone(), sink.clone()).max_attempts(3);
    assert_eq!(relay.relay_once().await.expect("round"), 1);
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        3,
        "not handed to the sink a fourth time"
    );
    let dead = idem_sqlx::dead_letters(&db.pool, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease ran out")),
        "{:?}",
        dead[0].last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_delivers_while_requests_hold_every_pool_connection() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 10).await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(db.options.clone())
        .await
        .expect("pool");
    let busy = pool
        .begin()
        .await
        .expect("the pool's only connection, held");
    let relay = OutboxRelay::new(pool.clone(), JetStreamSink::new(stream.js.clone()));
    let round = tokio::time::timeout(Duration::from_secs(10), relay.relay_once())
        .await
        .expect("the relay waited for a pool connection");
    assert_eq!(round.expect("round"), 10);
    assert_eq!(db.undelivered().await, 0);
    assert_eq!(stream.messages().await, 10);
    drop(busy);
    stream.delete().await;
}
