//! The shipped dashboard and recording rules against a real Prometheus: the payments
//! service and its back office run as child processes, a Prometheus on loopback
//! scrapes both every second with `ops/prometheus/idem.rules.yml` loaded, traffic of
//! known shape goes through, and every expression of `ops/grafana/idem-dashboard.json`
//! is evaluated through Prometheus's HTTP API: each returns data, and the ratios and
//! counts come out as the traffic was sent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idem_tests::{ServiceProcess, WorkerProcess, test_db};
use serde_json::Value;

const PAYMENTS: &str = env!("CARGO_BIN_EXE_payments");
const LEDGER: &str = env!("CARGO_BIN_EXE_payments-ledger");

/// Payments executed in phase 1 (one per kind of client).
const WARM_EXECUTED: usize = 3;

/// Phase 2 of the traffic: what the ratios are computed from.
const EXECUTED: usize = 12;
const REPLAYED: usize = 4;
const MISMATCHED: usize = 2;
/// The live keys the tenant may hold: all of them are one tenant's.
const KEY_QUOTA: usize = 1000;

fn ops(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ops")
        .join(path)
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    probe.local_addr().expect("addr").port()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A Prometheus server on loopback, killed (and its data removed) when dropped.
struct Prometheus {
    url: String,
    dir: PathBuf,
    _child: tokio::process::Child,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second, with idem's rules loaded.
    async fn start(targets: &[String]) -> Prometheus {
        let bin = std::env::var("IDEM_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let dir = std::env::temp_dir().join(format!("idem-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules = ops("prometheus/idem.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: idem\n    static_configs:\n      - targets: [{targets}]\n",
            rules = rules.display(),
            targets = targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let port = free_port();
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {bin} ({e}); scripts/services.sh installs Prometheus")
            });
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            _child: child,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Evaluates `expr` at `time` (Unix seconds): the result's samples.
    async fn query(&self, expr: &str, time: f64) -> Vec<Value> {
        let body: Value = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr), ("time", &time.to_string())])
            .send()
            .await
            .expect("query Prometheus")
            .json()
            .await
            .expect("JSON answer");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        match body["data"]["resultType"].as_str() {
            Some("vector") => body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Some("scalar") => {
                vec![serde_json::json!({ "metric": {}, "value": body["data"]["result"] })]
            }
            other => panic!("{expr}: unexpected result type {other:?}"),
        }
    }

    /// The single value of `expr` at `time` (summed over its series).
    async fn value(&self, expr: &str, time: f64) -> Option<f64> {
        let samples = self.query(expr, time).await;
        if samples.is_empty() {
            return None;
        }
        Some(samples.iter().map(sample_value).sum())
    }

    /// Waits until `expr` is `expected` (at most a minute).
    async fn wait_for(&self, expr: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.value(expr, now_secs()).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expr} is {value:?}, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// Sends payments to the service.
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn pay(&self, key: Option<&str>, amount: u32, version: Option<&str>) -> u16 {
        let mut request = self
            .http
            .post(&self.url)
            .header("x-tenant-id", "acme")
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount":{amount},"currency":"EUR"}}"#));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(version) = version {
            request = request.header("x-client-version", version);
        }
        request
            .send()
            .await
            .expect("POST /payments")
            .status()
            .as_u16()
    }
}

/// Every `expr` of the dashboard's panels, with the panel's title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(ops("grafana/idem-dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr").to_owned();
            exprs.push((panel["title"].as_str().expect("title").to_owned(), expr));
        }
    }
    exprs
}

/// Grafana's variables as the test evaluates them: all routes and versions, and a
/// window of `window` seconds for the rates and ranges.
fn substitute(expr: &str, window: u64) -> String {
    expr.replace("$__rate_interval", &format!("{window}s"))
        .replace("$__range", &format!("{window}s"))
        .replace("$route", ".*")
        .replace("$client_version", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_the_traffic_that_was_sent() {
    let db = test_db().await;
    let nats_url =
        std::env::var("IDEM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    // The back office's stream is fixed (PAYMENTS); start from an empty one.
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.expect("NATS"));
    let _ = js.delete_stream("PAYMENTS").await;

    let quota = KEY_QUOTA.to_string();
    let service = ServiceProcess::start(
        PAYMENTS,
        &db.url,
        &[("GAUGES_INTERVAL_MS", "300"), ("KEY_QUOTA", &quota)],
    )
    .await;
    let ledger_metrics = format!("127.0.0.1:{}", free_port());
    let _ledger = WorkerProcess::start(
        LEDGER,
        &db.url,
        &[],
        &[("NATS_URL", &nats_url), ("METRICS_BIND", &ledger_metrics)],
    );
    let prometheus = Prometheus::start(&[service.addr.to_string(), ledger_metrics.clone()]).await;
    let client = Client {
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        url: service.url("/payments"),
    };

    // Phase 1: every series phase 2 adds to, so each exists before the measured window
    // (a counter's first sample already holds its first increments).
    let versions = [Some("ios/5.2"), Some("beta/0.1"), None];
    for (i, version) in versions.into_iter().enumerate() {
        let key = format!("warm-{i}");
        assert_eq!(client.pay(Some(&key), 100, version).await, 201);
    }
    assert_eq!(client.pay(Some("warm-2"), 100, None).await, 201);
    assert_eq!(client.pay(Some("warm-2"), 999, None).await, 422);
    assert_eq!(client.pay(None, 100, None).await, 400);
    prometheus
        .wait_for("sum(idem_inbox_processed_total)", WARM_EXECUTED as f64)
        .await;
    prometheus
        .wait_for("sum(idem_keys_retried_total)", 1.0)
        .await;
    // Phase 1 is scraped; the measured window starts 2 s before phase 2 does, and
    // after phase 1's last change.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let start = now_secs();

    // Phase 2: the measured traffic, from the same three kinds of client.
    for i in 0..EXECUTED {
        let key = format!("pay-{i}");
        let version = versions[i % versions.len()];
        assert_eq!(client.pay(Some(&key), 1000 + i as u32, version).await, 201);
    }
    for i in 0..REPLAYED {
        let key = format!("pay-{i}");
        assert_eq!(client.pay(Some(&key), 1000 + i as u32, None).await, 201);
    }
    for i in 0..MISMATCHED {
        let key = format!("pay-{i}");
        assert_eq!(client.pay(Some(&key), 1, None).await, 422);
    }

    // Everything counted, published, consumed, tallied and read by the gauges.
    let executed = WARM_EXECUTED + EXECUTED;
    prometheus
        .wait_for(
            r#"sum(idem_requests_total{outcome="replayed"})"#,
            (1 + REPLAYED) as f64,
        )
        .await;
    prometheus
        .wait_for(
            r#"sum(idem_requests_total{outcome="executed"})"#,
            executed as f64,
        )
        .await;
    prometheus
        .wait_for("sum(idem_outbox_delivered_total)", executed as f64)
        .await;
    prometheus
        .wait_for("sum(idem_inbox_processed_total)", executed as f64)
        .await;
    prometheus
        .wait_for("sum(idem_keys_retried_total)", (1 + REPLAYED) as f64)
        .await;
    prometheus
        .wait_for("sum(idem_key_replays)", (1 + REPLAYED) as f64)
        .await;
    prometheus
        .wait_for("sum(idem_keys_live)", executed as f64)
        .await;
    prometheus.wait_for("max(idem_outbox_pending)", 0.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = now_secs();
    let window = (end - start).ceil() as u64 + 2;

    // Every expression of the dashboard returns data.
    let exprs = dashboard_exprs();
    assert!(
        exprs.len() >= 20,
        "the dashboard has {} queries",
        exprs.len()
    );
    for (title, expr) in &exprs {
        let expr = substitute(expr, window);
        let samples = prometheus.query(&expr, end).await;
        assert!(!samples.is_empty(), "{title}: `{expr}` returned no data");
    }

    // The ratios are those of the measured traffic: both sides come from the same
    // scrapes, so the rates' extrapolation cancels out.
    let keyed = (EXECUTED + REPLAYED + MISMATCHED) as f64;
    let expected = [
        ("Replay hit rate", REPLAYED as f64 / keyed),
        ("Conflict rate", MISMATCHED as f64 / keyed),
        (
            "Retry success after a timeout",
            REPLAYED as f64 / EXECUTED as f64,
        ),
        ("Replays per retried key by route", 1.0),
        ("Dead letters", 0.0),
        (
            "Key quota usage (fullest tenant)",
            executed as f64 / KEY_QUOTA as f64,
        ),
        ("Phased keys left unfinished", 0.0),
    ];
    for (title, value) in expected {
        let (_, expr) = exprs
            .iter()
            .find(|(t, _)| t == title)
            .unwrap_or_else(|| panic!("the dashboard has no panel {title}"));
        let got = prometheus
            .value(&substitute(expr, window), end)
            .await
            .expect("data");
        assert!(
            (got - value).abs() < 1e-9,
            "{title}: {got}, expected {value}"
        );
    }

    // The recording rule agrees over its own 5-minute window, which holds phase 1 too:
    // the first increments of a new series are in its first sample, so it sees about
    // the phase 2 ratio (exactly, when all series appeared in one scrape).
    let recorded = prometheus
        .value(
            r#"idem:replay_hit_rate:ratio_rate5m{route="/payments"}"#,
            end,
        )
        .await
        .expect("the recording rule has data");
    assert!(
        (recorded - REPLAYED as f64 / keyed).abs() < 0.02,
        "recorded hit rate {recorded}"
    );

    // Client versions fold into the configured set: the raw `beta/0.1` never appears.
    let versions: Vec<String> = prometheus
        .query("sum by (client_version) (idem_requests_total)", end)
        .await
        .iter()
        .map(|s| {
            s["metric"]["client_version"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let mut versions = versions;
    versions.sort();
    assert_eq!(versions, ["ios/5.2", "none", "other"]);

    // The counts are exact where the dashboard shows totals.
    let rejected = prometheus
        .value(r#"sum(idem_requests_total{outcome="rejected"})"#, end)
        .await;
    assert_eq!(rejected, Some(1.0));
    let routes = prometheus
        .query("sum by (route) (idem_requests_total)", end)
        .await;
    assert_eq!(routes.len(), 1, "one route template: {routes:?}");
    assert_eq!(routes[0]["metric"]["route"], "/payments");
}
