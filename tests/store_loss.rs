//! Losing the Postgres server mid-traffic: requests fail closed with 503 and
//! Retry-After, none hangs, and after recovery every key ends with exactly one
//! execution.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idem_axum::IdempotencyLayer;
use idem_tests::pg::{postgres_image, prepare};
use idem_tests::{TestApp, effects_router, replayed};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testcontainers_modules::testcontainers::ImageExt;
use testcontainers_modules::testcontainers::core::IntoContainerPort;
use testcontainers_modules::testcontainers::runners::AsyncRunner;

struct Outcome {
    key: String,
    status: u16,
    retry_after: bool,
    elapsed: Duration,
}

async fn rows_per_key(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT note, count(*) FROM effects GROUP BY note")
        .fetch_all(pool)
        .await
        .expect("effects per key")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_lost_mid_traffic_fails_closed_and_every_key_ends_with_one_execution() {
    // A container of its own, on a fixed host port, so it can be killed and restarted.
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
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .expect("pool");
    prepare(&pool).await;
    let layer = IdempotencyLayer::new(pool.clone()).retry_after(Duration::from_secs(2));
    let app =
        Arc::new(TestApp::spawn(effects_router(pool.clone(), layer, Default::default())).await);

    let running = Arc::new(AtomicBool::new(true));
    let workers: Vec<_> = (0..4)
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
                        elapsed,
                    });
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcomes
            })
        })
        .collect();

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

    // Wait for the server to be back after crash recovery.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query("SELECT 1").execute(&pool).await.is_err() {
        assert!(Instant::now() < deadline, "Postgres did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(
        outcomes.iter().any(|o| o.status == 201),
        "traffic succeeded around the outage"
    );
    assert!(
        outcomes.iter().any(|o| o.status == 503),
        "the outage was observed"
    );
    for o in &outcomes {
        assert!(
            o.status == 201 || o.status == 503,
            "{}: got {}",
            o.key,
            o.status
        );
        assert!(
            o.elapsed < Duration::from_secs(10),
            "{}: took {:?}",
            o.key,
            o.elapsed
        );
        if o.status == 503 {
            assert!(o.retry_after, "{}: 503 without Retry-After", o.key);
        }
    }

    let rows = rows_per_key(&pool).await;
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
        let retry = app
            .post("/effects", "t1", Some(&o.key), &o.key)
            .send()
            .await
            .expect("retry");
        assert_eq!(retry.status(), 201, "{}: the retry succeeds", o.key);
        assert_eq!(
            replayed(&retry),
            before == 1,
            "{}: executes only if it had not",
            o.key
        );
    }
    let rows = rows_per_key(&pool).await;
    for o in &outcomes {
        assert_eq!(
            rows.get(&o.key),
            Some(&1),
            "{}: exactly one execution",
            o.key
        );
    }
    pool.close().await;
    container.rm().await.expect("remove the container");
}
