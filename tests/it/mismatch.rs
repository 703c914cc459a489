//! A key reused for a different request is refused, and nothing runs.

use http::StatusCode;
use idem_axum::{Policy, Protocol};
use idem_tests::{TestApp, effects_app, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_with_a_different_body_is_422_and_does_not_execute() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let first = app.send("/effects", "t1", Some("m1"), "a").await;
    assert_eq!(first.status(), 201);
    let other = app.send("/effects", "t1", Some("m1"), "b").await;
    assert_eq!(other.status(), 422);
    assert_eq!(problem_type(other).await, "urn:idem:problem:key-mismatch");
    assert_eq!(db.effects().await, 1, "the mismatching request did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_on_a_different_path_is_a_mismatch() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    app.send("/effects", "t1", Some("m2"), "a").await;
    let other = app.send("/effects?status=201", "t1", Some("m2"), "a").await;
    assert_eq!(other.status(), 422, "the query is part of the request");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_answers_409_when_configured() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.protocol(Protocol::default().mismatch_status(StatusCode::CONFLICT))
    })
    .await;
    app.send("/effects", "t1", Some("m3"), "a").await;
    let other = app.send("/effects", "t1", Some("m3"), "b").await;
    assert_eq!(other.status(), 409);
    assert_eq!(problem_type(other).await, "urn:idem:problem:key-mismatch");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_fingerprint_headers_make_requests_differ() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.policy(Policy::default().fingerprint_header("x-account"))
    })
    .await;
    let a = app
        .post("/effects", "t1", Some("m4"), "a")
        .header("x-account", "1")
        .send()
        .await
        .expect("a");
    assert_eq!(a.status(), 201);
    let same = app
        .post("/effects", "t1", Some("m4"), "a")
        .header("x-account", "1")
        .send()
        .await
        .expect("same");
    assert!(replayed(&same));
    let b = app
        .post("/effects", "t1", Some("m4"), "a")
        .header("x-account", "2")
        .send()
        .await
        .expect("b");
    assert_eq!(b.status(), 422);
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_json_mode_treats_reordered_keys_and_whitespace_as_the_same_request() {
    let db = test_db().await;
    // The payments example fingerprints canonical JSON.
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let first = app
        .send(
            "/payments",
            "t1",
            Some("c1"),
            r#"{"amount":100,"currency":"EUR","reference":"r"}"#,
        )
        .await;
    assert_eq!(first.status(), 201);
    let reordered = app
        .send(
            "/payments",
            "t1",
            Some("c1"),
            "{ \"reference\": \"r\",\n  \"currency\": \"EUR\", \"amount\": 100 }",
        )
        .await;
    assert_eq!(reordered.status(), 201);
    assert!(replayed(&reordered));
    let changed = app
        .send(
            "/payments",
            "t1",
            Some("c1"),
            r#"{"amount":101,"currency":"EUR","reference":"r"}"#,
        )
        .await;
    assert_eq!(
        changed.status(),
        422,
        "a changed value is still a different request"
    );
    assert_eq!(db.payments().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_treats_reordered_json_as_a_different_request() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    app.send("/effects", "t1", Some("r1"), r#"{"a":1,"b":2}"#)
        .await;
    let reordered = app
        .send("/effects", "t1", Some("r1"), r#"{"b":2,"a":1}"#)
        .await;
    assert_eq!(reordered.status(), 422);
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_that_differ_beyond_float_precision_are_a_mismatch() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.policy(Policy::default().canonical_json())).await;
    let first = app
        .send(
            "/effects",
            "t1",
            Some("big"),
            r#"{"amount":12345678901234567890123}"#,
        )
        .await;
    assert_eq!(first.status(), 201);
    let other = app
        .send(
            "/effects",
            "t1",
            Some("big"),
            r#"{ "amount": 12345678901234567890124 }"#,
        )
        .await;
    assert_eq!(other.status(), 422, "another amount is another request");
    let same = app
        .send(
            "/effects",
            "t1",
            Some("big"),
            r#"{ "amount": 12345678901234567890123 }"#,
        )
        .await;
    assert!(
        replayed(&same),
        "whitespace alone does not make it another request"
    );
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_of_a_repeated_fingerprint_header_counts() {
    let db = test_db().await;
    let header = http::HeaderName::from_static("x-account");
    let (app, _) = effects_app(&db, |l| {
        l.policy(Policy::default().fingerprint_header(header.as_str()))
    })
    .await;
    let send = |second: &'static str| {
        app.post("/effects", "t1", Some("accounts"), "n")
            .header("x-account", "a")
            .header("x-account", second)
            .send()
    };
    let first = send("b").await.expect("first");
    assert_eq!(first.status(), 201);
    let other = send("c").await.expect("other");
    assert_eq!(other.status(), 422, "the second value differs");
    let same = send("b").await.expect("same");
    assert!(replayed(&same));
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_selected_fields_a_changed_volatile_field_is_the_same_request() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.policy(Policy::default().fingerprint_fields(["/amount", "/currency"]))
    })
    .await;
    let first = app
        .send(
            "/effects",
            "t1",
            Some("f1"),
            r#"{"amount":1,"currency":"EUR","sent_at":1}"#,
        )
        .await;
    assert_eq!(first.status(), 201);
    let retry = app
        .send(
            "/effects",
            "t1",
            Some("f1"),
            r#"{"sent_at":2,"currency":"EUR","amount":1}"#,
        )
        .await;
    assert_eq!(retry.status(), 201);
    assert!(replayed(&retry), "a new sent_at is the same request");
    let changed = app
        .send(
            "/effects",
            "t1",
            Some("f1"),
            r#"{"amount":2,"currency":"EUR","sent_at":3}"#,
        )
        .await;
    assert_eq!(changed.status(), 422, "a new amount is not");
    assert_eq!(db.effects().await, 1);
}

/// A transfer of the account in the path, behind the layer inside `Router::nest`: one
/// `effects` row per execution, noting the path the client sent.
async fn nested_transfer(
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    axum::Extension(tenant): axum::Extension<idem_axum::TenantId>,
    mut tx: idem_axum::Tx,
) -> (StatusCode, String) {
    sqlx::query("INSERT INTO effects (tenant_id, note) VALUES ($1, $2)")
        .bind(tenant.as_str())
        .bind(uri.path())
        .execute(&mut *tx)
        .await
        .expect("insert");
    (StatusCode::CREATED, uri.path().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprint_covers_the_path_the_client_sent_inside_a_nested_router() {
    use axum::Router;
    use axum::routing::post;
    use idem_axum::IdempotencyLayer;

    let db = test_db().await;
    // Axum strips `/accounts/{account}` before the inner route's layer runs: without
    // the original URI both accounts' transfers look like `POST /transfers`.
    let layer = IdempotencyLayer::new(db.pool.clone()).tenant(idem_tests::tenant_from_header());
    let accounts = Router::new().route("/transfers", post(nested_transfer).route_layer(layer));
    let app = TestApp::spawn(Router::new().nest("/accounts/{account}", accounts)).await;

    let first = app
        .send("/accounts/1/transfers", "t1", Some("n1"), "100")
        .await;
    assert_eq!(first.status(), 201);
    let other = app
        .send("/accounts/2/transfers", "t1", Some("n1"), "100")
        .await;
    assert!(
        !replayed(&other),
        "another account's transfer is not the first's replay"
    );
    assert_eq!(other.status(), 422);
    assert_eq!(problem_type(other).await, "urn:idem:problem:key-mismatch");
    let again = app
        .send("/accounts/1/transfers", "t1", Some("n1"), "100")
        .await;
    assert!(replayed(&again), "the same account's retry replays");
    let path: String = sqlx::query_scalar("SELECT path FROM idem.keys WHERE key = 'n1'")
        .fetch_one(&db.pool)
        .await
        .expect("stored path");
    assert_eq!(
        path, "/accounts/1/transfers",
        "the stored path is the client's"
    );
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_canonical_json_body_fingerprinted_off_the_workers_replays_and_mismatches() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.policy(Policy::default().canonical_json())).await;
    // Past idem_core::Fingerprint::BLOCKING_BODY_BYTES, nested deep: hashed on the
    // blocking pool, and the same request still matches itself, reordered.
    let items = |reorder: bool| -> String {
        let item = |i: usize| match reorder {
            false => format!(r#"{{"b":{i},"a":[{{"x":"{i}"}}]}}"#),
            true => format!(r#"{{ "a": [ {{ "x": "{i}" }} ], "b": {i} }}"#),
        };
        format!("[{}]", (0..2000).map(item).collect::<Vec<_>>().join(","))
    };
    let nested = |reorder: bool| {
        (0..100).fold(items(reorder), |acc, _| match reorder {
            false => format!(r#"{{"n":{acc},"m":1}}"#),
            true => format!(r#"{{"m":1,"n":{acc}}}"#),
        })
    };
    let (body, reordered) = (nested(false), nested(true));
    assert!(body.len() >= idem_core::Fingerprint::BLOCKING_BODY_BYTES);
    assert_ne!(body, reordered);
    let first = app.send("/effects", "t1", Some("big-1"), &body).await;
    assert_eq!(first.status(), 201);
    let again = app.send("/effects", "t1", Some("big-1"), &reordered).await;
    assert!(replayed(&again), "the same JSON, its keys in another order");
    let changed = app
        .send(
            "/effects",
            "t1",
            Some("big-1"),
            &body.replace(r#""x":"7""#, r#""x":"8""#),
        )
        .await;
    assert_eq!(changed.status(), 422, "one value deep inside changed");
    assert_eq!(db.effects().await, 1);
}
