//! Observe mode (passive key logging): every request runs as if the layer claimed
//! nothing, the keys are recorded with their first fingerprint, and nothing is stored
//! that could ever be replayed.

use idem_axum::Policy;
use idem_core::policy::KeyMode;
use idem_tests::{effects_app, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_runs_and_nothing_is_replayed_or_refused() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.policy(Policy::default().keys(KeyMode::Observe))).await;
    let sends = [
        (Some("o1"), "a"),
        (Some("o1"), "a"),
        (Some("o1"), "b"),
        (None, "a"),
        (Some(""), "a"),
    ];
    for (key, body) in sends {
        let response = app.send("/effects", "t1", key, body).await;
        assert_eq!(response.status(), 201, "{key:?} {body}");
        assert!(!replayed(&response), "{key:?} {body}: not a replay");
    }
    assert_eq!(db.effects().await, 5, "every request ran");
    assert_eq!(
        db.keys().await,
        0,
        "no key claimed, nothing stored to replay"
    );
    let seen: Vec<(String, i32)> =
        sqlx::query_as("SELECT key, seen FROM idem.observed_keys ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .expect("observations");
    assert_eq!(
        seen,
        [("o1".to_owned(), 3)],
        "the key and how often it came"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_both_run() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.policy(Policy::default().keys(KeyMode::Observe))).await;
    let slow = || app.send("/effects?sleep_ms=400", "t1", Some("c1"), "a");
    let (a, b) = tokio::join!(slow(), slow());
    assert_eq!(a.status(), 201);
    assert_eq!(b.status(), 201);
    assert_eq!(db.effects().await, 2, "no waiting, no 409: both ran");
}
