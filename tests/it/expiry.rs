//! A key past its retention is gone: the request runs as new.

use std::time::Duration;

use idem_axum::{Policy, Storage, Timeouts};
use idem_tests::{effects_app, replayed, test_db};

/// These tests move the store's clock forward by editing `expires_at` and `retention`; a layer's copies
/// of finished records in memory cannot see that, so their layers keep none.
fn no_memory(layer: idem_axum::IdempotencyLayer) -> idem_axum::IdempotencyLayer {
    layer.storage(Storage::default().replay_cache(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_executes_again_and_replaces_the_old_record() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, no_memory).await;
    let first = app.send("/effects", "t1", Some("e1"), "n").await;
    let first_body = first.bytes().await.expect("body");
    db.expire_keys().await;

    let again = app.send("/effects", "t1", Some("e1"), "n").await;
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

    let third = app.send("/effects", "t1", Some("e1"), "n").await;
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
    app.send("/effects", "t1", Some("e2"), "a").await;
    db.expire_keys().await;
    let other = app.send("/effects", "t1", Some("e2"), "b").await;
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
        .send("/effects?sleep_ms=300", "t1", Some("e3"), "n")
        .await;
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
        .send("/effects?sleep_ms=300", "t1", Some("e3"), "n")
        .await;
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
    let first = slow.send("/effects?sleep_ms=4500", "t1", Some("e5"), "n");
    let duplicate = async {
        // Arrives after the retention would have run out, counted from the claim.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        other
            .send("/effects?sleep_ms=4500", "t1", Some("e5"), "n")
            .await
    };
    let (first, duplicate) = tokio::join!(first, duplicate);
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
    app.send("/effects", "t1", Some("old"), "n").await;
    db.expire_keys().await;
    app.send("/effects", "t1", Some("new"), "n").await;
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
    app.send("/effects", "t1", Some("e4"), "n").await;
    db.expire_keys().await;
    let retries = (0..10).map(|_| app.send("/effects?sleep_ms=100", "t1", Some("e4"), "n"));
    let responses = futures_util::future::join_all(retries).await;
    let mut executed = 0;
    for r in responses {
        assert!(r.status() == 201 || r.status() == 409, "got {}", r.status());
        if r.status() == 201 && !replayed(&r) {
            executed += 1;
        }
    }
    assert_eq!(executed, 1, "one retry takes the expired key over");
    assert_eq!(db.effects().await, 2);
    assert_eq!(db.keys().await, 1);
}
