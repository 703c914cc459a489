//! A tenant that claims new keys faster than the route allows is refused with 429 and
//! Retry-After, while another tenant's requests, and the storming tenant's own
//! retries of what it already sent, go on.

use idem_axum::Limits;
use idem_tests::{effects_app, problem_type, replayed, test_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_storm_from_one_tenant_is_refused_while_another_tenant_is_served() {
    let db = test_db().await;
    // 1 new key a second per tenant, bursts of 5: the storm's 40 keys come within a
    // second or two.
    let (app, _) = effects_app(&db, |l| l.limits(Limits::default().new_key_rate(1, 5))).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let key = format!("storm-{i}");
        let response = app.send("/effects", "storm", Some(&key), "x").await;
        match response.status().as_u16() {
            201 => admitted.push(key),
            429 => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("a Retry-After in seconds");
                assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
                assert_eq!(
                    problem_type(response).await,
                    "urn:idem:problem:new-key-rate"
                );
                refused += 1;
            }
            other => panic!("{key}: {other}"),
        }
    }
    assert!(
        (5..=8).contains(&admitted.len()),
        "admitted {}",
        admitted.len()
    );
    assert_eq!(refused, 40 - admitted.len());
    assert_eq!(
        db.effects().await,
        admitted.len() as i64,
        "refused requests ran nothing"
    );
    assert_eq!(
        db.keys().await,
        admitted.len() as i64,
        "and claimed nothing"
    );

    // Meanwhile: another tenant's new keys, and the storming tenant's retries.
    for i in 0..5 {
        let calm = app
            .send("/effects", "calm", Some(&format!("calm-{i}")), "x")
            .await;
        assert_eq!(calm.status(), 201, "the other tenant is served");
    }
    for key in &admitted {
        let retry = app.send("/effects", "storm", Some(key), "x").await;
        assert_eq!(retry.status(), 201, "a retry is not limited");
        assert!(replayed(&retry));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_key_quota_gets_507_while_others_and_replays_are_served() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l.limits(Limits::default().key_quota(3))).await;
    for i in 0..3 {
        let key = format!("q-{i}");
        let response = app.send("/effects", "full", Some(&key), "x").await;
        assert_eq!(response.status(), 201, "{key} is within the quota");
    }
    for i in 3..6 {
        let key = format!("q-{i}");
        let response = app.send("/effects", "full", Some(&key), "x").await;
        assert_eq!(response.status(), 507, "{key} is over the quota");
        assert_eq!(problem_type(response).await, "urn:idem:problem:key-quota");
    }
    assert_eq!(db.keys().await, 3, "refused keys claimed nothing");
    assert_eq!(db.effects().await, 3);
    let retry = app.send("/effects", "full", Some("q-0"), "x").await;
    assert!(replayed(&retry), "a replay is not held to the quota");
    let other = app.send("/effects", "other", Some("q-0"), "x").await;
    assert_eq!(other.status(), 201, "another tenant has its own quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_identities_one_client_s_storm_spares_its_tenant_s_other_clients() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.limits(
            Limits::default()
                .new_key_rate(1, 3)
                .client_identity(|parts| {
                    parts
                        .headers
                        .get("x-client-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                }),
        )
    })
    .await;
    let send = |client: &'static str, key: String| {
        app.post("/effects", "acme", Some(&key), "x")
            .header("x-client-id", client)
            .send()
    };
    let mut stormer = Vec::new();
    for i in 0..10 {
        stormer.push(
            send("stormer", format!("s-{i}"))
                .await
                .expect("answered")
                .status(),
        );
    }
    assert!(
        stormer.iter().filter(|s| s.as_u16() == 429).count() >= 5,
        "{stormer:?}"
    );
    for i in 0..3 {
        let calm = send("calm", format!("c-{i}")).await.expect("answered");
        assert_eq!(calm.status(), 201, "the tenant's other client is served");
    }
}
