//! What every keyed route guarantees, whatever runs its handler: the same cases against
//! the atomic layer, the phased layer and the atomic layer that looks a key up first
//! (`keyed_routes::phased::` runs one kind). Executions are counted twice: the
//! handler's starts ([`Faults::runs`](idem_tests::Faults)) and the `effects` rows
//! that committed.

use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use idem_tests::{RouteKind, TestDb, keyed_app, problem_type, replayed, test_db};

/// Rows of tenant `tenant` in the `effects` table.
async fn effects_of(db: &TestDb, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&db.pool)
        .await
        .expect("count effects")
}

async fn a_retry_replays_the_first_answer_byte_for_byte(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app(&db, kind).await;

    let first = app.send("/effects", "t1", Some("replay-1"), "n").await;
    assert_eq!(first.status(), 201, "{kind:?}");
    assert!(
        !replayed(&first),
        "{kind:?}: the first answer is an execution"
    );
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.expect("body");

    for attempt in 1..=2 {
        let retry = app.send("/effects", "t1", Some("replay-1"), "n").await;
        assert_eq!(retry.status(), 201, "{kind:?}: retry {attempt}");
        assert!(
            replayed(&retry),
            "{kind:?}: retry {attempt} carries Idempotent-Replayed: true"
        );
        for name in ["content-type", "location", "etag"] {
            assert!(first_headers.get(name).is_some(), "{kind:?}: {name} sent");
            assert_eq!(
                retry.headers().get(name),
                first_headers.get(name),
                "{kind:?}: {name} replayed"
            );
        }
        let retry_body = retry.bytes().await.expect("body");
        assert_eq!(retry_body, first_body, "{kind:?}: the body, byte for byte");
    }
    assert_eq!(faults.runs.load(Ordering::SeqCst), 1, "{kind:?}: ran once");
    assert_eq!(
        db.effects().await,
        1,
        "{kind:?}: one row for three requests"
    );
}

async fn the_same_key_with_another_body_is_refused_and_runs_nothing(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app(&db, kind).await;
    let first = app.send("/effects", "t1", Some("mismatch-1"), "a").await;
    assert_eq!(first.status(), 201, "{kind:?}");

    for attempt in 1..=2 {
        let other = app.send("/effects", "t1", Some("mismatch-1"), "b").await;
        assert_eq!(other.status(), 422, "{kind:?}: attempt {attempt}");
        assert!(!replayed(&other), "{kind:?}: a refusal is not a replay");
        assert_eq!(
            problem_type(other).await,
            "urn:idem:problem:key-mismatch",
            "{kind:?}"
        );
    }
    assert_eq!(faults.runs.load(Ordering::SeqCst), 1, "{kind:?}: ran once");
    assert_eq!(db.effects().await, 1, "{kind:?}: only the first body's row");
    let note: String = sqlx::query_scalar("SELECT note FROM effects")
        .fetch_one(&db.pool)
        .await
        .expect("the row");
    assert_eq!(note, "a", "{kind:?}");
}

async fn concurrent_duplicates_run_once_and_all_get_the_same_answer(kind: RouteKind) {
    const DUPLICATES: usize = 8;
    let db = test_db_for(DUPLICATES).await;
    let (app, faults) = keyed_app(&db, kind).await;
    // The first holds its answer while the others arrive and wait for it.
    let requests =
        (0..DUPLICATES).map(|_| app.send("/effects?sleep_ms=500", "t1", Some("dup"), "n"));
    let mut executions = 0;
    let mut bodies = Vec::new();
    for response in join_all(requests).await {
        assert_eq!(response.status(), 201, "{kind:?}: executed or replayed");
        if !replayed(&response) {
            executions += 1;
        }
        bodies.push(response.bytes().await.expect("body"));
    }
    assert_eq!(executions, 1, "{kind:?}: one answer is the execution");
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "{kind:?}: every duplicate gets the executed answer"
    );
    assert_eq!(faults.runs.load(Ordering::SeqCst), 1, "{kind:?}: ran once");
    assert_eq!(db.effects().await, 1, "{kind:?}");
    assert_eq!(db.keys().await, 1, "{kind:?}");
}

/// A database whose pool leaves room for `requests` at once beside the layer's own.
async fn test_db_for(requests: usize) -> TestDb {
    idem_tests::test_db_with(u32::try_from(requests).expect("a few requests") + 4).await
}

async fn a_request_without_a_key_is_refused_and_runs_nothing(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app(&db, kind).await;
    let r = app.send("/effects", "t1", None, "n").await;
    assert_eq!(r.status(), 400, "{kind:?}");
    assert_eq!(
        problem_type(r).await,
        "urn:idem:problem:key-missing",
        "{kind:?}"
    );
    assert_eq!(faults.runs.load(Ordering::SeqCst), 0, "{kind:?}: never ran");
    assert_eq!(db.effects().await, 0, "{kind:?}");
    assert_eq!(db.keys().await, 0, "{kind:?}: nothing claimed");
}

async fn a_5xx_answer_is_not_stored_and_its_retry_runs_again(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app(&db, kind).await;
    faults.fail_next.store(1, Ordering::SeqCst);
    let failed = app.send("/effects", "t1", Some("5xx-1"), "n").await;
    assert_eq!(failed.status(), 503, "{kind:?}: the handler's own answer");
    assert!(!replayed(&failed), "{kind:?}");

    let retry = app.send("/effects", "t1", Some("5xx-1"), "n").await;
    assert_eq!(retry.status(), 201, "{kind:?}: the 503 was not replayed");
    assert!(!replayed(&retry), "{kind:?}: the retry ran");
    assert_eq!(faults.runs.load(Ordering::SeqCst), 2, "{kind:?}: ran again");
    let retry_body = retry.bytes().await.expect("body");
    // The atomic routes rolled the first run's row back; the phased route kept its
    // committed phase and the retry resumed after it: one row either way.
    assert_eq!(db.effects().await, 1, "{kind:?}: one row in the end");

    let again = app.send("/effects", "t1", Some("5xx-1"), "n").await;
    assert_eq!(again.status(), 201, "{kind:?}");
    assert!(
        replayed(&again),
        "{kind:?}: the retry's answer is the stored one"
    );
    assert_eq!(again.bytes().await.expect("body"), retry_body, "{kind:?}");
    assert_eq!(faults.runs.load(Ordering::SeqCst), 2, "{kind:?}");
}

async fn the_same_key_from_two_tenants_runs_twice_and_replays_each_its_own(kind: RouteKind) {
    let db = test_db().await;
    let (app, faults) = keyed_app(&db, kind).await;
    let mut bodies = Vec::new();
    for tenant in ["tenant-a", "tenant-b"] {
        let r = app.send("/effects", tenant, Some("shared"), "n").await;
        assert_eq!(r.status(), 201, "{kind:?}: {tenant}");
        assert!(!replayed(&r), "{kind:?}: {tenant}'s key is its own");
        bodies.push(r.bytes().await.expect("body"));
    }
    assert_ne!(bodies[0], bodies[1], "{kind:?}: two rows, two answers");
    for (tenant, body) in ["tenant-a", "tenant-b"].into_iter().zip(&bodies) {
        let retry = app.send("/effects", tenant, Some("shared"), "n").await;
        assert!(replayed(&retry), "{kind:?}: {tenant}");
        assert_eq!(
            &retry.bytes().await.expect("body"),
            body,
            "{kind:?}: {tenant} gets its own answer"
        );
        assert_eq!(effects_of(&db, tenant).await, 1, "{kind:?}: {tenant}");
    }
    assert_eq!(faults.runs.load(Ordering::SeqCst), 2, "{kind:?}");
    assert_eq!(db.keys().await, 2, "{kind:?}");
}

idem_tests::keyed_route_cases! {
    kinds: [atomic => Atomic, phased => Phased, lookup_first => LookupFirst],
    cases: [
        a_retry_replays_the_first_answer_byte_for_byte,
        the_same_key_with_another_body_is_refused_and_runs_nothing,
        concurrent_duplicates_run_once_and_all_get_the_same_answer,
        a_request_without_a_key_is_refused_and_runs_nothing,
        a_5xx_answer_is_not_stored_and_its_retry_runs_again,
        the_same_key_from_two_tenants_runs_twice_and_replays_each_its_own,
    ]
}
