//! The inbox: the ledger consumer writes one row per payment, whether JetStream
//! redelivers a message it did not see acknowledged, or the same message is published
//! twice and stored under two stream sequence numbers.

use std::time::Duration;

use idem_sqlx::{Inbox, InboxError, InboxMessage, JetStreamSink, OutboxRelay, Processed};
use idem_tests::{TestDb, TestStream, fetch, payments_on_stream, test_db};

/// Creates `n` payments through the example (each enqueues `payment.created` on the
/// request's transaction) and relays them to the test stream.
async fn payments_on_the_stream(db: &TestDb, stream: &TestStream, n: usize) {
    let app = payments_on_stream(db, stream).await;
    for i in 0..n {
        let body = format!(r#"{{"amount":{},"currency":"EUR"}}"#, 100 + i);
        let r = app
            .send("/payments", "t1", Some(&format!("pay-{i}")), &body)
            .await;
        assert_eq!(r.status(), 201);
    }
    let relay = OutboxRelay::new(db.pool.clone(), JetStreamSink::new(stream.js.clone()));
    while relay.relay_once().await.expect("relay") > 0 {}
    assert_eq!(stream.messages().await, n as u64);
}

/// The tenants the inbox's rows are recorded under.
async fn inbox_tenants(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT DISTINCT tenant_id FROM idem.inbox ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .expect("inbox tenants")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_writes_one_ledger_row() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    payments_on_the_stream(&db, &stream, 5).await;
    let consumer = stream.ledger_consumer().await;
    let inbox = payments::ledger::inbox(db.pool.clone());

    // First delivery: recorded, but the ack is withheld (as if the consumer crashed
    // between its commit and its ack).
    let first = fetch(&consumer, 5, Duration::from_secs(3)).await;
    assert_eq!(first.len(), 5);
    for m in &first {
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .expect("msg id");
        let id = uuid::Uuid::parse_str(id.as_str()).expect("uuid");
        let headers = payments::ledger::headers_of(m);
        let message = InboxMessage {
            id,
            subject: m.subject.as_str(),
            payload: &m.payload,
            headers: &headers,
        };
        let outcome = payments::ledger::record(&inbox, &message, "t1")
            .await
            .expect("record");
        assert_eq!(outcome, Processed::Done(()));
    }
    assert_eq!(db.ledger_rows().await, 5);
    assert_eq!(
        inbox_tenants(&db).await,
        ["t1"],
        "recorded under the tenant the relay's header names"
    );

    // JetStream redelivers after ack_wait; the inbox skips them and they are acked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = fetch(&consumer, 5, Duration::from_secs(3)).await;
    assert_eq!(again.len(), 5, "every unacknowledged message came back");
    for m in &again {
        let outcome = payments::ledger::handle(&inbox, m).await.expect("handle");
        assert_eq!(outcome, Processed::Duplicate);
    }
    assert_eq!(db.ledger_rows().await, 5, "one ledger row per payment");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        fetch(&consumer, 5, Duration::from_secs(3)).await.is_empty(),
        "acked messages are not redelivered"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_stored_twice_writes_one_ledger_row() {
    let db = test_db().await;
    // A short duplicate window, so JetStream stores a second publish of the same id.
    let stream = TestStream::create(Duration::from_millis(100)).await;
    payments_on_the_stream(&db, &stream, 1).await;
    sqlx::query("UPDATE idem.outbox SET delivered_at = NULL, available_at = now()")
        .execute(&db.pool)
        .await
        .expect("relay it again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay = OutboxRelay::new(db.pool.clone(), JetStreamSink::new(stream.js.clone()));
    relay.relay_once().await.expect("relay");
    assert_eq!(
        stream.messages().await,
        2,
        "two copies, two sequence numbers"
    );

    let consumer = stream.ledger_consumer().await;
    let inbox = payments::ledger::inbox(db.pool.clone());
    let messages = fetch(&consumer, 2, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 2);
    let sequences: Vec<u64> = messages
        .iter()
        .map(|m| m.info().expect("info").stream_sequence)
        .collect();
    assert_ne!(sequences[0], sequences[1]);
    let mut outcomes = Vec::new();
    for m in &messages {
        outcomes.push(payments::ledger::handle(&inbox, m).await.expect("handle"));
    }
    assert_eq!(outcomes, vec![Processed::Done(()), Processed::Duplicate]);
    assert_eq!(db.ledger_rows().await, 1);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consumer_records_nothing_and_the_redelivery_is_processed() {
    let db = test_db().await;
    let inbox = Inbox::new(db.pool.clone(), "ledger");
    // The tenant header as an HTTP receiver sees it, in lower case.
    let headers = [("idem-tenant-id".to_owned(), "t9".to_owned())];
    let message = InboxMessage {
        id: uuid::Uuid::now_v7(),
        subject: "payments.created",
        payload: b"{}",
        headers: &headers,
    };
    let failed = inbox
        .process(&message, |tx| {
            Box::pin(async move {
                sqlx::query(
                "INSERT INTO ledger_entries (payment_id, tenant_id, amount, currency, message_id) \
                         VALUES (gen_random_uuid(), 't', 1, 'EUR', gen_random_uuid())",
            )
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
                Err::<(), String>("consumer failed after writing".into())
            })
        })
        .await;
    assert!(matches!(failed, Err(InboxError::Work { attempts: 1, .. })));
    assert_eq!(db.ledger_rows().await, 0, "the work rolled back");
    let retried = inbox
        .process(&message, |_| Box::pin(async { Ok::<_, String>(7) }))
        .await
        .expect("retry");
    assert_eq!(
        retried,
        Processed::Done(7),
        "the message id was not recorded by the failure"
    );
    assert_eq!(inbox_tenants(&db).await, ["t9"]);
    let again = inbox
        .process(&message, |_| Box::pin(async { Ok::<_, String>(8) }))
        .await
        .expect("redelivered");
    assert_eq!(again, Processed::Duplicate);
    // Without a tenant header the message is recorded under '' (and is another row).
    let untenanted = InboxMessage {
        headers: &[],
        ..message
    };
    let done = inbox
        .process(&untenanted, |_| Box::pin(async { Ok::<_, String>(9) }))
        .await
        .expect("untenanted");
    assert_eq!(done, Processed::Done(9));
    assert_eq!(inbox_tenants(&db).await, ["", "t9"]);
}
