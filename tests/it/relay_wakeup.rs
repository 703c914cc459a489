//! Waking the relay costs the request path nothing: `enqueue` sends no NOTIFY (which
//! would serialize every request's commit); the layer wakes a relay of its process
//! after the commit, a notifying waker wakes relays elsewhere from its own connection,
//! and a relay whose LISTEN failed at start sets it up again.

use std::time::Duration;

use idem_axum::Storage;
use idem_sqlx::{JetStreamSink, Message, OutboxRelay, OutboxWaker};
use idem_tests::{Proxy, TestApp, TestDb, TestStream, test_db};
use payments::EventSubject;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

/// Polls so rarely that a prompt delivery can only come from a wake-up.
const NEVER: Duration = Duration::from_secs(600);

async fn wait_for_messages(stream: &TestStream, n: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream.messages().await < n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pay(app: &TestApp, key: &str) {
    let r = app
        .send(
            "/payments",
            "t1",
            Some(key),
            r#"{"amount":100,"currency":"EUR"}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
}

fn payments_app(db: &TestDb, stream: &TestStream, waker: OutboxWaker) -> axum::Router {
    payments::app_with(
        db.pool.clone(),
        payments::idempotency(db.pool.clone()).storage(Storage::default().outbox_waker(waker)),
    )
    .layer(axum::Extension(EventSubject(stream.subject("created"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_commits_without_a_notify() {
    let db = test_db().await;
    let mut listener = PgListener::connect_with(&db.pool).await.expect("listener");
    listener
        .listen(idem_sqlx::outbox::OUTBOX_CHANNEL)
        .await
        .expect("listen");
    let mut tx = db.pool.begin().await.expect("begin");
    idem_sqlx::outbox::enqueue(&mut tx, Message::new("orders", b"x".to_vec()))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let heard = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
    assert!(heard.is_err(), "the request's transaction sent a NOTIFY");

    // The control: a waker that notifies is heard on the same listener.
    OutboxWaker::notifying(db.pool.clone()).wake();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(heard.is_ok(), "the listener hears a NOTIFY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_wakes_a_relay_in_its_process_after_the_commit() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let waker = OutboxWaker::new();
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::builder(db.pool.clone(), JetStreamSink::new(stream.js.clone()))
        .poll_interval(NEVER)
        .listen(false)
        .waker(waker.clone())
        .build()
        .expect("relay settings");
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let app = TestApp::spawn(payments_app(&db, &stream, waker)).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay is idle
    for i in 0..3 {
        pay(&app, &format!("wake-{i}")).await;
        wait_for_messages(&stream, i + 1, "the commit did not wake the relay").await;
    }
    shutdown.cancel();
    task.await.expect("join").expect("relay");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifying_waker_wakes_a_relay_that_only_listens() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let shutdown = CancellationToken::new();
    // Another "process": its own pool, no waker shared with the service.
    let relay_pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(db.options.clone())
        .await
        .expect("relay pool");
    let relay = OutboxRelay::builder(relay_pool, JetStreamSink::new(stream.js.clone()))
        .poll_interval(NEVER)
        .build()
        .expect("relay settings");
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let app = TestApp::spawn(payments_app(
        &db,
        &stream,
        OutboxWaker::notifying(db.pool.clone()),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // listening, idle
    pay(&app, "notify-1").await;
    wait_for_messages(&stream, 1, "the waker's NOTIFY did not wake the relay").await;
    shutdown.cancel();
    task.await.expect("join").expect("relay");
    stream.delete().await;
}

async fn listening_sessions(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_first_listen_failed_listens_once_the_database_is_back() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let proxy = Proxy::in_front_of(&db).await;
    proxy.cut();
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(proxy.connect_options(&db));
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::builder(pool, JetStreamSink::new(stream.js.clone()))
        .poll_interval(NEVER)
        .build()
        .expect("relay settings");
    let task = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await; // LISTEN fails, retries
    assert_eq!(listening_sessions(&db).await, 0);
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while listening_sessions(&db).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never set up LISTEN again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // its catch-up round is over
    let mut tx = db.pool.begin().await.expect("begin");
    idem_sqlx::outbox::enqueue(
        &mut tx,
        Message::new(stream.subject("orders"), b"x".to_vec()),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    OutboxWaker::notifying(db.pool.clone()).wake();
    wait_for_messages(&stream, 1, "the recovered LISTEN did not wake the relay").await;
    shutdown.cancel();
    task.await.expect("join").expect("relay");
    stream.delete().await;
}
