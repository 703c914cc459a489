//! The sweeper keeps idem's tables from growing forever: expired keys, delivered outbox
//! rows past their retention and inbox rows past their window go; pending messages,
//! dead letters, recent rows and phased keys still in progress stay; a row another
//! transaction holds is skipped, not waited on.

use std::time::Duration;

use chrono::Utc;
use idem_sqlx::{Sweeper, Swept};
use idem_tests::{TestDb, effects_app, on_citus, test_db};

async fn count(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

/// Six outbox rows: delivered long ago (x2), delivered just now, pending and old,
/// dead-lettered and old, leased and old. Their times are bound from here (Citus takes
/// no volatile function, nor now() beside a column, in an UPDATE).
async fn outbox_rows(db: &TestDb) {
    db.enqueue_many("orders", 6).await;
    let rows: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT tenant_id, id FROM idem.outbox WHERE topic = 'orders' ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("the messages");
    let now = Utc::now();
    let days_ago = |n: i64| Some(now - chrono::Duration::days(n));
    for (n, (tenant, id)) in (1..).zip(rows) {
        let delivered = match n {
            1 | 2 => days_ago(2),
            3 => Some(now),
            _ => None,
        };
        let dead = (n == 5).then(|| now - chrono::Duration::days(2));
        let leased_by = (n == 6).then(uuid::Uuid::new_v4);
        sqlx::query(
            "UPDATE idem.outbox SET created_at = $3, delivered_at = $4, \
               dead_lettered_at = $5, leased_by = $6 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(days_ago(3))
        .bind(delivered)
        .bind(dead)
        .bind(leased_by)
        .execute(&db.pool)
        .await
        .expect("age the outbox");
    }
}

/// Four inbox rows of a few tenants: processed long ago, processed just now, failing
/// and old, dead and old.
async fn inbox_rows(db: &TestDb) {
    sqlx::raw_sql(
        "INSERT INTO idem.inbox (tenant_id, consumer, message_id, received_at, processed_at, attempts, dead_at) VALUES \
           ('t1', 'ledger', gen_random_uuid(), now() - interval '10 days', now() - interval '10 days', 0, NULL), \
           ('t2', 'ledger', gen_random_uuid(), now(), now(), 0, NULL), \
           ('', 'ledger', gen_random_uuid(), now() - interval '10 days', NULL, 2, NULL), \
           ('t1', 'ledger', gen_random_uuid(), now() - interval '10 days', NULL, 5, now() - interval '9 days')",
    )
    .execute(&db.pool)
    .await
    .expect("inbox rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_what_is_past_its_time_and_keeps_the_rest() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    for key in ["k1", "k2", "k3"] {
        let r = app.send("/effects", "t1", Some(key), "n").await;
        assert_eq!(r.status(), 201);
    }
    sqlx::query(
        "UPDATE idem.keys SET expires_at = now() - interval '1 second', retention = interval '0' \
         WHERE key IN ('k1', 'k2')",
    )
    .execute(&db.pool)
    .await
    .expect("expire two keys");
    // The three requests enqueued a message each: deliver them just now.
    sqlx::query("UPDATE idem.outbox SET delivered_at = now()")
        .execute(&db.pool)
        .await
        .expect("delivered");
    outbox_rows(&db).await;
    inbox_rows(&db).await;

    let sweeper = Sweeper::new(db.pool.clone())
        .batch_size(1) // every table takes several batches
        .outbox_retention(Duration::from_secs(24 * 3600))
        .inbox_window(Duration::from_secs(7 * 24 * 3600));
    let swept = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(
        swept,
        Swept {
            keys: 2,
            outbox: 2,
            inbox: 2,
            observed: 0,
            tombstones: 0,
        }
    );
    assert_eq!(db.keys().await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idem.outbox WHERE delivered_at IS NULL"
        )
        .await,
        3,
        "pending, dead-lettered and leased messages stay"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idem.outbox WHERE dead_lettered_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM idem.inbox").await,
        2,
        "the recent row and the dead letter stay"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idem.inbox WHERE dead_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        sweeper.sweep_once().await.expect("again"),
        Swept::default(),
        "nothing left to sweep"
    );
}

/// Two expired keys of one tenant.
async fn expired_keys(db: &TestDb) {
    sqlx::raw_sql(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, created_at, \
           expires_at, retention, response_status, completed_at) VALUES \
         ('t', 'old-1', decode(repeat('00', 32), 'hex'), 'POST', '/p', \
           now() - interval '3 days', now() - interval '2 days', interval '1 day', 201, \
           now() - interval '3 days'), \
         ('t', 'old-2', decode(repeat('00', 32), 'hex'), 'POST', '/p', \
           now() - interval '3 days', now() - interval '2 days', interval '1 day', 201, \
           now() - interval '3 days')",
    )
    .execute(&db.pool)
    .await
    .expect("expired keys");
}

/// Plain Postgres skips the rows another transaction holds (`SKIP LOCKED`) and takes
/// the rest. A Citus coordinator reads a batch without locks and deletes it by key: its
/// wait on a held row ends at the sweeper's lock timeout, on the worker, and that
/// table's batch is left for the next pass; the pass goes on and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_skips_a_row_another_transaction_holds_instead_of_waiting() {
    let db = test_db().await;
    expired_keys(&db).await;
    db.enqueue_many("orders", 2).await;
    sqlx::query("UPDATE idem.outbox SET delivered_at = now() - interval '2 days'")
        .execute(&db.pool)
        .await
        .expect("old");
    // A request holds one of the keys, a transaction one of the messages (each on the
    // one shard of its tenant: a query naming the tenant may lock on Citus).
    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT key FROM idem.keys WHERE tenant_id = 't' AND key = 'old-1' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock one key");
    sqlx::query("SELECT id FROM idem.outbox WHERE tenant_id = '' ORDER BY id LIMIT 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock one message");

    let sweeper = Sweeper::new(db.pool.clone()).lock_timeout(Duration::from_millis(200));
    let swept = tokio::time::timeout(Duration::from_secs(10), sweeper.sweep_once())
        .await
        .expect("the sweeper waited on a lock")
        .expect("a held row is no error");
    let (now, next) = if on_citus() { (0, 2) } else { (1, 1) };
    assert_eq!(
        (swept.keys, swept.outbox),
        (now, now),
        "the held rows were skipped (on Citus, their batches)"
    );
    holder.rollback().await.expect("release");
    let swept = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(
        (swept.keys, swept.outbox),
        (next, next),
        "and taken on the next pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phased_key_still_in_progress_is_never_swept_however_old() {
    let db = test_db().await;
    // Two phased keys claimed long ago: one finished and expired, one still in progress
    // (its owner crashed; a retry or the completer will resume it); and a key of no
    // owner that never completed, expired too.
    sqlx::raw_sql(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, created_at, \
           expires_at, retention, fence, locked_until, phases, recovery_point, \
           response_status, completed_at) VALUES \
         ('t', 'finished', decode(repeat('00', 32), 'hex'), 'POST', '/p', \
           now() - interval '3 days', now() - interval '2 days', interval '1 day', 1, NULL, \
           '{}', 'done', 201, now() - interval '2 days'), \
         ('t', 'in-progress', decode(repeat('00', 32), 'hex'), 'POST', '/p', \
           now() - interval '3 days', now() - interval '2 days', interval '1 day', 1, \
           now() - interval '2 days', '{\"pending\": {\"done\": 1}}', 'pending', NULL, NULL), \
         ('t', 'unowned', decode(repeat('00', 32), 'hex'), 'POST', '/p', \
           now() - interval '3 days', now() - interval '2 days', interval '1 day', NULL, \
           NULL, NULL, NULL, NULL, NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("phased keys");
    let swept = Sweeper::new(db.pool.clone())
        .sweep_once()
        .await
        .expect("sweep");
    assert_eq!(swept.keys, 2, "the finished key and the unowned one");
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idem.keys")
        .fetch_all(&db.pool)
        .await
        .expect("keys");
    assert_eq!(left, ["in-progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeper_told_to_stop_stops_in_its_pause_not_after_its_backlog() {
    let db = test_db().await;
    sqlx::raw_sql(
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, response_status, \
           created_at, completed_at, expires_at, retention) \
         SELECT 't', 'old-' || g, sha256(int8send(g)), 'POST', '/p', 200, \
           now() - interval '2 days', now() - interval '2 days', now() - interval '1 day', \
           interval '1 hour' \
         FROM generate_series(1, 40) AS g",
    )
    .execute(&db.pool)
    .await
    .expect("a backlog of expired keys");
    // Batches of one key, each followed by a pause 99 times as long as it took.
    let stop = tokio_util::sync::CancellationToken::new();
    let sweeper = Sweeper::new(db.pool.clone()).batch_size(1).share(0.01);
    let running = tokio::spawn(sweeper.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(30), async {
        while db.keys().await == 40 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the sweeper's first batch");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the sweeper stopped")
        .expect("the sweeper's task");
    let left = db.keys().await;
    assert!(
        left > 0 && left < 40,
        "{left} of 40 expired keys left: the pass ended in a pause, not after the backlog"
    );
}
