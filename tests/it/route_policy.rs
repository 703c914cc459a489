//! A route's policy, declared with its layer: risk classes set whether a key is
//! required, how long keys are kept and whether the route fails open; the report-only
//! hash policy replays a changed request's stored answer instead of refusing it (the
//! transition to fingerprinting); fingerprint fields and replayed headers travel with
//! the policy.

use idem_axum::{IdempotencyLayer, Storage};
use idem_core::policy::{HashPolicy, Policy, RiskClass};
use idem_tests::{Proxy, TestApp, effects_app, effects_router, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_only_replays_the_stored_answer_to_a_changed_request_and_runs_nothing() {
    let db = test_db().await;
    // No replay cache: the second and third requests go to the store, whose claim finds
    // the mismatch; a fourth with a cache of its own answers from memory.
    let (app, _) = effects_app(&db, |l: IdempotencyLayer| {
        l.policy(Policy::default().hash(HashPolicy::ReportOnly))
            .storage(Storage::default().replay_cache(0))
    })
    .await;
    let first = app.send("/effects", "t1", Some("r1"), "a").await;
    assert_eq!(first.status(), 201);
    let first_body = first.text().await.expect("body");
    for _ in 0..2 {
        let changed = app.send("/effects", "t1", Some("r1"), "b").await;
        assert_eq!(changed.status(), 201);
        assert!(replayed(&changed), "the stored answer, marked replayed");
        assert_eq!(changed.text().await.expect("body"), first_body);
    }
    assert_eq!(db.effects().await, 1, "the changed request did not run");

    let (cached, _) = effects_app(&db, |l| {
        l.policy(Policy::default().hash(HashPolicy::ReportOnly))
    })
    .await;
    for _ in 0..2 {
        let changed = cached.send("/effects", "t1", Some("r1"), "c").await;
        assert_eq!(changed.status(), 201);
        assert_eq!(changed.text().await.expect("body"), first_body);
    }
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_route_still_refuses_the_changed_request() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.policy(Policy::for_risk(RiskClass::Critical))).await;
    let first = app.send("/effects", "t1", Some("s1"), "a").await;
    assert_eq!(first.status(), 201);
    let changed = app.send("/effects", "t1", Some("s1"), "b").await;
    assert_eq!(changed.status(), 422);
    assert_eq!(problem_type(changed).await, "urn:idem:problem:key-mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_route_requires_a_key_and_a_low_risk_one_runs_without() {
    let db = test_db().await;
    let (critical, _) = effects_app(&db, |l| l.policy(Policy::for_risk(RiskClass::Critical))).await;
    let refused = critical.send("/effects", "t1", None, "a").await;
    assert_eq!(refused.status(), 400);
    assert_eq!(problem_type(refused).await, "urn:idem:problem:key-missing");
    assert_eq!(db.effects().await, 0);

    let (low, _) = effects_app(&db, |l| l.policy(Policy::for_risk(RiskClass::Low))).await;
    for _ in 0..2 {
        let ran = low.send("/effects", "t1", None, "a").await;
        assert_eq!(ran.status(), 201);
        assert!(!replayed(&ran));
    }
    assert_eq!(db.effects().await, 2, "without a key each request runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_policy_fingerprints_only_its_fields_and_replays_its_headers() {
    let db = test_db().await;
    let policy = Policy::for_risk(RiskClass::Critical)
        .fingerprint_fields(["/amount"])
        .replay_header("x-not-replayed");
    let (app, _) = effects_app(&db, |l| {
        l.policy(policy).storage(Storage::default().replay_cache(0))
    })
    .await;
    let send = |body: &'static str| app.send("/effects", "t1", Some("f1"), body);

    let first = send(r#"{"amount":5,"sent_at":"10:00"}"#).await;
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["x-not-replayed"], "first-only");
    let first_body = first.text().await.expect("body");

    let restamped = send(r#"{"sent_at":"10:01","amount":5}"#).await;
    assert_eq!(restamped.status(), 201);
    assert!(
        replayed(&restamped),
        "a volatile field is not fingerprinted"
    );
    assert_eq!(
        restamped
            .headers()
            .get("x-not-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"first-only"[..]),
        "the policy's header is replayed"
    );
    assert_eq!(restamped.text().await.expect("body"), first_body);

    let changed = send(r#"{"amount":6,"sent_at":"10:02"}"#).await;
    assert_eq!(changed.status(), 422, "a fingerprinted field is");
    assert_eq!(problem_type(changed).await, "urn:idem:problem:key-mismatch");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_policy_sets_how_long_its_keys_are_kept() {
    let db = test_db().await;
    let (critical, _) = effects_app(&db, |l| l.policy(Policy::for_risk(RiskClass::Critical))).await;
    let (low, _) = effects_app(&db, |l| l.policy(Policy::for_risk(RiskClass::Low))).await;
    for (app, key) in [(&critical, "kept-critical"), (&low, "kept-low")] {
        let r = app.send("/effects", "t1", Some(key), "a").await;
        assert_eq!(r.status(), 201);
    }
    let kept: Vec<(String, f64)> = sqlx::query_as(
        "SELECT key, extract(epoch FROM retention)::float8 FROM idem.keys ORDER BY key",
    )
    .fetch_all(&db.pool)
    .await
    .expect("keys");
    assert_eq!(
        kept,
        [
            ("kept-critical".to_owned(), 7.0 * 24.0 * 3600.0),
            ("kept-low".to_owned(), 3600.0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_risk_route_fails_open_and_a_critical_one_closed_when_the_store_is_down() {
    let db = test_db().await;
    let (proxy, pool) = Proxy::with_pool(&db).await;
    let route = |class| {
        let layer = IdempotencyLayer::new(pool.clone()).policy(Policy::for_risk(class));
        TestApp::spawn(effects_router(pool.clone(), layer, Default::default()))
    };
    let (critical, low) = (
        route(RiskClass::Critical).await,
        route(RiskClass::Low).await,
    );
    proxy.cut();
    let refused = critical.send("/echo", "t1", Some("o1"), "ping").await;
    assert_eq!(refused.status(), 503, "fail closed");
    let served = low.send("/echo", "t1", Some("o1"), "ping").await;
    assert_eq!(served.status(), 200, "fail open runs the handler");
    assert_eq!(served.bytes().await.expect("body"), "ping");
}
