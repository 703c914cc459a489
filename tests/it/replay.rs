//! A retry after success gets the stored response, byte for byte.

use std::time::Duration;

use idem_axum::{Policy, Storage, TenantSource, Timeouts};
use idem_tests::{TestApp, effects_app, replayed, test_db};

const PAYMENT: &str = r#"{"amount":1250,"currency":"EUR","reference":"inv-1"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_success_replays_status_headers_and_body_byte_for_byte() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;

    let first = app.send("/payments", "t1", Some("pay-1"), PAYMENT).await;
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.expect("body");

    let retry = app.send("/payments", "t1", Some("pay-1"), PAYMENT).await;
    assert_eq!(retry.status(), 201);
    assert!(
        replayed(&retry),
        "a replay carries Idempotent-Replayed: true"
    );
    for name in ["content-type", "location"] {
        assert_eq!(
            retry.headers().get(name),
            first_headers.get(name),
            "{name} replayed"
        );
    }
    assert!(first_headers.get("location").is_some());
    let retry_body = retry.bytes().await.expect("body");
    assert_eq!(retry_body, first_body, "the body is replayed byte for byte");
    assert_eq!(db.payments().await, 1, "one payment for two requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sequential_retries_execute_once_and_store_one_row() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let mut bodies = Vec::new();
    for i in 0..20 {
        let r = app.send("/effects", "t1", Some("k-20"), "note").await;
        assert_eq!(r.status(), 201);
        assert_eq!(replayed(&r), i > 0, "only the first is executed");
        bodies.push(r.bytes().await.expect("body"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every retry gets the same body"
    );
    assert_eq!(db.effects().await, 1);
    assert_eq!(db.keys().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_carries_only_allow_listed_headers() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let first = app.send("/effects", "t1", Some("k-h"), "n").await;
    assert_eq!(
        first.headers().get("x-not-replayed").map(|v| v.as_bytes()),
        Some(&b"first-only"[..])
    );
    let etag = first.headers().get("etag").cloned();
    assert!(etag.is_some());

    let retry = app.send("/effects", "t1", Some("k-h"), "n").await;
    assert!(replayed(&retry));
    assert_eq!(
        retry.headers().get("etag").cloned(),
        etag,
        "ETag is on the allow-list"
    );
    assert!(
        retry.headers().get("location").is_some(),
        "Location is on the allow-list"
    );
    assert!(
        retry.headers().get("x-not-replayed").is_none(),
        "other headers are not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_headers_added_to_the_allow_list_are_replayed() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.policy(Policy::default().replay_header("x-not-replayed"))
    })
    .await;
    app.send("/effects", "t1", Some("k-x"), "n").await;
    let retry = app.send("/effects", "t1", Some("k-x"), "n").await;
    assert!(replayed(&retry));
    assert_eq!(
        retry.headers().get("x-not-replayed").map(|v| v.as_bytes()),
        Some(&b"first-only"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_requests_pass_through_untouched() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    app.send("/effects", "t1", Some("k-g"), "n").await;
    for _ in 0..3 {
        let r = app
            .client
            .get(app.url("/effects"))
            .header("x-tenant-id", "t1")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "GET needs no key");
        assert!(!replayed(&r));
        assert_eq!(r.json::<i64>().await.expect("count"), 1);
    }
    assert_eq!(db.keys().await, 1, "GETs claim no keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_looked_up_before_the_transaction_are_the_same_answers() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.storage(Storage::default().lookup_first(true))).await;
    let first = app.send("/effects", "t1", Some("lf"), "n").await;
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    let first_body = first.bytes().await.expect("body");
    for _ in 0..3 {
        let retry = app.send("/effects", "t1", Some("lf"), "n").await;
        assert_eq!(retry.status(), 201);
        assert!(replayed(&retry));
        assert_eq!(retry.bytes().await.expect("body"), first_body);
    }
    let other = app.send("/effects", "t1", Some("lf"), "changed").await;
    assert_eq!(other.status(), 422);
    let fresh = app.send("/effects", "t1", Some("lf-2"), "n").await;
    assert!(!replayed(&fresh), "an unknown key still runs");
    assert_eq!(db.effects().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_first_replay_is_answered_by_a_read_while_writes_to_the_keys_wait() {
    let db = test_db().await;
    let wait = Duration::from_millis(300);
    let (app, _) = effects_app(&db, |l| {
        l.timeouts(Timeouts::default().in_flight_wait(wait).store(wait))
            .storage(Storage::default().lookup_first(true).replay_cache(0))
    })
    .await;
    assert_eq!(
        app.send("/effects", "t1", Some("held"), "n").await.status(),
        201
    );
    // Another transaction keeps every write out of the keys table (reads go on): a
    // claim's INSERT would wait on it past the bounds; the lookup only reads, and
    // replays.
    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE idem.keys IN EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .expect("lock the keys table");
    let retry = app.send("/effects", "t1", Some("held"), "n").await;
    assert_eq!(retry.status(), 201, "answered by the lookup, not the claim");
    assert!(replayed(&retry));
    holder.rollback().await.expect("rollback");
    assert_eq!(db.effects().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_compressed_inside_the_layer_is_replayed_with_its_representation_headers() {
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::post;

    let db = test_db().await;
    // Compression inside the idempotency layer: the stored body is the gzipped one, so
    // it must be replayed with its Content-Encoding (and Vary, Cache-Control,
    // Content-Language) or the client cannot read it.
    let big = "payment ".repeat(200);
    let router = axum::Router::new()
        .route(
            "/compressed",
            post(move || {
                let big = big.clone();
                async move {
                    (
                        axum::http::StatusCode::CREATED,
                        [
                            (header::CONTENT_TYPE, "text/plain"),
                            (header::CACHE_CONTROL, "no-store"),
                            (header::CONTENT_LANGUAGE, "en"),
                        ],
                        big,
                    )
                        .into_response()
                }
            }),
        )
        .layer(tower_http::compression::CompressionLayer::new())
        .route_layer(
            idem_axum::IdempotencyLayer::new(db.pool.clone()).tenant(TenantSource::single()),
        );
    let app = TestApp::spawn(router).await;
    let send = || {
        app.client
            .post(app.url("/compressed"))
            .header("idempotency-key", "gz")
            .header(header::ACCEPT_ENCODING, "gzip")
            .body("{}")
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["content-encoding"], "gzip", "compressed");
    let representation = [
        "content-encoding",
        "content-language",
        "vary",
        "cache-control",
    ];
    let first_headers: Vec<_> = representation
        .iter()
        .map(|h| first.headers().get(*h).cloned())
        .collect();
    assert!(
        first_headers.iter().all(Option::is_some),
        "{first_headers:?}"
    );
    let first_body = first.bytes().await.expect("body");

    let retry = send().await.expect("retry");
    assert!(replayed(&retry));
    let retry_headers: Vec<_> = representation
        .iter()
        .map(|h| retry.headers().get(*h).cloned())
        .collect();
    assert_eq!(retry_headers, first_headers);
    assert_eq!(
        retry.bytes().await.expect("body"),
        first_body,
        "the same gzipped bytes"
    );
}
