//! Delivery outside database transactions: the relay claims a batch under a lease in a
//! short statement, delivers with no transaction open and a per-message timeout, and
//! records each outcome on its own; the messages of a relay that hangs or dies are
//! taken by another once the lease ends. (Relay processes SIGKILLed mid-batch: the
//! example's `relay_crash.rs`.)

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_sqlx::{JetStreamSink, OutboxMessage, OutboxRelay, RelayConfigError, Sink, SinkError};
use idem_tests::{CountingSink, TestDb, TestStream, test_db, until};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_idle_in_transaction_session_timeout_is_delivered_once() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 5).await;
    // docs/configuration.md recommends this timeout; a relay holding a transaction across its
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
    let sink = Arc::new(CountingSink::publishing(&stream).after(Duration::from_millis(300)));
    let relay = OutboxRelay::builder(pool, sink.clone())
        .concurrency(1)
        .build()
        .expect("relay settings");
    assert_eq!(relay.relay_once().await.expect("one round"), 5);
    assert_eq!(db.undelivered().await, 0, "every outcome was recorded");
    let calls = sink.calls();
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
    let relay = OutboxRelay::builder(
        db.pool.clone(),
        HangsFirst {
            inner: JetStreamSink::new(stream.js.clone()),
            hangs: AtomicUsize::new(1),
        },
    )
    .delivery_timeout(Duration::from_millis(300))
    .backoff(Duration::ZERO, Duration::ZERO)
    .build()
    .expect("relay settings");
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
    // From five tenants: on a Citus cluster, on several shards of both workers.
    db.enqueue_from(&stream.subject("orders"), 20, |i| {
        Some(format!("tenant-{}", i % 5))
    })
    .await;
    let stuck = Arc::new(
        OutboxRelay::builder(
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
        .delivery_timeout(Duration::from_secs(1))
        .build()
        .expect("relay settings"),
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
        let relay = OutboxRelay::builder(db.pool.clone(), sink.clone())
            .max_attempts(3)
            .lease(Duration::from_secs(1))
            .delivery_timeout(Duration::from_millis(100))
            .build()
            .expect("relay settings");
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
    let relay = OutboxRelay::builder(db.pool.clone(), sink.clone())
        .max_attempts(3)
        .build()
        .expect("relay settings");
    assert_eq!(relay.relay_once().await.expect("round"), 1);
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        3,
        "not handed to the sink a fourth time"
    );
    let dead = idem_sqlx::outbox::dead_letters(&db.pool, 10)
        .await
        .expect("dead");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .message
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease ran out")),
        "{:?}",
        dead[0].message.last_error
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_lease_is_not_longer_than_its_delivery_timeout_is_refused_when_built() {
    let db = test_db().await;
    for (lease, timeout) in [(1000, 1000), (1000, 2000), (0, 0)] {
        let (lease, timeout) = (Duration::from_millis(lease), Duration::from_millis(timeout));
        let refused = OutboxRelay::builder(db.pool.clone(), Counted::new(&[]))
            .lease(lease)
            .delivery_timeout(timeout)
            .build()
            .err()
            .unwrap_or_else(|| panic!("a {lease:?} lease over a {timeout:?} timeout was built"));
        assert_eq!(
            refused,
            RelayConfigError::LeaseNotLongerThanDeliveryTimeout {
                lease,
                delivery_timeout: timeout,
            }
        );
        assert!(refused.to_string().contains("lease"), "{refused}");
    }
    OutboxRelay::builder(db.pool.clone(), Counted::new(&[]))
        .lease(Duration::from_millis(1001))
        .delivery_timeout(Duration::from_secs(1))
        .build()
        .expect("a lease longer than the timeout");
    OutboxRelay::builder(db.pool.clone(), Counted::new(&[]))
        .build()
        .expect("the defaults");
}

/// Publishes through JetStream; its first `hang` calls never answer, the others wait
/// the next of `pauses` in turn. Counts the deliveries that completed, per message id.
struct Counted {
    inner: Option<JetStreamSink>,
    hang: AtomicUsize,
    pauses: Vec<Duration>,
    calls: AtomicUsize,
    delivered: Mutex<HashMap<uuid::Uuid, usize>>,
}

impl Counted {
    /// Never publishes: for relays that are only built.
    fn new(pauses: &[Duration]) -> Counted {
        Counted {
            inner: None,
            hang: AtomicUsize::new(0),
            pauses: pauses.to_vec(),
            calls: AtomicUsize::new(0),
            delivered: Mutex::new(HashMap::new()),
        }
    }

    fn publishing(stream: &TestStream, hang: usize, pauses: &[Duration]) -> Arc<Counted> {
        Arc::new(Counted {
            inner: Some(JetStreamSink::new(stream.js.clone())),
            hang: AtomicUsize::new(hang),
            ..Counted::new(pauses)
        })
    }

    fn delivered(&self) -> HashMap<uuid::Uuid, usize> {
        self.delivered.lock().expect("lock").clone()
    }
}

impl Sink for Counted {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        if self
            .hang
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.pauses.is_empty() {
            tokio::time::sleep(self.pauses[call % self.pauses.len()]).await;
        }
        if let Some(inner) = &self.inner {
            inner.deliver(message).await?;
        }
        *self
            .delivered
            .lock()
            .expect("lock")
            .entry(message.id)
            .or_default() += 1;
        Ok(())
    }
}

/// Waits until `relay` holds `n` messages.
async fn until_leased_to(db: &TestDb, relay: uuid::Uuid, n: i64) {
    until("the first relay's claim", async || {
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.outbox WHERE leased_by = $1")
            .bind(relay)
            .fetch_one(&db.pool)
            .await
            .expect("leased");
        held == n
    })
    .await;
}

/// Another relay on the same outbox, claiming every 50 ms.
fn second_relay(
    db: &TestDb,
    sink: Arc<Counted>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), idem_sqlx::StoreError>> {
    let relay = OutboxRelay::builder(db.pool.clone(), sink)
        .poll_interval(Duration::from_millis(50))
        .listen(false)
        .build()
        .expect("relay settings");
    tokio::spawn(relay.run(shutdown.clone()))
}

/// Messages the first relay claimed in `round` while the second relay runs beside it.
struct HandOver {
    round: tokio::task::JoinHandle<Result<usize, idem_sqlx::StoreError>>,
    second: tokio::task::JoinHandle<Result<(), idem_sqlx::StoreError>>,
    shutdown: CancellationToken,
}

impl HandOver {
    /// The first relay's round ends having claimed `n` messages, every message is
    /// delivered, the second relay stops, and each message was published once.
    async fn each_delivered_once(self, db: &TestDb, sink: &Counted, stream: TestStream, n: usize) {
        let claimed = tokio::time::timeout(Duration::from_secs(20), self.round)
            .await
            .expect("the first relay's round ended")
            .expect("round task")
            .expect("round");
        assert_eq!(claimed, n);
        until("every message delivered", async || {
            db.undelivered().await == 0
        })
        .await;
        self.shutdown.cancel();
        self.second.await.expect("second relay").expect("run");
        let delivered = sink.delivered();
        assert_eq!(delivered.len(), n, "{delivered:?}");
        assert!(
            delivered.values().all(|&n| n == 1),
            "each delivered once: {delivered:?}"
        );
        assert_eq!(stream.messages().await, n as u64);
        stream.delete().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_delivered_within_its_lease_is_not_delivered_again_by_another_relay() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    db.enqueue_many(&stream.subject("orders"), 6).await;
    // Fast and slow deliveries, and one that hangs past its timeout: the round lasts
    // while its failure waits for the pool, which requests hold past the lease's end.
    let sink = Counted::publishing(&stream, 1, &[Duration::ZERO, Duration::from_millis(300)]);
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
    let first = Arc::new(
        OutboxRelay::builder(pool.clone(), sink.clone())
            .batch_size(10)
            .concurrency(10)
            .lease(Duration::from_secs(2))
            .delivery_timeout(Duration::from_millis(500))
            .build()
            .expect("relay settings"),
    );
    let round = tokio::spawn({
        let first = first.clone();
        async move { first.relay_once().await }
    });
    until_leased_to(&db, first.id(), 6).await;
    let shutdown = CancellationToken::new();
    let second = second_relay(&db, sink.clone(), &shutdown);
    tokio::time::sleep(Duration::from_millis(3500)).await; // past the first one's lease
    drop(busy);
    let handed_over = HandOver {
        round,
        second,
        shutdown,
    };
    handed_over.each_delivered_once(&db, &sink, stream, 6).await;
}

/// Forwards to the test database's server, holding each of its answers back for the
/// set delay (none at first): a slow way back from the database.
struct SlowAnswers {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowAnswers {
    async fn in_front_of(db: &TestDb) -> SlowAnswers {
        let upstream: SocketAddr =
            tokio::net::lookup_host((db.options.get_host(), db.options.get_port()))
                .await
                .expect("resolve the database host")
                .next()
                .expect("an address for the database host");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let delay_ms = delay_ms.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, upstream, delay_ms.clone()));
                }
            }
        });
        SlowAnswers {
            addr,
            delay_ms,
            task,
        }
    }

    fn connect_options(&self, db: &TestDb) -> PgConnectOptions {
        db.options.clone().host("127.0.0.1").port(self.addr.port())
    }

    fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for SlowAnswers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes requests on at once, and each answer once the delay set when it arrived has
/// passed (in order).
async fn forward(client: TcpStream, upstream: SocketAddr, delay_ms: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (held, mut due) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let requests = async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let answers = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
            if held
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let passed_on = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if client_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(requests, answers, passed_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_whose_claim_is_answered_late_delivers_nothing_past_the_lease_the_database_gave() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let slow = SlowAnswers::in_front_of(&db).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .connect_with(slow.connect_options(&db))
        .await
        .expect("pool through the slow way back");
    let sink = Counted::publishing(&stream, 0, &[Duration::from_millis(800)]);
    let first = Arc::new(
        OutboxRelay::builder(pool, sink.clone())
            .lease(Duration::from_secs(2))
            .delivery_timeout(Duration::from_secs(1))
            .build()
            .expect("relay settings"),
    );
    assert_eq!(first.relay_once().await.expect("connects"), 0);
    // The database grants the lease at once; the relay hears of it 1.5 s later, with
    // 0.5 s of the lease left: too little for a delivery that may take 1 s.
    slow.delay(Duration::from_millis(1500));
    db.enqueue_many(&stream.subject("orders"), 1).await;
    let round = tokio::spawn({
        let first = first.clone();
        async move { first.relay_once().await }
    });
    until_leased_to(&db, first.id(), 1).await;
    let shutdown = CancellationToken::new();
    let second = second_relay(&db, sink.clone(), &shutdown);
    let handed_over = HandOver {
        round,
        second,
        shutdown,
    };
    handed_over.each_delivered_once(&db, &sink, stream, 1).await;
}
