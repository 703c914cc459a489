//! The webhook sink: the message id travels as `Idempotency-Key`, so a receiver behind
//! an idempotency layer runs each message once, however often it is delivered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_sqlx::{Message, OutboxRelay, WebhookSink};
use idem_tests::{effects_app, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_behind_the_layer_runs_each_message_once() {
    // The receiver: the effects router behind the idempotency layer, on a socket.
    let receiver_db = test_db().await;
    let (receiver, faults) = effects_app(&receiver_db, |l| l).await;
    // The sender's outbox, in another database.
    let db = test_db().await;
    let mut tx = db.pool.begin().await.expect("begin");
    idem_sqlx::enqueue(
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
    let relay = OutboxRelay::new(
        db.pool.clone(),
        WebhookSink::new(client, receiver.url("/effects")),
    )
    .backoff(Duration::ZERO, Duration::ZERO);

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
    sqlx::query("UPDATE idem.outbox SET delivered_at = NULL")
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
