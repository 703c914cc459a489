//! The `idem` binary run against real Postgres: keys made by the payments example over
//! real HTTP, outbox and inbox rows in the states operators meet; `idem probe` against
//! real services (`probe::`).

#[path = "cli/probe.rs"]
mod probe;

use std::time::Duration;

use idem_axum::{BodySealing, Protection, Storage};
use idem_tests::{TestApp, TestDb, on_citus, replayed, test_db};
use serde_json::Value;

const IDEM: &str = env!("CARGO_BIN_EXE_idem");
const PAYMENT: &str = r#"{"amount":1250,"currency":"EUR"}"#;

/// Runs `idem --json <args>` against `db`: its exit code and its output as JSON.
pub(crate) async fn idem(db: &TestDb, args: &[&str]) -> (i32, Value) {
    idem_with(args, Some(&db.url)).await
}

/// Runs `idem --json <args>` with `DATABASE_URL` set to `database_url` (unset for
/// `None`): its exit code and its output as JSON.
pub(crate) async fn idem_with(args: &[&str], database_url: Option<&str>) -> (i32, Value) {
    let mut command = tokio::process::Command::new(IDEM);
    command.arg("--json").args(args);
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let out = command.output().await.expect("run idem");
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "idem {args:?} exited {code} without JSON:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

async fn pay(app: &TestApp, key: &str) -> reqwest::Response {
    app.post("/payments", "acme", Some(key), PAYMENT)
        .send()
        .await
        .expect("POST /payments")
}

async fn exec(db: &TestDb, sql: &'static str) {
    sqlx::raw_sql(sql).execute(&db.pool).await.expect(sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_show_prints_a_key_s_status_response_and_replays() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    assert_eq!(pay(&app, "k1").await.status(), 201);
    assert!(replayed(&pay(&app, "k1").await));
    // The replay is counted on the row about a second later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let (code, shown) = idem(&db, &["keys", "show", "--tenant", "acme", "--key", "k1"]).await;
        assert_eq!(code, 0, "{shown}");
        if shown["replays"] == 1 || tokio::time::Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["response_status"], 201);
    assert_eq!(shown["route"], "/payments");
    assert_eq!(shown["replays"], 1);
    let preview = shown["body_preview"].as_str().expect("a body preview");
    assert!(preview.contains("\"amount\":1250"), "{preview}");
    let headers = shown["response_headers"].to_string();
    assert!(headers.contains("location"), "{headers}");

    let (code, missing) = idem(&db, &["keys", "show", "--tenant", "acme", "--key", "nope"]).await;
    assert_eq!(code, 2);
    assert_eq!(missing["found"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_show_opens_a_sealed_body_only_with_its_body_key() {
    let db = test_db().await;
    let (old, current) = ([3u8; 32], [7u8; 32]);
    let sealing = BodySealing::new("b2", &current)
        .and_then(|s| s.previous("b1", &old))
        .expect("sealing");
    let layer =
        payments::idempotency(db.pool.clone()).protection(Protection::default().bodies(sealing));
    let app = TestApp::spawn(payments::app_with(db.pool.clone(), layer)).await;
    assert_eq!(pay(&app, "sealed").await.status(), 201);
    let show = ["keys", "show", "--tenant", "acme", "--key", "sealed"];

    let (code, locked) = idem(&db, &show).await;
    assert_eq!(code, 0);
    assert_eq!(locked["body_sealed"], true);
    assert_eq!(locked["body_preview"], Value::Null, "no ciphertext shown");

    // Both keys, as after a rotation: each opens what it sealed.
    let keys = format!("b1={},b2={}", hex::encode(old), hex::encode(current));
    let (code, opened) = idem(&db, &[&show[..], &["--body-key", &keys]].concat()).await;
    assert_eq!(code, 0, "{opened}");
    assert_eq!(opened["body_sealed"], true);
    let preview = opened["body_preview"].as_str().expect("an opened body");
    assert!(preview.contains("\"amount\":1250"), "{preview}");

    let wrong = format!("b2={}", hex::encode([9u8; 32]));
    let (_, refused) = idem(&db, &[&show[..], &["--body-key", &wrong]].concat()).await;
    assert_eq!(
        refused["body_preview"],
        Value::Null,
        "a wrong key opens nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_show_prints_a_phased_key_s_recovery_point_and_journal() {
    let db = test_db().await;
    exec(
        &db,
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, expires_at, \
           fence, locked_until, phases, recovery_point, operation_id) VALUES \
         ('acme', 'phased-1', decode(repeat('00', 32), 'hex'), 'POST', '/payments/charged', \
           now() + interval '1 day', 2, now() - interval '1 minute', \
           '{\"pending\": {\"done\": {\"id\": 7}}}', 'pending', gen_random_uuid())",
    )
    .await;
    let (code, shown) = idem(
        &db,
        &["keys", "show", "--tenant", "acme", "--key", "phased-1"],
    )
    .await;
    assert_eq!(code, 0, "{shown}");
    assert_eq!(shown["status"], "in_flight");
    let phased = &shown["phased"];
    assert_eq!(
        (&phased["fence"], &phased["recovery_point"]),
        (&2.into(), &"pending".into())
    );
    assert_eq!(phased["journal"]["pending"]["done"]["id"], 7);
    assert!(phased["operation"].is_string() && phased["lease_until"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_protect_stores_clear_keys_as_the_protecting_layer_finds_them() {
    let db = test_db().await;
    let secret = hex::encode([0x42u8; 32]);
    let layer = payments::idempotency(db.pool.clone()).storage(Storage::default().replay_cache(0));
    let before = TestApp::spawn(payments::app_with(db.pool.clone(), layer)).await;
    // A backslash: what SQL's escape decoding would misread.
    for key in [r"p\1", "p2"] {
        assert_eq!(pay(&before, key).await.status(), 201);
    }
    let other = before
        .post("/payments", "globex", Some("p3"), PAYMENT)
        .send()
        .await
        .expect("POST /payments");
    assert_eq!(other.status(), 201);
    // A phased key in progress: its derived keys and kept request stay bound to the
    // clear key.
    exec(
        &db,
        "INSERT INTO idem.keys (tenant_id, key, fingerprint, method, path, expires_at, \
           fence, locked_until, recovery_point) VALUES \
         ('acme', 'phased-1', decode(repeat('00', 32), 'hex'), 'POST', '/payments/charged', \
           now() + interval '1 day', 1, now(), 'pending')",
    )
    .await;
    // A payment past its retention, swept into a tombstone under its clear key (the
    // example's route is critical).
    assert_eq!(pay(&before, "late-1").await.status(), 201);
    exec(
        &db,
        "UPDATE idem.keys SET expires_at = now() - interval '1 second', retention = '0' \
         WHERE key = 'late-1'",
    )
    .await;
    idem_sqlx::Sweeper::new(db.pool.clone())
        .sweep_once()
        .await
        .expect("sweep");

    let protect = [
        "keys",
        "protect",
        "--key-secret-hex",
        &secret,
        "--key-secret-id",
        "k1",
        "--tenant",
        "acme",
        "--batch-size",
        "1",
    ];
    let (code, report) = idem(&db, &protect).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["protected"], 3, "{report}");
    assert_eq!(report["tombstones"], 1, "{report}");
    let stored: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT tenant_id, key, binding FROM idem.keys ORDER BY tenant_id, binding, key",
    )
    .fetch_all(&db.pool)
    .await
    .expect("keys");
    assert_eq!(stored.len(), 4);
    assert!(
        stored[..3]
            .iter()
            .all(|(t, k, _)| t == "acme" && k.starts_with("hmac:k1:")),
        "{stored:?}"
    );
    let bindings: Vec<_> = stored.iter().map(|(_, _, b)| b.as_deref()).collect();
    assert_eq!(bindings, [Some("phased-1"), None, None, None], "{stored:?}");
    assert_eq!(stored[3].1, "p3", "another tenant's: {stored:?}");

    let protection = idem_axum::KeyProtection::hmac("k1", &[0x42u8; 32]).expect("protection");
    let layer = payments::idempotency(db.pool.clone())
        .protection(Protection::default().keys(protection))
        .storage(Storage::default().replay_cache(0));
    let after = TestApp::spawn(payments::app_with(db.pool.clone(), layer)).await;
    for key in [r"p\1", "p2"] {
        assert!(replayed(&pay(&after, key).await), "{key} replays");
    }
    let late = pay(&after, "late-1").await;
    assert_eq!(
        late.status(),
        410,
        "its tombstone, protected, still answers"
    );
    assert_eq!(db.payments().await, 4, "nothing ran again");
    let clear: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idem.tombstones WHERE key NOT LIKE 'hmac:%'")
            .fetch_one(&db.pool)
            .await
            .expect("tombstones");
    assert_eq!(clear, 0, "no tombstone keeps a clear key");
    let show = ["keys", "show", "--tenant", "acme", "--key", r"p\1"];
    let with_secret = ["--key-secret-hex", &secret, "--key-secret-id", "k1"];
    let (code, shown) = idem(&db, &[&show[..], &with_secret].concat()).await;
    assert_eq!(
        (code, &shown["status"]),
        (0, &"completed".into()),
        "{shown}"
    );

    let (code, again) = idem(&db, &protect).await;
    assert_eq!((code, &again["protected"]), (0, &0.into()), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_evict_makes_the_next_request_run_as_new() {
    let db = test_db().await;
    // Without the replay cache: a process that keeps the finished record in memory
    // answers from it until it expires there (see docs/operations.md).
    let layer = payments::idempotency(db.pool.clone()).storage(Storage::default().replay_cache(0));
    let app = TestApp::spawn(payments::app_with(db.pool.clone(), layer)).await;
    assert_eq!(pay(&app, "k2").await.status(), 201);
    let (code, evicted) = idem(&db, &["keys", "evict", "--tenant", "acme", "--key", "k2"]).await;
    assert_eq!((code, &evicted["evicted"]), (0, &Value::Bool(true)));
    let again = pay(&app, "k2").await;
    assert_eq!(again.status(), 201);
    assert!(!replayed(&again), "the evicted key runs as new");
    assert_eq!(db.payments().await, 2);
    let (code, _) = idem(&db, &["keys", "evict", "--tenant", "other", "--key", "k2"]).await;
    assert_eq!(code, 2, "nothing to evict");

    // An expired payment's tombstone (the example's route is critical) goes too.
    db.expire_keys().await;
    idem_sqlx::Sweeper::new(db.pool.clone())
        .sweep_once()
        .await
        .expect("sweep");
    assert_eq!(pay(&app, "k2").await.status(), 410, "the tombstone answers");
    let (code, shown) = idem(&db, &["keys", "show", "--tenant", "acme", "--key", "k2"]).await;
    assert_eq!(
        (code, &shown["status"]),
        (0, &"tombstone".into()),
        "{shown}"
    );
    assert_eq!(shown["response_status"], 201, "{shown}");
    assert_eq!(shown["standing"], true, "{shown}");
    let (code, evicted) = idem(&db, &["keys", "evict", "--tenant", "acme", "--key", "k2"]).await;
    assert_eq!((code, &evicted["evicted"]), (0, &Value::Bool(true)));
    let after = pay(&app, "k2").await;
    assert_eq!(
        after.status(),
        201,
        "with its tombstone evicted the key runs as new"
    );
    assert_eq!(db.payments().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stats_counts_keys_replays_and_mismatches_per_day_and_route() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    for key in ["s1", "s2", "s3"] {
        assert_eq!(pay(&app, key).await.status(), 201);
    }
    assert!(replayed(&pay(&app, "s1").await));
    assert!(replayed(&pay(&app, "s2").await));
    let changed = app
        .post(
            "/payments",
            "acme",
            Some("s3"),
            r#"{"amount":1,"currency":"EUR"}"#,
        )
        .send()
        .await
        .expect("POST /payments");
    assert_eq!(changed.status(), 422, "the key reused for another payment");
    // Replays and mismatches are counted on the rows about a second later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let (code, stats) = idem(&db, &["keys", "stats", "--days", "1"]).await;
        assert_eq!(code, 0);
        let counted = stats[0]["replays"] == 2 && stats[0]["mismatches"] == 1;
        if counted || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows = stats.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{stats}");
    assert_eq!(rows[0]["route"], "/payments");
    assert_eq!(rows[0]["keys"], 3);
    assert_eq!(
        (&rows[0]["replays"], &rows[0]["mismatches"]),
        (&2.into(), &1.into())
    );
    assert!(rows[0]["bytes"].as_i64().unwrap_or(0) > 0);

    let (_, shown) = idem(&db, &["keys", "show", "--tenant", "acme", "--key", "s3"]).await;
    assert_eq!(
        (&shown["replays"], &shown["mismatches"]),
        (&0.into(), &1.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_status_lists_and_repairs_dead_letters() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    for key in ["o1", "o2"] {
        assert_eq!(pay(&app, key).await.status(), 201);
    }
    exec(
        &db,
        "UPDATE idem.outbox SET dead_lettered_at = now(), last_error = 'broker said no' \
         WHERE id = (SELECT id FROM idem.outbox ORDER BY id LIMIT 1)",
    )
    .await;
    let (_, status) = idem(&db, &["outbox", "status"]).await;
    assert_eq!(status[0]["topic"], "payments.created");
    assert_eq!(
        (&status[0]["pending"], &status[0]["dead"]),
        (&1.into(), &1.into())
    );

    let (_, dead) = idem(&db, &["outbox", "dead-letters"]).await;
    let dead = dead.as_array().expect("dead letters").clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["last_error"], "broker said no");
    let id = dead[0]["id"].as_str().expect("id").to_owned();

    // Relays listen where their pool connects (on Citus, the coordinator).
    let mut relays = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .expect("listener");
    relays.listen("idem_outbox").await.expect("LISTEN");
    let (code, _) = idem(&db, &["outbox", "redrive", &id]).await;
    assert_eq!(code, 0);
    let woken = tokio::time::timeout(Duration::from_secs(10), relays.recv()).await;
    assert!(woken.is_ok_and(|n| n.is_ok()), "a redrive wakes the relays");
    let (_, status) = idem(&db, &["outbox", "status"]).await;
    assert_eq!(
        (&status[0]["pending"], &status[0]["dead"]),
        (&2.into(), &0.into())
    );
    let (code, _) = idem(&db, &["outbox", "redrive", &id]).await;
    assert_eq!(code, 2, "no longer a dead letter");

    exec(&db, "UPDATE idem.outbox SET dead_lettered_at = now()").await;
    let (code, _) = idem(&db, &["outbox", "purge", &id]).await;
    assert_eq!(code, 0);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idem.outbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(left, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_status_and_dead_letters_per_consumer() {
    let db = test_db().await;
    exec(
        &db,
        "INSERT INTO idem.inbox (consumer, message_id, processed_at) \
           VALUES ('ledger', gen_random_uuid(), now()), ('ledger', gen_random_uuid(), now()); \
         INSERT INTO idem.inbox (consumer, message_id, attempts, last_error) \
           VALUES ('ledger', gen_random_uuid(), 2, 'timeout'); \
         INSERT INTO idem.inbox (consumer, message_id, attempts, last_error, dead_at, subject, payload) \
           VALUES ('ledger', gen_random_uuid(), 5, 'poison', now(), 'payments.created', 'x')",
    )
    .await;
    let (_, status) = idem(&db, &["inbox", "status"]).await;
    assert_eq!(status[0]["consumer"], "ledger");
    assert_eq!(
        (
            &status[0]["processed"],
            &status[0]["failing"],
            &status[0]["dead"]
        ),
        (&2.into(), &1.into(), &1.into())
    );
    let (_, dead) = idem(&db, &["inbox", "dead", "--consumer", "ledger"]).await;
    assert_eq!(dead[0]["last_error"], "poison");
    assert_eq!(dead[0]["subject"], "payments.created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lists_delivered_messages_the_consumer_never_recorded() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    for key in ["r1", "r2", "r3"] {
        assert_eq!(pay(&app, key).await.status(), 201);
    }
    // All three delivered; the ledger recorded the first two: the first under the
    // tenant the message names (as `Inbox::process` does), the second under none (a
    // consumer that passed no headers).
    exec(&db, "UPDATE idem.outbox SET delivered_at = now()").await;
    exec(
        &db,
        "INSERT INTO idem.inbox (tenant_id, consumer, message_id, processed_at) \
         SELECT tenant_id, 'ledger', id, now() FROM idem.outbox ORDER BY id LIMIT 1",
    )
    .await;
    exec(
        &db,
        "INSERT INTO idem.inbox (tenant_id, consumer, message_id, processed_at) \
         SELECT '', 'ledger', id, now() FROM idem.outbox ORDER BY id LIMIT 1 OFFSET 1",
    )
    .await;
    let never: String =
        sqlx::query_scalar("SELECT id::text FROM idem.outbox ORDER BY id DESC LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .expect("the third");
    let (code, report) = idem(&db, &["reconcile", "--consumer", "ledger", "--since", "1h"]).await;
    assert_eq!(code, 0);
    let missing = report["missing"].as_array().expect("missing");
    assert_eq!(missing.len(), 1, "{report}");
    assert_eq!(missing[0]["id"], never.as_str());
    let (_, other_topic) = idem(
        &db,
        &[
            "reconcile",
            "--consumer",
            "ledger",
            "--since",
            "1h",
            "--topic",
            "refunds",
        ],
    )
    .await;
    assert_eq!(other_topic["missing"], Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_expired_keys_and_migrate_reports_the_versions() {
    let db = test_db().await;
    let app = TestApp::spawn(payments::app(db.pool.clone())).await;
    for key in ["w1", "w2"] {
        assert_eq!(pay(&app, key).await.status(), 201);
    }
    exec(
        &db,
        "UPDATE idem.keys SET expires_at = now() - interval '1 hour', \
           completed_at = now() - interval '2 hours', retention = interval '0' \
         WHERE key = 'w1'",
    )
    .await;
    let (code, swept) = idem(&db, &["sweep", "--batch-size", "1"]).await;
    assert_eq!(code, 0);
    assert_eq!(swept["keys"], 1);
    assert_eq!(db.keys().await, 1);

    let (code, migrated) = idem(&db, &["migrate"]).await;
    assert_eq!(code, 0);
    assert!(
        migrated["versions"]
            .as_array()
            .is_some_and(|v| v.len() >= 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_says_plain_postgres_or_finds_idems_tables_distributed_already() {
    let db = test_db().await;
    let (code, report) = idem(&db, &["distribute", "--colocate-with", "effects"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["distributed"], Value::Array(vec![]), "{report}");
    if on_citus() {
        // The test database's tables were distributed when it was made.
        assert_eq!(report["backend"], "citus", "{report}");
        return;
    }
    assert_eq!(report["backend"], "postgres", "{report}");
    let out = tokio::process::Command::new(IDEM)
        .arg("distribute")
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("run idem");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("plain Postgres"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_it_says_so_and_fails() {
    let out = tokio::process::Command::new(IDEM)
        .args(["outbox", "status"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run idem");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}
