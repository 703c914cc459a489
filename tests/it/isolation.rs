//! The claim holds whatever the server's `default_transaction_isolation`: the layer
//! begins its transaction at READ COMMITTED (or at the level a route asks for, where a
//! claim that fails to serialize starts over), so duplicates spread over several
//! processes execute once and none of them gets a 5xx.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use futures_util::future::join_all;
use idem_axum::{IdempotencyLayer, Isolation, Storage, TenantSource, Timeouts, Tx};
use idem_tests::{Faults, TestApp, TestDb, effects_router, replayed, test_db};
use sqlx::{AssertSqlSafe, PgPool};

/// Duplicates sent at once, spread over the processes.
const DUPLICATES: usize = 32;
/// Separate layers (as separate processes would be), each served by its own app.
const PROCESSES: usize = 4;

/// Sets the database's `default_transaction_isolation` and returns a pool whose
/// connections are opened afterwards, so every one of them starts with that default.
async fn pool_with_server_default(db: &TestDb, level: &str) -> PgPool {
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE {} SET default_transaction_isolation = '{level}'",
        db.name
    )))
    .execute(&db.pool)
    .await
    .expect("set the database's default isolation");
    let pool = db.pool(2 * PROCESSES as u32).await;
    let default: String = sqlx::query_scalar("SHOW default_transaction_isolation")
        .fetch_one(&pool)
        .await
        .expect("show the default isolation");
    assert_eq!(default, level, "new connections pick the default up");
    pool
}

/// Sends [`DUPLICATES`] concurrent copies of one slow request (same tenant, key and
/// body) spread over [`PROCESSES`] layers on `pool`, and checks that exactly one
/// executed and every other one replayed it.
async fn duplicates_across_processes_execute_once(
    db: &TestDb,
    pool: &PgPool,
    configure: impl Fn(IdempotencyLayer) -> IdempotencyLayer,
) {
    let mut apps = Vec::new();
    for _ in 0..PROCESSES {
        let layer = configure(
            IdempotencyLayer::new(pool.clone())
                .timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(10))),
        );
        let router = effects_router(pool.clone(), layer, Arc::new(Faults::default()));
        apps.push(TestApp::spawn(router).await);
    }
    let requests = (0..DUPLICATES)
        .map(|i| apps[i % PROCESSES].send("/effects?sleep_ms=300", "t1", Some("k"), "same body"));
    let mut executed = 0;
    let mut bodies = Vec::new();
    for response in join_all(requests).await {
        let status = response.status().as_u16();
        assert!(status < 500, "no 5xx, got {status}");
        assert_eq!(status, 201, "executed or replayed within the wait");
        if !replayed(&response) {
            executed += 1;
        }
        bodies.push(response.bytes().await.expect("body"));
    }
    assert_eq!(executed, 1, "exactly one answer is the execution");
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every replay is the executed response"
    );
    assert_eq!(db.effects().await, 1, "the handler's writes committed once");
    assert_eq!(db.keys().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_processes_execute_once_under_a_read_committed_server_default() {
    let db = test_db().await;
    let pool = pool_with_server_default(&db, "read committed").await;
    duplicates_across_processes_execute_once(&db, &pool, |l| l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_processes_execute_once_under_a_repeatable_read_server_default() {
    let db = test_db().await;
    let pool = pool_with_server_default(&db, "repeatable read").await;
    duplicates_across_processes_execute_once(&db, &pool, |l| l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_processes_execute_once_under_a_serializable_server_default() {
    let db = test_db().await;
    let pool = pool_with_server_default(&db, "serializable").await;
    duplicates_across_processes_execute_once(&db, &pool, |l| l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_processes_execute_once_on_a_route_that_asks_for_serializable() {
    let db = test_db().await;
    let pool = pool_with_server_default(&db, "read committed").await;
    duplicates_across_processes_execute_once(&db, &pool, |l| {
        l.storage(Storage::default().isolation(Isolation::Serializable))
    })
    .await;
}

/// Answers the isolation level of the transaction the layer gave the handler.
async fn transaction_isolation(mut tx: Tx) -> Json<String> {
    let level: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(&mut *tx)
        .await
        .expect("show the transaction's isolation");
    Json(level)
}

/// The isolation level a keyed request's handler runs at, on a layer over `pool`.
async fn handler_isolation(pool: &PgPool, isolation: Option<Isolation>, key: &str) -> String {
    let mut layer = IdempotencyLayer::new(pool.clone()).tenant(TenantSource::single());
    if let Some(isolation) = isolation {
        layer = layer.storage(Storage::default().isolation(isolation));
    }
    let router = Router::new()
        .route("/isolation", post(transaction_isolation))
        .route_layer(layer);
    let app = TestApp::spawn(router).await;
    let response = app
        .client
        .post(app.url("/isolation"))
        .header("idempotency-key", key)
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    response.json().await.expect("the level as JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_transaction_is_read_committed_whatever_the_server_default() {
    for level in ["read committed", "repeatable read", "serializable"] {
        let db = test_db().await;
        let pool = pool_with_server_default(&db, level).await;
        assert_eq!(
            handler_isolation(&pool, None, "k").await,
            "read committed",
            "under a {level} server default"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_runs_at_the_isolation_level_it_asks_for_whatever_the_server_default() {
    // Each level is asked for on a server whose default is another one.
    let cases = [
        (Isolation::ReadCommitted, "read committed", "serializable"),
        (
            Isolation::RepeatableRead,
            "repeatable read",
            "read committed",
        ),
        (Isolation::Serializable, "serializable", "repeatable read"),
    ];
    for (isolation, expected, server_default) in cases {
        let db = test_db().await;
        let pool = pool_with_server_default(&db, server_default).await;
        assert_eq!(
            handler_isolation(&pool, Some(isolation), "k").await,
            expected,
            "under a {server_default} server default"
        );
    }
}
