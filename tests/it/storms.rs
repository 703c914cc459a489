//! A storm of duplicates of one slow request holds one pooled connection: it executes
//! once, every duplicate replays it (or is told to retry), and other keys keep being
//! served while it lasts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use idem_axum::{IdempotencyLayer, Timeouts};
use idem_tests::{Faults, TestApp, effects_router, problem_type, replayed, test_db_with};

/// Duplicates sent at once.
const STORM: usize = 300;
/// Connections of the layer's pool.
const POOL: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_duplicates_executes_once_and_leaves_the_pool_to_other_keys() {
    // The test's own checks use the harness's pool; the layer has a pool of its own.
    let db = test_db_with(2).await;
    let pool = db.pool(POOL).await;
    // A store that hands out no connection within the store timeout counts as unreachable
    // (503). It is shorter than the handler, so duplicates queueing for connections
    // behind the slow request would show as 5xx; the storm must never cause that.
    let layer = IdempotencyLayer::new(pool.clone())
        .timeouts(Timeouts::default().store(Duration::from_millis(800)));
    let app = TestApp::spawn(effects_router(pool, layer, Arc::new(Faults::default()))).await;
    // The client opens a connection for every request in flight (it has no cap per
    // host), so the whole storm is in flight at once; all of them stay pooled.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(STORM + 8)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    let storm = tokio::spawn({
        let requests: Vec<_> = (0..STORM)
            .map(|_| {
                client
                    .post(app.url("/effects?sleep_ms=1000"))
                    .header("x-tenant-id", "t1")
                    .header("content-type", "application/json")
                    .header("idempotency-key", "storm")
                    .body("storm")
                    .send()
            })
            .collect();
        join_all(requests)
    });

    // The storm has begun once its executing request sleeps inside its transaction.
    let began = tokio::time::timeout(Duration::from_secs(20), async {
        while db.transactions_left_open().await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(began.is_ok(), "the storm's request reached its handler");
    let other = app.send("/effects", "t1", Some("other"), "other").await;
    let storm_still_running = !storm.is_finished();
    assert_eq!(
        other.status(),
        201,
        "another key is served during the storm"
    );
    assert!(!replayed(&other), "and executes");
    assert!(
        storm_still_running,
        "the other key was answered while the storm was still running"
    );

    let mut executed = 0;
    let mut replays = 0;
    let mut in_flight = 0;
    let mut bodies = Vec::new();
    for response in storm.await.expect("storm task") {
        let response = response.expect("response");
        let status = response.status().as_u16();
        match status {
            201 => {
                if replayed(&response) {
                    replays += 1;
                } else {
                    executed += 1;
                }
                bodies.push(response.bytes().await.expect("body"));
            }
            409 => {
                assert_eq!(problem_type(response).await, "urn:idem:problem:in-flight");
                in_flight += 1;
            }
            _ => panic!("a replay of the 201 or 409 in-flight, got {status}"),
        }
    }
    assert_eq!(executed, 1, "exactly one answer is the execution");
    assert_eq!(executed + replays + in_flight, STORM);
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every replay is the executed response"
    );
    assert_eq!(db.effects().await, 2, "the storm once, the other key once");
    assert_eq!(db.keys().await, 2);
}
