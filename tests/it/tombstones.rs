//! Keys past their retention on a route that keeps tombstones: a late retry of the same
//! request is answered 410 `key-expired` (with the original completion time and status)
//! and runs nothing, before and after the sweeper has turned the key into a tombstone;
//! the same key with another request is 422; after the window the key is gone and the
//! sweeper removes the tombstone. Every route kind (`tombstones::{atomic,phased,
//! lookup_first}::`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use idem_axum::{KeyProtection, Policy, Protection, RiskClass};
use idem_sqlx::{Sweeper, Swept};
use idem_tests::{RouteKind, TestDb, keyed_app_with, problem_type, replayed, test_db};
use serde_json::Value;

/// The policy of a critical route, whose keys leave tombstones by default.
fn critical(layer: idem_axum::IdempotencyLayer) -> idem_axum::IdempotencyLayer {
    layer.policy(Policy::for_risk(RiskClass::Critical))
}

/// Moves every tombstone past its window.
async fn end_windows(db: &TestDb) {
    sqlx::query("UPDATE idem.tombstones SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .expect("end windows");
}

/// One pass of a sweeper at its defaults.
async fn sweep(db: &TestDb) -> Swept {
    Sweeper::new(db.pool.clone())
        .sweep_once()
        .await
        .expect("sweep")
}

async fn tombstones(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idem.tombstones")
        .fetch_one(&db.pool)
        .await
        .expect("count tombstones")
}

/// When the one key of the database completed, as problem bodies write it.
async fn completed_at(db: &TestDb) -> String {
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT completed_at FROM idem.keys")
        .fetch_one(&db.pool)
        .await
        .expect("completed_at");
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Asserts `response` is 410 `key-expired` for a request that answered 201 at
/// `completed_at`.
async fn assert_expired(response: reqwest::Response, completed_at: &str, what: &str) {
    assert_eq!(response.status(), 410, "{what}");
    assert!(!replayed(&response), "{what}: not a replay");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["type"], "urn:idem:problem:key-expired", "{what}");
    assert_eq!(body["original_status"], 201, "{what}");
    assert_eq!(body["original_completed_at"], completed_at, "{what}");
}

async fn a_late_retry_is_told_the_key_expired_and_runs_nothing(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app_with(&db, kind, critical).await;
    let first = app.send("/effects", "t1", Some("late-1"), "n").await;
    assert_eq!(first.status(), 201, "{kind:?}");
    let completed = completed_at(&db).await;
    db.expire_keys().await;

    let late = app.send("/effects", "t1", Some("late-1"), "n").await;
    assert_expired(late, &completed, &format!("{kind:?}: before the sweep")).await;

    let swept = sweep(&db).await;
    assert_eq!((swept.keys, swept.tombstones), (1, 0), "{kind:?}");
    assert_eq!(db.keys().await, 0, "{kind:?}: the key is gone");
    assert_eq!(tombstones(&db).await, 1, "{kind:?}: its tombstone stays");

    let later = app.send("/effects", "t1", Some("late-1"), "n").await;
    assert_expired(later, &completed, &format!("{kind:?}: after the sweep")).await;
    assert_eq!(db.effects().await, 1, "{kind:?}: nothing ran again");
    assert_eq!(faults.runs.load(Ordering::SeqCst), 1, "{kind:?}");
    assert_eq!(db.keys().await, 0, "{kind:?}: the refusal claimed nothing");
}

async fn the_same_key_with_another_request_in_the_window_is_a_mismatch(kind: RouteKind) {
    let db = test_db().await;
    let (app, _) = keyed_app_with(&db, kind, critical).await;
    app.send("/effects", "t1", Some("late-2"), "n").await;
    db.expire_keys().await;
    for when in ["before the sweep", "after the sweep"] {
        let other = app.send("/effects", "t1", Some("late-2"), "other").await;
        assert_eq!(other.status(), 422, "{kind:?}: {when}");
        assert_eq!(
            problem_type(other).await,
            "urn:idem:problem:key-mismatch",
            "{kind:?}: {when}"
        );
        sweep(&db).await;
    }
    assert_eq!(db.effects().await, 1, "{kind:?}");
}

async fn after_the_window_the_key_runs_as_new_and_its_tombstone_is_swept(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app_with(&db, kind, critical).await;
    app.send("/effects", "t1", Some("late-3"), "n").await;
    db.expire_keys().await;
    sweep(&db).await;
    end_windows(&db).await;

    let again = app.send("/effects", "t1", Some("late-3"), "n").await;
    assert_eq!(again.status(), 201, "{kind:?}: the window passed");
    assert!(!replayed(&again), "{kind:?}");
    assert_eq!(db.effects().await, 2, "{kind:?}");
    assert_eq!(faults.runs.load(Ordering::SeqCst), 2, "{kind:?}");

    let swept = sweep(&db).await;
    assert_eq!((swept.keys, swept.tombstones), (0, 1), "{kind:?}");
    assert_eq!(tombstones(&db).await, 0, "{kind:?}");
    let replay = app.send("/effects", "t1", Some("late-3"), "n").await;
    assert!(replayed(&replay), "{kind:?}: the new key replays");
}

async fn a_late_retry_racing_the_sweep_of_its_key_is_told_the_key_expired(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app_with(&db, kind, critical).await;
    app.send("/effects", "t1", Some("race-1"), "n").await;
    let completed = completed_at(&db).await;
    db.expire_keys().await;
    let (fingerprint, finished): (Vec<u8>, DateTime<Utc>) =
        sqlx::query_as("SELECT fingerprint, completed_at FROM idem.keys")
            .fetch_one(&db.pool)
            .await
            .expect("the key");
    // The sweep of the key, as the sweeper makes it, held open: its row deleted and
    // its tombstone written in one transaction that has not committed yet.
    let mut sweep = db.pool.begin().await.expect("begin");
    sqlx::query("DELETE FROM idem.keys WHERE tenant_id = 't1' AND key = 'race-1'")
        .execute(&mut *sweep)
        .await
        .expect("delete");
    sqlx::query(
        "INSERT INTO idem.tombstones VALUES ('t1', 'race-1', $1, $2, 201, now() + interval '1 day')",
    )
    .bind(&fingerprint)
    .bind(finished)
    .execute(&mut *sweep)
    .await
    .expect("tombstone");
    // The retry's claim starts while the sweep holds the row, and goes on once the
    // sweep committed.
    let (late, ()) = tokio::join!(app.send("/effects", "t1", Some("race-1"), "n"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sweep.commit().await.expect("commit the sweep");
    });
    assert_expired(late, &completed, &format!("{kind:?}: racing the sweep")).await;
    assert_eq!(db.effects().await, 1, "{kind:?}: nothing ran again");
    assert_eq!(faults.runs.load(Ordering::SeqCst), 1, "{kind:?}");
    assert_eq!(db.keys().await, 0, "{kind:?}: the refusal claimed nothing");
}

idem_tests::keyed_route_cases! {
    kinds: [atomic => Atomic, phased => Phased, lookup_first => LookupFirst],
    cases: [
        a_late_retry_is_told_the_key_expired_and_runs_nothing,
        the_same_key_with_another_request_in_the_window_is_a_mismatch,
        after_the_window_the_key_runs_as_new_and_its_tombstone_is_swept,
        a_late_retry_racing_the_sweep_of_its_key_is_told_the_key_expired,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_tombstones_leaves_none_and_runs_an_expired_key_again() {
    let db = test_db().await;
    let (app, _) = keyed_app_with(&db, RouteKind::Atomic, |layer| {
        layer.policy(Policy::for_risk(RiskClass::Critical).tombstones(None))
    })
    .await;
    app.send("/effects", "t1", Some("gone-1"), "n").await;
    db.expire_keys().await;
    sweep(&db).await;
    assert_eq!(tombstones(&db).await, 0);
    let again = app.send("/effects", "t1", Some("gone-1"), "n").await;
    assert_eq!(again.status(), 201);
    assert_eq!(db.effects().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_set_on_the_route_is_the_one_its_keys_leave() {
    let db = test_db().await;
    let window = Duration::from_secs(3 * 24 * 3600);
    let (app, _) = keyed_app_with(&db, RouteKind::Atomic, |layer| {
        layer.policy(Policy::default().tombstones(Some(window)))
    })
    .await;
    app.send("/effects", "t1", Some("w-1"), "n").await;
    db.expire_keys().await;
    sweep(&db).await;
    // The key expired a second ago (its retention was set to zero): its tombstone
    // stands for the route's window from then.
    let standing: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - completed_at)::float8 FROM idem.tombstones",
    )
    .fetch_one(&db.pool)
    .await
    .expect("window");
    assert!(
        (standing - window.as_secs_f64()).abs() < 60.0,
        "the tombstone stands {standing} s after completion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_key_leaves_a_protected_tombstone_that_still_answers() {
    let db = test_db().await;
    let protection = KeyProtection::hmac("k1", &[0x42; 32]).expect("protection");
    let (app, _) = keyed_app_with(&db, RouteKind::Atomic, |layer| {
        critical(layer).protection(Protection::default().keys(protection))
    })
    .await;
    app.send("/effects", "t1", Some("client-key-4711"), "n")
        .await;
    let completed = completed_at(&db).await;
    db.expire_keys().await;
    sweep(&db).await;

    let stored: Vec<(String,)> = sqlx::query_as("SELECT t::text FROM idem.tombstones t")
        .fetch_all(&db.pool)
        .await
        .expect("dump");
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].0.contains("client-key-4711"),
        "the tombstone keeps the key's HMAC, not the key: {}",
        stored[0].0
    );
    let late = app
        .send("/effects", "t1", Some("client-key-4711"), "n")
        .await;
    assert_expired(late, &completed, "protected").await;
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_keeps_no_response_and_is_a_fraction_of_its_key() {
    let db = test_db().await;
    let (app, _) = keyed_app_with(&db, RouteKind::Atomic, critical).await;
    app.send("/effects", "t1", Some("size-1"), "n").await;
    let key_bytes: i32 = sqlx::query_scalar("SELECT pg_column_size(k.*) FROM idem.keys k")
        .fetch_one(&db.pool)
        .await
        .expect("key size");
    db.expire_keys().await;
    sweep(&db).await;
    let tombstone_bytes: i32 =
        sqlx::query_scalar("SELECT pg_column_size(t.*) FROM idem.tombstones t")
            .fetch_one(&db.pool)
            .await
            .expect("tombstone size");
    assert!(
        tombstone_bytes * 2 < key_bytes,
        "a tombstone ({tombstone_bytes} B) is under half its stored key ({key_bytes} B)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_stopped_keeping_tombstones_ignores_those_left_before() {
    let db = test_db().await;
    let (before, _) = keyed_app_with(&db, RouteKind::Atomic, critical).await;
    before.send("/effects", "t1", Some("policy-1"), "n").await;
    db.expire_keys().await;
    sweep(&db).await;
    assert_eq!(tombstones(&db).await, 1);
    let (after, _) = keyed_app_with(&db, RouteKind::Atomic, |layer| {
        layer.policy(Policy::for_risk(RiskClass::Critical).tombstones(None))
    })
    .await;
    let again = after.send("/effects", "t1", Some("policy-1"), "n").await;
    assert_eq!(again.status(), 201, "the route keeps no tombstones now");
    assert_eq!(db.effects().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_swept_again_replaces_the_stale_tombstone_of_its_earlier_use() {
    let db = test_db().await;
    let (app, _) = keyed_app_with(&db, RouteKind::Atomic, critical).await;
    app.send("/effects", "t1", Some("again-1"), "n").await;
    db.expire_keys().await;
    sweep(&db).await;
    end_windows(&db).await;
    // The window passed: the key runs as new, and its old tombstone is not swept yet.
    assert_eq!(
        app.send("/effects", "t1", Some("again-1"), "n")
            .await
            .status(),
        201
    );
    let completed = completed_at(&db).await;
    db.expire_keys().await;
    let swept = sweep(&db).await;
    assert_eq!(
        (swept.keys, swept.tombstones),
        (1, 0),
        "the new tombstone replaced the stale one, which is not swept"
    );
    assert_eq!(tombstones(&db).await, 1);
    let late = app.send("/effects", "t1", Some("again-1"), "n").await;
    assert_expired(late, &completed, "the second use's tombstone").await;
    assert_eq!(db.effects().await, 2);
}
