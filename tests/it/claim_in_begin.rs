//! A new key claimed in its transaction's first message (`idem_sqlx::keys::open`): one
//! round trip for BEGIN and the claim, and nothing left behind when the claim fails.

use std::time::{Duration, Instant};

use idem_core::{BodyMode, Fingerprint, IdempotencyKey, TenantId};
use idem_sqlx::Isolation;
use idem_sqlx::keys::{ClaimRequest, Opened};
use idem_tests::test_db;
use sqlx::{PgPool, Row};

fn request<'a>(
    tenant: &'a TenantId,
    key: &'a IdempotencyKey,
    path: &'a str,
    route: Option<&'a str>,
) -> ClaimRequest<'a> {
    ClaimRequest {
        tenant,
        key,
        fingerprint: Fingerprint::builder("POST", path)
            .body(b"{}", BodyMode::Raw)
            .finish(),
        method: "POST",
        path,
        route,
        retention: Duration::from_secs(90),
        wait: Duration::from_millis(200),
    }
}

async fn open(pool: &PgPool, isolation: Isolation, req: &ClaimRequest<'_>) -> Opened {
    let conn = pool.acquire().await.expect("acquire");
    idem_sqlx::keys::open(conn, isolation, req)
        .await
        .expect("open")
}

async fn show(conn: &mut sqlx::PgConnection, setting: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
        .fetch_one(conn)
        .await
        .expect("show")
}

async fn keys(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idem.keys")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_claimed_in_the_transactions_first_message_and_rolls_back_with_it() {
    let db = test_db().await;
    let pool = db.one_session("SET lock_timeout = '7s'").await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("k").expect("key");
    let req = request(&tenant, &key, "/p", Some("/p"));

    let Opened::Claimed(mut tx) = open(&pool, Isolation::RepeatableRead, &req).await else {
        panic!("a new key is claimed");
    };
    assert_eq!(
        show(&mut tx, "transaction_isolation").await,
        "repeatable read",
        "the transaction runs at the layer's isolation level"
    );
    assert_eq!(
        show(&mut tx, "lock_timeout").await,
        "7s",
        "the handler gets the session's own lock_timeout back, not the claim's wait"
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(keys(&pool).await, 0, "the claim was the transaction's");

    let Opened::Claimed(tx) = open(&pool, Isolation::ReadCommitted, &req).await else {
        panic!("a rolled-back key is new again");
    };
    tx.commit().await.expect("commit");
    assert_eq!(keys(&pool).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_key_opens_nothing_and_hands_the_connection_back_idle() {
    let db = test_db().await;
    let pool = db.one_session("SET lock_timeout = '7s'").await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("k").expect("key");
    let req = request(&tenant, &key, "/p", Some("/p"));
    let Opened::Claimed(tx) = open(&pool, Isolation::ReadCommitted, &req).await else {
        panic!("a new key is claimed");
    };
    tx.commit().await.expect("commit");

    let taken = open(&pool, Isolation::ReadCommitted, &req).await;
    assert!(matches!(taken, Opened::Taken), "{taken:?}");

    // The pool's one connection is usable, outside any transaction, with nothing of
    // the failed claim in force.
    let mut conn = pool.acquire().await.expect("acquire");
    assert_eq!(show(&mut conn, "lock_timeout").await, "7s");
    // In the simple-query protocol a lone statement's transaction starts with it; in
    // one left open it started earlier.
    let row = sqlx::raw_sql("SELECT now() = statement_timestamp()")
        .fetch_one(&mut *conn)
        .await
        .expect("a statement runs: the connection is not in a failed transaction");
    assert!(
        row.get::<bool, _>(0),
        "the statement is a transaction of its own"
    );
    drop(conn);
    let mut tx = pool.begin().await.expect("a transaction begins on it");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.keys")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_running_transaction_is_in_flight_after_the_wait() {
    let db = test_db().await;
    let tenant = TenantId::new("t").expect("tenant");
    let key = IdempotencyKey::parse("k").expect("key");
    let req = request(&tenant, &key, "/p", Some("/p"));
    let Opened::Claimed(holder) = open(&db.pool, Isolation::ReadCommitted, &req).await else {
        panic!("a new key is claimed");
    };
    let started = Instant::now();
    let waiter = open(&db.pool, Isolation::ReadCommitted, &req).await;
    assert!(matches!(waiter, Opened::InFlight), "{waiter:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited for the holder"
    );
    holder.rollback().await.expect("rollback");
    assert!(matches!(
        open(&db.pool, Isolation::ReadCommitted, &req).await,
        Opened::Claimed(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_values_reach_the_row_as_sent_whatever_characters_they_hold() {
    let db = test_db().await;
    let tenant = TenantId::new("tenant'; DROP TABLE idem.keys; --").expect("tenant");
    let key = IdempotencyKey::parse("k'\\x27").expect("key");
    let path = "/p/o'brien\\'); SELECT 1; --/\u{e9}";
    let req = request(&tenant, &key, path, None);
    let Opened::Claimed(tx) = open(&db.pool, Isolation::ReadCommitted, &req).await else {
        panic!("a new key is claimed");
    };
    tx.commit().await.expect("commit");
    let row: (String, String, Vec<u8>, String, Option<String>, f64) = sqlx::query_as(
        "SELECT tenant_id, key, fingerprint, path, route, \
           extract(epoch FROM retention)::float8 FROM idem.keys",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the row");
    assert_eq!(
        row,
        (
            tenant.as_str().to_owned(),
            key.as_str().to_owned(),
            req.fingerprint.as_bytes().to_vec(),
            path.to_owned(),
            None,
            90.0
        )
    );
}
