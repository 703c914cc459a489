//! The `idem` command on a real Citus cluster (a coordinator and two workers:
//! `scripts/citus.sh`, or the coordinator at `IDEM_TEST_CITUS_URL`): `cli.rs`, compiled
//! in again below, runs there (in this binary, named `citus-<hash>`, every test
//! database is a distributed one); and `idem distribute` distributes idem's tables.

use idem_tests::{TestDb, citus_test_db};
use serde_json::Value;

#[path = "cli.rs"]
mod cli;

/// The co-location group of `table`, `None` when it is not distributed.
async fn colocation(db: &TestDb, table: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = $1::regclass",
    )
    .bind(table)
    .fetch_optional(&db.pool)
    .await
    .expect("pg_dist_partition")
}

/// The co-location group of each of idem's distributable tables.
async fn idems_colocation(db: &TestDb) -> Vec<Option<i32>> {
    let mut groups = Vec::new();
    for table in idem_sqlx::citus::DISTRIBUTED_TABLES {
        groups.push(colocation(db, table).await);
    }
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_distributes_idems_tables_beside_the_given_one_and_then_nothing() {
    let db = citus_test_db(4).await;
    // A database whose idem tables are still the coordinator's own, as after `migrate`.
    for table in idem_sqlx::citus::DISTRIBUTED_TABLES {
        sqlx::query("SELECT undistribute_table($1)")
            .bind(table)
            .execute(&db.pool)
            .await
            .expect("undistribute");
    }
    assert!(
        idems_colocation(&db).await.iter().all(Option::is_none),
        "the coordinator's own tables"
    );

    let (code, report) = cli::idem(&db, &["distribute", "--colocate-with", "effects"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["backend"], "citus", "{report}");
    let expected: Vec<Value> = idem_sqlx::citus::DISTRIBUTED_TABLES
        .iter()
        .map(|t| Value::from(*t))
        .collect();
    assert_eq!(report["distributed"], Value::Array(expected), "{report}");
    let effects = colocation(&db, "effects").await;
    let groups = idems_colocation(&db).await;
    assert!(
        effects.is_some() && groups.iter().all(|g| *g == effects),
        "co-located with effects ({effects:?}): {groups:?}"
    );

    let (code, again) = cli::idem(&db, &["distribute", "--colocate-with", "effects"]).await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(
        again["distributed"],
        Value::Array(vec![]),
        "nothing new: {again}"
    );
}
