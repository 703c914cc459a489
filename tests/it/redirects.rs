//! A redirect after POST (303 See Other with `Location`) is a final outcome: the
//! handler's writes commit with it, and a retry gets the same redirect replayed.

use idem_tests::{client_without_redirects, effects_app, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_see_other_after_post_commits_and_is_replayed_with_its_location() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let client = client_without_redirects();
    let send = || {
        client
            .post(app.url("/effects?status=303"))
            .header("x-tenant-id", "t1")
            .header("idempotency-key", "redirect-1")
            .body("n")
            .send()
    };

    let first = send().await.expect("first");
    assert_eq!(first.status(), 303);
    assert!(!replayed(&first));
    let location = first.headers().get("location").cloned().expect("location");
    assert_eq!(
        db.effects().await,
        1,
        "the write the redirect points to committed"
    );
    let id = location
        .to_str()
        .expect("ascii")
        .trim_start_matches("/effects/")
        .parse::<i64>()
        .expect("id");
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM effects WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("lookup");
    assert_eq!(found, 1, "the redirect's target exists");

    let retry = send().await.expect("retry");
    assert_eq!(retry.status(), 303);
    assert!(replayed(&retry));
    assert_eq!(retry.headers().get("location"), Some(&location));
    assert_eq!(db.effects().await, 1);
}
