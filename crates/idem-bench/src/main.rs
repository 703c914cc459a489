//! The idem benchmark: the layer's cost measured against the same handler without it,
//! all scenarios in one run so the ratios are fair.
//!
//! ```text
//! cargo run --release -p idem-bench -- --concurrency 32 --duration 10 --svg benchmark.svg
//! ```
//!
//! Scenarios: (a) the payments POST handler doing its INSERT in a transaction, no
//! layer; (b) the layer with unique keys; (z) the same handler with the idempotency
//! users write by hand instead (see [`handwritten`]), unique keys; (c) the layer
//! replaying completed keys (from memory), and
//! (c') the same with `Storage::lookup_first`; (d) a
//! duplicate storm, `--storm-size` concurrent requests per key over `--storm-keys`
//! keys; (e) the ceiling, single-INSERT transactions from this process through sqlx,
//! no HTTP; (a0) and (b0), the statements (a) and (b) send to the database, from this
//! process through sqlx, no HTTP: their ratio is what the database alone allows b/a
//! to reach; (f) the bare handler without its outbox enqueue (a/f: what the enqueue
//! costs); (g) the layer with unique keys while an outbox relay in this process,
//! woken after each commit, publishes to NATS JetStream (`NATS_URL`, default
//! `nats://127.0.0.1:4222`; skipped when unreachable): the commit-to-publish latency;
//! with `--existing-keys N`, (h) the layer's new keys again after N finished keys were
//! written into the table, and (s) the same while the sweeper removes the expired tenth
//! of them (see [`crowded`]). `--only b,z` runs only the scenarios named.
//! Services run in-process on loopback sockets against Postgres (`DATABASE_URL`, or a
//! throwaway container from `IDEM_PG_IMAGE`). Requests spread over `--tenants` tenants;
//! on a Citus coordinator the tables are distributed by tenant first (as the example
//! does at start) and the table ends with the share of keys each worker holds.

mod chart;
mod crowded;
mod handwritten;
mod publish;
mod ranges;
mod tenants;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use idem_axum::{Policy, Storage};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser, Debug)]
#[command(about = "Measures the idempotency layer's cost against the bare handler")]
struct Args {
    /// Concurrent clients in the timed scenarios.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each timed scenario runs.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up before each timed scenario (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Keys in the duplicate storm.
    #[arg(long, default_value_t = 20)]
    storm_keys: usize,
    /// Concurrent requests per key in the duplicate storm.
    #[arg(long, default_value_t = 100)]
    storm_size: usize,
    /// Completed keys the replay scenario cycles through.
    #[arg(long, default_value_t = 1000)]
    replay_keys: usize,
    /// Run a container it starts with `fsync=off` (by default fsync is on, as in
    /// production; ignored with `DATABASE_URL`).
    #[arg(long)]
    no_fsync: bool,
    /// Tenants the requests spread over, round robin (on a Citus coordinator, over
    /// the workers).
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the req/s per scenario as an SVG bar chart to this file (the range
    /// over the runs).
    #[arg(long, value_name = "PATH")]
    svg: Option<std::path::PathBuf>,
    /// Install the example's Prometheus recorder, so every request records its
    /// metrics as in the example service (without it the metrics facade has no
    /// recorder and recording costs next to nothing).
    #[arg(long)]
    prometheus: bool,
    /// Run every scenario this many times in a row (same database), printing each
    /// run's table and then the range of each figure (with `--json`, an array of the
    /// runs' reports; `--svg` draws each scenario's range).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Keys to write into `idem.keys` (four retention classes, a tenth of them
    /// expired) before (h), the new-key scenario again on the crowded table, and (s),
    /// the same while the sweeper removes the expired ones; 0 skips both. Each run
    /// then empties `idem.keys` first: use a database of its own.
    #[arg(long, default_value_t = 0)]
    existing_keys: i64,
    /// Run only these scenarios (their letters, comma-separated: `--only b,z`); all of
    /// them by default. Ratios whose scenarios did not run print as NaN.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    /// Whether the scenario lettered `id` runs.
    fn selected(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == id)
    }
}

/// One scenario's measurements.
#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    requests: usize,
    errors: usize,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    executions: i64,
    /// The most pool connections in use at once (sampled every millisecond; storm only).
    max_pool_connections: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Report {
    concurrency: usize,
    duration_secs: u64,
    rows: Vec<Row>,
    layer_unique_over_bare: f64,
    layer_replay_over_bare: f64,
    layer_unique_over_handwritten: f64,
    lookup_first_replay_over_bare: f64,
    bare_over_ceiling: f64,
    layer_statements_over_bare_statements: f64,
    /// a/f: the bare handler with its outbox enqueue over the same without it.
    enqueue_over_no_enqueue: f64,
    /// (g), when NATS was reachable.
    publish: Option<publish::PublishLatency>,
    /// The tenants the requests spread over.
    tenants: usize,
    /// h/b: new keys on the crowded table over new keys on the benchmark's own.
    crowded_over_unique: f64,
    /// s/h: new keys while the sweeper runs over new keys on the crowded table.
    sweeping_over_crowded: f64,
    /// What was written for (h) and (s).
    filled: Option<crowded::Filled>,
    /// What the sweeper removed during (s).
    swept: Option<crowded::Swept>,
    /// On a Citus coordinator: the keys each worker holds at the end of the run.
    citus_keys_per_worker: Option<Vec<tenants::WorkerShare>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BODY: &str = r#"{"amount":1250,"currency":"EUR","reference":"bench"}"#;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,payments=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.prometheus {
        payments::metrics::install()?;
        eprintln!("metrics recorded through the Prometheus exporter");
    }
    let database = payments::DevDatabase::from_env_with(!args.no_fsync).await?;
    let mut reports = Vec::new();
    let mut result = Ok(());
    for _ in 0..args.runs.max(1) {
        match run(&args, &database.url).await {
            Ok(report) => {
                if !args.json {
                    print_table(&report);
                }
                reports.push(report);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    database.shutdown().await?;
    result?;
    if let Some(path) = &args.svg {
        chart::write_svg(&reports, path)?;
    }
    if args.json {
        match reports.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            all => println!("{}", serde_json::to_string_pretty(all)?),
        }
    } else if reports.len() > 1 {
        ranges::print(&reports);
    }
    Ok(())
}

/// One run of the scenarios `args` names, on a pool of its own that it closes at the
/// end (its services keep serving on their sockets, with no connections left).
async fn run(args: &Args, url: &str) -> Result<Report, BoxError> {
    // Postgres allows 100 connections by default; keep a few for everyone else.
    let connections =
        u32::try_from((args.concurrency.max(args.storm_size) + 8).min(90)).unwrap_or(90);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    let report = scenarios(args, pool.clone(), connections).await;
    pool.close().await;
    report
}

/// The scenarios `args` names, on `pool` (of `connections` connections).
async fn scenarios(args: &Args, pool: PgPool, connections: u32) -> Result<Report, BoxError> {
    payments::migrate(&pool).await?;
    sqlx::raw_sql(handwritten::TABLE).execute(&pool).await?;
    if args.existing_keys > 0 {
        // Each run's (b) on an empty table, its (h) on one freshly filled.
        sqlx::raw_sql("TRUNCATE idem.keys").execute(&pool).await?;
    }
    tenants::set(args.tenants);
    let citus = tenants::distribute(&pool).await?;

    let bare = serve(payments::bare_app(pool.clone())).await?;
    let without_outbox = serve(payments::bare_app_without_outbox(pool.clone())).await?;
    let layered = serve(payments::app(pool.clone())).await?;
    let by_hand = serve(handwritten::app(pool.clone())).await?;
    let lookup_first = serve(payments::app_with(
        pool.clone(),
        idem_axum::IdempotencyLayer::new(pool.clone())
            .policy(Policy::default().canonical_json())
            .storage(Storage::default().lookup_first(true)),
    ))
    .await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections as usize)
        .timeout(Duration::from_secs(30))
        .build()?;
    let timed = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(args.warmup);
    let scenario = Timed {
        pool: &pool,
        concurrency: args.concurrency,
        warmup,
        duration: timed,
    };
    let mut rows = Vec::new();

    // Payments to `base`, the i-th as the i-th tenant, with the key `key(i)` (if any).
    let payments_on = |base: &str, key: fn(usize) -> Option<String>| {
        let client = client.clone();
        let url = format!("{base}/payments");
        move |i: usize| {
            let request = client
                .post(&url)
                .header("x-tenant-id", tenants::of(i))
                .header("content-type", "application/json")
                .body(BODY);
            match key(i) {
                Some(key) => request.header("idempotency-key", key),
                None => request,
            }
        }
    };
    // Keyless payments to a service without the layer.
    let keyless_on = |base: &str| payments_on(base, |_| None);
    // (a) bare handler
    if args.selected("a") {
        rows.push(scenario.run("a bare handler", keyless_on(&bare)).await?);
    }

    // (f) the bare handler without its outbox enqueue
    if args.selected("f") {
        rows.push(
            scenario
                .run("f bare, no enqueue", keyless_on(&without_outbox))
                .await?,
        );
    }

    // (b) layer, unique keys
    let unique_on = |base: &str| payments_on(base, |_| Some(uuid::Uuid::new_v4().to_string()));
    if args.selected("b") {
        rows.push(
            scenario
                .run("b layer, unique keys", unique_on(&layered))
                .await?,
        );
    }

    // (z) hand-written idempotency, unique keys
    if args.selected("z") {
        rows.push(
            scenario
                .run("z hand-written, unique", unique_on(&by_hand))
                .await?,
        );
    }

    // (c) layer, replays of completed keys
    let replay_keys: Arc<Vec<String>> = Arc::new(
        (0..args.replay_keys)
            .map(|i| format!("replay-{i}"))
            .collect(),
    );
    let replay_on = |base: &str| {
        let client = client.clone();
        let url = format!("{base}/payments");
        let keys = replay_keys.clone();
        move |i: usize| {
            client
                .post(&url)
                .header("x-tenant-id", tenants::of(i % keys.len()))
                .header("idempotency-key", &keys[i % keys.len()])
                .header("content-type", "application/json")
                .body(BODY)
        }
    };
    if args.selected("c") || args.selected("c'") {
        let post_replay = replay_on(&layered);
        for i in 0..replay_keys.len() {
            post_replay(i).send().await?.error_for_status()?;
        }
        if args.selected("c") {
            rows.push(scenario.run("c layer, replays", post_replay).await?);
        }
        // (c') the same replays with `Storage::lookup_first` (same database, same keys)
        if args.selected("c'") {
            rows.push(
                scenario
                    .run("c' replays, lookup first", replay_on(&lookup_first))
                    .await?,
            );
        }
    }

    // (d) duplicate storm
    if args.selected("d") {
        rows.push(storm(&client, &layered, &pool, args.storm_keys, args.storm_size).await?);
    }

    // (e) the ceiling: single-INSERT transactions, no HTTP
    if args.selected("e") {
        rows.push(
            scenario
                .run_db("e ceiling: sqlx INSERT", single_insert)
                .await?,
        );
    }
    // (a0), (b0): the statements of (a) and (b), no HTTP: the database's share.
    if args.selected("a0") {
        rows.push(
            scenario
                .run_db("a0 a's statements, no HTTP", bare_statements)
                .await?,
        );
    }
    if args.selected("b0") {
        rows.push(
            scenario
                .run_db("b0 b's statements, no HTTP", layer_statements)
                .await?,
        );
    }

    // (g) the layer while a relay publishes to JetStream
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let relay = match args.selected("g") {
        true => publish::start(&pool, &nats_url).await.map(Some),
        false => Ok(None),
    };
    let publish = match relay {
        Ok(None) => None,
        Ok(Some(relay)) => {
            let app = payments::app_with(
                pool.clone(),
                payments::idempotency(pool.clone())
                    .storage(Storage::default().outbox_waker(relay.waker.clone())),
            )
            .layer(axum::Extension(payments::EventSubject(
                relay.subject.to_owned(),
            )));
            let base = serve(app).await?;
            rows.push(
                scenario
                    .run("g layer + relay, JetStream", unique_on(&base))
                    .await?,
            );
            Some(relay.finish(&pool).await?)
        }
        Err(e) => {
            tracing::warn!(error = %e, %nats_url, "NATS unreachable: scenario (g) skipped");
            None
        }
    };

    // (h) and (s): new keys on a crowded table, and while it is swept
    let (mut filled, mut swept) = (None, None);
    if args.existing_keys > 0 && (args.selected("h") || args.selected("s")) {
        eprintln!("writing {} keys into idem.keys ...", args.existing_keys);
        filled = Some(crowded::fill(&pool, args.existing_keys, args.tenants).await?);
        if args.selected("h") {
            rows.push(
                scenario
                    .run("h layer, crowded table", unique_on(&layered))
                    .await?,
            );
        }
        if args.selected("s") {
            let sweeping = crowded::Sweeping::start(&pool).await?;
            rows.push(
                scenario
                    .run("s layer, while sweeping", unique_on(&layered))
                    .await?,
            );
            swept = Some(sweeping.stop(&pool).await?);
        }
    }

    let rps = |prefix: &str| {
        rows.iter()
            .find(|r| r.scenario.starts_with(prefix))
            .map_or(f64::NAN, |r| r.requests_per_sec)
    };
    Ok(Report {
        concurrency: args.concurrency,
        duration_secs: args.duration,
        layer_unique_over_bare: rps("b ") / rps("a "),
        layer_replay_over_bare: rps("c ") / rps("a "),
        layer_unique_over_handwritten: rps("b ") / rps("z "),
        lookup_first_replay_over_bare: rps("c' ") / rps("a "),
        bare_over_ceiling: rps("a ") / rps("e "),
        layer_statements_over_bare_statements: rps("b0 ") / rps("a0 "),
        enqueue_over_no_enqueue: rps("a ") / rps("f "),
        crowded_over_unique: rps("h ") / rps("b "),
        sweeping_over_crowded: rps("s ") / rps("h "),
        filled,
        swept,
        publish,
        tenants: args.tenants,
        citus_keys_per_worker: match citus {
            true => Some(tenants::keys_per_worker(&pool).await?),
            false => None,
        },
        rows,
    })
}

async fn serve(router: axum::Router) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "benchmark server failed");
        }
    });
    Ok(format!("http://{addr}"))
}

async fn payments_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(pool)
        .await
}

/// Requests made by one client loop, with their latencies.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
}

impl Samples {
    fn merge(mut all: Vec<Samples>) -> Samples {
        let mut merged = all.pop().unwrap_or_default();
        for s in all {
            merged.latencies.extend(s.latencies);
            merged.errors += s.errors;
        }
        merged.latencies.sort_unstable();
        merged
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)].as_secs_f64() * 1000.0
    }
}

/// How the timed scenarios run: `concurrency` client loops against `pool`'s database,
/// for `warmup` (not counted), then for `duration`.
struct Timed<'a> {
    pool: &'a PgPool,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
}

impl Timed<'_> {
    /// Runs the scenario `name`, whose i-th request is `request(i)`.
    async fn run<F>(&self, name: &'static str, request: F) -> Result<Row, BoxError>
    where
        F: Fn(usize) -> reqwest::RequestBuilder + Clone + Send + 'static,
    {
        let concurrency = self.concurrency;
        self.measure(name, |duration| {
            drive(concurrency, duration, request.clone())
        })
        .await
    }

    /// Runs the database-only scenario `name`: `op` over and over from `concurrency`
    /// tasks through the pool, no HTTP.
    async fn run_db(&self, name: &'static str, op: DbOp) -> Result<Row, BoxError> {
        let (pool, concurrency) = (self.pool.clone(), self.concurrency);
        self.measure(name, |duration| db_loop(&pool, concurrency, duration, op))
            .await
    }

    /// `load(warmup)` (not counted), then `load(duration)`, with the payments the
    /// timed part executed counted in the database.
    async fn measure<L, Fut>(&self, name: &'static str, load: L) -> Result<Row, BoxError>
    where
        L: Fn(Duration) -> Fut,
        Fut: Future<Output = Samples>,
    {
        load(self.warmup).await;
        let before = payments_count(self.pool).await?;
        let started = Instant::now();
        let samples = load(self.duration).await;
        let elapsed = started.elapsed();
        let executions = payments_count(self.pool).await? - before;
        Ok(row(name, &samples, elapsed, executions))
    }
}

async fn drive<F>(concurrency: usize, duration: Duration, request: F) -> Samples
where
    F: Fn(usize) -> reqwest::RequestBuilder + Clone + Send + 'static,
{
    let deadline = Instant::now() + duration;
    let workers = (0..concurrency).map(|w| {
        let request = request.clone();
        tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut i = w;
            while Instant::now() < deadline {
                let started = Instant::now();
                let ok = match request(i).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    samples.latencies.push(started.elapsed());
                } else {
                    samples.errors += 1;
                }
                i += concurrency;
            }
            samples
        })
    });
    let done = futures_util::future::join_all(workers).await;
    Samples::merge(done.into_iter().filter_map(Result::ok).collect())
}

fn row(name: &'static str, samples: &Samples, elapsed: Duration, executions: i64) -> Row {
    Row {
        scenario: name,
        requests: samples.latencies.len(),
        errors: samples.errors,
        requests_per_sec: samples.latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: samples.percentile_ms(0.50),
        p99_ms: samples.percentile_ms(0.99),
        executions,
        max_pool_connections: None,
    }
}

/// `size` concurrent requests for each of `keys` keys, one key after the other.
async fn storm(
    client: &reqwest::Client,
    base: &str,
    pool: &PgPool,
    keys: usize,
    size: usize,
) -> Result<Row, BoxError> {
    let before = payments_count(pool).await?;
    let busiest = Arc::new(AtomicU32::new(0));
    let sampler = {
        let (pool, busiest) = (pool.clone(), busiest.clone());
        tokio::spawn(async move {
            loop {
                let in_use = pool.size().saturating_sub(pool.num_idle() as u32);
                busiest.fetch_max(in_use, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let started = Instant::now();
    let mut all = Vec::new();
    for k in 0..keys {
        let key = format!("storm-{}-{k}", uuid::Uuid::new_v4());
        let requests = (0..size).map(|_| {
            let req = client
                .post(format!("{base}/payments"))
                .header("x-tenant-id", tenants::of(k))
                .header("idempotency-key", &key)
                .header("content-type", "application/json")
                .body(BODY);
            async move {
                let started = Instant::now();
                // 409 (still in flight past the wait) counts as an error here.
                let ok = match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (ok, started.elapsed())
            }
        });
        let mut samples = Samples::default();
        for (ok, latency) in futures_util::future::join_all(requests).await {
            if ok {
                samples.latencies.push(latency);
            } else {
                samples.errors += 1;
            }
        }
        all.push(samples);
    }
    let elapsed = started.elapsed();
    sampler.abort();
    let executions = payments_count(pool).await? - before;
    let mut storm = row(
        "d duplicate storm",
        &Samples::merge(all),
        elapsed,
        executions,
    );
    storm.max_pool_connections = Some(busiest.load(Ordering::Relaxed));
    Ok(storm)
}

/// One unit of database work, run over and over by [`db_loop`].
type DbOp = fn(PgPool) -> futures_util::future::BoxFuture<'static, Result<(), BoxError>>;

/// Runs `op` from `concurrency` tasks through `pool` for `duration`, no HTTP.
async fn db_loop(pool: &PgPool, concurrency: usize, duration: Duration, op: DbOp) -> Samples {
    let deadline = Instant::now() + duration;
    let tasks = (0..concurrency).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                match op(pool.clone()).await {
                    Ok(()) => samples.latencies.push(started.elapsed()),
                    Err(_) => samples.errors += 1,
                }
            }
            samples
        })
    });
    let done = futures_util::future::join_all(tasks).await;
    Samples::merge(done.into_iter().filter_map(Result::ok).collect())
}

/// (e) The ceiling: a single-INSERT transaction.
fn single_insert(pool: PgPool) -> futures_util::future::BoxFuture<'static, Result<(), BoxError>> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO payments (id, tenant_id, amount, currency, reference) \
             VALUES ($1, $2, 1250, 'EUR', 'bench')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(tenants::next())
        .execute(&pool)
        .await?;
        Ok(())
    })
}

/// The payments handler's own statements ([`payments::record`]), with or without a key.
async fn handler_statements(
    conn: &mut sqlx::PgConnection,
    tenant: &idem_core::TenantId,
    key: Option<&idem_core::IdempotencyKey>,
) -> Result<payments::Payment, BoxError> {
    let new = payments::validate(BODY.as_bytes())?;
    let announce = payments::Announce {
        key,
        ..Default::default()
    };
    Ok(payments::record(conn, tenant, new, Some(announce)).await?)
}

/// (a0) What the bare handler sends, without HTTP: BEGIN, the handler's statements,
/// COMMIT.
fn bare_statements(pool: PgPool) -> futures_util::future::BoxFuture<'static, Result<(), BoxError>> {
    Box::pin(async move {
        let tenant = idem_core::TenantId::new(tenants::next())?;
        let mut tx = pool.begin().await?;
        handler_statements(&mut tx, &tenant, None).await?;
        tx.commit().await?;
        Ok(())
    })
}

/// (b0) What the layer sends for a new key, without HTTP: BEGIN, the claim, the
/// handler's statements, the stored response (the payment as the handler answers it),
/// COMMIT.
fn layer_statements(
    pool: PgPool,
) -> futures_util::future::BoxFuture<'static, Result<(), BoxError>> {
    Box::pin(async move {
        let backend = tenants::backend();
        let tenant = idem_core::TenantId::new(tenants::next())?;
        let key = idem_core::IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string())?;
        let request = idem_sqlx::keys::ClaimRequest {
            tenant: &tenant,
            key: &key,
            fingerprint: idem_core::Fingerprint::builder("POST", "/payments")
                .body(BODY.as_bytes(), idem_core::BodyMode::CanonicalJson)
                .finish(),
            method: "POST",
            path: "/payments",
            route: Some("/payments"),
            retention: Duration::from_secs(24 * 3600),
            tombstones: None,
            wait: Duration::from_secs(5),
        };
        let mut tx =
            idem_sqlx::transaction::begin(&pool, idem_sqlx::Isolation::ReadCommitted).await?;
        match idem_sqlx::keys::claim_on(&mut tx, &request, backend).await? {
            idem_sqlx::keys::Claim::Claimed => {}
            other => return Err(format!("a fresh key was not claimed: {other:?}").into()),
        }
        let payment = handler_statements(&mut tx, &tenant, Some(&key)).await?;
        let response = idem_core::StoredResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                (
                    "location".into(),
                    format!("/payments/{}", payment.id).into_bytes(),
                ),
            ],
            body: serde_json::to_vec(&payment)?,
        };
        idem_sqlx::keys::complete(
            &mut tx,
            &request,
            idem_sqlx::keys::Completion::Response(&response),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    })
}

fn print_table(report: &Report) {
    let backend = match &report.citus_keys_per_worker {
        Some(_) => "a Citus coordinator",
        None => "Postgres",
    };
    println!(
        "idem benchmark on {backend}: concurrency {}, {} s per timed scenario, {} tenants",
        report.concurrency, report.duration_secs, report.tenants
    );
    println!(
        "{:<26} {:>9} {:>7} {:>10} {:>9} {:>9} {:>11}",
        "scenario", "requests", "errors", "req/s", "p50 ms", "p99 ms", "executions"
    );
    for r in &report.rows {
        println!(
            "{:<26} {:>9} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>11}",
            r.scenario, r.requests, r.errors, r.requests_per_sec, r.p50_ms, r.p99_ms, r.executions
        );
    }
    println!(
        "b/a (layer, unique keys / bare) = {:.2}   target >= 0.85",
        report.layer_unique_over_bare
    );
    println!(
        "c/a (layer, replays / bare)     = {:.2}   target >= 3",
        report.layer_replay_over_bare
    );
    println!(
        "b/z (layer / hand-written)      = {:.2}   target >= 1",
        report.layer_unique_over_handwritten
    );
    for r in &report.rows {
        if let Some(max) = r.max_pool_connections {
            println!("{}: at most {max} pool connections in use", r.scenario);
        }
    }
    println!(
        "c'/a (lookup-first replays / bare) = {:.2}",
        report.lookup_first_replay_over_bare
    );
    println!(
        "a/e (bare / sqlx ceiling)       = {:.2}",
        report.bare_over_ceiling
    );
    println!(
        "b0/a0 (the database's share: b/a's bound) = {:.2}",
        report.layer_statements_over_bare_statements
    );
    println!(
        "a/f (bare with enqueue / without) = {:.2}   target >= 0.8",
        report.enqueue_over_no_enqueue
    );
    match &report.publish {
        Some(p) => println!(
            "g: commit-to-publish p50 {:.1} ms, p95 {:.1} ms (target < 100), p99 {:.1} ms; \
             {} of {} enqueued published",
            p.p50_ms, p.p95_ms, p.p99_ms, p.published, p.enqueued
        ),
        None => println!("g: not run (NATS unreachable, or left out by --only)"),
    }
    if let Some(filled) = &report.filled {
        println!(
            "h/b (new keys with {} keys in the table / without) = {:.2}   target >= 0.9 \
             ({} expired; written in {:.0} s)",
            filled.keys, report.crowded_over_unique, filled.expired, filled.secs
        );
    }
    if let Some(swept) = &report.swept {
        println!(
            "s/h (new keys while sweeping / without)   = {:.2}   target >= 0.9 \
             ({} expired keys swept in {:.1} s, {} left)",
            report.sweeping_over_crowded, swept.keys, swept.secs, swept.left
        );
    }
    if let Some(workers) = &report.citus_keys_per_worker {
        let total: i64 = workers.iter().map(|w| w.keys).sum();
        for w in workers {
            println!(
                "Citus worker {}: {} keys ({:.0}%) of {} tenants",
                w.worker,
                w.keys,
                100.0 * w.keys as f64 / total.max(1) as f64,
                w.tenants
            );
        }
    }
}
