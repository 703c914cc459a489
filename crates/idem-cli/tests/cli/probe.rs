//! `idem probe` against real services on real sockets: the example (every check
//! passes), the same handler without the layer, and a hand-made layer that replays by
//! key without comparing the request (the probe must name what each gets wrong).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use idem_tests::{TestApp, test_db};
use serde_json::Value;

use super::{PAYMENT, idem_with};

/// Runs `idem --json probe <url>` with the example's tenant and body: its exit code
/// and its report.
async fn probe(url: &str) -> (i32, Value) {
    let args = ["probe", url, "-H", "x-tenant-id: acme", "--body", PAYMENT];
    idem_with(&args, None).await
}

/// Each check's result, by name.
fn results(report: &Value) -> HashMap<String, String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (text("check"), text("result"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_passes_every_check() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let (code, report) = probe(&app.url("/payments")).await;
    assert_eq!(code, 0, "{report:#}");
    let results = results(&report);
    assert_eq!(results.len(), 9, "{report:#}");
    assert!(
        results.values().all(|r| r == "pass"),
        "every check passes: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_without_the_layer_fails_the_checks_it_breaks() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::bare_app(db.pool.clone())).await;
    let (code, report) = probe(&app.url("/payments")).await;
    assert_eq!(code, 1, "a failed check fails the command: {report:#}");
    let results = results(&report);
    assert_eq!(
        results["missing-key"], "n/a",
        "it runs without a key: {report:#}"
    );
    for check in [
        "malformed-key",
        "key-sent-twice",
        "replay",
        "replay-marked",
        "changed-body",
        "concurrent-duplicates",
        "after-disconnect",
    ] {
        assert_eq!(results[check], "fail", "{check}: {report:#}");
    }
    assert_eq!(results["first-request"], "pass");
}

/// An answer the hand-made layer keeps: status, header fields, body.
type Stored = (StatusCode, axum::http::HeaderMap, Vec<u8>);

/// Answers by key alone: a stored answer for a key it saw (whatever the request), the
/// handler's otherwise. Refuses a request without a valid key, as the draft asks.
async fn replay_by_key_alone(
    seen: Arc<Mutex<HashMap<String, Stored>>>,
    request: Request,
    next: Next,
) -> Response {
    let keys: Vec<&HeaderValue> = request
        .headers()
        .get_all("idempotency-key")
        .iter()
        .collect();
    let key = match keys.as_slice() {
        [key] => key
            .to_str()
            .ok()
            .filter(|k| !k.contains(' '))
            .map(str::to_owned),
        _ => None,
    };
    let Some(key) = key else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let stored = seen.lock().expect("lock").get(&key).cloned();
    if let Some((status, headers, body)) = stored {
        let mut replay = (status, headers, body).into_response();
        replay
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return replay;
    }
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default()
        .to_vec();
    seen.lock()
        .expect("lock")
        .insert(key, (parts.status, parts.headers.clone(), body.clone()));
    Response::from_parts(parts, Body::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_replays_without_comparing_the_request_fails_changed_body() {
    let db = test_db().await;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let router = payments::bare_app(db.pool.clone()).layer(middleware::from_fn(
        move |request: Request, next: Next| replay_by_key_alone(seen.clone(), request, next),
    ));
    let app = TestApp::spawn(router).await;
    let (code, report) = probe(&app.url("/payments")).await;
    assert_eq!(code, 1, "{report:#}");
    let results = results(&report);
    for check in [
        "missing-key",
        "malformed-key",
        "key-sent-twice",
        "replay",
        "replay-marked",
    ] {
        assert_eq!(results[check], "pass", "{check}: {report:#}");
    }
    assert_eq!(results["changed-body"], "fail", "{report:#}");
    let detail = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == "changed-body"))
        .map(|c| c["detail"].to_string())
        .unwrap_or_default();
    assert!(detail.contains("not compared"), "{detail}");
}
