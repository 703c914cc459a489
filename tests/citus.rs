//! Scaling out on Citus, on a real cluster (a coordinator and two workers:
//! `scripts/citus.sh`, or the coordinator at `IDEM_TEST_CITUS_URL`): idem's tables
//! distribute by tenant beside the application's, in one step that can run at every
//! start; and the store-facing test files, compiled in again below, run on the
//! cluster (in this binary every test database is a distributed one).

use idem_axum::Limits;
use idem_tests::citus_test_db;

#[path = "it/aborted_transactions.rs"]
mod aborted_transactions;
#[path = "it/concurrency.rs"]
mod concurrency;
#[path = "it/expiry.rs"]
mod expiry;
#[path = "it/inbox.rs"]
mod inbox;
#[path = "it/inbox_poison.rs"]
mod inbox_poison;
#[path = "it/isolation.rs"]
mod isolation;
#[path = "it/key_storms.rs"]
mod key_storms;
#[path = "it/key_validation.rs"]
mod key_validation;
#[path = "it/limits.rs"]
mod limits;
#[path = "it/mismatch.rs"]
mod mismatch;
#[path = "it/observe_mode.rs"]
mod observe_mode;
#[path = "it/outbox.rs"]
mod outbox;
#[path = "it/phased.rs"]
mod phased;
#[path = "it/phased_accepted.rs"]
mod phased_accepted;
#[path = "it/phased_completer.rs"]
mod phased_completer;
#[path = "it/protected_keys.rs"]
mod protected_keys;
#[path = "it/redirects.rs"]
mod redirects;
#[path = "relay_citus.rs"]
mod relay_citus;
#[path = "it/relay_leases.rs"]
mod relay_leases;
#[path = "it/relay_wakeup.rs"]
mod relay_wakeup;
#[path = "it/replay.rs"]
mod replay;
#[path = "it/rollback.rs"]
mod rollback;
#[path = "it/route_policy.rs"]
mod route_policy;
#[path = "it/storms.rs"]
mod storms;
#[path = "it/streaming.rs"]
mod streaming;
#[path = "it/sweeper.rs"]
mod sweeper;
#[path = "it/tenants.rs"]
mod tenants;
#[path = "it/tombstones.rs"]
mod tombstones;

/// The co-location group of each of `tables`, in order.
async fn colocation(db: &idem_tests::TestDb, tables: &[&str]) -> Vec<Option<i32>> {
    let mut groups = Vec::new();
    for table in tables {
        let group: Option<i32> = sqlx::query_scalar(
            "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = $1::regclass",
        )
        .bind(table)
        .fetch_optional(&db.pool)
        .await
        .expect("pg_dist_partition");
        groups.push(group);
    }
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idems_tables_are_distributed_by_tenant_and_co_located_with_the_applications() {
    let db = citus_test_db(4).await;
    let mut tables = vec!["effects", "payments", "ledger_entries"];
    tables.extend(idem_sqlx::citus::DISTRIBUTED_TABLES);
    let groups = colocation(&db, &tables).await;
    assert!(
        groups.iter().all(Option::is_some),
        "all distributed: {groups:?}"
    );
    assert!(
        groups.windows(2).all(|pair| pair[0] == pair[1]),
        "one co-location group: {groups:?}"
    );
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition \
         WHERE logicalrelid::text LIKE 'idem.%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("distribution columns");
    assert_eq!(
        columns,
        vec!["tenant_id"; idem_sqlx::citus::DISTRIBUTED_TABLES.len()]
    );
    assert!(idem_sqlx::citus::DISTRIBUTED_TABLES.contains(&"idem.inbox"));
    assert_eq!(db.workers.len(), 2, "a coordinator and two workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributing_again_changes_nothing_so_it_can_run_at_every_start() {
    let db = citus_test_db(4).await;
    let again = idem_sqlx::citus::distribute(&db.pool, Some("effects"))
        .await
        .expect("distribute again");
    assert_eq!(
        again,
        idem_sqlx::citus::Distribution::Distributed { newly: vec![] }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributing_beside_a_table_of_another_co_location_group_is_refused() {
    let db = citus_test_db(4).await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (tenant_id text NOT NULL, id bigint NOT NULL, \
           PRIMARY KEY (tenant_id, id)); \
         SELECT create_distributed_table('accounts', 'tenant_id', colocate_with => 'none')",
    )
    .execute(&db.pool)
    .await
    .expect("a table in a co-location group of its own");
    let refused = idem_sqlx::citus::distribute(&db.pool, Some("accounts")).await;
    assert!(
        matches!(&refused, Err(idem_sqlx::StoreError::NotColocated(what)) if what.contains("idem.keys")),
        "{refused:?}"
    );
    let again = idem_sqlx::citus::distribute(&db.pool, Some("effects")).await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_rows_of_every_co_located_table_live_on_one_worker() {
    let db = citus_test_db(4).await;
    // A tenant's shard of each table, and the worker that holds it.
    let mut tables = vec!["effects", "payments", "ledger_entries"];
    tables.extend(idem_sqlx::citus::DISTRIBUTED_TABLES);
    let placements: Vec<(String, i32)> = sqlx::query_as(
        "SELECT logicalrelid::text, p.nodeport FROM pg_dist_shard s \
         JOIN pg_dist_shard_placement p USING (shardid) \
         WHERE s.shardid IN (SELECT get_shard_id_for_distribution_column(t, 'tenant-42') \
           FROM unnest($1::text[]::regclass[]) t) \
         ORDER BY 1",
    )
    .bind(&tables)
    .fetch_all(&db.pool)
    .await
    .expect("placements");
    assert_eq!(placements.len(), tables.len(), "{placements:?}");
    assert!(
        placements.iter().all(|(_, port)| *port == placements[0].1),
        "one worker: {placements:?}"
    );
}

/// Two-phase commits the coordinator recorded (a transaction that wrote on more than
/// one node); `pg_dist_transaction` keeps them until its recovery runs (a minute).
async fn two_phase_commits(db: &idem_tests::TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_dist_transaction")
        .fetch_one(&db.pool)
        .await
        .expect("pg_dist_transaction")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_commits_on_one_worker_without_two_phase_commit() {
    let db = citus_test_db(4).await;
    let (app, _) = idem_tests::effects_app(&db, |l| l).await;
    let before = two_phase_commits(&db).await;
    // The claim, the handler's row, its outbox message and the stored response.
    let first = app
        .send("/effects", "tenant-7", Some("one-shard"), "x")
        .await;
    assert_eq!(first.status(), 201);
    let replay = app
        .send("/effects", "tenant-7", Some("one-shard"), "x")
        .await;
    assert!(idem_tests::replayed(&replay));
    assert_eq!(
        two_phase_commits(&db).await,
        before,
        "one worker's transaction, no two-phase commit"
    );
    assert_eq!(db.effects().await, 1);
}

/// Every shard of every distributed table on the worker that does not hold
/// `tenant`'s rows, locked (ACCESS EXCLUSIVE) in a transaction on that worker until the
/// returned connection is closed: a statement that reached any of them would wait.
async fn lock_the_other_worker(db: &idem_tests::TestDb, tenant: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let home: i32 = sqlx::query_scalar(
        "SELECT nodeport FROM citus_shards \
         WHERE shardid = get_shard_id_for_distribution_column('idem.keys', $1)",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .expect("the tenant's worker");
    let other = db
        .workers
        .iter()
        .find(|w| i32::from(w.get_port()) != home)
        .expect("a second worker");
    let shards: Vec<String> = sqlx::query_scalar(
        "SELECT shard_name FROM citus_shards \
         WHERE nodeport = $1 AND citus_table_type = 'distributed'",
    )
    .bind(i32::from(other.get_port()))
    .fetch_all(&db.pool)
    .await
    .expect("the other worker's shards");
    assert!(
        shards.iter().any(|s| s.starts_with("idem.keys_")),
        "{shards:?}"
    );
    let mut conn = sqlx::PgConnection::connect_with(&other.clone().database(&db.name))
        .await
        .expect("connect to the other worker");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL citus.enable_manual_changes_to_shards = on; \
         LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        shards.join(", ")
    )))
    .execute(&mut conn)
    .await
    .expect("the other worker's shards locked");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_runs_on_its_tenants_worker_alone() {
    let db = citus_test_db(4).await;
    let (app, _) =
        idem_tests::effects_app(&db, |l| l.limits(Limits::default().key_quota(100))).await;
    // With every shard of the other worker locked, the claim, the quota count, the
    // handler's row, its outbox message, the stored response and the replay still
    // finish: none of them reaches that worker.
    let held = lock_the_other_worker(&db, "tenant-7").await;
    let bound = std::time::Duration::from_secs(30);
    let post = || {
        tokio::time::timeout(
            bound,
            app.post("/effects", "tenant-7", Some("home-only"), "x")
                .send(),
        )
    };
    let first = post()
        .await
        .expect("the request waited on the other worker")
        .expect("first");
    assert_eq!(first.status(), 201);
    let replay = post()
        .await
        .expect("the replay waited on the other worker")
        .expect("replay");
    assert!(idem_tests::replayed(&replay));
    sqlx::Connection::close(held)
        .await
        .expect("release the other worker");
    assert_eq!(db.effects().await, 1);
}

/// A handler whose table is distributed by another column (an account), so its row
/// lives on another worker than the tenant's key.
async fn posting(
    axum::Extension(tenant): axum::Extension<idem_axum::TenantId>,
    axum::extract::Path(account): axum::extract::Path<String>,
    mut tx: idem_axum::Tx,
) -> axum::http::StatusCode {
    sqlx::query("INSERT INTO postings (account, tenant_id) VALUES ($1, $2)")
        .bind(&account)
        .bind(tenant.as_str())
        .execute(&mut *tx)
        .await
        .expect("posting");
    axum::http::StatusCode::CREATED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_table_is_not_co_located_commits_once_in_a_distributed_transaction() {
    let db = citus_test_db(4).await;
    sqlx::raw_sql(
        "CREATE TABLE postings (id bigserial, account text NOT NULL, tenant_id text NOT NULL, \
           PRIMARY KEY (account, id)); \
         SELECT create_distributed_table('postings', 'account', colocate_with => 'none')",
    )
    .execute(&db.pool)
    .await
    .expect("postings, distributed by account");
    // An account whose shard is on the other worker than tenant-7's keys.
    let account: String = sqlx::query_scalar(
        "SELECT a FROM generate_series(1, 100) n, LATERAL (SELECT 'acct-' || n AS a) x \
         WHERE (SELECT nodeport FROM pg_dist_shard_placement \
                WHERE shardid = get_shard_id_for_distribution_column('postings', a)) \
            <> (SELECT nodeport FROM pg_dist_shard_placement \
                WHERE shardid = get_shard_id_for_distribution_column('idem.keys', 'tenant-7')) \
         LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("an account on the other worker");
    let layer =
        idem_axum::IdempotencyLayer::new(db.pool.clone()).tenant(idem_tests::tenant_from_header());
    let app = idem_tests::TestApp::spawn(axum::Router::new().route(
        "/accounts/{account}/postings",
        axum::routing::post(posting).route_layer(layer),
    ))
    .await;
    let path = format!("/accounts/{account}/postings");
    let before = two_phase_commits(&db).await;
    let first = app.send(&path, "tenant-7", Some("cross"), "x").await;
    assert_eq!(first.status(), 201);
    assert!(
        two_phase_commits(&db).await > before,
        "the key's worker and the posting's worker committed together (two-phase)"
    );
    let replay = app.send(&path, "tenant-7", Some("cross"), "x").await;
    assert!(idem_tests::replayed(&replay));
    let postings: i64 = sqlx::query_scalar("SELECT count(*) FROM postings")
        .fetch_one(&db.pool)
        .await
        .expect("postings");
    assert_eq!(postings, 1, "exactly once across two workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_tally_counts_before_and_after_the_keys_are_distributed() {
    let db = citus_test_db(4).await;
    sqlx::query("SELECT undistribute_table('idem.keys')")
        .execute(&db.pool)
        .await
        .expect("the keys back on the coordinator");
    sqlx::raw_sql(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, expires_at, \
           response_status, completed_at) \
         VALUES ('tenant-7', 'k', decode(repeat('00', 32), 'hex'), 'POST', '/p', \
           now() + interval '1 day', 201, now())",
    )
    .execute(&db.pool)
    .await
    .expect("a completed key");
    let tenant = idem_axum::TenantId::new("tenant-7").expect("tenant");
    let key = idem_core::IdempotencyKey::parse("k").expect("key");
    let tally =
        idem_sqlx::ReplayTally::new(db.pool.clone()).delay(std::time::Duration::from_secs(3600));
    let replays = async || -> i64 {
        sqlx::query_scalar("SELECT replays::bigint FROM idem.keys")
            .fetch_one(&db.pool)
            .await
            .expect("replays")
    };
    tally.add(&tenant, &key, idem_sqlx::Tallied::Replay);
    tally
        .flush()
        .await
        .expect("a flush to the coordinator's local keys");
    assert_eq!(replays().await, 1);
    idem_sqlx::citus::distribute(&db.pool, Some("effects"))
        .await
        .expect("distributed again");
    tally.add(&tenant, &key, idem_sqlx::Tallied::Replay);
    tally.flush().await.expect("a flush shard by shard");
    assert_eq!(replays().await, 2);
}
