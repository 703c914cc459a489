//! The store's claim, completion and lookup, on a caller's transaction.

use std::time::Duration;

use idem_core::{BodyMode, Fingerprint, IdempotencyKey, RecordState, StoredResponse, TenantId};
use idem_sqlx::StoreError;
use idem_sqlx::keys::{Claim, ClaimRequest, Completion};
use idem_tests::test_db;

fn request<'a>(tenant: &'a TenantId, key: &'a IdempotencyKey, body: &[u8]) -> ClaimRequest<'a> {
    ClaimRequest {
        tenant,
        key,
        fingerprint: Fingerprint::builder("POST", "/p")
            .body(body, BodyMode::Raw)
            .finish(),
        method: "POST",
        path: "/p",
        route: Some("/p"),
        retention: Duration::from_secs(3600),
        tombstones: None,
        wait: Duration::from_millis(200),
    }
}

fn response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("link".into(), b"</a>; rel=\"a\"".to_vec()),
            ("link".into(), b"</b>; rel=\"b\"".to_vec()),
        ],
        body: b"{\"ok\":true}".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_leaves_the_transaction_lock_timeout_at_its_default() {
    let db = test_db().await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("k").expect("key");
    let mut tx = db.pool.begin().await.expect("begin");
    let before: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .expect("show");
    let claim = idem_sqlx::keys::claim(&mut tx, &request(&tenant, &key, b"a"))
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Claimed);
    let after: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .expect("show");
    assert_eq!(
        after, before,
        "the handler's statements are not bound by the claim's wait"
    );
}

async fn lock_timeout(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(conn)
        .await
        .expect("show lock_timeout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_gives_the_handler_back_the_sessions_own_lock_timeout() {
    let db = test_db().await;
    let pool = db.one_session("SET lock_timeout = '7s'").await;
    let tenant = TenantId::new("t").expect("tenant");
    let taken = IdempotencyKey::parse("taken").expect("key");
    let mut tx = pool.begin().await.expect("begin");
    let claim = idem_sqlx::keys::claim(&mut tx, &request(&tenant, &taken, b"a"))
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Claimed);
    let inside = lock_timeout(&mut tx).await;
    assert_eq!(
        inside, "7s",
        "not the claim's 200ms wait, nor the server default"
    );
    tx.commit().await.expect("commit");

    // A claim that finds the key taken leaves its wait in force; a second claim in the
    // same transaction (as after a key swept between two statements) still gives the
    // handler the session's value back.
    let mut tx = pool.begin().await.expect("begin");
    let found = idem_sqlx::keys::claim(&mut tx, &request(&tenant, &taken, b"b"))
        .await
        .expect("claim");
    assert!(matches!(found, Claim::Mismatch(..)), "{found:?}");
    let fresh = IdempotencyKey::parse("fresh").expect("key");
    let claim = idem_sqlx::keys::claim(&mut tx, &request(&tenant, &fresh, b"a"))
        .await
        .expect("claim");
    assert_eq!(claim, Claim::Claimed);
    assert_eq!(lock_timeout(&mut tx).await, "7s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_claim_is_replayed_with_every_header_in_order() {
    let db = test_db().await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("k").expect("key");
    let stored = response();
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        idem_sqlx::keys::claim(&mut tx, &request(&tenant, &key, b"a"))
            .await
            .expect("claim"),
        Claim::Claimed
    );
    idem_sqlx::keys::complete(
        &mut tx,
        &request(&tenant, &key, b"a"),
        Completion::Response(&stored),
    )
    .await
    .expect("complete");
    tx.commit().await.expect("commit");

    let mut tx = db.pool.begin().await.expect("begin");
    match idem_sqlx::keys::claim(&mut tx, &request(&tenant, &key, b"a"))
        .await
        .expect("claim")
    {
        Claim::Replay(record, _) => {
            assert_eq!(record.state, RecordState::Completed(stored.clone()))
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    tx.rollback().await.expect("rollback");
    let mut tx = db.pool.begin().await.expect("begin");
    let other = idem_sqlx::keys::claim(&mut tx, &request(&tenant, &key, b"b"))
        .await
        .expect("claim");
    assert!(matches!(other, Claim::Mismatch(..)));
    tx.rollback().await.expect("rollback");

    let (record, _) = idem_sqlx::keys::lookup(&db.pool, &tenant, &key)
        .await
        .expect("lookup")
        .expect("record");
    assert_eq!(record.state, RecordState::Completed(stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_held_by_a_running_transaction_is_in_flight_after_the_wait() {
    let db = test_db().await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("k").expect("key");
    let mut holder = db.pool.begin().await.expect("begin");
    assert_eq!(
        idem_sqlx::keys::claim(&mut holder, &request(&tenant, &key, b"a"))
            .await
            .expect("claim"),
        Claim::Claimed
    );

    let mut waiter = db.pool.begin().await.expect("begin");
    let started = std::time::Instant::now();
    let claim = idem_sqlx::keys::claim(&mut waiter, &request(&tenant, &key, b"a"))
        .await
        .expect("claim");
    assert_eq!(claim, Claim::InFlight);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited for the holder"
    );
    waiter.rollback().await.expect("rollback");

    // The holder rolls back: the key is free again.
    holder.rollback().await.expect("rollback");
    let mut next = db.pool.begin().await.expect("begin");
    assert_eq!(
        idem_sqlx::keys::claim(&mut next, &request(&tenant, &key, b"b"))
            .await
            .expect("claim"),
        Claim::Claimed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_key_this_transaction_did_not_claim_is_an_error() {
    let db = test_db().await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("never-claimed").expect("key");
    let mut tx = db.pool.begin().await.expect("begin");
    let err = idem_sqlx::keys::complete(
        &mut tx,
        &request(&tenant, &key, b"a"),
        Completion::StatusOnly(201),
    )
    .await;
    assert!(matches!(err, Err(StoreError::NotClaimed)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_the_response_moves_no_indexed_column_and_retention_counts_from_completion() {
    let db = test_db().await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("hot").expect("key");
    let req = request(&tenant, &key, b"a");
    let mut tx = db.pool.begin().await.expect("begin");
    assert_eq!(
        idem_sqlx::keys::claim(&mut tx, &req).await.expect("claim"),
        Claim::Claimed
    );
    let indexed = "SELECT tenant_id, key, expires_at FROM idem.keys WHERE key = 'hot'";
    let claimed: (String, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(indexed)
        .fetch_one(&mut *tx)
        .await
        .expect("claimed row");
    // The handler takes its time: the retention must count from here, not the claim.
    tokio::time::sleep(Duration::from_millis(300)).await;
    idem_sqlx::keys::complete(&mut tx, &req, Completion::Response(&response()))
        .await
        .expect("complete");
    tx.commit().await.expect("commit");
    let completed: (String, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(indexed)
        .fetch_one(&db.pool)
        .await
        .expect("completed row");
    assert_eq!(
        completed, claimed,
        "the response's UPDATE leaves the indexed columns alone (so it can be HOT)"
    );
    let (record, _) = idem_sqlx::keys::lookup(&db.pool, &tenant, &key)
        .await
        .expect("lookup")
        .expect("record");
    let completed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT completed_at FROM idem.keys WHERE key = 'hot'")
            .fetch_one(&db.pool)
            .await
            .expect("completed_at");
    assert_eq!(
        record.expires_at,
        completed_at + chrono::Duration::seconds(3600),
        "the key expires one retention after its completion"
    );
    assert!(
        record.expires_at > claimed.2,
        "later than claim time + retention"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_the_responses_of_a_batch_of_new_keys_is_a_hot_update() {
    let db = test_db().await;
    let (app, _) = idem_tests::effects_app(&db, |l| l).await;
    const REQUESTS: i64 = 40;
    for i in 0..REQUESTS {
        let key = format!("hot-{i}");
        let answer = app.send("/effects", "t1", Some(&key), "n").await;
        assert_eq!(answer.status(), 201);
    }
    // Each completion is one UPDATE of its key's row; the server counts those that
    // touched no index (HOT), once the backends have flushed their statistics.
    let counts = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                  WHERE schemaname = 'idem' AND relname = 'keys'";
    let mut seen = (0, 0);
    idem_tests::until("the completions in the statistics", async || {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&db.pool)
            .await
            .expect("fresh statistics");
        seen = sqlx::query_as(counts)
            .fetch_one(&db.pool)
            .await
            .expect("statistics");
        seen.0 >= REQUESTS
    })
    .await;
    let (updates, hot) = seen;
    assert_eq!(
        hot, updates,
        "every completion is a HOT update ({hot} of {updates})"
    );
}
