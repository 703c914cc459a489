//! A key past its retention is gone: the request runs as new.

use std::time::Duration;

use idem_axum::{Policy, Storage, Timeouts};
use idem_tests::{effects_app, replayed, test_db};

/// These tests move the store's clock forward by editing `expires_at` and `retention`; a layer's copies
/// of finished records in memory cannot see that, so their layers keep none.
fn no_memory(layer: idem_axum::IdempotencyLayer) -> idem_axum::IdempotencyLayer {
    layer.storage(Storage::default().replay_cache(0))
}

async fn expire_all(db: &idem_tests::TestDb) {
    sqlx::query(
        "UPDATE idem.keys SET expires_at = now() - interval '1 second', retention = interval '0'",
    )
    .execute(&db.pool)
    .await
    .expect("expire keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_executes_again_and_replaces_the_old_record() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, no_memory).await;
    let first = app
        .post("/effects", "t1", Some("e1"), "n")
        .send()
        .await
        .expect("first");
    let first_body = first.bytes().await.expect("body");
    expire_all(&db).await;

    let again = app
        .post("/effects", "t1", Some("e1"), "n")
        .send()
        .await
        .expect("again");
    assert_eq!(again.status(), 201);
    assert!(!replayed(&again), "an expired key runs as new");
    let again_body = again.bytes().await.expect("body");
    assert_ne!(again_body, first_body);
    assert_eq!(db.effects().await, 2);
    assert_eq!(
        db.keys().await,
        1,
        "the record was replaced, not duplicated"
    );

    let third = app
        .post("/effects", "t1", Some("e1"), "n")
        .send()
        .await
        .expect("third");
    assert!(replayed(&third));
    assert_eq!(
        third.bytes().await.expect("body"),
        again_body,
        "the new record is replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_may_be_reused_for_a_different_request() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, no_memory).await;
    app.post("/effects", "t1", Some("e2"), "a")
        .send()
        .await
        .expect("first");
    expire_all(&db).await;
    let other = app
        .post("/effects", "t1", Some("e2"), "b")
        .send()
        .await
        .expect("other");
    assert_eq!(other.status(), 201, "no mismatch against an expired record");
    assert_eq!(db.effects().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_retention_is_counted_from_completion() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.policy(Policy::default().retention(Duration::from_secs(90 * 60)))
    })
    .await;
    let first = app
        .post("/effects?sleep_ms=300", "t1", Some("e3"), "n")
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), 201);
    let (counted, since_claim): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM expiry - completed_at)::float8, \
                extract(epoch FROM expiry - created_at)::float8 \
         FROM (SELECT *, greatest(expires_at, completed_at + retention) AS expiry \
               FROM idem.keys WHERE key = 'e3') k",
    )
    .fetch_one(&db.pool)
    .await
    .expect("key row");
    assert_eq!(
        counted,
        90.0 * 60.0,
        "retention starts when the request completes"
    );
    assert!(since_claim > counted, "not when it was claimed");
    let soon = app
        .post("/effects?sleep_ms=300", "t1", Some("e3"), "n")
        .send()
        .await
        .expect("soon");
    assert!(replayed(&soon), "within its retention the key replays");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waiting_on_a_request_slower_than_the_retention_replays_it() {
    let db = test_db().await;
    // Two layers on one database stand for two processes: the duplicate waits on the
    // key in the database, not in memory.
    let configure = |l: idem_axum::IdempotencyLayer| {
        l.policy(Policy::default().retention(Duration::from_secs(2)))
            .timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(20)))
    };
    let (slow, _) = effects_app(&db, configure).await;
    let (other, _) = effects_app(&db, configure).await;
    let first = slow
        .post("/effects?sleep_ms=4500", "t1", Some("e5"), "n")
        .send();
    let duplicate = async {
        // Arrives after the retention would have run out, counted from the claim.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        other
            .post("/effects?sleep_ms=4500", "t1", Some("e5"), "n")
            .send()
            .await
    };
    let (first, duplicate) = tokio::join!(first, duplicate);
    let (first, duplicate) = (first.expect("first"), duplicate.expect("duplicate"));
    assert_eq!(first.status(), 201);
    assert_eq!(duplicate.status(), 201);
    assert!(
        replayed(&duplicate),
        "the key was never replaced while its first request ran"
    );
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_deletes_only_expired_keys() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, no_memory).await;
    app.post("/effects", "t1", Some("old"), "n")
        .send()
        .await
        .expect("old");
    sqlx::query(
        "UPDATE idem.keys SET expires_at = now() - interval '1 second', retention = interval '0'",
    )
    .execute(&db.pool)
    .await
    .expect("expire");
    app.post("/effects", "t1", Some("new"), "n")
        .send()
        .await
        .expect("new");
    let swept = idem_sqlx::Sweeper::new(db.pool.clone())
        .sweep_once()
        .await
        .expect("sweep");
    assert_eq!(swept.keys, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idem.keys")
        .fetch_all(&db.pool)
        .await
        .expect("keys");
    assert_eq!(left, vec!["new".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_an_expired_key_execute_once() {
    let db = idem_tests::test_db_with(12).await;
    let (app, _) = effects_app(&db, |l| {
        no_memory(l).timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(20)))
    })
    .await;
    app.post("/effects", "t1", Some("e4"), "n")
        .send()
        .await
        .expect("first");
    expire_all(&db).await;
    let retries = (0..10).map(|_| {
        app.post("/effects?sleep_ms=100", "t1", Some("e4"), "n")
            .send()
    });
    let responses = futures_util::future::join_all(retries).await;
    let mut executed = 0;
    for r in responses {
        let r = r.expect("response");
        assert!(r.status() == 201 || r.status() == 409, "got {}", r.status());
        if r.status() == 201 && !replayed(&r) {
            executed += 1;
        }
    }
    assert_eq!(executed, 1, "one retry takes the expired key over");
    assert_eq!(db.effects().await, 2);
    assert_eq!(db.keys().await, 1);
}
