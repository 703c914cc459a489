//! Headers with one meaning each, and the request's trace context downstream: a
//! payment's `traceparent`, `tracestate` and `X-Correlation-Id` travel into its outbox
//! message and on to JetStream and to a webhook; on both, `Idempotency-Key` is the
//! message id, and the client's raw key is not sent unless a sink is told to.

use std::time::Duration;

use futures_util::StreamExt;
use idem_sqlx::{JetStreamSink, OutboxRelay, WebhookSink};
use idem_tests::{Receiver, TestApp, TestStream, payments_on_stream, test_db};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_reaches_jetstream_and_webhooks_and_the_raw_key_stays_home() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let app = payments_on_stream(&db, &stream).await;
    let r = app
        .post(
            "/payments",
            "t1",
            Some("client-secret-key"),
            r#"{"amount":5,"currency":"EUR"}"#,
        )
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "vendor=1")
        .header("x-correlation-id", "flow-42")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM idem.outbox")
        .fetch_one(&db.pool)
        .await
        .expect("message id");

    // JetStream.
    let relay = OutboxRelay::new(db.pool.clone(), JetStreamSink::new(stream.js.clone()));
    assert_eq!(relay.relay_once().await.expect("relay"), 1);
    let consumer = stream.reader().await;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .expect("fetch");
    let message = batch.next().await.expect("a message").expect("message");
    let nats = message.headers.clone().expect("headers");
    let on_nats = |name: &str| nats.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(on_nats("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(on_nats("tracestate").as_deref(), Some("vendor=1"));
    assert_eq!(on_nats("X-Correlation-Id").as_deref(), Some("flow-42"));
    assert_eq!(on_nats("Idempotency-Key"), Some(id.to_string()));
    assert_eq!(on_nats("Nats-Msg-Id"), Some(id.to_string()));
    assert_eq!(on_nats("Idem-Tenant-Id").as_deref(), Some("t1"));
    assert_eq!(on_nats("Idem-Request-Key"), None, "the raw key stays home");

    // A webhook, for the same message.
    sqlx::query("UPDATE idem.outbox SET delivered_at = NULL, available_at = now()")
        .execute(&db.pool)
        .await
        .expect("deliver again");
    let receiver = Receiver::start([]).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let webhook = OutboxRelay::new(db.pool.clone(), WebhookSink::new(client, &receiver.url));
    assert_eq!(webhook.relay_once().await.expect("relay"), 1);
    let seen = receiver.seen();
    let http = &seen[0];
    let on_http = |name: &str| {
        http.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(on_http("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(on_http("tracestate").as_deref(), Some("vendor=1"));
    assert_eq!(on_http("x-correlation-id").as_deref(), Some("flow-42"));
    assert_eq!(on_http("idempotency-key"), Some(id.to_string()));
    assert_eq!(on_http("idem-topic"), Some(stream.subject("created")));
    assert_eq!(on_http("idem-tenant-id").as_deref(), Some("t1"));
    assert_eq!(on_http("idem-request-key"), None);

    // Asked for, the raw key is sent under its own name.
    sqlx::query("UPDATE idem.outbox SET delivered_at = NULL, available_at = now()")
        .execute(&db.pool)
        .await
        .expect("deliver again");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let with_key = OutboxRelay::new(
        db.pool.clone(),
        WebhookSink::new(client, &receiver.url).include_request_key(true),
    );
    with_key.relay_once().await.expect("relay");
    let seen = receiver.seen();
    assert_eq!(
        seen[1]
            .get("idem-request-key")
            .and_then(|v| v.to_str().ok()),
        Some("client-secret-key")
    );
    assert_eq!(
        seen[1].get("idempotency-key").and_then(|v| v.to_str().ok()),
        Some(id.to_string().as_str()),
        "the key header still means the message id"
    );
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_not_carried_but_the_correlation_id_is() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let r = app
        .post(
            "/payments",
            "t1",
            Some("k-1"),
            r#"{"amount":5,"currency":"EUR"}"#,
        )
        .header("traceparent", "00-not-a-trace-01")
        .header("x-correlation-id", "flow-43")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let headers: serde_json::Value = sqlx::query_scalar("SELECT headers FROM idem.outbox")
        .fetch_one(&db.pool)
        .await
        .expect("headers");
    assert_eq!(headers.get("traceparent"), None);
    assert_eq!(
        headers.get("X-Correlation-Id").and_then(|v| v.as_str()),
        Some("flow-43")
    );
}
