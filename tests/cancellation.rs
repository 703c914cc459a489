//! A client that disconnects mid-request cannot cut the transaction in half.

use std::time::Duration;

use idem_tests::{effects_app, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_neither_loses_nor_tears_the_request() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let gone = impatient
        .post(app.url("/effects?sleep_ms=800"))
        .header("x-tenant-id", "t1")
        .header("idempotency-key", "dc")
        .body("n")
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the client gave up before the handler finished"
    );

    // The request goes on without its client and commits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.keys().await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.effects().await, 1);
    assert_eq!(db.keys().await, 1);

    let retry = app
        .post("/effects?sleep_ms=800", "t1", Some("dc"), "n")
        .send()
        .await
        .expect("retry");
    assert_eq!(retry.status(), 201);
    assert!(
        replayed(&retry),
        "the retry receives the response the client missed"
    );
    assert_eq!(db.effects().await, 1);
    assert_eq!(db.transactions_left_open().await, 0);
}
