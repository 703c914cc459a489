//! Shared harness of idem's integration tests: real Postgres (a container per test
//! binary, or the server at `DATABASE_URL`), a fresh database per test with the
//! migrations applied, and services served on real sockets.

pub mod app;
pub mod fault_proxy;
pub mod keyed;
pub mod nats;
pub mod pg;
pub mod phased;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod sinks;

pub use app::{
    Faults, TestApp, client_without_redirects, effects_router, impatient_client, tenant_from_header,
};
pub use fault_proxy::ResponseDropper;
pub use keyed::{RouteKind, keyed_app, keyed_app_with};
pub use nats::{TestStream, fetch};
pub use pg::{TestDb, citus_test_db, on_citus, test_db, test_db_with};
pub use process::{ServiceProcess, WorkerProcess};
pub use proxy::Proxy;
pub use receiver::Receiver;
pub use sinks::CountingSink;

use std::sync::Arc;

use idem_axum::IdempotencyLayer;

/// Serves the effects router behind a layer on `db`'s pool, configured by `configure`.
pub async fn effects_app(
    db: &TestDb,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> (TestApp, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let layer = configure(IdempotencyLayer::new(db.pool.clone()));
    let app = TestApp::spawn(effects_router(db.pool.clone(), layer, faults.clone())).await;
    (app, faults)
}

/// Reads a problem+json answer, checking its media type, and returns its `type`.
pub async fn problem_type(response: reqwest::Response) -> String {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        content_type,
        idem_axum::PROBLEM_JSON,
        "problem answers are problem+json"
    );
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(
        body["status"], status,
        "problem status matches the HTTP status"
    );
    assert!(body["title"].is_string() && body["detail"].is_string());
    body["type"].as_str().expect("problem type").to_owned()
}

/// Whether a response carries `Idempotent-Replayed: true`.
pub fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(idem_axum::IDEMPOTENT_REPLAYED)
        .is_some_and(|v| v == "true")
}

/// Waits until `check` holds, polling every 50 ms; fails the test after 20 s, naming
/// `what` it waited for.
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Serves the example's payments app on `db`, its events published on `stream`'s
/// subject `created`.
pub async fn payments_on_stream(db: &TestDb, stream: &TestStream) -> TestApp {
    let subject = payments::EventSubject(stream.subject("created"));
    TestApp::spawn(payments::app(db.pool.clone()).layer(axum::Extension(subject))).await
}
