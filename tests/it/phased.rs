//! Phased routes: the key row commits before the work, each phase commits with the
//! key's journal, a retry after the lease resumes after the last committed phase, a
//! stale owner commits nothing (fencing), and a permanent failure is compensated once.
//! The route and its provider are `idem_tests::phased`'s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use idem_axum::{Limits, Policy, Protection, Storage, TenantSource, Timeouts};
use idem_tests::phased::{notes, order_request, setup, setup_with};
use idem_tests::{problem_type, replayed, test_db};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_phase_runs_once_and_a_retry_replays_the_final_answer() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    let first = order_request(&s.app, "o1", "").await;
    assert_eq!(first.status(), 201);
    let body = first.text().await.expect("body");
    let again = order_request(&s.app, "o1", "").await;
    assert!(replayed(&again));
    assert_eq!(again.text().await.expect("body"), body);
    for note in ["first", "charge", "second", "provider:charge"] {
        assert_eq!(notes(&db, note).await, 1, "{note}");
    }
    let (point, owners, journal): (Option<String>, Option<i32>, Value) =
        sqlx::query_as("SELECT recovery_point, owners, phases FROM idem.keys WHERE key = 'o1'")
            .fetch_one(&db.pool)
            .await
            .expect("key row");
    assert_eq!((point.as_deref(), owners), (Some("second"), Some(1)));
    assert_eq!(
        journal.as_object().map(|o| o.len()),
        Some(3),
        "first, charge and second are in the journal: {journal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_an_interruption_resumes_after_the_last_committed_phase() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    s.faults.interrupt.store(1, Ordering::SeqCst);
    let interrupted = order_request(&s.app, "o2", "").await;
    assert_eq!(interrupted.status(), 503);
    assert_eq!(
        problem_type(interrupted).await,
        "urn:idem:problem:phase-interrupted"
    );
    assert_eq!(notes(&db, "first").await, 1, "the first phase committed");

    // The lease was released with the 503: the retry takes over at once.
    let resumed = order_request(&s.app, "o2", "").await;
    assert_eq!(resumed.status(), 201);
    assert!(!replayed(&resumed));
    let body: Value = resumed.json().await.expect("body");
    let first_id: i64 = sqlx::query_scalar("SELECT id FROM effects WHERE note = 'first'")
        .fetch_one(&db.pool)
        .await
        .expect("first row");
    assert_eq!(
        body["first"], first_id,
        "the first phase's output, from the journal"
    );
    for note in ["first", "charge", "second", "provider:charge"] {
        assert_eq!(notes(&db, note).await, 1, "{note}");
    }
    let owners: i32 = sqlx::query_scalar("SELECT owners FROM idem.keys WHERE key = 'o2'")
        .fetch_one(&db.pool)
        .await
        .expect("owners");
    assert_eq!(owners, 2, "the retry owns the key as its second owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_owner_whose_lease_passed_commits_nothing_after_a_take_over() {
    let db = test_db().await;
    // A one-second lease. The first owner pauses three seconds after its first phase;
    // the retry takes the key over at 1.5 s and pauses as long, so it is still in
    // progress (its own lease passed, nobody took it) when the stale owner wakes.
    let s = setup(&db, Duration::from_secs(1), Duration::from_millis(200)).await;
    s.faults.pauses.lock().expect("pauses").extend([3000, 3000]);
    let stale = order_request(&s.app, "o3", "");
    let take_over = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        order_request(&s.app, "o3", "").await
    };
    let (stale, took_over) = tokio::join!(stale, take_over);
    assert_eq!(took_over.status(), 201, "the retry took the key over");
    assert_eq!(stale.status(), 409);
    assert_eq!(problem_type(stale).await, "urn:idem:problem:lease-lost");
    for note in ["first", "charge", "second", "provider:charge"] {
        assert_eq!(notes(&db, note).await, 1, "{note}");
    }
    let replay = order_request(&s.app, "o3", "").await;
    assert!(replayed(&replay));
    assert_eq!(replay.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_during_a_live_lease_waits_and_replays() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(10)).await;
    s.faults.pauses.lock().expect("pauses").push_back(1000);
    let first = order_request(&s.app, "o4", "");
    let duplicate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        order_request(&s.app, "o4", "").await
    };
    let (first, duplicate) = tokio::join!(first, duplicate);
    assert_eq!(first.status(), 201);
    assert!(replayed(&duplicate), "the duplicate waited for the owner");
    assert_eq!(
        first.text().await.expect("body"),
        duplicate.text().await.expect("body")
    );
    assert_eq!(notes(&db, "provider:charge").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_failure_after_the_charge_is_refunded_once_and_the_answer_replays() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    let failed = order_request(&s.app, "o5", "?fail_after_charge=true").await;
    assert_eq!(failed.status(), 402);
    let body: Value = failed.json().await.expect("body");
    assert_eq!(body["reason"], "the order cannot be fulfilled");
    assert!(
        body["refunded"]
            .as_str()
            .is_some_and(|r| r.starts_with("refund-"))
    );
    for _ in 0..2 {
        let again = order_request(&s.app, "o5", "?fail_after_charge=true").await;
        assert_eq!(again.status(), 402);
        assert!(replayed(&again));
    }
    assert_eq!(notes(&db, "provider:charge").await, 1);
    assert_eq!(notes(&db, "provider:refund").await, 1, "refunded once");
    assert_eq!(notes(&db, "refund").await, 1);
    assert_eq!(
        notes(&db, "second").await,
        0,
        "the failed phase wrote nothing"
    );
    let journal: Value = sqlx::query_scalar("SELECT phases FROM idem.keys WHERE key = 'o5'")
        .fetch_one(&db.pool)
        .await
        .expect("journal");
    assert_eq!(journal["second"]["failed"], "the order cannot be fulfilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_request_with_a_phased_key_is_a_mismatch() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    assert_eq!(order_request(&s.app, "o6", "").await.status(), 201);
    let changed = order_request(&s.app, "o6", "?fail_after_charge=true").await;
    assert_eq!(changed.status(), 422);
    assert_eq!(problem_type(changed).await, "urn:idem:problem:key-mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_during_a_live_lease_past_the_wait_gets_409_in_flight() {
    let db = test_db().await;
    let s = setup(&db, Duration::from_secs(10), Duration::from_millis(200)).await;
    s.faults.pauses.lock().expect("pauses").push_back(1500);
    let first = order_request(&s.app, "o7", "");
    let duplicate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        order_request(&s.app, "o7", "").await
    };
    let (first, duplicate) = tokio::join!(first, duplicate);
    assert_eq!(first.status(), 201);
    assert_eq!(duplicate.status(), 409);
    assert!(duplicate.headers().contains_key("retry-after"));
    assert_eq!(problem_type(duplicate).await, "urn:idem:problem:in-flight");
    assert_eq!(notes(&db, "provider:charge").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phased_claims_are_held_to_the_key_quota_and_the_new_key_rate() {
    let db = test_db().await;
    let quota = setup_with(&db, |layer| {
        layer
            .limits(Limits::default().key_quota(2))
            .phased(Duration::from_secs(10))
    })
    .await;
    for key in ["q1", "q2"] {
        assert_eq!(order_request(&quota.app, key, "").await.status(), 201);
    }
    let refused = order_request(&quota.app, "q3", "").await;
    assert_eq!(refused.status(), 507);
    assert_eq!(problem_type(refused).await, "urn:idem:problem:key-quota");
    let q3: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.keys WHERE key = 'q3'")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(q3, 0, "the refused claim was undone");
    assert_eq!(notes(&db, "first").await, 2, "nothing ran for it");
    assert!(
        replayed(&order_request(&quota.app, "q1", "").await),
        "replays are not limited"
    );

    let rate = setup_with(&db, |layer| {
        layer
            .limits(Limits::default().new_key_rate(1, 1))
            .phased(Duration::from_secs(10))
    })
    .await;
    assert_eq!(order_request(&rate.app, "r1", "").await.status(), 201);
    let limited = order_request(&rate.app, "r2", "").await;
    assert_eq!(limited.status(), 429);
    assert_eq!(problem_type(limited).await, "urn:idem:problem:new-key-rate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_owner_never_commits_into_the_keys_next_generation() {
    let db = test_db().await;
    // The first owner pauses after its first phase; its lease (1 s) passes, the key's
    // row is deleted (an operator's eviction, the sweeper) and a new request claims the
    // key afresh and pauses too. The stale owner must not find its token on the new
    // row, whose phases and answer are the new request's.
    let s = setup(&db, Duration::from_secs(1), Duration::from_millis(200)).await;
    s.faults.pauses.lock().expect("pauses").extend([2500, 3000]);
    let stale = order_request(&s.app, "g1", "");
    let next_generation = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let evicted = sqlx::query("DELETE FROM idem.keys WHERE key = 'g1'")
            .execute(&db.pool)
            .await
            .expect("evict");
        assert_eq!(evicted.rows_affected(), 1);
        order_request(&s.app, "g1", "").await
    };
    let (stale, next) = tokio::join!(stale, next_generation);
    assert_eq!(
        stale.status(),
        409,
        "the stale owner committed nothing more"
    );
    assert_eq!(problem_type(stale).await, "urn:idem:problem:lease-lost");
    assert_eq!(next.status(), 201, "the new generation finished on its own");
    assert_eq!(
        notes(&db, "first").await,
        2,
        "each generation's first phase"
    );
    assert_eq!(notes(&db, "second").await, 1, "only the new generation's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phase_already_in_the_journal_commits_nothing_again() {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use idem_axum::{IdempotencyLayer, PhaseError, Phases};

    /// Runs the phase `once` twice at the same time; each run writes a row.
    async fn twice(phases: Phases) -> Result<(StatusCode, String), PhaseError> {
        let run = async |tx: &mut sqlx::PgConnection| {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO effects (tenant_id, note) VALUES ('t1', 'once') RETURNING id",
            )
            .fetch_one(&mut *tx)
            .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(id)
        };
        let (a, b): (Result<i64, _>, Result<i64, _>) =
            tokio::join!(phases.atomic("once", run), phases.atomic("once", run));
        Ok((StatusCode::CREATED, format!("{} {}", a?, b?)))
    }

    let db = test_db().await;
    let layer = IdempotencyLayer::new(db.pool.clone())
        .tenant(TenantSource::single())
        .phased(Duration::from_secs(30));
    let app =
        idem_tests::TestApp::spawn(Router::new().route("/twice", post(twice).route_layer(layer)))
            .await;
    let r = app
        .client
        .post(app.url("/twice"))
        .header("idempotency-key", "j1")
        .send()
        .await
        .expect("POST /twice");
    assert_eq!(r.status(), 201);
    let ids = r.text().await.expect("body");
    let (a, b) = ids.split_once(' ').expect("two outputs");
    assert_eq!(a, b, "both calls answer the output that committed");
    assert_eq!(
        notes(&db, "once").await,
        1,
        "the phase's writes committed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phased_request_answered_not_processed_never_runs_later() {
    use idem_axum::Completer;

    let db = test_db().await;
    let s = setup_with(&db, |l| {
        l.timeouts(Timeouts::default().store(Duration::from_millis(300)))
            .phased(Duration::from_millis(500))
    })
    .await;
    // Another transaction holds a lock that makes the claim's INSERT wait, past
    // the store timeout: the client is told its request was not processed.
    let mut locker = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE idem.keys IN SHARE MODE")
        .execute(&mut *locker)
        .await
        .expect("lock");
    let refused = order_request(&s.app, "late-1", "").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        problem_type(refused).await,
        "urn:idem:problem:store-unavailable"
    );
    // The claim's INSERT goes on now, and the lease it would have had passes.
    locker.commit().await.expect("unlock");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let completer = Completer::new(db.pool.clone(), s.routes.clone()).after(Duration::ZERO);
    let resumed = completer.complete_once().await.expect("completer round");
    assert_eq!(resumed, 0, "no claim was left to resume");
    assert_eq!(notes(&db, "first").await, 0, "the request never ran");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.keys WHERE key = 'late-1'")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(kept, 0, "nothing of the claim committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_phased_key_keeps_no_request_and_seals_its_journal_with_sealed_bodies() {
    let db = test_db().await;
    let plain = setup(&db, Duration::from_secs(10), Duration::from_secs(5)).await;
    let sealing = idem_axum::BodySealing::new("k1", &[5; 32]).expect("sealing");
    let sealed = setup_with(&db, |l| {
        l.protection(Protection::default().bodies(sealing))
            .phased(Duration::from_secs(10))
    })
    .await;
    for (s, key) in [(&plain, "kept-plain"), (&sealed, "kept-sealed")] {
        let r = s
            .app
            .send("/orders?note=secret", "t1", Some(key), r#"{"card":"4242"}"#)
            .await;
        assert_eq!(r.status(), 201);
    }
    let rows: Vec<(String, bool, Value)> = sqlx::query_as(
        "SELECT key, request_body IS NULL AND request_query IS NULL \
           AND request_content_type IS NULL AND binding IS NULL, phases \
         FROM idem.keys WHERE key LIKE 'kept-%' ORDER BY key",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 2);
    for (key, cleared, _) in &rows {
        assert!(cleared, "{key}: a finished key keeps no request");
    }
    let (plain_journal, sealed_journal) = (&rows[0].2, &rows[1].2);
    assert!(plain_journal.get("charge").is_some(), "{plain_journal}");
    let text = sealed_journal.to_string();
    assert!(
        sealed_journal["sealed"].is_string() && !text.contains("charge"),
        "the journal of a layer that seals bodies is sealed: {text}"
    );
    let replay = sealed
        .app
        .send(
            "/orders?note=secret",
            "t1",
            Some("kept-sealed"),
            r#"{"card":"4242"}"#,
        )
        .await;
    assert!(replayed(&replay));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_phased_key_is_kept_in_memory_by_its_rows_retention() {
    let db = test_db().await;
    // A process whose keys are kept one second claims the key, and is interrupted.
    let short = setup_with(&db, |l| {
        l.policy(Policy::default().retention(Duration::from_secs(1)))
            .phased(Duration::from_millis(200))
    })
    .await;
    short.faults.interrupt.store(1, Ordering::SeqCst);
    assert_eq!(order_request(&short.app, "r1", "").await.status(), 503);
    // A process that keeps its keys a day, and replays in memory, finishes it.
    let long = setup_with(&db, |l| {
        l.storage(Storage::default().replay_cache(1 << 20))
            .phased(Duration::from_millis(200))
    })
    .await;
    let finished = order_request(&long.app, "r1", "").await;
    assert_eq!(finished.status(), 201);
    assert!(!replayed(&finished), "resumed, not replayed");
    let replay = order_request(&long.app, "r1", "").await;
    assert!(replayed(&replay), "kept in memory");
    // Past the row's retention the key is gone: another request with it runs as new,
    // where a memory keeping it a day would refuse it as a mismatch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reused = order_request(&long.app, "r1", "?note=other").await;
    assert_eq!(reused.status(), 201, "the key expired with its row");
    assert!(!replayed(&reused));
}
