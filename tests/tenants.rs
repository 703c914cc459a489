//! A key's identity is (tenant, key): tenants never share keys.

use idem_tests::{TestApp, effects_app, problem_type, replayed, tenant_from_header, test_db};

const PAYMENT: &str = r#"{"amount":500,"currency":"USD"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_in_two_tenants_executes_twice() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let a = app
        .post("/payments", "tenant-a", Some("shared"), PAYMENT)
        .send()
        .await
        .expect("a");
    let b = app
        .post("/payments", "tenant-b", Some("shared"), PAYMENT)
        .send()
        .await
        .expect("b");
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert!(!replayed(&a) && !replayed(&b));
    let a: serde_json::Value = a.json().await.expect("a body");
    let b: serde_json::Value = b.json().await.expect("b body");
    assert_ne!(a["id"], b["id"]);
    assert_eq!(db.payments().await, 2);
    // Each tenant's retry replays its own payment.
    let a2: serde_json::Value = app
        .post("/payments", "tenant-a", Some("shared"), PAYMENT)
        .send()
        .await
        .expect("a2")
        .json()
        .await
        .expect("a2 body");
    assert_eq!(a2["id"], a["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_closure_scopes_keys_by_its_tenant() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.tenant(tenant_from_header())).await;
    for tenant in ["x", "y", "x"] {
        app.post("/effects", tenant, Some("k"), "n")
            .send()
            .await
            .expect("post");
    }
    assert_eq!(db.effects().await, 2);
    assert_eq!(db.keys().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_tenant_is_refused_with_401() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    let r = app
        .client
        .post(app.url("/effects"))
        .header("idempotency-key", "k")
        .body("n")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(problem_type(r).await, "urn:idem:problem:tenant-unresolved");
    assert_eq!(db.effects().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_tenant_layer_needs_no_tenant() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.single_tenant()).await;
    for tenant in ["x", "y"] {
        let r = app
            .post("/effects", tenant, Some("k"), "n")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    assert_eq!(
        db.effects().await,
        1,
        "one tenant: the second request replays"
    );
}
