//! The outbox relay on a Citus cluster whose outbox changes under it (the cluster at
//! `IDEM_TEST_CITUS_URL`, or the one `scripts/citus.sh` starts): a relay started
//! before idem's tables were distributed claims the coordinator's local outbox, and the
//! distributed one once `distribute` has run. (Relays sharing a distributed outbox:
//! `outbox.rs`, `relay_leases.rs` and `relay_wakeup.rs`, which the Citus suite runs on
//! the cluster.)

use std::sync::Arc;
use std::time::Duration;

use idem_sqlx::OutboxRelay;
use idem_tests::{CountingSink, TestDb, citus_test_db, until};
use tokio_util::sync::CancellationToken;

/// Enqueues `n` messages on `orders`, the `i`th from tenant `tenant-{i % 7}`.
async fn enqueue_for_tenants(db: &TestDb, n: usize) {
    db.enqueue_from("orders", n, |i| Some(format!("tenant-{}", i % 7)))
        .await;
}

async fn outbox_is_distributed(db: &TestDb) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition \
                        WHERE logicalrelid = 'idem.outbox'::regclass)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_dist_partition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_before_the_outbox_is_distributed_delivers_before_and_after() {
    let db = citus_test_db(4).await;
    sqlx::query("SELECT undistribute_table('idem.outbox')")
        .execute(&db.pool)
        .await
        .expect("the outbox back on the coordinator");
    assert!(!outbox_is_distributed(&db).await);
    let sink = Arc::new(CountingSink::default());
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::builder(db.pool.clone(), sink.clone())
        .batch_size(10)
        .poll_interval(Duration::from_millis(50))
        .listen(false)
        .build()
        .expect("relay settings");
    let task = tokio::spawn(relay.run(shutdown.clone()));

    enqueue_for_tenants(&db, 30).await;
    until("the local outbox delivered", async || {
        db.undelivered().await == 0
    })
    .await;

    let distributed = idem_sqlx::citus::distribute(&db.pool, Some("effects"))
        .await
        .expect("distribute");
    assert_eq!(
        distributed,
        idem_sqlx::citus::Distribution::Distributed {
            newly: vec!["idem.outbox"]
        }
    );
    enqueue_for_tenants(&db, 30).await;
    until("the distributed outbox delivered", async || {
        db.undelivered().await == 0
    })
    .await;
    shutdown.cancel();
    task.await.expect("join").expect("relay");

    let calls = sink.calls();
    assert_eq!(calls.len(), 60);
    assert!(calls.values().all(|&n| n == 1), "each delivered once");
}

/// Undelivered messages of `tenant`.
async fn undelivered_of(db: &TestDb, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM idem.outbox WHERE tenant_id = $1 AND delivered_at IS NULL",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .expect("undelivered")
}

/// A trigger on `tenant`'s shard of the outbox, on its worker, that fails every update:
/// that shard's claims fail as on a worker in trouble. Returns the worker's connection
/// and the shard's table.
async fn fail_updates_on_the_shard_of(db: &TestDb, tenant: &str) -> (sqlx::PgConnection, String) {
    use sqlx::Connection;
    let (shard, port): (String, i32) = sqlx::query_as(
        "SELECT shard_name, nodeport FROM citus_shards \
         WHERE shardid = get_shard_id_for_distribution_column('idem.outbox', $1)",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .expect("the tenant's outbox shard");
    let worker = db
        .workers
        .iter()
        .find(|w| i32::from(w.get_port()) == port)
        .expect("the shard's worker");
    let mut conn = sqlx::PgConnection::connect_with(&worker.clone().database(&db.name))
        .await
        .expect("connect to the shard's worker");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET citus.enable_ddl_propagation = off; \
         SET citus.enable_manual_changes_to_shards = on; \
         CREATE FUNCTION public.shard_in_trouble() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'this shard is in trouble'; END $$; \
         CREATE TRIGGER in_trouble BEFORE UPDATE ON {shard} \
           FOR EACH ROW EXECUTE FUNCTION public.shard_in_trouble()"
    )))
    .execute(&mut conn)
    .await
    .expect("the failing trigger");
    (conn, shard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_claim_fails_holds_back_only_its_own_messages() {
    let db = citus_test_db(4).await;
    // Two tenants on different shards: the healthy one's messages are the oldest, so
    // its shard is claimed first, then the failing one's.
    let (healthy, failing) = ("tenant-1", "tenant-2");
    let shard_of = async |tenant: &str| -> i64 {
        sqlx::query_scalar("SELECT get_shard_id_for_distribution_column('idem.outbox', $1)")
            .bind(tenant)
            .fetch_one(&db.pool)
            .await
            .expect("shard")
    };
    assert_ne!(shard_of(healthy).await, shard_of(failing).await);
    db.enqueue_from("orders", 5, |_| Some(healthy.to_owned()))
        .await;
    db.enqueue_from("orders", 5, |_| Some(failing.to_owned()))
        .await;
    let (mut worker, shard) = fail_updates_on_the_shard_of(&db, failing).await;

    let sink = Arc::new(CountingSink::default());
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::builder(db.pool.clone(), sink.clone())
        .batch_size(20)
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(120))
        .listen(false)
        .build()
        .expect("relay settings");
    let task = tokio::spawn(relay.run(shutdown.clone()));
    // Claimed in the round the other shard failed in, and delivered at once (not left
    // leased for the two minutes of the lease).
    until("the healthy shard's messages delivered", async || {
        undelivered_of(&db, healthy).await == 0
    })
    .await;
    assert_eq!(undelivered_of(&db, failing).await, 5);

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TRIGGER in_trouble ON {shard}"
    )))
    .execute(&mut worker)
    .await
    .expect("the shard healthy again");
    until("the other shard's messages delivered", async || {
        undelivered_of(&db, failing).await == 0
    })
    .await;
    shutdown.cancel();
    task.await.expect("join").expect("relay");
    let calls = sink.calls();
    assert_eq!(calls.len(), 10);
    assert!(calls.values().all(|&n| n == 1), "each delivered once");
}
