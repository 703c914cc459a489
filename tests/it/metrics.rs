//! The layer's and the store's metrics, read back from the real Prometheus exporter
//! (`metrics-exporter-prometheus`) installed in this test binary, over real HTTP and
//! real Postgres. Each test uses routes of its own, since the exporter is global.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, StatusCode};
use axum::routing::patch;
use idem_axum::{
    ClientVersions, IdempotencyLayer, Limits, Observability, Policy, Protocol, TenantId,
    TenantSource, Timeouts, Tx,
};
use idem_core::IdempotencyKey;
use idem_core::policy::KeyMode;
use idem_sqlx::{ReplayTally, StoreGauges, Tallied};
use idem_tests::{TestApp, TestDb, impatient_client, tenant_from_header, test_db, until};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

fn exporter() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &[0.01, 0.1, 1.0])
            .expect("buckets")
            .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &[256.0, 4096.0])
            .expect("buckets")
            .install_recorder()
            .expect("the test binary's recorder")
    })
}

/// The value of the series `name` whose labels include `labels`, from the exporter's
/// text; `None` when there is no such series.
fn value(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = exporter().render();
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
        if series_name != name {
            return None;
        }
        let found: HashMap<&str, &str> = rest
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        labels
            .iter()
            .all(|(k, v)| found.get(k) == Some(v))
            .then(|| value.parse().ok())?
    })
}

/// Every series of `name` (its label text), from the exporter's text.
fn series(name: &str) -> Vec<String> {
    let prefix = format!("{name}{{");
    exporter()
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

async fn order(Path(id): Path<String>, mut tx: Tx) -> (StatusCode, String) {
    match sqlx::query("SELECT 1").execute(&mut *tx).await {
        Ok(_) => (StatusCode::OK, format!(r#"{{"order":"{id}"}}"#)),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    }
}

async fn slow_order(path: Path<String>, tx: Tx) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    order(path, tx).await
}

/// PATCH `template` (a route with one parameter) behind `layer`, tenant from
/// `x-tenant-id`.
async fn app(template: &str, layer: IdempotencyLayer) -> TestApp {
    app_with(template, layer, patch(order)).await
}

async fn app_with(
    template: &str,
    layer: IdempotencyLayer,
    handler: axum::routing::MethodRouter,
) -> TestApp {
    let layer = layer.tenant(tenant_from_header());
    TestApp::spawn(Router::new().route(template, handler.route_layer(layer))).await
}

async fn send(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: &str,
    version: Option<&str>,
) -> u16 {
    let mut req = app
        .client
        .patch(app.url(path))
        .header("x-tenant-id", "acme")
        .body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    if let Some(version) = version {
        req = req.header("x-client-version", version);
    }
    req.send().await.expect("PATCH").status().as_u16()
}

fn layer(db: &TestDb) -> IdempotencyLayer {
    exporter();
    IdempotencyLayer::new(db.pool.clone())
        .protocol(Protocol::default().methods([http::Method::PATCH]))
        .observability(Observability::default().client_versions(
            HeaderName::from_static("x-client-version"),
            ClientVersions::new(["app/1"]),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_outcome_and_route_template_never_by_raw_path() {
    let db = test_db().await;
    let app = app("/orders/{id}", layer(&db)).await;
    assert_eq!(send(&app, "/orders/1", Some("k1"), "a", None).await, 200);
    assert_eq!(send(&app, "/orders/2", Some("k2"), "b", None).await, 200);
    assert_eq!(send(&app, "/orders/1", Some("k1"), "a", None).await, 200);
    assert_eq!(
        send(&app, "/orders/2", Some("k2"), "changed", None).await,
        422
    );
    assert_eq!(send(&app, "/orders/3", None, "c", None).await, 400);

    let route = ("route", "/orders/{id}");
    let count = |outcome: &'static str| {
        value(
            "idem_requests_total",
            &[("method", "PATCH"), route, ("outcome", outcome)],
        )
    };
    assert_eq!(count("executed"), Some(2.0));
    assert_eq!(count("replayed"), Some(1.0));
    assert_eq!(count("mismatch"), Some(1.0));
    assert_eq!(count("rejected"), Some(1.0));
    // Four decisions were timed (the rejection was not); every request's overhead was.
    assert_eq!(value("idem_decision_seconds_count", &[route]), Some(4.0));
    assert_eq!(
        value("idem_layer_overhead_seconds_count", &[route]),
        Some(5.0)
    );
    assert_eq!(
        value("idem_stored_response_bytes_count", &[route]),
        Some(2.0)
    );
    let raw = exporter().render();
    assert!(
        !raw.contains("/orders/1") && !raw.contains("/orders/2"),
        "{raw}"
    );

    let routes: Vec<Option<String>> =
        sqlx::query_scalar("SELECT route FROM idem.keys ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .expect("routes");
    let template = Some("/orders/{id}".to_owned());
    assert_eq!(routes, [template.clone(), template]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_is_still_counted() {
    let db = test_db().await;
    let app = app_with("/slow/{id}", layer(&db), patch(slow_order)).await;
    let impatient = impatient_client(Duration::from_millis(100));
    let gone = impatient
        .patch(app.url("/slow/1"))
        .header("x-tenant-id", "acme")
        .header("idempotency-key", "s1")
        .body("x")
        .send()
        .await;
    assert!(gone.expect_err("the client times out").is_timeout());
    let executed = [("route", "/slow/{id}"), ("outcome", "executed")];
    reaches("idem_requests_total", &executed, 1.0).await;
    // Its retry is a replay of what committed after the client left.
    assert_eq!(send(&app, "/slow/1", Some("s1"), "x", None).await, 200);
    let replayed = [("route", "/slow/{id}"), ("outcome", "replayed")];
    assert_eq!(value("idem_requests_total", &replayed), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_counts_what_the_layer_would_have_done() {
    let db = test_db().await;
    let app = app(
        "/observed/{id}",
        layer(&db).policy(Policy::default().keys(KeyMode::Observe)),
    )
    .await;
    assert_eq!(send(&app, "/observed/1", Some("o1"), "a", None).await, 200);
    assert_eq!(send(&app, "/observed/1", Some("o1"), "a", None).await, 200);
    assert_eq!(send(&app, "/observed/1", Some("o1"), "b", None).await, 200);
    assert_eq!(send(&app, "/observed/1", Some("o2"), "a", None).await, 200);
    let would = |would: &'static str| {
        value(
            "idem_observed_total",
            &[("route", "/observed/{id}"), ("would", would)],
        )
    };
    assert_eq!(would("execute"), Some(2.0));
    assert_eq!(would("replay"), Some(1.0));
    assert_eq!(would("mismatch"), Some(1.0));
    let ran = [("route", "/observed/{id}"), ("outcome", "committed")];
    assert_eq!(
        value("idem_requests_total", &ran),
        Some(4.0),
        "all four ran"
    );

    // Two at once in this process: the second would have found the first in flight.
    let slow = app_with(
        "/observed-slow/{id}",
        layer(&db).policy(Policy::default().keys(KeyMode::Observe)),
        patch(slow_order),
    )
    .await;
    let (a, b) = tokio::join!(
        send(&slow, "/observed-slow/1", Some("s1"), "a", None),
        send(&slow, "/observed-slow/1", Some("s1"), "a", None)
    );
    assert_eq!((a, b), (200, 200));
    let in_flight = [("route", "/observed-slow/{id}"), ("would", "in_flight")];
    assert_eq!(value("idem_observed_total", &in_flight), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_quota_usage_is_reported_before_it_is_reached() {
    let db = test_db().await;
    let app = app(
        "/quota/{id}",
        layer(&db).limits(Limits::default().key_quota(4)),
    )
    .await;
    for key in ["q1", "q2", "q3"] {
        assert_eq!(send(&app, "/quota/1", Some(key), "x", None).await, 200);
    }
    assert_eq!(value("idem_key_quota_usage_ratio", &[]), Some(0.75));
    assert_eq!(send(&app, "/quota/1", Some("q4"), "x", None).await, 200);
    assert_eq!(send(&app, "/quota/1", Some("q5"), "x", None).await, 507);
    assert_eq!(value("idem_key_quota_usage_ratio", &[]), Some(1.0));
    let refused = [("route", "/quota/{id}"), ("outcome", "quota_exceeded")];
    assert_eq!(value("idem_requests_total", &refused), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_versions_fold_into_the_configured_set() {
    let db = test_db().await;
    let app = app("/versions/{id}", layer(&db)).await;
    for (i, version) in [Some("app/1"), Some("app/1"), Some("hacked/999"), None]
        .into_iter()
        .enumerate()
    {
        let key = format!("v{i}");
        assert_eq!(
            send(&app, "/versions/1", Some(&key), "x", version).await,
            200
        );
    }
    let route = ("route", "/versions/{id}");
    let count = |version: &'static str| {
        value(
            "idem_requests_total",
            &[route, ("outcome", "executed"), ("client_version", version)],
        )
    };
    assert_eq!(count("app/1"), Some(2.0));
    assert_eq!(count("other"), Some(1.0));
    assert_eq!(count("none"), Some(1.0));
    let labelled: Vec<String> = series("idem_requests_total")
        .into_iter()
        .filter(|s| s.contains("/versions/{id}"))
        .collect();
    assert_eq!(labelled.len(), 3, "{labelled:?}");
    assert!(labelled.iter().all(|s| !s.contains("hacked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_counted_on_the_key_row_and_a_first_replay_counts_a_retried_key() {
    let db = test_db().await;
    let app = app("/retried/{id}", layer(&db)).await;
    assert_eq!(send(&app, "/retried/1", Some("r1"), "x", None).await, 200);
    assert_eq!(send(&app, "/retried/2", Some("r2"), "x", None).await, 200);
    for _ in 0..3 {
        assert_eq!(send(&app, "/retried/1", Some("r1"), "x", None).await, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let replays = loop {
        let replays: Vec<(String, i32)> =
            sqlx::query_as("SELECT key, replays FROM idem.keys ORDER BY key")
                .fetch_all(&db.pool)
                .await
                .expect("replays");
        if replays[0].1 == 3 || tokio::time::Instant::now() > deadline {
            break replays;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(replays, [("r1".to_owned(), 3), ("r2".to_owned(), 0)]);
    let retried = value("idem_keys_retried_total", &[("route", "/retried/{id}")]);
    assert_eq!(retried, Some(1.0), "one key was retried, three times");
}

/// A batch of many tenants' replays is written whole: on a Citus cluster those tenants'
/// keys lie on every shard, several to a shard, and Citus locks rows only in a
/// statement on one shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tally_of_many_tenants_replays_counts_each_on_its_key() {
    let db = test_db().await;
    exporter();
    sqlx::raw_sql(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, \
           expires_at, response_status, completed_at) \
         SELECT 'tenant-' || i, 'k', decode(repeat('00', 32), 'hex'), 'PATCH', '/tallied/1', \
           '/tallied/{id}', now() + interval '1 day', 200, now() \
         FROM generate_series(0, 39) i",
    )
    .execute(&db.pool)
    .await
    .expect("40 tenants' keys");
    // The batch is flushed here, not by the delayed task.
    let tally = ReplayTally::new(db.pool.clone()).delay(Duration::from_secs(3600));
    let key = IdempotencyKey::parse("k").expect("key");
    for i in 0..40 {
        let tenant = TenantId::new(format!("tenant-{i}")).expect("tenant");
        tally.add(&tenant, &key, Tallied::Replay);
    }
    let first = TenantId::new("tenant-0").expect("tenant");
    tally.add(&first, &key, Tallied::ReplayedMismatch);
    tally.flush().await.expect("flush");
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT sum(replays), sum(mismatches), \
           count(*) FILTER (WHERE replays = 1 + (tenant_id = 'tenant-0')::int) FROM idem.keys",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert_eq!(
        counts,
        (41, 1, 40),
        "every key counted once, tenant-0's twice"
    );
    let retried = value("idem_keys_retried_total", &[("route", "/tallied/{id}")]);
    assert_eq!(retried, Some(40.0), "40 keys retried for the first time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_gauges_report_live_keys_per_route_and_zero_a_route_whose_keys_are_gone() {
    let db = test_db().await;
    let app = app("/gauged/{id}", layer(&db)).await;
    for key in ["g1", "g2", "g3"] {
        assert_eq!(send(&app, "/gauged/1", Some(key), "x", None).await, 200);
    }
    assert_eq!(send(&app, "/gauged/1", Some("g1"), "x", None).await, 200);
    sqlx::query("INSERT INTO idem.inbox (consumer, message_id, dead_at) VALUES ('gauged-consumer', $1, now())")
        .bind(uuid::Uuid::now_v7())
        .execute(&db.pool)
        .await
        .expect("a dead inbox message");
    // A phased key whose owner's lease passed a minute ago.
    sqlx::raw_sql(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, route, expires_at, \
           fence, locked_until, phases) VALUES ('t', 'abandoned', \
           decode(repeat('00', 32), 'hex'), 'POST', '/charged', '/charged', \
           now() + interval '1 day', 1, now() - interval '1 minute', '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("an abandoned phased key");

    let stats = StoreGauges::new(db.pool.clone())
        .read()
        .await
        .expect("read");
    let keys = stats
        .routes
        .iter()
        .find(|r| r.route == "/gauged/{id}")
        .expect("the route's keys");
    assert_eq!(keys.live, 3);
    assert!(keys.stored_bytes > 0);
    assert_eq!(stats.inbox_dead, [("gauged-consumer".to_owned(), 1)]);
    assert_eq!(stats.phased_abandoned, 1);

    let shutdown = CancellationToken::new();
    let gauges = tokio::spawn(
        StoreGauges::new(db.pool.clone())
            .interval(Duration::from_millis(50))
            .run(shutdown.clone()),
    );
    let route = [("route", "/gauged/{id}")];
    let consumer = [("consumer", "gauged-consumer")];
    reaches("idem_keys_live", &route, 3.0).await;
    reaches("idem_inbox_dead_letters", &consumer, 1.0).await;
    reaches("idem_phased_keys_abandoned", &[], 1.0).await;
    // The tally's batch lands after its delay; the gauges then read it.
    reaches("idem_key_replays", &route, 1.0).await;
    assert_eq!(value("idem_keys_replayed", &route), Some(1.0));

    sqlx::query("DELETE FROM idem.keys")
        .execute(&db.pool)
        .await
        .expect("keys gone");
    sqlx::query("DELETE FROM idem.inbox")
        .execute(&db.pool)
        .await
        .expect("inbox gone");
    reaches("idem_keys_live", &route, 0.0).await;
    reaches("idem_inbox_dead_letters", &consumer, 0.0).await;
    reaches("idem_phased_keys_abandoned", &[], 0.0).await;
    shutdown.cancel();
    gauges.await.expect("gauges stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_counts_store_unavailable() {
    exporter();
    // A pool to a port nothing listens on.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("lazy pool");
    let layer = IdempotencyLayer::new(pool)
        .protocol(Protocol::default().methods([http::Method::PATCH]))
        .timeouts(Timeouts::default().store(Duration::from_millis(500)));
    let app = app("/unreachable/{id}", layer).await;
    assert_eq!(
        send(&app, "/unreachable/1", Some("u1"), "x", None).await,
        503
    );
    let count = value(
        "idem_requests_total",
        &[
            ("route", "/unreachable/{id}"),
            ("outcome", "store_unavailable"),
        ],
    );
    assert_eq!(count, Some(1.0));
}

/// Waits until the metric `name` with `labels` reads `expected`.
async fn reaches(name: &str, labels: &[(&str, &str)], expected: f64) {
    let what = format!("{name} {labels:?} to read {expected}");
    until(&what, async || value(name, labels) == Some(expected)).await;
}

/// Everything the layer logs in this test binary (a global subscriber, like the
/// exporter), as text.
fn logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("idem_axum=warn")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        logs
    })
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_handler_that_never_takes_its_tx_is_warned_about_once_per_route() {
    let logs = logs();
    let db = test_db().await;
    let pool = db.pool.clone();
    // Writes on the pool, around the request's transaction.
    let around = {
        let pool = pool.clone();
        move || async move {
            sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('t1', 'around')")
                .execute(&pool)
                .await
                .map(|_| StatusCode::CREATED)
                .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
        }
    };
    let inside = async |mut tx: Tx| {
        sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ('t1', 'inside')")
            .execute(&mut *tx)
            .await
            .map(|_| StatusCode::CREATED)
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
    };
    let layer = IdempotencyLayer::new(pool).tenant(TenantSource::single());
    let app = TestApp::spawn(
        Router::new()
            .route("/untaken/around", axum::routing::post(around))
            .route("/untaken/inside", axum::routing::post(inside))
            .route_layer(layer),
    )
    .await;
    for (path, key) in [
        ("/untaken/around", "u1"),
        ("/untaken/around", "u2"),
        ("/untaken/inside", "u3"),
    ] {
        let r = app
            .client
            .post(app.url(path))
            .header("idempotency-key", key)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("did not take its Tx"))
        .collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("/untaken/around"))
            .count(),
        1,
        "once for the route that wrote around its Tx: {warnings:?}"
    );
    assert!(
        !warnings.iter().any(|l| l.contains("/untaken/inside")),
        "never for one that took it: {warnings:?}"
    );
}
