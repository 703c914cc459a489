//! Losing the Postgres server mid-traffic, killed or frozen: requests fail closed with
//! 503 and Retry-After, none hangs past its bound, and after recovery every key ends
//! with exactly one execution.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idem_axum::{IdempotencyLayer, Protocol, Timeouts};
use idem_tests::pg::{postgres_image, prepare};
use idem_tests::{TestApp, effects_router, replayed};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::core::IntoContainerPort;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

struct Outcome {
    key: String,
    status: u16,
    retry_after: bool,
    started: Instant,
    elapsed: Duration,
}

/// A Postgres container of the test's own, on a fixed host port (so it can be killed
/// and restarted), with a pool on it that waits at most `acquire_timeout` for a
/// connection.
async fn own_postgres(acquire_timeout: Duration) -> (ContainerAsync<Postgres>, PgPool) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let container = postgres_image()
        .with_mapped_port(port, 5432.tcp())
        .start()
        .await
        .expect("start Postgres");
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres")
        .password("postgres")
        .database("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .expect("pool");
    prepare(&pool, false).await;
    (container, pool)
}

/// Four clients posting fresh keys until `running` turns false.
fn traffic(
    app: &Arc<TestApp>,
    running: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..4)
        .map(|w| {
            let app = app.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while running.load(Ordering::SeqCst) {
                    let key = format!("w{w}-{i}");
                    let started = Instant::now();
                    let response = app.post("/effects", "t1", Some(&key), &key).send().await;
                    let elapsed = started.elapsed();
                    let response = response.expect("the layer always answers");
                    outcomes.push(Outcome {
                        key,
                        status: response.status().as_u16(),
                        retry_after: response.headers().contains_key("retry-after"),
                        started,
                        elapsed,
                    });
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcomes
            })
        })
        .collect()
}

async fn rows_per_key(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT note, count(*) FROM effects GROUP BY note")
        .fetch_all(pool)
        .await
        .expect("effects per key")
        .into_iter()
        .collect()
}

async fn wait_until_answering(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query("SELECT 1").execute(pool).await.is_err() {
        assert!(Instant::now() < deadline, "Postgres did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every answer is 201 or 503 with Retry-After; after recovery, every 201 has exactly
/// one row and every 503 executes once on retry (or replays, when its commit landed).
async fn every_key_ends_with_one_execution(app: &TestApp, pool: &PgPool, outcomes: &[Outcome]) {
    assert!(
        outcomes.iter().any(|o| o.status == 201),
        "traffic succeeded around the outage"
    );
    assert!(
        outcomes.iter().any(|o| o.status == 503),
        "the outage was observed"
    );
    for o in outcomes {
        assert!(
            o.status == 201 || o.status == 503,
            "{}: got {}",
            o.key,
            o.status
        );
        if o.status == 503 {
            assert!(o.retry_after, "{}: 503 without Retry-After", o.key);
        }
    }

    let rows = rows_per_key(pool).await;
    for o in outcomes.iter().filter(|o| o.status == 201) {
        assert_eq!(
            rows.get(&o.key),
            Some(&1),
            "{}: a 2xx has exactly one row",
            o.key
        );
    }
    for o in outcomes.iter().filter(|o| o.status == 503) {
        // A 503 after COMMIT was sent is in doubt: the commit may have landed, and then
        // the retry replays it. Either way the key ends with exactly one execution.
        let before = rows.get(&o.key).copied().unwrap_or(0);
        let retry = app.send("/effects", "t1", Some(&o.key), &o.key).await;
        assert_eq!(retry.status(), 201, "{}: the retry succeeds", o.key);
        assert_eq!(
            replayed(&retry),
            before == 1,
            "{}: executes only if it had not",
            o.key
        );
    }
    let rows = rows_per_key(pool).await;
    for o in outcomes {
        assert_eq!(
            rows.get(&o.key),
            Some(&1),
            "{}: exactly one execution",
            o.key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_lost_mid_traffic_fails_closed_and_every_key_ends_with_one_execution() {
    let (container, pool) = own_postgres(Duration::from_secs(2)).await;
    let layer = IdempotencyLayer::new(pool.clone())
        .protocol(Protocol::default().retry_after(Duration::from_secs(2)));
    let app =
        Arc::new(TestApp::spawn(effects_router(pool.clone(), layer, Default::default())).await);

    let running = Arc::new(AtomicBool::new(true));
    let workers = traffic(&app, &running);
    tokio::time::sleep(Duration::from_millis(800)).await;
    container
        .stop_with_timeout(Some(0))
        .await
        .expect("kill Postgres"); // SIGKILL: a crash
    tokio::time::sleep(Duration::from_millis(1500)).await;
    container.start().await.expect("restart Postgres");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    running.store(false, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    wait_until_answering(&pool).await;

    for o in &outcomes {
        assert!(
            o.elapsed < Duration::from_secs(10),
            "{}: took {:?}",
            o.key,
            o.elapsed
        );
    }
    every_key_ends_with_one_execution(&app, &pool, &outcomes).await;
    pool.close().await;
    container.rm().await.expect("remove the container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_gets_503_within_store_timeout_and_leaves_the_pool_clean() {
    // The pool alone would wait far longer than the freeze: the bound is the layer's.
    let (container, pool) = own_postgres(Duration::from_secs(30)).await;
    let store_timeout = Duration::from_millis(1000);
    let in_flight_wait = Duration::from_millis(300);
    let layer = IdempotencyLayer::new(pool.clone())
        .protocol(Protocol::default().retry_after(Duration::from_secs(2)))
        .timeouts(
            Timeouts::default()
                .store(store_timeout)
                .in_flight_wait(in_flight_wait),
        );
    let app =
        Arc::new(TestApp::spawn(effects_router(pool.clone(), layer, Default::default())).await);

    let running = Arc::new(AtomicBool::new(true));
    let workers = traffic(&app, &running);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The server stops answering without closing a connection (SIGSTOP-like freeze).
    container.pause().await.expect("pause Postgres");
    let frozen_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    // Taken before the call: the store may answer before the call returns.
    let thawed_at = Instant::now();
    container.unpause().await.expect("unpause Postgres");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    wait_until_answering(&pool).await;

    // A request that began while the store was frozen was answered within its bound
    // (the in-flight wait plus the store timeout, and some slack for this machine):
    // with 503 while the store stayed frozen, normally once it was back.
    let bound = store_timeout + in_flight_wait + Duration::from_millis(1000);
    let during: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started > frozen_at && o.started < thawed_at)
        .collect();
    for o in &during {
        assert!(o.elapsed < bound, "{}: took {:?}", o.key, o.elapsed);
        if o.started + o.elapsed < thawed_at {
            assert_eq!(o.status, 503, "{}: answered while frozen", o.key);
        }
    }
    let refused = during.iter().filter(|o| o.status == 503).count();
    assert!(refused >= 4, "503s while frozen: {refused}");
    every_key_ends_with_one_execution(&app, &pool, &outcomes).await;

    // Claims that completed after their 503 were rolled back, and no pooled connection
    // was handed back inside a transaction: every later request runs cleanly.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = 'postgres' AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} transactions left open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..24 {
        let key = format!("after-{i}");
        let response = app.send("/effects", "t1", Some(&key), &key).await;
        assert_eq!(response.status(), 201, "{key}");
    }
    assert_eq!(rows_per_key(&pool).await.get("after-23"), Some(&1));
    pool.close().await;
    container.rm().await.expect("remove the container");
}
