//! With the layer added by `route_layer`, requests no route serves never reach it: an
//! unknown path gets the router's own 404 and a method its route does not serve the
//! router's 405, untouched (no problem+json, nothing stored), and their keys stay
//! unused.

use idem_tests::{TestApp, problem_type, replayed, test_db};
use reqwest::Method;

const PAYMENT: &str = r#"{"amount":1250,"currency":"EUR"}"#;

/// Sends `method path` as tenant `acme` with a JSON payment body and `key`, if any.
async fn send(app: &TestApp, method: Method, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("x-tenant-id", "acme")
        .header("content-type", "application/json")
        .body(PAYMENT);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.expect("request")
}

/// Asserts the router answered `status` itself: an empty body, not problem+json, not
/// a replay. Returns the `Allow` header, if any.
async fn assert_routers_own(response: reqwest::Response, status: u16) -> Option<String> {
    assert_eq!(response.status().as_u16(), status);
    assert!(!replayed(&response), "not a replay");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_ne!(
        content_type.as_deref(),
        Some(idem_axum::PROBLEM_JSON),
        "the layer did not answer"
    );
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.expect("body");
    assert!(
        body.is_empty(),
        "the router's own empty answer, got {body:?}"
    );
    allow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_gets_the_routers_404_with_or_without_a_key_and_nothing_is_stored() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;

    let without_key = send(&app, Method::POST, "/nowhere", None).await;
    assert_routers_own(without_key, 404).await;
    let with_key = send(&app, Method::POST, "/nowhere", Some("nowhere-1")).await;
    assert_routers_own(with_key, 404).await;
    let again = send(&app, Method::POST, "/nowhere", Some("nowhere-1")).await;
    assert_routers_own(again, 404).await;

    assert_eq!(db.keys().await, 0, "no key stored for an unknown route");
    assert_eq!(db.payments().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_route_does_not_serve_gets_the_routers_405_and_leaves_its_key_unused() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let path = "/payments/01a20b13-1048-7420-afe7-d79c8f96ded1";

    // PATCH takes part in idempotency by default, POST too: neither may claim the key.
    for method in [Method::PATCH, Method::POST] {
        let response = send(&app, method.clone(), path, Some("order-405")).await;
        let allow = assert_routers_own(response, 405).await;
        assert!(
            allow.is_some_and(|a| a.contains("GET")),
            "{method}: the router's 405 names the methods it serves"
        );
    }
    assert_eq!(db.keys().await, 0, "no key stored for a 405");

    // The key is still free: the real request with it executes.
    let created = send(&app, Method::POST, "/payments", Some("order-405")).await;
    assert_eq!(created.status(), 201);
    assert!(!replayed(&created), "executed, not replayed");
    assert_eq!(db.payments().await, 1);
    assert_eq!(db.keys().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_payments_still_requires_a_key() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let response = send(&app, Method::POST, "/payments", None).await;
    assert_eq!(response.status(), 400);
    assert_eq!(problem_type(response).await, "urn:idem:problem:key-missing");
    assert_eq!(db.payments().await, 0);
    assert_eq!(db.keys().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_router_layer_an_unknown_route_gets_the_routers_404_and_spends_no_key() {
    let db = test_db().await;
    // `effects_router` adds the layer with `Router::layer`, which also wraps the
    // router's fallback.
    let (app, _) = idem_tests::effects_app(&db, |l| l).await;
    let with_key = app.send("/nowhere", "t1", Some("nowhere-2"), "a").await;
    assert_routers_own(with_key, 404).await;
    let without_key = app.send("/nowhere", "t1", None, "a").await;
    assert_routers_own(without_key, 404).await;
    assert_eq!(
        db.keys().await,
        0,
        "no key claimed or stored for an unknown route"
    );

    let served = app.send("/effects", "t1", Some("nowhere-2"), "a").await;
    assert_eq!(served.status(), 201, "the key is still free");
    assert!(!replayed(&served));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_router_layer_a_method_the_route_does_not_serve_gets_the_routers_405_and_spends_no_key()
 {
    let db = test_db().await;
    // `/effects` serves POST and GET; PATCH takes part in idempotency by default, and
    // `Router::layer` wraps the method router's 405 too.
    let (app, _) = idem_tests::effects_app(&db, |l| l).await;
    for _ in 0..2 {
        let response = app
            .client
            .patch(app.url("/effects"))
            .header("x-tenant-id", "t1")
            .header("idempotency-key", "patch-405")
            .body("a")
            .send()
            .await
            .expect("PATCH");
        let allow = assert_routers_own(response, 405).await;
        assert!(allow.is_some_and(|a| a.contains("POST")));
    }
    assert_eq!(db.keys().await, 0, "no key stored for a 405");
    let served = app.send("/effects", "t1", Some("patch-405"), "a").await;
    assert_eq!(served.status(), 201, "the key is still free");
    assert!(!replayed(&served));
}
