//! idem's migrations live in their own schema and history table, beside the app's.

use idem_tests::test_db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_and_app_migrations_keep_separate_histories_and_rerun_cleanly() {
    let db = test_db().await; // ran idem's MIGRATOR, then the example's own
    let idem_versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM idem._sqlx_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .expect("idem history");
    let expected: Vec<i64> = idem_sqlx::MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(idem_versions, expected);
    let app_versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .expect("app history");
    let expected: Vec<i64> = payments::MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(
        app_versions, expected,
        "the app's history holds only the app's versions"
    );

    // Both run again (as on every start) without error, in either order.
    payments::MIGRATOR.run(&db.pool).await.expect("app again");
    idem_sqlx::MIGRATOR.run(&db.pool).await.expect("idem again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_plain_postgres_distributing_for_citus_does_nothing() {
    let db = test_db().await;
    if idem_tests::on_citus() {
        // IDEM_TEST_CITUS_URL runs this binary on the cluster: there it distributes.
        let again = idem_sqlx::citus::distribute(&db.pool, None)
            .await
            .expect("distribute");
        assert_eq!(
            again,
            idem_sqlx::citus::Distribution::Distributed { newly: vec![] }
        );
        return;
    }
    let done = idem_sqlx::citus::distribute(&db.pool, None)
        .await
        .expect("distribute");
    assert_eq!(done, idem_sqlx::citus::Distribution::NotCitus);
}
