//! Replays from memory: a finished record answers its retries (and mismatches) with no
//! store at all, on the process that ran it and on a replica that read it once; a
//! copy never outlives the stored key.

use std::time::Duration;

use idem_axum::{IdempotencyLayer, Policy, Storage, Timeouts};
use idem_tests::{Proxy, TestApp, effects_router, replayed, test_db};

/// An app whose pool reaches the test database through a proxy the test can cut.
async fn app_through_proxy(
    db: &idem_tests::TestDb,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> (Proxy, TestApp) {
    let (proxy, pool) = Proxy::with_pool(db).await;
    let layer = configure(
        IdempotencyLayer::new(pool.clone())
            .timeouts(Timeouts::default().store(Duration::from_secs(3))),
    );
    let app = TestApp::spawn(effects_router(pool, layer, Default::default())).await;
    (proxy, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_request_is_replayed_and_a_mismatch_refused_with_the_store_cut_off() {
    let db = test_db().await;
    let (proxy, app) = app_through_proxy(&db, |l| l).await;
    let first = app.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(first.status(), 201);
    let body = first.text().await.expect("body");

    proxy.cut();
    let retry = app.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(retry.status(), 201, "answered from memory, not 503");
    assert!(replayed(&retry));
    assert_eq!(retry.text().await.expect("body"), body);
    let other = app.send("/effects", "t1", Some("k1"), "other").await;
    assert_eq!(other.status(), 422);
    // Another tenant's same key is not this record.
    let elsewhere = app.send("/effects", "t2", Some("k1"), "n").await;
    assert_eq!(elsewhere.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_memory_a_retry_needs_the_store() {
    let db = test_db().await;
    let (proxy, app) =
        app_through_proxy(&db, |l| l.storage(Storage::default().replay_cache(0))).await;
    let first = app.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(first.status(), 201);
    proxy.cut();
    let retry = app.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(retry.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_a_record_it_read_from_the_store() {
    let db = test_db().await;
    let (_ran_proxy, ran) = app_through_proxy(&db, |l| l).await;
    let (proxy, replica) = app_through_proxy(&db, |l| l).await;
    let first = ran.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(first.status(), 201);
    let body = first.text().await.expect("body");

    let read = replica.send("/effects", "t1", Some("k1"), "n").await;
    assert!(replayed(&read), "replayed from the store");
    proxy.cut();
    let kept = replica.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(kept.status(), 201, "answered from the replica's memory");
    assert!(replayed(&kept));
    assert_eq!(kept.text().await.expect("body"), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_memory_expires_with_the_key() {
    let db = test_db().await;
    let (_proxy, app) = app_through_proxy(&db, |l| {
        l.policy(Policy::default().retention(Duration::from_secs(2)))
    })
    .await;
    let first = app.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(first.status(), 201);
    let retry = app.send("/effects", "t1", Some("k1"), "n").await;
    assert!(replayed(&retry));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = app.send("/effects", "t1", Some("k1"), "n").await;
    assert_eq!(later.status(), 201);
    assert!(
        !replayed(&later),
        "past the retention the request runs again"
    );
    assert_eq!(db.effects().await, 2);
}
