//! An unreachable store fails closed (503 + Retry-After); after it recovers, the retry
//! executes once. Routes configured to fail open keep serving.

use std::time::{Duration, Instant};

use idem_axum::{FailureMode, IdempotencyLayer, Policy, Protocol};
use idem_tests::{Faults, Proxy, TestApp, effects_router, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_and_the_retry_after_recovery_executes_once() {
    let db = test_db().await;
    let (proxy, pool) = Proxy::with_pool(&db).await;
    let layer = IdempotencyLayer::new(pool.clone())
        .protocol(Protocol::default().retry_after(Duration::from_secs(3)));
    let app = TestApp::spawn(effects_router(pool, layer, Default::default())).await;

    let warm = app.send("/effects", "t1", Some("before"), "n").await;
    assert_eq!(warm.status(), 201);

    proxy.cut();
    for key in ["down-1", "down-2"] {
        let started = Instant::now();
        let r = app.send("/effects", "t1", Some(key), "n").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no request hangs"
        );
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(problem_type(r).await, "urn:idem:problem:store-unavailable");
    }
    assert_eq!(
        db.effects().await,
        1,
        "nothing ran while the store was down"
    );

    proxy.restore();
    for key in ["down-1", "down-2"] {
        let r = app.send("/effects", "t1", Some(key), "n").await;
        assert_eq!(r.status(), 201);
        assert!(!replayed(&r), "the retry executes");
        let again = app.send("/effects", "t1", Some(key), "n").await;
        assert!(replayed(&again), "and only once");
    }
    assert_eq!(db.effects().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_route_keeps_serving_without_idempotency_while_the_store_is_down() {
    let db = test_db().await;
    let (proxy, pool) = Proxy::with_pool(&db).await;
    let closed = TestApp::spawn(effects_router(
        pool.clone(),
        IdempotencyLayer::new(pool.clone()),
        Default::default(),
    ))
    .await;
    let open = TestApp::spawn(effects_router(
        pool.clone(),
        IdempotencyLayer::new(pool).policy(Policy::default().failure(FailureMode::Open)),
        std::sync::Arc::new(Faults::default()),
    ))
    .await;
    proxy.cut();
    let r = closed.send("/echo", "t1", Some("e1"), "ping").await;
    assert_eq!(r.status(), 503);
    let r = open.send("/echo", "t1", Some("e1"), "ping").await;
    assert_eq!(r.status(), 200, "fail-open runs the handler");
    assert!(!replayed(&r));
    assert_eq!(r.bytes().await.expect("body"), "ping");
}
