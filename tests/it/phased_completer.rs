//! The completer: a phased key whose lease passed with no retry coming (the client
//! gave up after an interruption, or the owner hangs) is finished in the library,
//! resumed after its last committed phase, and its answer stored for later retries.

use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_axum::{BodySealing, Completer, Limits, Protection};
use idem_tests::phased::{notes, order_request, setup, setup_with};
use idem_tests::{TestDb, problem_type, replayed, test_db};
use tokio_util::sync::CancellationToken;

/// Waits (at most 20 s) until the key has a stored answer; its status.
async fn finished(db: &TestDb, key: &str) -> Option<i16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status: Option<i16> = sqlx::query_scalar(
            "SELECT response_status FROM idem.keys WHERE key = $1 AND completed_at IS NOT NULL",
        )
        .bind(key)
        .fetch_optional(&db.pool)
        .await
        .expect("key row");
        if status.is_some() || tokio::time::Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_key_nobody_retries_is_finished_by_the_completer() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    s.faults.interrupt.store(1, Ordering::SeqCst);
    let interrupted = order_request(&s.app, "c1", "?note=kept").await;
    assert_eq!(interrupted.status(), 503);
    assert_eq!(
        notes(&db, "charge").await,
        0,
        "stopped after the first phase"
    );

    let shutdown = CancellationToken::new();
    let completer = Completer::new(db.pool.clone(), s.routes.clone())
        .interval(Duration::from_millis(200))
        .after(Duration::ZERO);
    let running = tokio::spawn(completer.run(shutdown.clone()));
    assert_eq!(
        finished(&db, "c1").await,
        Some(201),
        "the completer finished it"
    );
    shutdown.cancel();
    running.await.expect("the completer stops");

    for note in ["first", "charge", "second", "provider:charge"] {
        assert_eq!(notes(&db, note).await, 1, "{note}");
    }
    let retry = order_request(&s.app, "c1", "?note=kept").await;
    assert_eq!(retry.status(), 201);
    assert!(
        replayed(&retry),
        "the client's late retry gets the stored answer"
    );
    let body: serde_json::Value = retry.json().await.expect("body");
    assert_eq!(
        body["note"], "kept",
        "the completer ran the request with its query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_owner_s_key_is_taken_over_by_the_completer_and_the_owner_commits_nothing() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(1), Duration::from_millis(200)).await;
    s.faults.pauses.lock().expect("pauses").push_back(4000);
    let hung = tokio::spawn({
        let app_url = s.app.url("/orders");
        let client = s.app.client.clone();
        async move {
            client
                .post(app_url)
                .header("x-tenant-id", "t1")
                .header("idempotency-key", "c2")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("the hung request answers in the end")
        }
    });
    let completer = Completer::new(db.pool.clone(), s.routes.clone()).after(Duration::ZERO);
    // Before the lease passed: nothing to do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(completer.complete_once().await.expect("round"), 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(completer.complete_once().await.expect("round"), 1);
    assert_eq!(finished(&db, "c2").await, Some(201));

    let hung = hung.await.expect("hung request");
    assert_eq!(hung.status(), 409);
    assert_eq!(problem_type(hung).await, "urn:idem:problem:lease-lost");
    for note in ["first", "charge", "second", "provider:charge"] {
        assert_eq!(notes(&db, note).await, 1, "{note}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_that_had_too_many_owners_is_left_for_an_operator() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    // Interrupted once, then twice more by retries that ended unfinished: three owners.
    s.faults.interrupt.store(1, Ordering::SeqCst);
    assert_eq!(order_request(&s.app, "c3", "").await.status(), 503);
    sqlx::query("UPDATE idem.keys SET owners = 3, locked_until = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .expect("age the lease");
    let completer = Completer::new(db.pool.clone(), s.routes.clone()).after(Duration::ZERO);
    assert_eq!(
        completer
            .clone()
            .max_owners(3)
            .complete_once()
            .await
            .expect("round"),
        0,
        "three owners already"
    );
    assert_eq!(
        completer
            .max_owners(4)
            .complete_once()
            .await
            .expect("round"),
        1
    );
    assert_eq!(finished(&db, "c3").await, Some(201));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_sealed_bodies_the_kept_request_is_sealed_and_the_completer_opens_it() {
    let db = test_db().await;
    let sealing = BodySealing::new("k1", &[5; 32]).expect("sealing");
    let s = setup_with(&db, |layer| {
        layer
            .protection(Protection::default().bodies(sealing))
            .phased(Duration::from_secs(10))
    })
    .await;
    s.faults.interrupt.store(1, Ordering::SeqCst);
    let secret = r#"{"card":"4242424242424242"}"#;
    let interrupted = s
        .app
        .send("/orders?note=sealed", "t1", Some("c4"), secret)
        .await;
    assert_eq!(interrupted.status(), 503);
    let kept: Vec<u8> = sqlx::query_scalar("SELECT request_body FROM idem.keys WHERE key = 'c4'")
        .fetch_one(&db.pool)
        .await
        .expect("kept body");
    assert!(kept.starts_with(b"idem-aead1:k1:"), "sealed");
    assert!(
        !kept.windows(4).any(|w| w == b"4242"),
        "no card number in the row"
    );

    let completer = Completer::new(db.pool.clone(), s.routes.clone()).after(Duration::ZERO);
    assert_eq!(completer.complete_once().await.expect("round"), 1);
    assert_eq!(finished(&db, "c4").await, Some(201));
    let retry = s
        .app
        .send("/orders?note=sealed", "t1", Some("c4"), secret)
        .await;
    assert!(replayed(&retry), "the completer's run matched the request");
    let body: serde_json::Value = retry.json().await.expect("body");
    assert_eq!(body["note"], "sealed");
    assert_eq!(
        body["body_len"],
        secret.len(),
        "the handler got the opened body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_completer_finishes_a_sealed_kept_body_as_long_as_the_request_limit() {
    let db = test_db().await;
    let sealing = BodySealing::new("k1", &[5; 32]).expect("sealing");
    // Sealed, a body of exactly `max_request_body` bytes is longer than the limit.
    let s = setup_with(&db, |layer| {
        layer
            .limits(Limits::default().request_body(64))
            .protection(Protection::default().bodies(sealing))
            .phased(Duration::from_secs(10))
    })
    .await;
    s.faults.interrupt.store(1, Ordering::SeqCst);
    let body = format!("{{\"card\":\"{}\"}}", "4".repeat(64 - 11));
    assert_eq!(body.len(), 64);
    let interrupted = s.app.send("/orders", "t1", Some("c5"), &body).await;
    assert_eq!(interrupted.status(), 503);

    let completer = Completer::new(db.pool.clone(), s.routes.clone()).after(Duration::ZERO);
    assert_eq!(completer.complete_once().await.expect("round"), 1);
    assert_eq!(
        finished(&db, "c5").await,
        Some(201),
        "finished, not refused 413"
    );
    let retry = s.app.send("/orders", "t1", Some("c5"), &body).await;
    assert!(replayed(&retry));
    let answer: serde_json::Value = retry.json().await.expect("body");
    assert_eq!(answer["body_len"], 64, "the handler got the opened body");
}
