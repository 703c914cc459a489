//! Postgres for tests: one server per test binary, one fresh database per test.
//!
//! `DATABASE_URL` set: that server is used. Otherwise a container is started through
//! testcontainers' Postgres module with the image named by `IDEM_TEST_PG_IMAGE`
//! (default `postgres:17`). The container lives in a guard shared by the running tests
//! and is removed when the last of them drops it: nothing is left behind. On a
//! `DATABASE_URL` server each test drops its database when it ends.
//!
//! `IDEM_TEST_CITUS_URL` set (a Citus coordinator whose workers are in its
//! `pg_dist_node`, as `scripts/citus.sh` starts): every test database is made on the
//! coordinator and its workers, idem's tables and the test's are distributed by
//! tenant, and the same tests run on the cluster. It wins over `DATABASE_URL`.

use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::ImageExt;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::oneshot;

/// A running Postgres server shared by the tests of one binary.
pub struct PgServer {
    url: String,
    options: PgConnectOptions,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

static SERVER: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());

fn server() -> Arc<PgServer> {
    let mut shared = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(start_server());
    *shared = Arc::downgrade(&server);
    server
}

/// The Citus coordinator: `IDEM_TEST_CITUS_URL`, or the one `scripts/citus.sh` starts.
fn citus_server() -> Arc<PgServer> {
    let url = std::env::var(CITUS_URL).unwrap_or_else(|_| DEFAULT_CITUS_URL.to_owned());
    Arc::new(PgServer {
        options: PgConnectOptions::from_str(&url).expect("a Citus coordinator's URL"),
        url,
        stop: None,
        thread: None,
    })
}

fn start_server() -> PgServer {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return PgServer {
            options: PgConnectOptions::from_str(&url).expect("DATABASE_URL is a Postgres URL"),
            url,
            stop: None,
            thread: None,
        };
    }
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // The container is owned by a thread with its own runtime, so it outlives the
    // runtime of the test that happened to start it and is removed from there.
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime for the Postgres container");
        rt.block_on(async move {
            let container = match postgres_image().start().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = url_tx.send(Err(format!("starting Postgres: {e}")));
                    return;
                }
            };
            let port = container.get_host_port_ipv4(5432).await;
            let _ = url_tx.send(
                port.map(|p| format!("postgres://postgres:postgres@127.0.0.1:{p}/postgres"))
                    .map_err(|e| e.to_string()),
            );
            let _ = stop_rx.await;
            if let Err(e) = container.rm().await {
                eprintln!("removing the Postgres container failed: {e}");
            }
        });
    });
    let url = url_rx
        .recv()
        .expect("container thread answers")
        .unwrap_or_else(|e| panic!("Postgres container: {e}"));
    PgServer {
        options: PgConnectOptions::from_str(&url).expect("container URL"),
        url,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// A fresh database with idem's and the payments example's migrations applied, plus
/// the `effects` table of the test router.
pub struct TestDb {
    /// A pool on the fresh database.
    pub pool: PgPool,
    /// Options to connect to the fresh database (for more pools).
    pub options: PgConnectOptions,
    /// The database's name.
    pub name: String,
    /// A URL of the fresh database (for child processes).
    pub url: String,
    /// On a Citus cluster, its workers (empty otherwise).
    pub workers: Vec<PgConnectOptions>,
    server: Arc<PgServer>,
}

impl Drop for TestDb {
    /// On a server of the developer's (`DATABASE_URL`, or a Citus cluster's nodes),
    /// the test's database is dropped with it; a container takes its databases along
    /// when it is removed.
    fn drop(&mut self) {
        if self.server.stop.is_some() {
            return;
        }
        let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let nodes = std::iter::once(self.server.options.clone()).chain(self.workers.clone());
        for node in nodes {
            if let Err(e) = run_blocking(node, vec![drop_sql.clone()]) {
                eprintln!("dropping test database {} failed: {e}", self.name);
            }
        }
    }
}

/// The variable that names a Citus coordinator to run the tests on.
pub const CITUS_URL: &str = "IDEM_TEST_CITUS_URL";

/// The coordinator `scripts/citus.sh` starts.
pub const DEFAULT_CITUS_URL: &str = "postgres://postgres@127.0.0.1:5433/postgres";

/// Whether every test of this binary runs on a Citus cluster: with
/// `IDEM_TEST_CITUS_URL` set, or in the Citus suite (`tests/citus.rs`, whose binary
/// runs the store-facing test files a second time, on the cluster).
pub fn on_citus() -> bool {
    std::env::var_os(CITUS_URL).is_some() || in_citus_suite()
}

/// Whether this process is one of the Citus suite's test binaries (cargo names them
/// `citus-<hash>` and `citus_<name>-<hash>`).
fn in_citus_suite() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .is_some_and(|stem| stem.starts_with("citus-") || stem.starts_with("citus_"))
}

/// The workers of the Citus coordinator at `coordinator` (its `pg_dist_node`).
async fn citus_workers(coordinator: &PgConnectOptions) -> Vec<PgConnectOptions> {
    let mut admin = PgConnection::connect_with(coordinator)
        .await
        .expect("connect to the coordinator");
    let nodes: Vec<(String, i32)> = sqlx::query_as(
        "SELECT nodename, nodeport FROM pg_dist_node \
         WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeport",
    )
    .fetch_all(&mut admin)
    .await
    .expect("the coordinator's workers");
    admin.close().await.ok();
    assert!(!nodes.is_empty(), "the Citus coordinator has no workers");
    nodes
        .into_iter()
        .map(|(host, port)| coordinator.clone().host(&host).port(port as u16))
        .collect()
}

/// A connection to the database `name` on `node`, with the `citus` extension created.
async fn with_citus(node: &PgConnectOptions, name: &str) -> PgConnection {
    let mut db = PgConnection::connect_with(&node.clone().database(name))
        .await
        .expect("connect to the node's test database");
    sqlx::query("CREATE EXTENSION citus")
        .execute(&mut db)
        .await
        .expect("citus in the test database");
    db
}

/// Makes `name` a Citus database: the extension on the coordinator and each worker
/// (where the database was created too), and the workers added to it.
async fn make_citus_database(
    coordinator: &PgConnectOptions,
    workers: &[PgConnectOptions],
    name: &str,
) {
    // Adding nodes to two databases at once updates the workers' shared catalogs at
    // once ("tuple concurrently updated"): databases are set up one by one, across the
    // test processes that share the cluster too (a lock file beside the others').
    static SETUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = SETUP.lock().await;
    let _one_process_at_a_time = setup_lock().await;
    for worker in workers {
        let mut admin = PgConnection::connect_with(worker)
            .await
            .expect("connect to a worker");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("the test database on a worker");
        admin.close().await.ok();
        with_citus(worker, name).await.close().await.ok();
    }
    let mut db = with_citus(coordinator, name).await;
    let host = coordinator.get_host().to_owned();
    sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
        .bind(&host)
        .bind(i32::from(coordinator.get_port()))
        .execute(&mut db)
        .await
        .expect("the coordinator's own address");
    for worker in workers {
        sqlx::query("SELECT citus_add_node($1, $2)")
            .bind(worker.get_host())
            .bind(i32::from(worker.get_port()))
            .execute(&mut db)
            .await
            .expect("a worker added");
    }
    db.close().await.ok();
}

/// The cluster-wide setup lock: an exclusive lock on a file in the temporary
/// directory, held until the returned file is dropped.
async fn setup_lock() -> std::fs::File {
    tokio::task::spawn_blocking(|| {
        let path = std::env::temp_dir().join("idem-citus-setup.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("the Citus setup lock file");
        file.lock().expect("the Citus setup lock");
        file
    })
    .await
    .expect("waiting for the Citus setup lock")
}

impl TestDb {
    /// A pool of one connection on the same database whose session runs `set` (a
    /// `SET` of its own, such as `SET lock_timeout = '7s'`) when it connects.
    pub async fn one_session(&self, set: &'static str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql(set).execute(conn).await?;
                    Ok(())
                })
            })
            .connect_with(self.options.clone())
            .await
            .expect("a pool of one session")
    }

    /// Another pool on the same database.
    pub async fn pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .expect("pool on the test database")
    }

    /// Rows in the test router's `effects` table (one per handler execution that
    /// committed).
    pub async fn effects(&self) -> i64 {
        self.count("SELECT count(*) FROM effects").await
    }

    /// Moves every key past its retention, as if the store's clock had run on: its
    /// expiry a second ago and its retention zero (a tombstone's window, counted from
    /// then, still runs).
    pub async fn expire_keys(&self) {
        sqlx::query(
            "UPDATE idem.keys SET expires_at = now() - interval '1 second', \
             retention = interval '0'",
        )
        .execute(&self.pool)
        .await
        .expect("expire keys");
    }

    /// Rows in `idem.keys`.
    pub async fn keys(&self) -> i64 {
        self.count("SELECT count(*) FROM idem.keys").await
    }

    /// Rows in the example's `payments` table.
    pub async fn payments(&self) -> i64 {
        self.count("SELECT count(*) FROM payments").await
    }

    /// Rows in the example's `ledger_entries`.
    pub async fn ledger_rows(&self) -> i64 {
        self.count("SELECT count(*) FROM ledger_entries").await
    }

    /// Outbox messages not yet delivered.
    pub async fn undelivered(&self) -> i64 {
        self.count("SELECT count(*) FROM idem.outbox WHERE delivered_at IS NULL")
            .await
    }

    /// Enqueues `n` messages on `topic` (payloads `m0`, `m1`, ...) in one transaction.
    pub async fn enqueue_many(&self, topic: &str, n: usize) {
        self.enqueue_from(topic, n, |_| None).await;
    }

    /// Enqueues `n` messages on `topic` (payloads `m0`, `m1`, ...) in one transaction,
    /// the `i`th from the request of tenant `tenant_of(i)` with key `key-{i}` (none
    /// when `None`): on a Citus cluster, on the shards of those tenants.
    pub async fn enqueue_from(
        &self,
        topic: &str,
        n: usize,
        tenant_of: impl Fn(usize) -> Option<String>,
    ) {
        let mut tx = self.pool.begin().await.expect("begin");
        for i in 0..n {
            let mut message = idem_sqlx::Message::new(topic, format!("m{i}").into_bytes());
            if let Some(tenant) = tenant_of(i) {
                message = message.from_request(
                    &idem_core::TenantId::new(tenant).expect("tenant"),
                    &idem_core::IdempotencyKey::parse(&format!("key-{i}")).expect("key"),
                );
            }
            idem_sqlx::outbox::enqueue(&mut tx, message)
                .await
                .expect("enqueue");
        }
        tx.commit().await.expect("commit");
    }

    /// Sessions on this database idle inside an open transaction: a leak, unless a
    /// request is deliberately paused inside its handler.
    pub async fn transactions_left_open(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        )
        .bind(&self.name)
        .fetch_one(&self.pool)
        .await
        .expect("pg_stat_activity")
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}

/// Runs `statements` on a connection of their own, from synchronous code such as a
/// `Drop` inside the test's runtime: the async work gets a thread and a runtime of its
/// own.
pub fn run_blocking(options: PgConnectOptions, statements: Vec<String>) -> Result<(), String> {
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut conn = PgConnection::connect_with(&options)
                .await
                .map_err(|e| e.to_string())?;
            for statement in statements {
                sqlx::query(AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            conn.close().await.map_err(|e| e.to_string())
        })
    })
    .join();
    done.unwrap_or_else(|_| Err("the thread running the statements panicked".into()))
}

/// Creates a fresh database on the shared server and migrates it (on the Citus
/// cluster when `IDEM_TEST_CITUS_URL` is set).
pub async fn test_db() -> TestDb {
    test_db_with(10).await
}

/// Like [`test_db`], with a pool of `max_connections`.
pub async fn test_db_with(max_connections: u32) -> TestDb {
    if on_citus() {
        return citus_test_db(max_connections).await;
    }
    let server = tokio::task::spawn_blocking(server)
        .await
        .expect("starting the Postgres server");
    new_test_db(server, false, max_connections).await
}

/// A fresh database on the Citus cluster (`IDEM_TEST_CITUS_URL`, or the coordinator
/// `scripts/citus.sh` starts), whatever the binary's backend: the database on every
/// node, the extension, the workers added, the tables distributed by tenant.
pub async fn citus_test_db(max_connections: u32) -> TestDb {
    new_test_db(citus_server(), true, max_connections).await
}

async fn new_test_db(server: Arc<PgServer>, citus: bool, max_connections: u32) -> TestDb {
    let name = format!("idem_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&server.options)
        .await
        .expect("connect to the test server");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    admin.close().await.ok();
    let workers = match citus {
        true => citus_workers(&server.options).await,
        false => Vec::new(),
    };
    if citus {
        make_citus_database(&server.options, &workers, &name).await;
    }
    let options = server.options.clone().database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options.clone())
        .await
        .expect("pool on the test database");
    prepare(&pool, citus).await;
    TestDb {
        url: with_database(&server.url, &name),
        pool,
        options,
        name,
        workers,
        server,
    }
}

/// `url` with its database replaced by `name`, keeping credentials and parameters.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[host_start..]
        .find('/')
        .map_or(base.len(), |i| host_start + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{name}{query}", &base[..host_end])
}

/// Applies idem's and the example's migrations and creates the effects router's table;
/// on Citus (`citus`), distributes the effects table, the example's and idem's by
/// tenant, co-located.
pub async fn prepare(pool: &PgPool, citus: bool) {
    payments::migrate(pool).await.expect("migrations");
    sqlx::query(
        "CREATE TABLE effects (id bigserial, tenant_id text NOT NULL, \
         note text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (tenant_id, id))",
    )
    .execute(pool)
    .await
    .expect("effects table");
    if citus {
        sqlx::query("SELECT create_distributed_table('effects', 'tenant_id')")
            .execute(pool)
            .await
            .expect("effects distributed");
        payments::distribute(pool)
            .await
            .expect("the example's tables and idem's distributed");
    }
}

/// The Postgres image the tests run (`IDEM_TEST_PG_IMAGE`, default `postgres:17`), as
/// the Postgres module configured with it.
pub fn postgres_image() -> testcontainers_modules::testcontainers::ContainerRequest<Postgres> {
    let image = std::env::var("IDEM_TEST_PG_IMAGE").unwrap_or_else(|_| "postgres:17".to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    Postgres::default().with_name(name).with_tag(tag)
}
