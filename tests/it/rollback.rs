//! A response that is not final, a failed or panicking handler, or a held transaction
//! leaves no trace: nothing stored, the handler's writes rolled back, and a retry runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_tests::{effects_app, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_response_stores_nothing_rolls_back_and_the_retry_executes() {
    let db = test_db().await;
    let (app, faults) = effects_app(&db, |l| l).await;
    faults.fail_next.store(1, Ordering::SeqCst);
    let failed = app.send("/effects", "t1", Some("f1"), "n").await;
    assert_eq!(
        failed.status(),
        503,
        "the handler's own answer passes through"
    );
    assert!(!replayed(&failed));
    assert_eq!(db.effects().await, 0, "its writes were rolled back");
    assert_eq!(db.keys().await, 0, "nothing was stored");

    let retry = app.send("/effects", "t1", Some("f1"), "n").await;
    assert_eq!(retry.status(), 201);
    assert!(!replayed(&retry), "the retry executed");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_that_ask_for_a_retry_are_not_final() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    for status in [408, 409, 425, 429, 500] {
        let path = format!("/effects?status={status}");
        let r = app
            .send(&path, "t1", Some(&format!("s{status}")), "n")
            .await;
        assert_eq!(r.status().as_u16(), status);
    }
    assert_eq!(db.effects().await, 0);
    assert_eq!(db.keys().await, 0);
    let r = app
        .send("/effects?status=404", "t1", Some("s404"), "n")
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        db.effects().await,
        1,
        "a 404 is final: committed and stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_rolls_back_and_returns_its_connection_to_the_pool() {
    // A pool of two: a leaked connection would starve the requests that follow.
    let db = idem_tests::pg::test_db_with(2).await;
    let (app, faults) = effects_app(&db, |l| l).await;
    faults.panic_next.store(5, Ordering::SeqCst);
    for _ in 0..5 {
        let r = app.send("/effects", "t1", Some("p1"), "n").await;
        assert_eq!(r.status(), 500, "the request does not hang");
        assert_eq!(problem_type(r).await, "urn:idem:problem:handler-panicked");
    }
    let panic_route = app.send("/panic", "t1", Some("p2"), "n").await;
    assert_eq!(panic_route.status(), 500);
    assert_eq!(
        db.effects().await,
        0,
        "the panicking handlers' writes were rolled back"
    );
    assert_eq!(db.keys().await, 0);

    let retry = app.send("/effects", "t1", Some("p1"), "n").await;
    assert_eq!(retry.status(), 201, "the pool still serves requests");
    assert!(!replayed(&retry));
    assert_eq!(db.effects().await, 1);
    // Connections return to the pool asynchronously; give them a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while db.pool.num_idle() as u32 != db.pool.size() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        db.pool.size(),
        db.pool.num_idle() as u32,
        "every connection is back"
    );
    assert_eq!(db.transactions_left_open().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tx_kept_beyond_the_handler_commits_nothing() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let r = app.send("/hold", "t1", Some("h1"), "n").await;
    assert_eq!(r.status(), 500, "never 2xx without a commit");
    assert_eq!(problem_type(r).await, "urn:idem:problem:transaction-held");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(db.effects().await, 0);
    assert_eq!(db.keys().await, 0);
    assert_eq!(db.transactions_left_open().await, 0);
}
