//! The payments example behaves as the README's quickstart and the guide
//! (docs/phased.md, docs/outbox-inbox.md) say.

use idem_tests::{TestApp, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_payment_is_readable_by_its_tenant_only() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let created = app
        .send(
            "/payments",
            "t1",
            Some("p"),
            r#"{"amount":4200,"currency":"GBP","reference":"abc"}"#,
        )
        .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let payment: payments::Payment = created.json().await.expect("payment");
    assert_eq!(location, format!("/payments/{}", payment.id));
    assert_eq!(
        (
            payment.amount,
            payment.currency.as_str(),
            payment.status.as_str()
        ),
        (4200, "GBP", "created")
    );
    assert_eq!(payment.reference.as_deref(), Some("abc"));

    let get = |tenant: &'static str| {
        app.client
            .get(app.url(&location))
            .header("x-tenant-id", tenant)
            .send()
    };
    let mine = get("t1").await.expect("get");
    assert_eq!(mine.status(), 200);
    assert_eq!(
        mine.json::<payments::Payment>().await.expect("payment"),
        payment
    );
    assert_eq!(
        get("t2").await.expect("get").status(),
        404,
        "other tenants do not see it"
    );
    let unknown = app
        .client
        .get(app.url("/payments/00000000-0000-0000-0000-000000000000"))
        .header("x-tenant-id", "t1")
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_tenant_are_401() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let r = app
        .client
        .post(app.url("/payments"))
        .header("idempotency-key", "k")
        .body(r#"{"amount":1,"currency":"EUR"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(db.payments().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payments_are_400_problems_and_the_answer_is_final() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let invalid = [
        r#"{"amount":0,"currency":"EUR"}"#,
        r#"{"amount":-5,"currency":"EUR"}"#,
        r#"{"amount":1.5,"currency":"EUR"}"#,
        r#"{"amount":100,"currency":"euro"}"#,
        r#"{"amount":100}"#,
        r#"{"amount":100,"currency":"EUR","extra":true}"#,
        "not json",
    ];
    for (i, body) in invalid.iter().enumerate() {
        let key = format!("bad-{i}");
        let r = app.send("/payments", "t1", Some(&key), body).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let retry = app.send("/payments", "t1", Some(&key), body).await;
        assert_eq!(retry.status(), 400);
        assert!(replayed(&retry), "a 400 is final and replayed: {body}");
    }
    assert_eq!(db.payments().await, 0);
}
