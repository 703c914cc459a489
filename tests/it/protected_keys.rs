//! Protected storage. With `Protection::keys`, the store keeps each key as its HMAC under
//! the server's secret: a dump of idem's tables holds no client key, and replays,
//! mismatches and tenants work as with clear keys. With `Protection::bodies`, stored bodies
//! are ciphertext, opened on replay, through key rotation; `redact` changes what is
//! stored.

use idem_axum::{BodySealing, KeyProtection, Policy, Protection, Storage};
use idem_core::policy::KeyMode;
use idem_tests::{TestDb, effects_app, problem_type, replayed, test_db};

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
    let (app, _) = effects_app(&db, |l| {
        l.protection(Protection::default().keys(protection.clone()))
    })
    .await;
    let first = app
        .send("/effects", "acme", Some("client-key-4711"), "a")
        .await;
    assert_eq!(first.status(), 201);
    let retry = app
        .send("/effects", "acme", Some("client-key-4711"), "a")
        .await;
    assert!(replayed(&retry), "the protected key replays");
    let changed = app
        .send("/effects", "acme", Some("client-key-4711"), "b")
        .await;
    assert_eq!(changed.status(), 422, "and refuses a changed request");
    let other = app
        .send("/effects", "globex", Some("client-key-4711"), "a")
        .await;
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
    app.send("/effects", "acme", Some("client-key-4711"), "a")
        .await;
    assert!(dump(&db).await.contains("client-key-4711"), "the control");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_records_only_protected_keys() {
    let db = test_db().await;
    let protection = KeyProtection::hmac("k1", &SECRET).expect("protection");
    let (app, _) = effects_app(&db, |l| {
        l.policy(Policy::default().keys(KeyMode::Observe))
            .protection(Protection::default().keys(protection.clone()))
    })
    .await;
    app.send("/effects", "acme", Some("client-key-4711"), "a")
        .await;
    let dump = dump(&db).await;
    assert!(dump.contains("hmac:k1:"), "{dump}");
    assert!(!dump.contains("client-key-4711"), "{dump}");
}

fn sealing(id: &str, key: u8) -> BodySealing {
    BodySealing::new(id, &[key; 32]).expect("sealing")
}

async fn stored_bodies(db: &TestDb) -> Vec<Vec<u8>> {
    sqlx::query_scalar("SELECT response_body FROM idem.keys")
        .fetch_all(&db.pool)
        .await
        .expect("bodies")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_bodies_are_ciphertext_in_the_store_and_replay_byte_for_byte() {
    let db = test_db().await;
    // No replay cache: every replay comes from the store and must be opened.
    let (app, _) = effects_app(&db, |l| {
        l.protection(Protection::default().bodies(sealing("k1", 1)))
            .storage(Storage::default().replay_cache(0))
    })
    .await;
    let first = app
        .send("/effects", "acme", Some("s1"), "secret-note")
        .await;
    assert_eq!(first.status(), 201);
    let first = first.text().await.expect("body");
    assert!(first.contains("secret-note"));
    let bodies = stored_bodies(&db).await;
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].starts_with(b"idem-aead1:k1:"));
    assert!(!String::from_utf8_lossy(&bodies[0]).contains("secret-note"));
    let retry = app
        .send("/effects", "acme", Some("s1"), "secret-note")
        .await;
    assert!(replayed(&retry));
    assert_eq!(retry.text().await.expect("body"), first, "byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_still_opens_its_bodies_and_a_lost_key_is_refused() {
    let db = test_db().await;
    let (old, _) = effects_app(&db, |l| {
        l.protection(Protection::default().bodies(sealing("k1", 1)))
            .storage(Storage::default().replay_cache(0))
    })
    .await;
    let first = old.send("/effects", "acme", Some("r1"), "note").await;
    let first = first.text().await.expect("body");

    let rotated = sealing("k2", 2).previous("k1", &[1; 32]).expect("previous");
    let (new, _) = effects_app(&db, |l| {
        l.protection(Protection::default().bodies(rotated.clone()))
            .storage(Storage::default().replay_cache(0))
    })
    .await;
    let retry = new.send("/effects", "acme", Some("r1"), "note").await;
    assert!(replayed(&retry));
    assert_eq!(retry.text().await.expect("body"), first);

    let (lost, _) = effects_app(&db, |l| {
        l.protection(Protection::default().bodies(sealing("k2", 2)))
            .storage(Storage::default().replay_cache(0))
    })
    .await;
    let refused = lost.send("/effects", "acme", Some("r1"), "note").await;
    assert_eq!(refused.status(), 500);
    assert_eq!(
        problem_type(refused).await,
        "urn:idem:problem:record-corrupt"
    );
    assert_eq!(db.effects().await, 1, "nothing ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_hook_changes_what_replays_get_not_the_first_answer() {
    let db = test_db().await;
    let (app, _) = effects_app(&db, |l| {
        l.protection(Protection::default().redact(|stored| {
            if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&stored.body) {
                if let Some(object) = json.as_object_mut() {
                    object.remove("note");
                }
                stored.body = json.to_string().into_bytes();
            }
        }))
    })
    .await;
    let first = app.send("/effects", "acme", Some("d1"), "card-4242").await;
    assert!(first.text().await.expect("body").contains("card-4242"));
    let bodies = stored_bodies(&db).await;
    assert!(!String::from_utf8_lossy(&bodies[0]).contains("card-4242"));
    let retry = app.send("/effects", "acme", Some("d1"), "card-4242").await;
    assert!(replayed(&retry));
    let replay: serde_json::Value = retry.json().await.expect("JSON");
    assert!(
        replay.get("note").is_none() && replay.get("id").is_some(),
        "{replay}"
    );
}

/// docs/operations.md's migration to protected keys under `SECRET` as `k1`, of the keys that
/// also meet `only` (an SQL condition). One statement for plain Postgres and a Citus
/// coordinator: the UTF-8 bytes of the tenant and key come from `decode(.., 'escape')`
/// (immutable) with their backslashes doubled, not from `convert_to` (stable, which
/// Citus refuses beside column references in an UPDATE).
fn protection_migration(only: &str) -> String {
    format!(
        "UPDATE idem.keys SET \
           binding = CASE WHEN completed_at IS NULL AND fence IS NOT NULL \
             THEN coalesce(binding, key) END, \
           key = 'hmac:k1:' || encode(hmac(decode(replace(tenant_id, '\\', '\\\\'), 'escape') \
             || '\\x00'::bytea || decode(replace(key, '\\', '\\\\'), 'escape'), \
             decode('{}', 'hex'), 'sha256'), 'hex') \
         WHERE key NOT LIKE 'hmac:%' AND {only}",
        hex::encode(SECRET)
    )
}

/// Runs [`protection_migration`] of the keys that meet `only`; the rows it rewrote.
async fn protect_stored_keys(db: &TestDb, only: &str) -> u64 {
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .execute(&db.pool)
        .await
        .expect("pgcrypto");
    sqlx::raw_sql(sqlx::AssertSqlSafe(protection_migration(only)))
        .execute(&db.pool)
        .await
        .expect("migration")
        .rows_affected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_stores_each_key_as_the_layer_protects_it() {
    let db = test_db().await;
    // Backslashes (which `decode(.., 'escape')` would read as escapes), a tenant that
    // is not ASCII, a quote.
    let stored = [
        ("acme", r"order\1"),
        ("tü-ö", r"\x41"),
        ("t'1", r"a\\b\"),
        ("日本", "plain-key"),
    ];
    for (tenant, key) in stored {
        sqlx::query(
            "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, expires_at) \
             VALUES ($1, $2, decode(repeat('00', 32), 'hex'), 'POST', '/effects', \
               now() + interval '1 day')",
        )
        .bind(tenant)
        .bind(key)
        .execute(&db.pool)
        .await
        .expect("a clear key");
    }
    assert_eq!(protect_stored_keys(&db, "true").await, 4);
    let protection = KeyProtection::hmac("k1", &SECRET).expect("protection");
    for (tenant, key) in stored {
        let tenant = idem_axum::TenantId::new(tenant).expect("tenant");
        let key = idem_axum::IdempotencyKey::parse(key).expect("key");
        let protected = protection.protect(&tenant, &key);
        let found: i64 =
            sqlx::query_scalar("SELECT count(*) FROM idem.keys WHERE tenant_id = $1 AND key = $2")
                .bind(tenant.as_str())
                .bind(protected.as_str())
                .fetch_one(&db.pool)
                .await
                .expect("count");
        assert_eq!(found, 1, "{tenant:?} {key:?} stored as {protected:?}");
    }
    assert_eq!(protect_stored_keys(&db, "true").await, 0, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_on_key_protection_loses_no_sealed_body_kept_request_or_derived_key() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use idem_axum::Completer;
    use idem_tests::phased::{notes, order_request, setup_with};

    let db = test_db().await;
    let lease = Duration::from_millis(300);
    let before = setup_with(&db, |l| {
        l.protection(Protection::default().bodies(sealing("s1", 7)))
            .phased(lease)
    })
    .await;
    // A finished key, its answer sealed.
    let done = order_request(&before.app, "done-1", "").await;
    assert_eq!(done.status(), 201);
    let done_body = done.bytes().await.expect("body");
    // Two keys in progress: each stopped after its first phase, after its provider
    // call went out (the process died before the phase committed), its kept request
    // sealed.
    for key in ["open-1", "open-2"] {
        before.faults.interrupt.store(1, Ordering::SeqCst);
        assert_eq!(order_request(&before.app, key, "").await.status(), 503);
        let tenant = idem_axum::TenantId::new("t1").expect("tenant");
        let client_key = idem_axum::IdempotencyKey::parse(key).expect("key");
        let derived = idem_core::phased::derived_key(&tenant, &client_key, "charge");
        let charged = before
            .provider
            .send("/charges", "merchant", Some(derived.as_str()), "{}")
            .await;
        assert_eq!(charged.status(), 201);
    }
    assert_eq!(notes(&db, "provider:charge").await, 3);

    assert_eq!(protect_stored_keys(&db, "tenant_id = 't1'").await, 3);
    let protection = KeyProtection::hmac("k1", &SECRET).expect("protection");
    let after = setup_with(&db, |l| {
        l.protection(
            Protection::default()
                .bodies(sealing("s1", 7))
                .keys(protection),
        )
        .phased(lease)
    })
    .await;
    tokio::time::sleep(lease).await;

    let replay = order_request(&after.app, "done-1", "").await;
    assert_eq!(replay.status(), 201, "the sealed answer still opens");
    assert!(replayed(&replay));
    assert_eq!(replay.bytes().await.expect("body"), done_body);
    let retried = order_request(&after.app, "open-2", "").await;
    assert_eq!(
        retried.status(),
        201,
        "a retry resumes a key claimed before"
    );
    let completer = Completer::new(db.pool.clone(), after.routes.clone()).after(Duration::ZERO);
    assert_eq!(completer.complete_once().await.expect("round"), 1);
    let finished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idem.keys WHERE completed_at IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .expect("finished");
    assert_eq!(finished, 3 + 3, "ours, and the provider's three charges");
    assert_eq!(
        notes(&db, "provider:charge").await,
        3,
        "the resumed calls carried the same derived keys: no second charge"
    );
    assert!(
        !dump(&db).await.contains("open-1"),
        "no client key left in the store"
    );
}
