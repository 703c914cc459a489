//! A streaming response passes through as it streams: its effects commit as soon as
//! its status and headers are known, the key's transaction is not held while it
//! trickles, and a retry gets the documented not-stored answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use idem_axum::{IdempotencyLayer, TenantSource, Timeouts, Tx};
use idem_tests::{TestApp, TestDb, problem_type, replayed, test_db};
use tokio::sync::Notify;

/// Lets the test end the stream it is reading.
#[derive(Clone, Default)]
struct Gate(Arc<Notify>);

/// Writes an effect, then answers a body that sends one chunk, waits for the test to
/// open the gate, and sends a second one.
async fn stream(Extension(gate): Extension<Gate>, content_type: String, mut tx: Tx) -> Response {
    sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('t', 'streamed')")
        .execute(&mut *tx)
        .await
        .expect("write");
    drop(tx);
    let chunks = futures_util::stream::unfold(0, move |n| {
        let gate = gate.clone();
        async move {
            match n {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from("data: one\n\n")), 1)),
                1 => {
                    gate.0.notified().await;
                    Some((Ok(Bytes::from("data: two\n\n")), 2))
                }
                _ => None,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(chunks))
        .expect("response")
}

async fn app(db: &TestDb, gate: Gate) -> TestApp {
    let layer = IdempotencyLayer::new(db.pool.clone())
        .tenant(TenantSource::single())
        .timeouts(Timeouts::default().response(Duration::from_millis(200)));
    let router = Router::new()
        .route(
            "/events",
            post(|g: Extension<Gate>, tx: Tx| stream(g, "text/event-stream".into(), tx)),
        )
        .route(
            "/download",
            post(|g: Extension<Gate>, tx: Tx| stream(g, "application/octet-stream".into(), tx)),
        )
        .route_layer(layer)
        .layer(Extension(gate));
    TestApp::spawn(router).await
}

async fn committed_status(db: &TestDb, key: &str) -> Option<i16> {
    sqlx::query_scalar(
        "SELECT response_status FROM idem.keys WHERE key = $1 AND completed_at IS NOT NULL \
         AND response_body IS NULL",
    )
    .bind(key)
    .fetch_optional(&db.pool)
    .await
    .expect("key row")
}

async fn streams_then_commits_with_its_status(path: &str) {
    let db = test_db().await;
    let gate = Gate::default();
    let app = app(&db, gate.clone()).await;
    let key = format!("stream-{}", path.trim_start_matches('/'));
    let send = || {
        app.client
            .post(app.url(path))
            .header("idempotency-key", &key)
            .body("{}")
            .send()
    };
    let bound = Duration::from_secs(20);

    let mut first = tokio::time::timeout(bound, send())
        .await
        .expect("headers arrive while the stream is open")
        .expect("first");
    assert_eq!(first.status(), 200);
    let chunk = tokio::time::timeout(bound, first.chunk())
        .await
        .expect("the first chunk arrives before the stream ends")
        .expect("chunk")
        .expect("some bytes");
    assert_eq!(&chunk[..], b"data: one\n\n");

    // The stream is still open: its effects and its status are already committed.
    assert_eq!(db.effects().await, 1);
    assert_eq!(committed_status(&db, &key).await, Some(200));
    assert_eq!(
        db.transactions_left_open().await,
        0,
        "no transaction is held while the stream trickles"
    );

    gate.0.notify_one();
    let rest = tokio::time::timeout(bound, first.bytes())
        .await
        .expect("the stream ends")
        .expect("rest");
    assert_eq!(&rest[..], b"data: two\n\n");

    let retry = tokio::time::timeout(bound, send())
        .await
        .expect("retry answers")
        .expect("retry");
    assert_eq!(retry.status(), 410, "a retry is told to stop, not to retry");
    assert!(replayed(&retry));
    assert_eq!(
        problem_type(retry).await,
        "urn:idem:problem:response-not-stored"
    );
    assert_eq!(db.effects().await, 1, "the retry did not run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_passes_through_and_commits_with_its_status() {
    streams_then_commits_with_its_status("/events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_end_within_the_response_timeout_streams_too() {
    streams_then_commits_with_its_status("/download").await;
}
