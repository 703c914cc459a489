//! A store that answers but cannot serve the layer (its tables are missing, the role
//! lacks a privilege) is a fault, 500 `store-fault`, and nothing runs, even on a route
//! that fails open. Only a store that cannot be reached at all lets such a route run
//! its handler, without a `Tx`, and never while another request holds the same key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use idem_axum::{FailureMode, IdempotencyLayer, Policy, TenantSource, Timeouts, Tx};
use idem_tests::{Proxy, TestApp, TestDb, problem_type, replayed, test_db};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

#[derive(serde::Deserialize)]
struct Sleep {
    #[serde(default)]
    sleep_ms: u64,
}

/// A fail-open handler that counts every execution (with or without a `Tx`) and, when
/// it has a `Tx`, writes an effects row on it.
async fn counted(
    Extension(runs): Extension<Arc<AtomicUsize>>,
    Query(sleep): Query<Sleep>,
    tx: Option<Tx>,
) -> Response {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let had_tx = tx.is_some();
    if let Some(mut tx) = tx {
        let written = sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('t1', 'run')")
            .execute(&mut *tx)
            .await;
        if let Err(e) = written {
            return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
        }
    }
    tokio::time::sleep(Duration::from_millis(sleep.sleep_ms)).await;
    (
        StatusCode::CREATED,
        Json(json!({ "run": run, "tx": had_tx })),
    )
        .into_response()
}

/// Serves `POST /counted` (the [`counted`] handler, counting into `runs`) behind
/// `layer`, for a single tenant.
async fn counted_app(layer: IdempotencyLayer, runs: &Arc<AtomicUsize>) -> TestApp {
    let router = Router::new()
        .route("/counted", post(counted))
        .route_layer(layer.tenant(TenantSource::single()))
        .layer(Extension(runs.clone()));
    TestApp::spawn(router).await
}

/// Sends a keyed POST to the counted route of `app` and checks that the layer answered
/// 500 `store-fault`.
async fn assert_store_fault(app: &TestApp, key: &str) {
    let response = app
        .client
        .post(app.url("/counted"))
        .header("idempotency-key", key)
        .body("x")
        .send()
        .await
        .expect("response");
    assert_eq!(
        response.status(),
        500,
        "500 store-fault: not an outage (503), and no handler ran"
    );
    assert!(!replayed(&response));
    assert_eq!(problem_type(response).await, "urn:idem:problem:store-fault");
}

/// Checks that on `pool` a keyed request is a store fault on a route that fails closed
/// and on one that fails open, and that no handler ran.
async fn a_keyed_request_is_a_store_fault_in_both_failure_modes(db: &TestDb, pool: &PgPool) {
    let runs = Arc::new(AtomicUsize::new(0));
    for mode in [FailureMode::Closed, FailureMode::Open] {
        let layer = IdempotencyLayer::new(pool.clone()).policy(Policy::default().failure(mode));
        let app = counted_app(layer, &runs).await;
        assert_store_fault(&app, &format!("k-{mode:?}")).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
    assert_eq!(db.effects().await, 0, "nothing was written");
}

/// Drops `sql`'s objects on `db`, then checks that keyed requests are store faults.
async fn a_missing_store_is_a_fault_in_both_failure_modes(db: &TestDb, sql: &'static str) {
    sqlx::query(sql).execute(&db.pool).await.expect("drop");
    a_keyed_request_is_a_store_fault_in_both_failure_modes(db, &db.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_keys_table_is_a_store_fault_and_no_handler_runs_even_failing_open() {
    let db = test_db().await;
    a_missing_store_is_a_fault_in_both_failure_modes(&db, "DROP TABLE idem.keys").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_not_run_are_a_store_fault_and_no_handler_runs_even_failing_open() {
    let db = test_db().await;
    a_missing_store_is_a_fault_in_both_failure_modes(&db, "DROP SCHEMA idem CASCADE").await;
}

/// A login role created for one test, dropped (with its privileges) when the test ends.
struct Role {
    name: String,
    admin: sqlx::postgres::PgConnectOptions,
}

impl Drop for Role {
    fn drop(&mut self) {
        let sql = vec![
            format!("DROP OWNED BY {}", self.name),
            format!("DROP ROLE IF EXISTS {}", self.name),
        ];
        if let Err(e) = idem_tests::pg::run_blocking(self.admin.clone(), sql) {
            eprintln!("dropping role {} failed: {e}", self.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_privileges_on_the_idem_schema_is_a_store_fault_and_nothing_runs() {
    let db = test_db().await;
    let role = Role {
        name: format!("idem_limited_{}", uuid::Uuid::new_v4().simple()),
        admin: db.options.clone(),
    };
    let password = "limited-password";
    for statement in [
        format!("CREATE ROLE {} LOGIN PASSWORD '{password}'", role.name),
        // What the effects handler writes, and nothing on the idem schema.
        format!("GRANT SELECT, INSERT ON effects TO {}", role.name),
        format!("GRANT USAGE ON SEQUENCE effects_id_seq TO {}", role.name),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&db.pool)
            .await
            .expect("role setup");
    }
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.options.clone().username(&role.name).password(password))
        .await
        .expect("pool as the limited role");
    // The role reaches the database and may do the handler's own writes.
    let mut tx = pool.begin().await.expect("begin as the limited role");
    sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('t1', 'probe')")
        .execute(&mut *tx)
        .await
        .expect("the role may write effects");
    tx.rollback().await.expect("rollback the probe");

    a_keyed_request_is_a_store_fault_in_both_failure_modes(&db, &pool).await;
    assert_eq!(db.keys().await, 0);
    pool.close().await;
}

/// A handler for routes that fail open: answers whether the layer gave it a `Tx`.
async fn optional_tx(tx: Option<Tx>) -> Json<Value> {
    Json(json!({ "tx": tx.is_some() }))
}

/// A handler that needs the layer's transaction.
async fn required_tx(_tx: Tx) -> StatusCode {
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_runs_a_fail_open_handler_without_a_tx() {
    let db = test_db().await;
    let proxy = Proxy::in_front_of(&db).await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(proxy.connect_options(&db))
        .await
        .expect("pool through the proxy");
    let layer = IdempotencyLayer::new(pool)
        .tenant(TenantSource::single())
        .policy(Policy::default().failure(FailureMode::Open))
        .timeouts(Timeouts::default().store(Duration::from_secs(1)));
    let router = Router::new()
        .route("/optional", post(optional_tx))
        .route("/required", post(required_tx))
        .route_layer(layer);
    let app = TestApp::spawn(router).await;
    let send = |path: &'static str, key: &'static str| {
        app.client
            .post(app.url(path))
            .header("idempotency-key", key)
            .send()
    };

    proxy.cut();
    let r = send("/optional", "o1").await.expect("optional, store down");
    assert_eq!(r.status(), 200, "the handler ran on its own logic");
    assert!(!replayed(&r));
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body, json!({ "tx": false }), "it got no Tx");

    let r = send("/required", "r1").await.expect("required, store down");
    assert_eq!(r.status(), 500, "fail-open routes take Option<Tx>");
    assert_eq!(
        problem_type(r).await,
        "urn:idem:problem:transaction-unavailable"
    );

    proxy.restore();
    for key in ["o1", "o2"] {
        let r = send("/optional", key).await.expect("optional, store back");
        assert_eq!(r.status(), 200);
        assert!(!replayed(&r), "nothing was stored while the store was down");
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(
            body,
            json!({ "tx": true }),
            "with the store back it gets a Tx"
        );
        let again = send("/optional", key).await.expect("again");
        assert!(replayed(&again), "and the key counts again");
    }
    assert_eq!(db.keys().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_never_runs_a_second_handler_while_another_request_holds_the_key() {
    let db = test_db().await;
    // One connection: while a request holds it, nobody else of this process gets one
    // within store_timeout, which on a fail-open route would run the handler.
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(db.options.clone())
        .await
        .expect("pool of one");
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(pool)
        .policy(Policy::default().failure(FailureMode::Open))
        .timeouts(
            Timeouts::default()
                .store(Duration::from_millis(300))
                .in_flight_wait(Duration::from_secs(5)),
        );
    let app = counted_app(layer, &runs).await;
    let send = |key: &'static str, sleep_ms: u64| {
        app.client
            .post(app.url(&format!("/counted?sleep_ms={sleep_ms}")))
            .header("idempotency-key", key)
            .body("same body")
            .send()
    };
    // Opens the pool's connection, so the requests below do not wait for a connect.
    let warm = send("warm", 0).await.expect("warm-up");
    assert_eq!(warm.status(), 201);

    let a = tokio::spawn(send("k", 1000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = send("k", 1000).await.expect("B");
    let a = a.await.expect("join A").expect("A");

    assert_eq!(a.status(), 201);
    assert!(!replayed(&a), "A executed");
    assert_eq!(b.status(), 201);
    assert!(replayed(&b), "B replays A instead of failing open");
    let (a, b) = (
        a.bytes().await.expect("A body"),
        b.bytes().await.expect("B body"),
    );
    assert_eq!(a, b, "B's answer is A's");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the handler ran for the warm-up and A only"
    );
    assert_eq!(db.effects().await, 2);
}

/// Two replicas of a fail-open service on one database, each with a pool of one
/// connection: replica A holds key `k` in a slow request; replica B's only connection
/// is busy with another key when `k` arrives there. B's database is up, so B answers
/// 503 rather than running `k`'s handler beside A's: `acquire`, B's pool's acquire
/// timeout, and `store_timeout`, B's bound on opening a transaction, choose which of
/// the two runs out first.
async fn a_busy_replica_fails_closed(db: &TestDb, acquire: Duration, store_timeout: Duration) {
    let runs = Arc::new(AtomicUsize::new(0));
    let replica = async |acquire: Duration| {
        let pool: PgPool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire)
            .connect_with(db.options.clone())
            .await
            .expect("pool of one");
        let layer = IdempotencyLayer::new(pool)
            .policy(Policy::default().failure(FailureMode::Open))
            .timeouts(
                Timeouts::default()
                    .store(store_timeout)
                    .in_flight_wait(Duration::from_secs(5)),
            );
        counted_app(layer, &runs).await
    };
    let (a, b) = (
        replica(Duration::from_secs(5)).await,
        replica(acquire).await,
    );
    let send = |app: &TestApp, key: &'static str, sleep_ms: u64| {
        app.client
            .post(app.url(&format!("/counted?sleep_ms={sleep_ms}")))
            .header("idempotency-key", key)
            .body("same body")
            .send()
    };
    for (app, key) in [(&a, "warm-a"), (&b, "warm-b")] {
        assert_eq!(send(app, key, 0).await.expect("warm-up").status(), 201);
    }
    let holder = tokio::spawn(send(&a, "k", 2000));
    let busy = tokio::spawn(send(&b, "j", 2000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let k_on_b = send(&b, "k", 0).await.expect("k on B");
    assert_eq!(k_on_b.status(), 503, "the database is up: fail closed");
    assert_eq!(
        problem_type(k_on_b).await,
        "urn:idem:problem:store-unavailable"
    );
    let (holder, busy) = (
        holder.await.expect("join").expect("A"),
        busy.await.expect("join").expect("B"),
    );
    assert_eq!(
        (holder.status(), busy.status()),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "the warm-ups, A's `k` and B's `j`: never `k` a second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_timeout_never_fails_open_while_another_replica_may_hold_the_key() {
    let db = test_db().await;
    a_busy_replica_fails_closed(&db, Duration::from_millis(300), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_timeout_never_fails_open_while_another_replica_may_hold_the_key() {
    let db = test_db().await;
    a_busy_replica_fails_closed(&db, Duration::from_secs(5), Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_connections_runs_a_fail_open_handler_without_a_tx() {
    let db = test_db().await;
    // A port nobody listens on: connections are refused, and the pool retries them
    // until its acquire timeout, so the layer sees a pool timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy_with(db.options.clone().host("127.0.0.1").port(port));
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(pool)
        .policy(Policy::default().failure(FailureMode::Open))
        .timeouts(Timeouts::default().store(Duration::from_secs(2)));
    let app = counted_app(layer, &runs).await;
    let r = app
        .client
        .post(app.url("/counted"))
        .header("idempotency-key", "refused-1")
        .body("x")
        .send()
        .await
        .expect("response");
    assert_eq!(
        r.status(),
        201,
        "nobody can hold a key in a database that is down"
    );
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["tx"], json!(false));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
