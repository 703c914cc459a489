//! Concurrent duplicates execute once; the others replay or are told to retry.

use std::time::Duration;

use futures_util::future::join_all;
use idem_axum::Timeouts;
use idem_tests::{effects_app, problem_type, replayed, test_db_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_with_one_key_execute_once() {
    let db = test_db_with(20).await;
    let (app, _) = effects_app(&db, |l| {
        l.timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(20)))
    })
    .await;
    let requests = (0..64).map(|_| app.send("/effects?sleep_ms=200", "t1", Some("storm"), "storm"));
    let responses = join_all(requests).await;
    let mut executed = 0;
    let mut bodies = Vec::new();
    for r in responses {
        let status = r.status().as_u16();
        assert!(status == 201 || status == 409, "no 5xx, got {status}");
        if status == 201 {
            if !replayed(&r) {
                executed += 1;
            }
            bodies.push(r.bytes().await.expect("body"));
        }
    }
    assert_eq!(executed, 1, "exactly one response is an execution");
    assert!(!bodies.is_empty());
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every 201 is the same response"
    );
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_keys_with_three_concurrent_duplicates_execute_a_hundred_times() {
    let db = test_db_with(20).await;
    let (app, _) = effects_app(&db, |l| {
        l.timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(20)))
    })
    .await;
    let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
    let requests = keys
        .iter()
        .flat_map(|k| std::iter::repeat_n(k, 3))
        .map(|k| app.send("/effects", "t1", Some(k), k));
    let responses = join_all(requests).await;
    let mut executions = 0;
    for r in responses {
        let status = r.status().as_u16();
        assert!(status == 201 || status == 409, "no 5xx, got {status}");
        if status == 201 && !replayed(&r) {
            executions += 1;
        }
    }
    assert_eq!(executions, 100);
    assert_eq!(db.effects().await, 100);
    assert_eq!(db.keys().await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_of_a_running_request_gets_409_with_retry_after_when_it_may_not_wait() {
    let db = test_db_with(5).await;
    let (app, _) = effects_app(&db, |l| {
        l.timeouts(Timeouts::default().in_flight_wait(Duration::ZERO))
    })
    .await;
    let first = tokio::spawn(
        app.post("/effects?sleep_ms=1500", "t1", Some("busy"), "x")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = app
        .send("/effects?sleep_ms=1500", "t1", Some("busy"), "x")
        .await;
    assert_eq!(second.status(), 409);
    let retry_after: u64 = second
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    assert_eq!(problem_type(second).await, "urn:idem:problem:in-flight");

    let first = first.await.expect("join").expect("first");
    assert_eq!(first.status(), 201);
    let third = app
        .send("/effects?sleep_ms=1500", "t1", Some("busy"), "x")
        .await;
    assert_eq!(third.status(), 201);
    assert!(replayed(&third));
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_of_a_running_request_waits_and_replays_its_response() {
    let db = test_db_with(5).await;
    let (app, _) = effects_app(&db, |l| {
        l.timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(10)))
    })
    .await;
    let first = tokio::spawn(
        app.post("/effects?sleep_ms=1000", "t1", Some("wait"), "x")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = app
        .send("/effects?sleep_ms=1000", "t1", Some("wait"), "x")
        .await;
    let first = first.await.expect("join").expect("first");
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    assert_eq!(second.status(), 201);
    assert!(
        replayed(&second),
        "the waiting duplicate replays the first response"
    );
    let (a, b) = (
        first.bytes().await.expect("a"),
        second.bytes().await.expect("b"),
    );
    assert_eq!(a, b);
    assert_eq!(db.effects().await, 1);
}
