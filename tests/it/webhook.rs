//! The webhook sink: the message id travels as `Idempotency-Key`, so a receiver behind
//! an idempotency layer runs each message once, however often it is delivered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_sqlx::{Message, OutboxRelay, WebhookSink};
use idem_tests::{Receiver, effects_app, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_behind_the_layer_runs_each_message_once() {
    // The receiver: the effects router behind the idempotency layer, on a socket.
    let receiver_db = test_db().await;
    let (receiver, faults) = effects_app(&receiver_db, |l| l).await;
    // The sender's outbox, in another database.
    let db = test_db().await;
    let mut tx = db.pool.begin().await.expect("begin");
    idem_sqlx::outbox::enqueue(
        &mut tx,
        Message::new("effects.requested", b"hello".to_vec()).header("x-tenant-id", "t1"),
    )
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let relay = OutboxRelay::builder(
        db.pool.clone(),
        WebhookSink::new(client, receiver.url("/effects")),
    )
    .backoff(Duration::ZERO, Duration::ZERO)
    .build()
    .expect("relay settings");

    // The receiver fails once: the delivery is retried.
    faults.fail_next.store(1, Ordering::SeqCst);
    relay.relay_once().await.expect("first round");
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM idem.outbox")
            .fetch_one(&db.pool)
            .await
            .expect("message");
    assert_eq!(attempts, 1);
    assert_eq!(
        error.as_deref(),
        Some("webhook answered 503 Service Unavailable")
    );
    relay.relay_once().await.expect("second round");
    assert_eq!(receiver_db.effects().await, 1);

    // Delivered again (a lost "delivered" mark): the receiver replays, runs nothing.
    sqlx::query("UPDATE idem.outbox SET delivered_at = NULL, available_at = now()")
        .execute(&db.pool)
        .await
        .expect("forget delivery");
    assert_eq!(relay.relay_once().await.expect("third round"), 1);
    assert_eq!(
        receiver_db.effects().await,
        1,
        "the message id deduplicated it"
    );
    let key: String = sqlx::query_scalar("SELECT key FROM idem.keys")
        .fetch_one(&receiver_db.pool)
        .await
        .expect("receiver key");
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM idem.outbox")
        .fetch_one(&db.pool)
        .await
        .expect("message id");
    assert_eq!(key, id.to_string(), "Idempotency-Key is the message id");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn one_message(db: &idem_tests::TestDb) {
    let mut tx = db.pool.begin().await.expect("begin");
    idem_sqlx::outbox::enqueue(&mut tx, Message::new("effects.requested", b"x".to_vec()))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_4xx_dead_letters_at_once_and_the_later_ones_are_retried() {
    let db = test_db().await;
    one_message(&db).await;
    // 409, 429 and 408 say "later"; 422 says "never".
    let receiver = Receiver::start([(409, None), (429, None), (408, None), (422, None)]).await;
    let relay = OutboxRelay::builder(db.pool.clone(), WebhookSink::new(client(), &receiver.url))
        .max_attempts(10)
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .expect("relay settings");
    for _ in 0..4 {
        assert_eq!(relay.relay_once().await.expect("round"), 1);
    }
    let dead = idem_sqlx::outbox::dead_letters(&db.pool, 10)
        .await
        .expect("dead");
    assert_eq!(
        dead.len(),
        1,
        "dead-lettered on the 422, with attempts left"
    );
    assert_eq!(dead[0].message.attempts, 4);
    assert_eq!(
        dead[0].message.last_error.as_deref(),
        Some("webhook answered 422 Unprocessable Entity")
    );
    assert_eq!(receiver.seen().len(), 4);
    assert_eq!(relay.relay_once().await.expect("round"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_holds_the_message_back_for_as_long_as_the_receiver_asked() {
    let db = test_db().await;
    one_message(&db).await;
    let receiver = Receiver::start([(503, Some("120"))]).await;
    let relay = OutboxRelay::builder(db.pool.clone(), WebhookSink::new(client(), &receiver.url))
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .expect("relay settings");
    relay.relay_once().await.expect("round");
    let wait: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM available_at - now())::float8 FROM idem.outbox",
    )
    .fetch_one(&db.pool)
    .await
    .expect("available_at");
    assert!(
        (110.0..=121.0).contains(&wait),
        "retried in {wait} s, not after the 120 s asked"
    );
    assert_eq!(relay.relay_once().await.expect("round"), 0, "not due yet");
    assert!(
        idem_sqlx::outbox::dead_letters(&db.pool, 10)
            .await
            .expect("dead")
            .is_empty()
    );
}
