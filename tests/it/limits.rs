//! The layer bounds what it buffers: request bodies (413) and stored responses.

use idem_axum::Limits;
use idem_tests::{effects_app, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_is_413_and_runs_nothing() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.limits(Limits::default().request_body(1024))).await;
    let big = "x".repeat(2048);
    let r = app.send("/effects", "t1", Some("big"), &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(problem_type(r).await, "urn:idem:problem:body-too-large");
    assert_eq!(db.effects().await, 0);
    assert_eq!(db.keys().await, 0);
    // The key is still free: a request within the limit runs.
    let ok = app.send("/effects", "t1", Some("big"), "small").await;
    assert_eq!(ok.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_body_over_the_limit_is_413() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.limits(Limits::default().request_body(1024))).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'x'; 512])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = app
        .client
        .post(app.url("/effects"))
        .header("x-tenant-id", "t1")
        .header("idempotency-key", "streamed")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 413);
    assert_eq!(db.effects().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_limit_is_passed_through_committed_and_not_replayed() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.limits(Limits::default().response_body(100))).await;
    let first = app
        .send("/effects?body_bytes=5000", "t1", Some("large"), "n")
        .await;
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.bytes().await.expect("body").len(),
        5000,
        "the whole body reaches the client"
    );
    assert_eq!(db.effects().await, 1, "the handler's writes committed");

    let retry = app
        .send("/effects?body_bytes=5000", "t1", Some("large"), "n")
        .await;
    assert_eq!(retry.status(), 410, "a retry is told to stop retrying");
    assert!(replayed(&retry));
    assert_eq!(
        problem_type(retry).await,
        "urn:idem:problem:response-not-stored"
    );
    assert_eq!(db.effects().await, 1, "the retry did not run again");
}
