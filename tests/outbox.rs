//! The transactional outbox and its relay to NATS JetStream: messages commit with the
//! request, and each is delivered exactly once, across sink failures and concurrent
//! relays; poison messages are dead-lettered and re-driven. (Leases and a relay that
//! dies mid-batch: `relay_leases.rs` and the example's `relay_crash.rs`; waking:
//! `relay_wakeup.rs`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_sqlx::{JetStreamSink, Message, OutboxMessage, OutboxRelay, Sink, SinkError};
use idem_tests::{TestDb, TestStream, effects_app, replayed, test_db};
use tokio_util::sync::CancellationToken;

async fn outbox_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idem.outbox")
        .fetch_one(&db.pool)
        .await
        .expect("outbox count")
}

/// Publishes through JetStream and counts deliveries per message id.
struct Counting {
    inner: JetStreamSink,
    calls: Mutex<HashMap<uuid::Uuid, usize>>,
}

impl Counting {
    fn new(stream: &TestStream) -> Self {
        Counting {
            inner: JetStreamSink::new(stream.js.clone()),
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl Sink for Counting {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(message.id)
            .or_default() += 1;
        self.inner.deliver(message).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_commit_and_roll_back_with_their_request() {
    let db = test_db().await;
    let (app, faults) = effects_app(&db, |l| l).await;
    faults.fail_next.store(1, Ordering::SeqCst);
    let failed = app
        .post("/effects", "t1", Some("o1"), "n")
        .send()
        .await
        .expect("first");
    assert_eq!(failed.status(), 503);
    assert_eq!(
        outbox_rows(&db).await,
        0,
        "a rolled-back request enqueues nothing"
    );
    let ok = app
        .post("/effects", "t1", Some("o1"), "n")
        .send()
        .await
        .expect("retry");
    assert_eq!(ok.status(), 201);
    let replay = app
        .post("/effects", "t1", Some("o1"), "n")
        .send()
        .await
        .expect("replay");
    assert!(replayed(&replay));
    assert_eq!(
        outbox_rows(&db).await,
        1,
        "one message: the replay enqueued nothing"
    );
    let (tenant, key): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT tenant_id, idempotency_key FROM idem.outbox")
            .fetch_one(&db.pool)
            .await
            .expect("message");
    assert_eq!(
        (tenant.as_deref(), key.as_deref()),
        (Some("t1"), Some("o1")),
        "identifiers propagate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_delivers_every_message_once_with_its_id_as_nats_msg_id() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 30).await;
    let relay = OutboxRelay::builder(db.pool.clone(), JetStreamSink::new(stream.js.clone()))
        .batch_size(7)
        .build()
        .expect("relay settings");
    while relay.relay_once().await.expect("relay") > 0 {}
    assert_eq!(db.undelivered().await, 0);
    assert_eq!(stream.messages().await, 30);
    stream.delete().await;
}

/// Publishes, then reports failure once per message: the ack was "lost".
struct LosesFirstAck {
    inner: JetStreamSink,
    lost: Mutex<std::collections::HashSet<uuid::Uuid>>,
}

impl Sink for LosesFirstAck {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.inner.deliver(message).await?;
        if self.lost.lock().expect("lock").insert(message.id) {
            return Err(SinkError::new("ack lost after publish"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_publish_is_retried_and_deduplicated_by_jetstream() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 10).await;
    let sink = LosesFirstAck {
        inner: JetStreamSink::new(stream.js.clone()),
        lost: Mutex::new(Default::default()),
    };
    let relay = OutboxRelay::builder(db.pool.clone(), sink)
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .expect("relay settings");
    relay.relay_once().await.expect("first round");
    assert_eq!(db.undelivered().await, 10, "every delivery 'failed'");
    relay.relay_once().await.expect("second round");
    assert_eq!(db.undelivered().await, 0);
    assert_eq!(
        stream.messages().await,
        10,
        "JetStream dropped the second publish of each"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_relays_deliver_each_message_once() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 200).await;
    let counting = Arc::new(Counting::new(&stream));
    let shutdown = CancellationToken::new();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = OutboxRelay::builder(db.pool.clone(), counting.clone())
                .batch_size(10)
                .poll_interval(Duration::from_millis(50))
                .build()
                .expect("relay settings");
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.undelivered().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relays did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("join").expect("relay");
    }
    let calls = counting.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 200);
    assert!(
        calls.values().all(|&n| n == 1),
        "no message was handed to two relays"
    );
    assert_eq!(stream.messages().await, 200);
    stream.delete().await;
}

/// Fails for as long as `failing` is set.
struct Switchable {
    inner: JetStreamSink,
    failing: AtomicBool,
}

impl Sink for Switchable {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError::new("downstream rejects the message"));
        }
        self.inner.deliver(message).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_after_max_attempts_and_can_be_redriven() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 1).await;
    let sink = Arc::new(Switchable {
        inner: JetStreamSink::new(stream.js.clone()),
        failing: AtomicBool::new(true),
    });
    let relay = OutboxRelay::builder(db.pool.clone(), sink.clone())
        .max_attempts(3)
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .expect("relay settings");
    for _ in 0..5 {
        relay.relay_once().await.expect("relay");
    }
    let dead = idem_sqlx::dead_letters(&db.pool, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attempts, 3,
        "dead-lettered after exactly three attempts"
    );
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("downstream rejects the message")
    );
    assert_eq!(
        relay.relay_once().await.expect("relay"),
        0,
        "a dead letter is not retried"
    );

    sink.failing.store(false, Ordering::SeqCst);
    assert!(
        idem_sqlx::redrive(&db.pool, dead[0].id)
            .await
            .expect("redrive")
    );
    assert_eq!(relay.relay_once().await.expect("relay"), 1);
    assert_eq!(db.undelivered().await, 0);
    assert!(
        idem_sqlx::dead_letters(&db.pool, 10)
            .await
            .expect("dead letters")
            .is_empty()
    );
    assert_eq!(stream.messages().await, 1);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_an_unpublishable_header_is_dead_lettered_not_panicked_on() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let mut tx = db.pool.begin().await.expect("begin");
    idem_sqlx::enqueue(
        &mut tx,
        Message::new(stream.subject("orders"), b"x".to_vec()).header("bad:name", "v"),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    let relay = OutboxRelay::builder(db.pool.clone(), JetStreamSink::new(stream.js.clone()))
        .max_attempts(1)
        .build()
        .expect("relay settings");
    relay.relay_once().await.expect("relay");
    assert_eq!(
        idem_sqlx::dead_letters(&db.pool, 10)
            .await
            .expect("dead")
            .len(),
        1
    );
    assert_eq!(stream.messages().await, 0);
    stream.delete().await;
}
