//! A request whose database connection is killed inside its handler commits nothing,
//! answers 503, and its retry executes once.

use std::time::Duration;

use idem_axum::Protocol;
use idem_tests::{effects_app, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_inside_the_handler_commits_nothing_and_the_retry_executes_once() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.protocol(Protocol::default().retry_after(Duration::from_secs(2)))
    })
    .await;
    let request = tokio::spawn(
        app.post("/effects?sleep_ms=1500", "t1", Some("kill-1"), "n")
            .send(),
    );

    // Find the request's backend: the one idle inside a transaction after the handler's
    // writes (it holds a lock on the outbox, its last write), so the kill lands while
    // the handler sleeps, not during one of its statements (which the handler itself
    // would answer 503).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
             WHERE a.datname = $1 AND a.state = 'idle in transaction' \
               AND l.relation = 'idem.outbox'::regclass",
        )
        .bind(&db.name)
        .fetch_optional(&db.pool)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = pid {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler never opened its transaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .expect("terminate");
    assert!(killed);

    let response = request.await.expect("join").expect("response");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(
        problem_type(response).await,
        "urn:idem:problem:commit-failed"
    );
    assert_eq!(db.effects().await, 0, "nothing committed");
    assert_eq!(db.keys().await, 0);

    let retry = app
        .send("/effects?sleep_ms=1500", "t1", Some("kill-1"), "n")
        .await;
    assert_eq!(retry.status(), 201);
    assert!(!replayed(&retry));
    assert_eq!(db.effects().await, 1);
}
