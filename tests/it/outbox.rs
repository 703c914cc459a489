//! The transactional outbox and its relay to NATS JetStream: messages commit with the
//! request, and each is delivered exactly once, across sink failures and concurrent
//! relays; poison messages are dead-lettered and re-driven. (Leases and a relay that
//! dies mid-batch: `relay_leases.rs` and the example's `relay_crash.rs`; waking:
//! `relay_wakeup.rs`.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_sqlx::{JetStreamSink, Message, OutboxMessage, OutboxRelay, Sink, SinkError};
use idem_tests::{
    CountingSink, TestDb, TestStream, effects_app, on_citus, replayed, test_db, until,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn outbox_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idem.outbox")
        .fetch_one(&db.pool)
        .await
        .expect("outbox count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_commit_and_roll_back_with_their_request() {
    let db = test_db().await;
    let (app, faults) = effects_app(&db, |l| l).await;
    faults.fail_next.store(1, Ordering::SeqCst);
    let failed = app.send("/effects", "t1", Some("o1"), "n").await;
    assert_eq!(failed.status(), 503);
    assert_eq!(
        outbox_rows(&db).await,
        0,
        "a rolled-back request enqueues nothing"
    );
    let ok = app.send("/effects", "t1", Some("o1"), "n").await;
    assert_eq!(ok.status(), 201);
    let replay = app.send("/effects", "t1", Some("o1"), "n").await;
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
    lost: Mutex<HashSet<Uuid>>,
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

/// Enqueues `n` messages on `topic` in one transaction, the `i`th from tenant
/// `tenant-{i % tenants}` (the first of each round with no tenant): on a Citus cluster
/// they spread over shards on both workers.
async fn enqueue_across_tenants(db: &TestDb, topic: &str, n: usize, tenants: usize) {
    db.enqueue_from(topic, n, |i| {
        (i % tenants != 0).then(|| format!("tenant-{}", i % tenants))
    })
    .await;
}

/// On a Citus cluster: the shards and the workers the outbox's messages are on.
async fn spread(db: &TestDb) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(DISTINCT shardid), count(DISTINCT nodeport) FROM pg_dist_shard_placement \
         WHERE shardid IN (SELECT get_shard_id_for_distribution_column('idem.outbox', tenant_id) \
                           FROM idem.outbox)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the outbox's shards")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_claims_the_oldest_due_messages_of_every_tenant_up_to_its_batch_size() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    enqueue_across_tenants(&db, &stream.subject("orders"), 40, 9).await;
    // Oldest first: by the time each became due, then by id.
    let oldest_first: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM idem.outbox ORDER BY available_at, id")
            .fetch_all(&db.pool)
            .await
            .expect("the messages in order");
    if on_citus() {
        let (shards, workers) = spread(&db).await;
        assert!(
            shards >= 4 && workers == 2,
            "{shards} shards, {workers} workers"
        );
    }
    let counting = Arc::new(CountingSink::publishing(&stream));
    let relay = OutboxRelay::builder(db.pool.clone(), counting.clone())
        .batch_size(7)
        .build()
        .expect("relay settings");
    let mut rounds = Vec::new();
    loop {
        let before: HashSet<Uuid> = counting.calls().into_keys().collect();
        let claimed = relay.relay_once().await.expect("round");
        if claimed == 0 {
            break;
        }
        let mut round: Vec<Uuid> = counting
            .calls()
            .into_keys()
            .filter(|id| !before.contains(id))
            .collect();
        round.sort();
        assert_eq!(round.len(), claimed, "the round delivered what it claimed");
        rounds.push(round);
    }
    let expected: Vec<Vec<Uuid>> = oldest_first
        .chunks(7)
        .map(|chunk| {
            let mut chunk = chunk.to_vec();
            chunk.sort();
            chunk
        })
        .collect();
    assert_eq!(
        rounds, expected,
        "each round took the oldest seven due messages, whatever their tenants"
    );
    assert_eq!(db.undelivered().await, 0);
    assert_eq!(stream.messages().await, 40);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_share_the_outbox_of_many_tenants_and_deliver_each_message_once() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    enqueue_across_tenants(&db, &stream.subject("orders"), 300, 13).await;
    if on_citus() {
        let (shards, workers) = spread(&db).await;
        assert!(
            shards >= 6 && workers == 2,
            "{shards} shards, {workers} workers"
        );
    }
    let counting = Arc::new(CountingSink::publishing(&stream));
    let shutdown = CancellationToken::new();
    // Two relays in this process, on its pool; two more as if in other processes, on
    // pools of their own.
    let mut pools = vec![db.pool.clone(), db.pool.clone()];
    pools.push(db.pool(2).await);
    pools.push(db.pool(2).await);
    let relays: Vec<_> = pools
        .into_iter()
        .map(|pool| {
            let relay = OutboxRelay::builder(pool, counting.clone())
                .batch_size(10)
                .poll_interval(Duration::from_millis(20))
                .build()
                .expect("relay settings");
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();
    until("the relays drained the outbox", async || {
        db.undelivered().await == 0
    })
    .await;
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("join").expect("relay");
    }
    let calls = counting.calls();
    assert_eq!(calls.len(), 300);
    assert!(
        calls.values().all(|&n| n == 1),
        "no message was handed to two relays"
    );
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT attempts FROM idem.outbox")
        .fetch_all(&db.pool)
        .await
        .expect("attempts");
    assert_eq!(attempts, [1], "each message was claimed once");
    assert_eq!(stream.messages().await, 300);
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
    let dead = idem_sqlx::outbox::dead_letters(&db.pool, 10)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].message.attempts, 3,
        "dead-lettered after exactly three attempts"
    );
    assert_eq!(
        dead[0].message.last_error.as_deref(),
        Some("downstream rejects the message")
    );
    assert_eq!(
        relay.relay_once().await.expect("relay"),
        0,
        "a dead letter is not retried"
    );

    sink.failing.store(false, Ordering::SeqCst);
    assert!(
        idem_sqlx::outbox::redrive(&db.pool, dead[0].message.id)
            .await
            .expect("redrive")
    );
    assert_eq!(relay.relay_once().await.expect("relay"), 1);
    assert_eq!(db.undelivered().await, 0);
    assert!(
        idem_sqlx::outbox::dead_letters(&db.pool, 10)
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
    idem_sqlx::outbox::enqueue(
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
        idem_sqlx::outbox::dead_letters(&db.pool, 10)
            .await
            .expect("dead")
            .len(),
        1
    );
    assert_eq!(stream.messages().await, 0);
    stream.delete().await;
}
