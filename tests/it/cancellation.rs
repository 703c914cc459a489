//! A client that disconnects mid-request cannot cut the transaction in half: not while
//! the handler runs, nor while the layer waits for a connection or for its claim.

use std::time::Duration;

use idem_axum::Timeouts;
use idem_tests::{TestApp, TestDb, effects_app, impatient_client, replayed, test_db, test_db_with};
use sqlx::{Connection, PgConnection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_neither_loses_nor_tears_the_request() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let impatient = impatient_client(Duration::from_millis(200));
    let gone = impatient
        .post(app.url("/effects?sleep_ms=800"))
        .header("x-tenant-id", "t1")
        .header("idempotency-key", "dc")
        .body("n")
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the client gave up before the handler finished"
    );

    // The request goes on without its client and commits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.keys().await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.effects().await, 1);
    assert_eq!(db.keys().await, 1);

    let retry = app
        .send("/effects?sleep_ms=800", "t1", Some("dc"), "n")
        .await;
    assert_eq!(retry.status(), 201);
    assert!(
        replayed(&retry),
        "the retry receives the response the client missed"
    );
    assert_eq!(db.effects().await, 1);
    assert_eq!(db.transactions_left_open().await, 0);
}

/// A keyed POST /effects as tenant `t1` from `client`, its result as the client saw it.
async fn post_effect(
    client: &reqwest::Client,
    app: &TestApp,
    key: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(app.url("/effects"))
        .header("x-tenant-id", "t1")
        .header("idempotency-key", key)
        .body("n")
        .send()
        .await
}

/// Waits (generously) for the request the client abandoned to commit, then checks it
/// committed exactly once: one handler execution, one key.
async fn committed_without_its_client(db: &TestDb) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.keys().await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (db.effects().await, db.keys().await),
        (1, 1),
        "the abandoned request committed exactly once"
    );
}

/// After the abandoned request committed: its retry replays it, nothing was left in
/// a transaction, and the pool serves a new request.
async fn replayed_and_pool_usable(db: &TestDb, app: &TestApp, key: &str) {
    let retry = post_effect(&app.client, app, key).await.expect("retry");
    assert_eq!(retry.status(), 201);
    assert!(
        replayed(&retry),
        "the retry receives the response the client missed"
    );
    assert_eq!(db.effects().await, 1, "the retry did not execute again");

    let fresh = post_effect(&app.client, app, &format!("{key}-next"))
        .await
        .expect("a new request");
    assert_eq!(fresh.status(), 201, "the pool serves a new request");
    assert!(!replayed(&fresh));
    assert_eq!(db.effects().await, 2);
    assert_eq!(db.transactions_left_open().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_layer_waits_for_a_connection_loses_nothing() {
    let db = test_db_with(2).await;
    let (app, _) = effects_app(&db, |l| l).await;
    // The test holds every connection of the layer's pool: the request's BEGIN waits.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(db.pool.acquire().await.expect("hold a connection"));
    }
    let gone = post_effect(
        &impatient_client(Duration::from_millis(200)),
        &app,
        "begin-wait",
    )
    .await;
    assert!(
        gone.is_err_and(|e| e.is_timeout()),
        "the client gave up while the layer waited for a connection"
    );
    drop(held);

    committed_without_its_client(&db).await;
    replayed_and_pool_usable(&db, &app, "begin-wait").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_claim_waits_on_its_key_loses_nothing() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(10)))
    })
    .await;
    // The test's own transaction holds (t1, claim-wait), as a claim does: the layer's
    // claim of the same key waits on that row.
    let mut holder = PgConnection::connect_with(&db.options)
        .await
        .expect("holder connection");
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .expect("holder pid");
    let mut holding = holder.begin().await.expect("holder begin");
    sqlx::query(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, created_at, expires_at) \
         VALUES ('t1', 'claim-wait', $1, 'POST', '/effects', now(), now() + interval '1 hour')",
    )
    .bind(vec![0u8; 32])
    .execute(&mut *holding)
    .await
    .expect("hold the key");

    let claim_waits = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while blocked_by(&db, holder_pid).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the layer's claim never waited on the held key"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let impatient = impatient_client(Duration::from_millis(200));
    let (gone, ()) = tokio::join!(post_effect(&impatient, &app, "claim-wait"), claim_waits);
    assert!(
        gone.is_err_and(|e| e.is_timeout()),
        "the client gave up while the claim waited"
    );
    assert_eq!(
        blocked_by(&db, holder_pid).await,
        1,
        "the claim still waits once the client is gone"
    );
    holding.rollback().await.expect("holder rollback");
    holder.close().await.expect("holder close");

    committed_without_its_client(&db).await;
    replayed_and_pool_usable(&db, &app, "claim-wait").await;
}

/// Sessions on the test database waiting on a lock that session `pid` holds.
async fn blocked_by(db: &TestDb, pid: i32) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))",
    )
    .bind(pid)
    .fetch_one(&db.pool)
    .await
    .expect("pg_stat_activity")
}
