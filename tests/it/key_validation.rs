//! Bad keys get a clear 400 and run nothing.

use http::HeaderValue;
use idem_axum::{KeyMode, Policy};
use idem_tests::{effects_app, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_key_class_is_rejected_with_400_problem_json() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let too_long = "k".repeat(256);
    let cases: Vec<(&str, HeaderValue)> = vec![
        ("empty", HeaderValue::from_static("")),
        ("empty quoted", HeaderValue::from_static("\"\"")),
        ("too long", HeaderValue::from_str(&too_long).expect("ascii")),
        ("inner space", HeaderValue::from_static("a b")),
        ("tab", HeaderValue::from_static("a\tb")),
        (
            "non-ASCII",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("obs-text"),
        ),
        ("unterminated quote", HeaderValue::from_static("\"abc")),
        ("bad escape", HeaderValue::from_static("\"a\\bc\"")),
        ("inner quote", HeaderValue::from_static("\"a\"b\"")),
    ];
    for (what, value) in cases {
        let r = app
            .client
            .post(app.url("/effects"))
            .header("x-tenant-id", "t1")
            .header("idempotency-key", value)
            .body("n")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(
            problem_type(r).await,
            "urn:idem:problem:key-invalid",
            "{what}"
        );
    }
    let twice = app
        .client
        .post(app.url("/effects"))
        .header("x-tenant-id", "t1")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body("n")
        .send()
        .await
        .expect("request");
    assert_eq!(twice.status(), 400, "the header sent twice");
    assert_eq!(problem_type(twice).await, "urn:idem:problem:key-invalid");
    assert_eq!(db.effects().await, 0);
    assert_eq!(db.keys().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_on_a_route_that_requires_one_is_400() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let r = app.send("/effects", "t1", None, "n").await;
    assert_eq!(r.status(), 400);
    assert_eq!(problem_type(r).await, "urn:idem:problem:key-missing");
    assert_eq!(db.effects().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_valid_key_and_its_quoted_form_are_the_same_key() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let key = format!("{}~", "K".repeat(254));
    let bare = app.send("/effects", "t1", Some(&key), "n").await;
    assert_eq!(bare.status(), 201);
    let quoted = app
        .send("/effects", "t1", Some(&format!("\"{key}\"")), "n")
        .await;
    assert_eq!(quoted.status(), 201);
    assert!(replayed(&quoted), "the quoted form names the same key");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_on_an_optional_route_the_handler_runs_each_time_in_a_transaction() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.policy(Policy::default().keys(KeyMode::Optional))).await;
    for _ in 0..2 {
        let r = app.send("/effects", "t1", None, "n").await;
        assert_eq!(r.status(), 201);
        assert!(!replayed(&r));
    }
    assert_eq!(
        db.effects().await,
        2,
        "no key: no deduplication, writes committed"
    );
    assert_eq!(db.keys().await, 0, "no key: nothing stored");
    let failed = app.send("/effects?status=500", "t1", None, "n").await;
    assert_eq!(failed.status(), 500);
    assert_eq!(
        db.effects().await,
        2,
        "a 5xx still rolls back an unkeyed request"
    );
}
