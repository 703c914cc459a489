//! Services on real sockets, and a router whose handlers count their executions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use idem_axum::{IdempotencyKey, IdempotencyLayer, TenantId, Tx};
use idem_sqlx::Message;
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// A router served on a loopback socket for the duration of a test.
pub struct TestApp {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A client with no proxy and a generous timeout.
    pub client: reqwest::Client,
    task: JoinHandle<()>,
}

impl TestApp {
    /// Serves `router` on 127.0.0.1 with an ephemeral port.
    pub async fn spawn(router: Router) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        TestApp { addr, client, task }
    }

    /// The URL of `path` on this app.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A POST to `path` as `tenant` with `key` (if any) and a JSON body.
    pub fn post(
        &self,
        path: &str,
        tenant: &str,
        key: Option<&str>,
        body: &str,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(self.url(path))
            .header("x-tenant-id", tenant)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req
    }

    /// Sends [`post`](Self::post)'s request and returns the answer, whatever its
    /// status; fails the test, naming `path`, when no answer comes (a transport error).
    /// Use `post` for a request that needs more headers or other builder settings.
    pub async fn send(
        &self,
        path: &str,
        tenant: &str,
        key: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        self.post(path, tenant, key, body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} as {tenant} (key {key:?}): {e}"))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client that gives up on an answer after `timeout`: a client that disconnects
/// mid-request.
pub fn impatient_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("client")
}

/// A client that answers a redirect itself instead of following it.
pub fn client_without_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The tenant of the test router: the `x-tenant-id` header, through the layer's
/// resolver (so the test router needs no auth middleware).
pub fn tenant_from_header() -> idem_axum::TenantSource {
    idem_axum::TenantSource::resolver(|parts| {
        parts
            .headers
            .get("x-tenant-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| TenantId::new(v).ok())
    })
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct Knobs {
    /// Sleep this long inside the handler, holding the transaction.
    #[serde(default)]
    pub(crate) sleep_ms: u64,
    /// Answer with this status (after writing).
    #[serde(default)]
    status: Option<u16>,
    /// Answer with a body of this many bytes.
    #[serde(default)]
    body_bytes: Option<usize>,
}

/// Server-side switches a test flips between a request and its retry (the retry must
/// be the same request, so the switch cannot travel in it).
#[derive(Debug, Default)]
pub struct Faults {
    /// How many times a handler started.
    pub runs: AtomicUsize,
    /// Answer 503 (after writing) this many times.
    pub fail_next: AtomicUsize,
    /// Panic (after writing) this many times.
    pub panic_next: AtomicUsize,
}

pub(crate) fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

async fn effect(
    Extension(tenant): Extension<TenantId>,
    Extension(faults): Extension<Arc<Faults>>,
    key: Option<Extension<IdempotencyKey>>,
    Query(knobs): Query<Knobs>,
    mut tx: Tx,
    body: Bytes,
) -> Response {
    faults.runs.fetch_add(1, Ordering::SeqCst);
    let note = String::from_utf8_lossy(&body).into_owned();
    let id: i64 = match sqlx::query_scalar(
        "INSERT INTO effects (tenant_id, note) VALUES ($1, $2) RETURNING id",
    )
    .bind(tenant.as_str())
    .bind(&note)
    .fetch_one(&mut *tx)
    .await
    {
        Ok(id) => id,
        Err(e) => return unavailable(e),
    };
    let mut message = Message::new("effects.created", note.clone().into_bytes());
    if let Some(Extension(key)) = &key {
        message = message.from_request(&tenant, key);
    }
    if let Err(e) = idem_sqlx::outbox::enqueue(&mut tx, message).await {
        return unavailable(e);
    }
    drop(tx);
    if take_one(&faults.fail_next) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
    }
    if take_one(&faults.panic_next) {
        panic!("handler panicked on purpose");
    }
    if knobs.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.sleep_ms)).await;
    }
    let status = knobs
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::CREATED);
    if let Some(n) = knobs.body_bytes {
        return (status, "x".repeat(n)).into_response();
    }
    effect_answer(status, id, &note)
}

/// The answer of a handler that wrote effect `id`: `status`, a JSON body with the id
/// and the note, `Location`, `ETag`, and an `x-not-replayed` header.
pub(crate) fn effect_answer(status: StatusCode, id: i64, note: &str) -> Response {
    let mut response = (status, Json(json!({ "id": id, "note": note }))).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/effects/{id}")).expect("location"),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"e{id}\"")).expect("etag"),
    );
    headers.insert("x-not-replayed", HeaderValue::from_static("first-only"));
    response
}

/// As a real service would answer when its database fails: 503, try again.
fn unavailable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        e.to_string(),
    )
        .into_response()
}

async fn panics(mut tx: Tx) -> StatusCode {
    let _ = sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('panic', 'panic')")
        .execute(&mut *tx)
        .await;
    panic!("handler panicked on purpose");
}

async fn holds_tx(tx: Tx) -> StatusCode {
    // Moves the transaction into a task that outlives the handler.
    tokio::spawn(async move {
        let mut tx = tx;
        let _ = sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('held', 'held')")
            .execute(&mut *tx)
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    StatusCode::CREATED
}

async fn echo(body: Bytes) -> (StatusCode, Bytes) {
    (StatusCode::OK, body)
}

async fn count(Extension(pool): Extension<PgPool>) -> Json<i64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
    Json(n)
}

/// A router whose handlers write one `effects` row (and enqueue one outbox message,
/// topic `effects.created`) per execution:
/// - `POST /effects?sleep_ms=&status=&body_bytes=`: writes, then answers 201 JSON with
///   `Location`, `ETag` and an `x-not-replayed` header (or the given status / body size);
/// - `POST /panic`: writes, then panics;
/// - `POST /hold`: moves its `Tx` into a task that outlives it;
/// - `POST /echo`: answers its body, touching no database;
/// - `GET /effects`: the number of rows, untouched by the layer.
///
/// A middleware outside the layer puts the `x-tenant-id` header's tenant into the
/// request extensions (the layer's default tenant source).
pub fn effects_router(pool: PgPool, layer: IdempotencyLayer, faults: Arc<Faults>) -> Router {
    Router::new()
        .route("/effects", post(effect).get(count))
        .route("/panic", post(panics))
        .route("/hold", post(holds_tx))
        .route("/echo", post(echo))
        .layer(layer)
        .layer(axum::middleware::from_fn(tenant_extension))
        .layer(Extension(pool))
        .layer(Extension(faults))
}

async fn tenant_extension(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(t) = req
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TenantId::new(v).ok())
    {
        req.extensions_mut().insert(t);
    }
    next.run(req).await
}
