//! The design's failure-simulation plan, end to end: the client times out after the
//! server succeeded, retries with the same key and receives the exact original
//! response; the same key with a changed payload gets the mismatch answer; nothing is
//! executed twice.

use std::time::Duration;

use idem_tests::{effects_app, impatient_client, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_timed_out_after_success_gets_the_original_response_on_retry() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let path = "/effects?sleep_ms=700";

    // (1) The server succeeds, but the client gives up first.
    let impatient = impatient_client(Duration::from_millis(250));
    let timed_out = impatient
        .post(app.url(path))
        .header("x-tenant-id", "t1")
        .header("idempotency-key", "sim-1")
        .body("charge 10")
        .send()
        .await;
    assert!(timed_out.expect_err("the client times out").is_timeout());

    // (2) It retries with the same key; the first attempt is still running or done.
    let retry = app.send(path, "t1", Some("sim-1"), "charge 10").await;
    // (3) It receives the original response: the one whose write committed.
    assert_eq!(retry.status(), 201);
    assert!(replayed(&retry));
    let location = retry.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let body: serde_json::Value = retry.json().await.expect("body");
    let committed_id: i64 = sqlx::query_scalar("SELECT id FROM effects")
        .fetch_one(&db.pool)
        .await
        .expect("the one committed effect");
    assert_eq!(
        body["id"], committed_id,
        "the replay is the first attempt's response"
    );
    assert_eq!(location, format!("/effects/{committed_id}"));

    // (4) The same key with a changed payload gets the mismatch answer.
    let changed = app.send(path, "t1", Some("sim-1"), "charge 20").await;
    assert_eq!(changed.status(), 422);
    assert_eq!(problem_type(changed).await, "urn:idem:problem:key-mismatch");

    // (5) Nothing was executed twice.
    assert_eq!(db.effects().await, 1);
    assert_eq!(db.keys().await, 1);
}
