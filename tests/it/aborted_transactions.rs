//! A handler whose statement failed (its transaction is now aborted) keeps the
//! guarantee: a final client error it answers is recorded and replayed, a success it
//! answers anyway is refused, and none of its writes commit.

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use idem_axum::{IdempotencyLayer, KeyMode, Policy, TenantSource, Tx};
use idem_tests::{TestApp, TestDb, client_without_redirects, problem_type, replayed, test_db};
use serde_json::json;

#[derive(serde::Deserialize)]
struct Then {
    /// How the handler answers after its insert hit the unique violation.
    then: u16,
}

/// Writes an effect, then inserts a payment reference that is already taken (a unique
/// violation: the transaction is aborted), then answers `then` as if all was well or
/// as the violation's mapping ("reference already used").
async fn reuse_reference(Query(q): Query<Then>, mut tx: Tx) -> Response {
    sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('t', 'written first')")
        .execute(&mut *tx)
        .await
        .expect("the first write succeeds");
    let violated = sqlx::query("INSERT INTO refs (reference) VALUES ('taken')")
        .execute(&mut *tx)
        .await;
    assert!(violated.is_err(), "the reference is already taken");
    let status = StatusCode::from_u16(q.then).expect("status");
    let mut response = (status, Json(json!({ "error": "reference already used" }))).into_response();
    if status.is_redirection() {
        response
            .headers_mut()
            .insert("location", "/payments/1".parse().expect("location"));
    }
    response
}

async fn app(db: &TestDb, layer: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer) -> TestApp {
    sqlx::query("CREATE TABLE refs (reference text PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .expect("refs table");
    sqlx::query("INSERT INTO refs VALUES ('taken')")
        .execute(&db.pool)
        .await
        .expect("taken reference");
    let idempotency = layer(IdempotencyLayer::new(db.pool.clone()).tenant(TenantSource::single()));
    let router = Router::new()
        .route("/refs", post(reuse_reference))
        .route_layer(idempotency);
    TestApp::spawn(router).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_after_a_failed_statement_is_answered_recorded_and_replayed() {
    let db = test_db().await;
    let app = app(&db, |l| l).await;
    let first = app.send("/refs?then=422", "t", Some("k1"), "{}").await;
    assert_eq!(first.status(), 422, "the handler's own answer, not 503");
    assert!(!replayed(&first));
    let first_body = first.bytes().await.expect("body");
    assert_eq!(db.effects().await, 0, "none of the handler's writes commit");
    assert_eq!(db.keys().await, 1, "the answer is recorded");

    let retry = app.send("/refs?then=422", "t", Some("k1"), "{}").await;
    assert_eq!(retry.status(), 422);
    assert!(replayed(&retry), "the retry gets the recorded answer");
    assert_eq!(retry.bytes().await.expect("body"), first_body);
    assert_eq!(db.effects().await, 0);
    assert_eq!(db.transactions_left_open().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_after_a_failed_statement_is_refused_and_nothing_is_stored() {
    let db = test_db().await;
    let app = app(&db, |l| l).await;
    let client = client_without_redirects();
    for then in [201, 303] {
        let key = format!("k-{then}");
        for attempt in ["first", "retry"] {
            let r = client
                .post(app.url(&format!("/refs?then={then}")))
                .header("idempotency-key", &key)
                .body("{}")
                .send()
                .await
                .expect(attempt);
            assert_eq!(
                r.status(),
                500,
                "{then} {attempt}: never a success that did not commit"
            );
            assert!(
                !replayed(&r),
                "{then} {attempt}: nothing was stored to replay"
            );
            assert_eq!(
                problem_type(r).await,
                "urn:idem:problem:transaction-aborted"
            );
        }
    }
    assert_eq!(db.effects().await, 0);
    assert_eq!(db.keys().await, 0, "nothing stored: a retry runs again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_a_success_after_a_failed_statement_is_refused_too() {
    let db = test_db().await;
    let app = app(&db, |l| l.policy(Policy::default().keys(KeyMode::Optional))).await;
    let client = client_without_redirects();
    let success = client
        .post(app.url("/refs?then=201"))
        .body("{}")
        .send()
        .await
        .expect("success");
    assert_eq!(success.status(), 500);
    assert_eq!(
        problem_type(success).await,
        "urn:idem:problem:transaction-aborted"
    );
    let failure = client
        .post(app.url("/refs?then=422"))
        .body("{}")
        .send()
        .await
        .expect("failure");
    assert_eq!(failure.status(), 422, "a client error stands");
    assert_eq!(db.effects().await, 0, "nothing committed either way");
    assert_eq!(db.keys().await, 0);
    assert_eq!(db.transactions_left_open().await, 0);
}
