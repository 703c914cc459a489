//! The design's failure-simulation plan across processes: the payments service and the
//! payments-ledger back office (outbox relay to JetStream, inbox consumer) as child
//! processes. A client times out after the server succeeded, retries and receives the
//! original response; a changed payload gets 422; the downstream ledger entry is
//! written once.

use std::time::Duration;

use idem_tests::{ServiceProcess, replayed, test_db};

const PAYMENTS: &str = env!("CARGO_BIN_EXE_payments");
const LEDGER: &str = env!("CARGO_BIN_EXE_payments-ledger");
const PAYMENT: &str = r#"{"amount":4999,"currency":"EUR","reference":"e2e"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_payment_is_charged_once_answered_once_and_booked_once() {
    let db = test_db().await;
    let nats_url =
        std::env::var("IDEM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    // The back office's stream is fixed (PAYMENTS); start from an empty one.
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.expect("NATS"));
    let _ = js.delete_stream("PAYMENTS").await;

    let service =
        ServiceProcess::start(PAYMENTS, &db.url, &[("PAYMENTS_HANDLER_DELAY_MS", "600")]).await;
    let mut ledger = tokio::process::Command::new(LEDGER)
        .env("DATABASE_URL", &db.url)
        .env("NATS_URL", &nats_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start payments-ledger");

    let post = |client: &reqwest::Client, body: &str| {
        client
            .post(service.url("/payments"))
            .header("x-tenant-id", "t1")
            .header("idempotency-key", "e2e-1")
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    // (1) The server succeeds; the client has given up.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    assert!(
        post(&impatient, PAYMENT)
            .send()
            .await
            .expect_err("times out")
            .is_timeout()
    );
    // (2) + (3) The retry receives the original response.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let retry = post(&client, PAYMENT).send().await.expect("retry");
    assert_eq!(retry.status(), 201);
    assert!(replayed(&retry));
    let payment: payments::Payment = retry.json().await.expect("payment");
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT id FROM payments")
        .fetch_one(&db.pool)
        .await
        .expect("the one payment");
    assert_eq!(payment.id, stored);
    // (4) The same key with a changed payload is refused.
    let changed = post(
        &client,
        r#"{"amount":5000,"currency":"EUR","reference":"e2e"}"#,
    )
    .send()
    .await
    .expect("changed");
    assert_eq!(changed.status(), 422);

    // (5) Downstream, through outbox -> JetStream -> inbox: one ledger entry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT payment_id FROM ledger_entries")
            .fetch_all(&db.pool)
            .await
            .expect("ledger");
        if !rows.is_empty() {
            assert_eq!(rows, vec![payment.id]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger entry never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(&db.pool)
        .await
        .expect("ledger count");
    assert_eq!(entries, 1);
    assert_eq!(db.payments().await, 1);
    ledger.kill().await.expect("stop payments-ledger");
    let _ = js.delete_stream("PAYMENTS").await;
}
