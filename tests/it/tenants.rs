//! A key's identity is (tenant, key): tenants never share keys.

use idem_axum::{TenantId, TenantSource};
use idem_tests::{TestApp, effects_app, problem_type, replayed, test_db};
use serde_json::Value;

const PAYMENT: &str = r#"{"amount":500,"currency":"USD"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_in_two_tenants_executes_twice() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    let a = app
        .send("/payments", "tenant-a", Some("shared"), PAYMENT)
        .await;
    let b = app
        .send("/payments", "tenant-b", Some("shared"), PAYMENT)
        .await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert!(!replayed(&a) && !replayed(&b));
    let a: serde_json::Value = a.json().await.expect("a body");
    let b: serde_json::Value = b.json().await.expect("b body");
    assert_ne!(a["id"], b["id"]);
    assert_eq!(db.payments().await, 2);
    // Each tenant's retry replays its own payment.
    for (tenant, first) in [("tenant-a", &a), ("tenant-b", &b)] {
        let retry = app.send("/payments", tenant, Some("shared"), PAYMENT).await;
        assert_eq!(retry.status(), 201, "{tenant}'s retry");
        assert!(replayed(&retry), "{tenant}'s retry is a replay");
        let retry: Value = retry.json().await.expect("retry body");
        assert_eq!(retry["id"], first["id"], "{tenant}'s retry replays its own");
    }
    assert_eq!(db.payments().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_closure_scopes_keys_by_its_tenant() {
    let db = test_db().await;
    // The resolver reads a header of its own, and every request carries the same
    // `x-tenant-id` (which the test router also puts in the extensions): a layer that
    // took the tenant from anywhere but the resolver would see a single tenant.
    let resolver = TenantSource::resolver(|parts| {
        parts
            .headers
            .get("x-account")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| TenantId::new(v).ok())
    });
    let (app, _) = effects_app(&db, |l| l.tenant(resolver)).await;
    let mut answers = Vec::new();
    for account in ["x", "y", "x"] {
        let r = app
            .post("/effects", "same-for-all", Some("k"), "n")
            .header("x-account", account)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        let replay = replayed(&r);
        let body: Value = r.json().await.expect("body");
        answers.push((status, replay, body["id"].clone()));
    }
    let outcomes: Vec<_> = answers.iter().map(|(s, r, _)| (*s, *r)).collect();
    assert_eq!(
        outcomes,
        [(201, false), (201, false), (201, true)],
        "x and y each execute; x's second request replays"
    );
    assert_ne!(answers[0].2, answers[1].2, "y got an execution of its own");
    assert_eq!(answers[2].2, answers[0].2, "x's replay is x's first answer");
    let effect_tenants: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id FROM effects ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("effects");
    assert_eq!(
        effect_tenants,
        ["x", "y"],
        "handlers saw the resolved tenant"
    );
    let key_tenants: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id FROM idem.keys ORDER BY tenant_id")
            .fetch_all(&db.pool)
            .await
            .expect("keys");
    assert_eq!(key_tenants, ["x", "y"], "one key per resolved tenant");
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
    let (app, _) = effects_app(&db, |l| l.tenant(TenantSource::single())).await;
    for (tenant, replay) in [("x", false), ("y", true)] {
        let r = app.send("/effects", tenant, Some("k"), "n").await;
        assert_eq!(r.status(), 201, "{tenant}'s request");
        assert_eq!(replayed(&r), replay, "{tenant}'s request replayed");
    }
    assert_eq!(
        db.effects().await,
        1,
        "one tenant: the second request replays"
    );
}
