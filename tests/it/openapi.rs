//! The OpenAPI document a router's layers write (`idem_axum::openapi`), checked against
//! what the same router answers over HTTP: a route behind the layer documents the key
//! and the answers it really gives; a route without the layer documents neither.

use axum::Json;
use axum::http::StatusCode;
use idem_axum::openapi::idempotent;
use idem_axum::{IdempotencyLayer, Policy, RiskClass, TenantSource, Tx};
use idem_tests::{TestApp, problem_type, test_db};
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Takes a payment.
#[utoipa::path(post, path = "/pay", responses((status = 201, description = "Paid")))]
async fn pay(tx: Tx) -> StatusCode {
    drop(tx);
    StatusCode::CREATED
}

/// Says it is up.
#[utoipa::path(post, path = "/ping", responses((status = 200, description = "Up")))]
async fn ping() -> StatusCode {
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_documents_the_layer_only_where_the_layer_wraps_it() {
    let db = test_db().await;
    let layer = IdempotencyLayer::new(db.pool.clone())
        .tenant(TenantSource::single())
        .policy(Policy::for_risk(RiskClass::Critical));
    let (router, document) = OpenApiRouter::new()
        .routes(idempotent(routes!(pay), layer))
        .routes(routes!(ping))
        .split_for_parts();
    let app =
        TestApp::spawn(router.route("/openapi.json", axum::routing::get(Json(document)))).await;
    let http = reqwest::Client::new();
    let document: Value = http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("served")
        .json()
        .await
        .expect("json");

    // Behind the layer: a POST without a key is refused, as documented.
    let refused = http.post(app.url("/pay")).send().await.expect("answered");
    assert_eq!(refused.status(), 400);
    let refused_type = problem_type(refused).await;
    let pay = &document["paths"]["/pay"]["post"];
    let documented_400 = pay["responses"]["400"].to_string();
    assert!(
        documented_400.contains(&refused_type),
        "{refused_type} is documented: {documented_400}"
    );
    assert_eq!(pay["parameters"][0]["name"], "idempotency-key");
    assert!(pay["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());

    // Without it: a POST without a key runs, and the document says nothing of keys.
    let ran = http.post(app.url("/ping")).send().await.expect("answered");
    assert_eq!(ran.status(), 200);
    let ping = &document["paths"]["/ping"]["post"];
    assert!(ping["parameters"].is_null(), "no key parameter: {ping}");
    assert_eq!(
        ping["responses"].as_object().map(|r| r.len()),
        Some(1),
        "only its own answer: {ping}"
    );
    assert!(ping["responses"]["200"]["headers"].is_null());
}
