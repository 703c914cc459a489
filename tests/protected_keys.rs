//! With `protect_keys`, the store keeps each key as its HMAC under the server's
//! secret: a dump of idem's tables holds no client key, and replays, mismatches and
//! tenants work as with clear keys.

use idem_axum::KeyProtection;
use idem_core::policy::KeyMode;
use idem_tests::{TestDb, effects_app, replayed, test_db};

const SECRET: [u8; 32] = [0x42; 32];

/// Every text value in idem's tables, as one string.
async fn dump(db: &TestDb) -> String {
    let mut dump = String::new();
    let statements = [
        "SELECT t::text FROM idem.keys t",
        "SELECT t::text FROM idem.outbox t",
        "SELECT t::text FROM idem.observed_keys t",
    ];
    for statement in statements {
        let rows: Vec<(String,)> = sqlx::query_as(statement)
            .fetch_all(&db.pool)
            .await
            .expect("dump");
        for (row,) in rows {
            dump.push_str(&row);
            dump.push('\n');
        }
    }
    dump
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_of_the_store_reveals_no_client_key() {
    let db = test_db().await;
    let protection = KeyProtection::hmac("k1", &SECRET).expect("protection");
    let (app, _) = effects_app(&db, |l| l.protect_keys(protection.clone())).await;
    let first = app
        .post("/effects", "acme", Some("client-key-4711"), "a")
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), 201);
    let retry = app
        .post("/effects", "acme", Some("client-key-4711"), "a")
        .send()
        .await
        .expect("retry");
    assert!(replayed(&retry), "the protected key replays");
    let changed = app
        .post("/effects", "acme", Some("client-key-4711"), "b")
        .send()
        .await
        .expect("changed");
    assert_eq!(changed.status(), 422, "and refuses a changed request");
    let other = app
        .post("/effects", "globex", Some("client-key-4711"), "a")
        .send()
        .await
        .expect("other tenant");
    assert_eq!(other.status(), 201);
    assert!(!replayed(&other), "another tenant's key is another key");
    assert_eq!(db.effects().await, 2);

    let dump = dump(&db).await;
    assert!(!dump.contains("client-key-4711"), "{dump}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT key FROM idem.keys ORDER BY tenant_id")
        .fetch_all(&db.pool)
        .await
        .expect("keys");
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().all(|k| k.starts_with("hmac:k1:")),
        "{stored:?}"
    );
    assert_ne!(stored[0], stored[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_protection_the_key_is_stored_as_sent() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| l).await;
    app.post("/effects", "acme", Some("client-key-4711"), "a")
        .send()
        .await
        .expect("first");
    assert!(dump(&db).await.contains("client-key-4711"), "the control");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_records_only_protected_keys() {
    let db = test_db().await;
    let protection = KeyProtection::hmac("k1", &SECRET).expect("protection");
    let (app, _) = effects_app(&db, |l| {
        l.key_mode(KeyMode::Observe)
            .protect_keys(protection.clone())
    })
    .await;
    app.post("/effects", "acme", Some("client-key-4711"), "a")
        .send()
        .await
        .expect("observed");
    let dump = dump(&db).await;
    assert!(dump.contains("hmac:k1:"), "{dump}");
    assert!(!dump.contains("client-key-4711"), "{dump}");
}
