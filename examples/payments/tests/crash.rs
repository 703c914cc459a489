//! A process killed in the middle of a request leaves nothing behind: after a restart,
//! the retry executes exactly once.

use idem_tests::{ServiceProcess, replayed, test_db, until};

const BIN: &str = env!("CARGO_BIN_EXE_payments");
const PAYMENT: &str = r#"{"amount":990,"currency":"EUR","reference":"crash"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_inside_the_handler_leaves_nothing_and_the_retry_executes_once() {
    let db = test_db().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let post = |process: &ServiceProcess| {
        client
            .post(process.url("/payments"))
            .header("x-tenant-id", "t1")
            .header("idempotency-key", "crash-1")
            .header("content-type", "application/json")
            .body(PAYMENT)
    };

    let mut slow =
        ServiceProcess::start(BIN, &db.url, &[("PAYMENTS_HANDLER_DELAY_MS", "30000")]).await;
    let in_flight = tokio::spawn(post(&slow).send());
    // The handler has inserted its payment and sleeps with the transaction open.
    until("the handler to be inside its transaction", async || {
        db.transactions_left_open().await == 1
    })
    .await;
    slow.kill().await;
    assert!(
        in_flight.await.expect("join").is_err(),
        "the client loses its connection"
    );

    // Postgres rolls back the dead process's transaction: claim and payment alike.
    until("the dead transaction to end", async || {
        db.transactions_left_open().await == 0
    })
    .await;
    assert_eq!(db.payments().await, 0);
    assert_eq!(db.keys().await, 0);

    let restarted = ServiceProcess::start(BIN, &db.url, &[]).await;
    let retry = post(&restarted).send().await.expect("retry");
    assert_eq!(retry.status(), 201);
    assert!(!replayed(&retry), "the retry executes");
    let again = post(&restarted).send().await.expect("again");
    assert!(replayed(&again));
    assert_eq!(db.payments().await, 1, "exactly one payment");
}
