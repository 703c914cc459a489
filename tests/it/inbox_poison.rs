//! Poison messages on the consumer side: the inbox counts failed attempts per
//! (consumer, message); past the maximum the message becomes a dead letter (kept with
//! its payload, listed, redrivable) and is terminated, so JetStream stops redelivering
//! it. A payload the consumer cannot decode is dead-lettered at once.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use idem_sqlx::{Inbox, JetStreamSink, OutboxRelay, Processed};
use idem_tests::{TestDb, TestStream, fetch, payments_on_stream, test_db};

/// How long a fetch waits for messages (past the consumer's 1 s ack wait).
const FETCH_WAIT: Duration = Duration::from_millis(1500);

/// Publishes `payload` with `headers` straight to the stream (no outbox) and fetches it.
async fn published(
    stream: &TestStream,
    headers: async_nats::HeaderMap,
    payload: &'static str,
) -> (PullConsumer, async_nats::jetstream::Message) {
    stream
        .js
        .publish_with_headers(stream.subject("created"), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let consumer = stream.ledger_consumer().await;
    let message = fetch(&consumer, 10, FETCH_WAIT)
        .await
        .into_iter()
        .next()
        .expect("a message");
    (consumer, message)
}

/// The ledger's inbox with a short redelivery backoff.
fn inbox(db: &TestDb) -> Inbox {
    payments::ledger::inbox(db.pool.clone())
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_fails_is_dead_lettered_terminated_and_redrivable() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let app = payments_on_stream(&db, &stream).await;
    let r = app
        .send(
            "/payments",
            "t1",
            Some("poison-1"),
            r#"{"amount":100,"currency":"EUR"}"#,
        )
        .await;
    assert_eq!(r.status(), 201);
    let relay = OutboxRelay::new(db.pool.clone(), JetStreamSink::new(stream.js.clone()));
    while relay.relay_once().await.expect("relay") > 0 {}
    // The ledger cannot take it: every attempt fails.
    sqlx::raw_sql("ALTER TABLE ledger_entries ADD CONSTRAINT no_eur CHECK (currency <> 'EUR')")
        .execute(&db.pool)
        .await
        .expect("constraint");

    let consumer = stream.ledger_consumer().await;
    let inbox = inbox(&db);
    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        let Some(message) = fetch(&consumer, 10, FETCH_WAIT).await.into_iter().next() else {
            continue;
        };
        match payments::ledger::handle(&inbox, &message).await {
            Err(_) => failures += 1,
            Ok(Processed::Dead) => break,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        failures,
        payments::ledger::MAX_ATTEMPTS - 1,
        "redelivered until the last allowed attempt"
    );
    let dead = inbox.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].tenant_id, "t1", "kept under the payment's tenant");
    assert_eq!(dead[0].attempts, payments::ledger::MAX_ATTEMPTS);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no_eur")),
        "{:?}",
        dead[0].last_error
    );
    assert!(String::from_utf8_lossy(&dead[0].payload).contains("\"amount\":100"));
    tokio::time::sleep(Duration::from_millis(1500)).await; // past ack_wait
    assert!(
        fetch(&consumer, 10, FETCH_WAIT).await.is_empty(),
        "the terminated message is not redelivered"
    );
    assert_eq!(db.ledger_rows().await, 0);

    // Fixed: redriven, it is processed once.
    sqlx::raw_sql("ALTER TABLE ledger_entries DROP CONSTRAINT no_eur")
        .execute(&db.pool)
        .await
        .expect("fix");
    let again = inbox
        .redrive(dead[0].id)
        .await
        .expect("redrive")
        .expect("a dead letter");
    let outcome = payments::ledger::record(&inbox, &again.as_message(), "t1")
        .await
        .expect("record");
    assert_eq!(outcome, Processed::Done(()));
    assert_eq!(db.ledger_rows().await, 1);
    assert!(inbox.dead_letters(10).await.expect("dead").is_empty());
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_dead_lettered_at_once_and_can_be_purged() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let id = uuid::Uuid::now_v7();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        idem_sqlx::outbox::headers::IDEMPOTENCY_KEY,
        id.to_string().as_str(),
    );
    let (consumer, message) = published(&stream, headers, "not json").await;
    let inbox = inbox(&db);
    assert_eq!(
        payments::ledger::handle(&inbox, &message)
            .await
            .expect("handle"),
        Processed::Dead
    );
    let dead = inbox.dead_letters(10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].tenant_id, "", "a message without a tenant header");
    assert_eq!(dead[0].payload, b"not json");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        fetch(&consumer, 10, FETCH_WAIT).await.is_empty(),
        "terminated"
    );
    assert!(inbox.purge(id).await.expect("purge"));
    assert!(inbox.dead_letters(10).await.expect("dead").is_empty());
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_id_is_terminated_not_redelivered_forever() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let (consumer, message) = published(&stream, async_nats::HeaderMap::new(), "{}").await;
    let inbox = inbox(&db);
    assert!(matches!(
        payments::ledger::handle(&inbox, &message).await,
        Err(payments::ledger::LedgerError::NoMessageId)
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await; // past ack_wait
    assert!(
        fetch(&consumer, 10, FETCH_WAIT).await.is_empty(),
        "terminated"
    );
    stream.delete().await;
}
