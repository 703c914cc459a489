//! `POST /payments/charged` in phased mode, with real processes: the payments service,
//! the card provider (its own process and database) and Postgres.
//!
//! - the payments process is SIGKILLed right after the provider answered; after a
//!   restart the client's retry resumes at the charge phase, the provider charges once,
//!   and the client gets the final answer;
//! - the same crash with no retry: the restarted process's completer finishes the key;
//! - a paused process whose lease passed commits nothing after another process took
//!   the key over (fencing);
//! - a payment refused after the charge is refunded once, and the answer replays;
//! - a slow provider: 202 Accepted, then the status URL turns into the final answer.

use std::time::Duration;

use idem_tests::{ServiceProcess, TestDb, replayed, test_db, until};
use serde_json::Value;

const PAYMENTS: &str = env!("CARGO_BIN_EXE_payments");
const PROVIDER: &str = env!("CARGO_BIN_EXE_payments-provider");
const PAYMENT: &str = r#"{"amount":1250,"currency":"EUR","reference":"charged"}"#;

/// The provider and its database, and the payments service's database.
struct World {
    payments_db: TestDb,
    provider_db: TestDb,
    provider: ServiceProcess,
    http: reqwest::Client,
}

impl World {
    async fn start(provider_env: &[(&str, &str)]) -> World {
        let payments_db = test_db().await;
        let provider_db = test_db().await;
        let provider = ServiceProcess::start(PROVIDER, &provider_db.url, provider_env).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        World {
            payments_db,
            provider_db,
            provider,
            http,
        }
    }

    /// Starts the payments service against the provider, with a 1 s lease and `env`.
    async fn payments(&self, env: &[(&str, &str)]) -> ServiceProcess {
        let provider_url = self.provider.url("");
        let mut all = vec![
            ("PROVIDER_URL", provider_url.as_str()),
            ("PHASED_LEASE_MS", "1000"),
        ];
        all.extend_from_slice(env);
        ServiceProcess::start(PAYMENTS, &self.payments_db.url, &all).await
    }

    fn charge(&self, payments: &ServiceProcess, key: &str, body: &str) -> reqwest::RequestBuilder {
        self.http
            .post(payments.url("/payments/charged"))
            .header("x-tenant-id", "shop-1")
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// The provider's charges: (id, status).
    async fn charges(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT id, status FROM provider.charges ORDER BY created_at")
            .fetch_all(&self.provider_db.pool)
            .await
            .expect("provider charges")
    }

    /// The payments: (status, charge id).
    async fn payments_rows(&self) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT status, charge_id FROM payments ORDER BY created_at")
            .fetch_all(&self.payments_db.pool)
            .await
            .expect("payments")
    }

    /// `payments.charged` messages in the outbox.
    async fn announced(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM idem.outbox WHERE topic = 'payments.charged'")
            .fetch_one(&self.payments_db.pool)
            .await
            .expect("outbox")
    }

    /// Starts a payments process that pauses right after the provider's answer, sends
    /// it a charge, and kills it once the provider has charged, leaving the key in
    /// progress after phase `pending`.
    async fn crash_after_the_provider_answered(&self, key: &str) {
        let mut payments = self
            .payments(&[
                ("CHARGE_PAUSE_AFTER_PROVIDER_MS", "60000"),
                ("COMPLETER_INTERVAL_MS", "0"),
            ])
            .await;
        let lost = tokio::spawn(self.charge(&payments, key, PAYMENT).send());
        until("the provider's charge", async || {
            self.charges().await.len() == 1
        })
        .await;
        payments.kill().await;
        assert!(
            lost.await.expect("client task").is_err(),
            "the first attempt got no answer"
        );
        let (point, completed): (Option<String>, bool) = sqlx::query_as(
            "SELECT recovery_point, completed_at IS NOT NULL FROM idem.keys WHERE key = $1",
        )
        .bind(key)
        .fetch_one(&self.payments_db.pool)
        .await
        .expect("key row");
        assert_eq!((point.as_deref(), completed), (Some("pending"), false));
        assert_eq!(self.payments_rows().await, [("pending".to_owned(), None)]);
    }

    /// Checks that the payment was charged once, recorded with its charge, and
    /// announced once.
    async fn charged_once(&self, answer: &Value) {
        let charges = self.charges().await;
        assert_eq!(charges.len(), 1, "the provider charged once: {charges:?}");
        assert_eq!(answer["status"], "charged");
        assert_eq!(answer["charge_id"], charges[0].0.as_str());
        assert_eq!(
            self.payments_rows().await,
            [("charged".to_owned(), Some(charges[0].0.clone()))]
        );
        assert_eq!(self.announced().await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_provider_answered_resumes_on_retry_and_charges_once() {
    let world = World::start(&[]).await;
    world.crash_after_the_provider_answered("crash-1").await;

    let restarted = world.payments(&[("COMPLETER_INTERVAL_MS", "0")]).await;
    // The client retries after the lease (1 s) passed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let retry = world
        .charge(&restarted, "crash-1", PAYMENT)
        .send()
        .await
        .expect("retry");
    assert_eq!(retry.status(), 201);
    assert!(!replayed(&retry), "the retry resumed the work");
    let body = retry.text().await.expect("body");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    world.charged_once(&answer).await;

    let again = world
        .charge(&restarted, "crash-1", PAYMENT)
        .send()
        .await
        .expect("again");
    assert!(replayed(&again));
    assert_eq!(again.text().await.expect("body"), body);
    let owners: i32 = sqlx::query_scalar("SELECT owners FROM idem.keys WHERE key = 'crash-1'")
        .fetch_one(&world.payments_db.pool)
        .await
        .expect("owners");
    assert_eq!(owners, 2, "the retry took the key over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_charge_nobody_retries_is_finished_by_the_completer() {
    let world = World::start(&[]).await;
    world.crash_after_the_provider_answered("crash-2").await;

    let restarted = world.payments(&[("COMPLETER_INTERVAL_MS", "300")]).await;
    until("the completer's answer", async || {
        let status: Option<i16> = sqlx::query_scalar(
            "SELECT response_status FROM idem.keys WHERE key = 'crash-2' \
             AND completed_at IS NOT NULL",
        )
        .fetch_optional(&world.payments_db.pool)
        .await
        .expect("key row");
        status == Some(201)
    })
    .await;

    let late = world
        .charge(&restarted, "crash-2", PAYMENT)
        .send()
        .await
        .expect("late retry");
    assert_eq!(late.status(), 201);
    assert!(replayed(&late), "the completer's answer, stored");
    let answer: Value = late.json().await.expect("JSON");
    world.charged_once(&answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_refused_after_its_charge_is_refunded_once() {
    let world = World::start(&[]).await;
    let payments = world.payments(&[]).await;
    let refused = r#"{"amount":500,"currency":"XTS"}"#;
    let answer = world
        .charge(&payments, "refund-1", refused)
        .send()
        .await
        .expect("charge");
    assert_eq!(answer.status(), 402);
    let body = answer.text().await.expect("body");
    let payment: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(payment["status"], "refunded");
    assert!(
        payment["refund_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("re_"))
    );
    assert_eq!(payment["failure"], "XTS payments are never settled");
    for _ in 0..2 {
        let again = world
            .charge(&payments, "refund-1", refused)
            .send()
            .await
            .expect("retry");
        assert_eq!(again.status(), 402);
        assert!(replayed(&again));
        assert_eq!(again.text().await.expect("body"), body);
    }
    let charges = world.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].1, "refunded", "refunded at the provider");
    assert_eq!(world.announced().await, 0, "nothing announced");
    assert_eq!(world.payments_rows().await[0].0, "refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_s_charge_is_accepted_and_its_status_polled_to_the_end() {
    let world = World::start(&[("PROVIDER_DELAY_MS", "2000")]).await;
    // The lease outlasts the provider's call, as it must (see docs/phased.md).
    let payments = world
        .payments(&[("ACCEPT_AFTER_MS", "300"), ("PHASED_LEASE_MS", "10000")])
        .await;
    let accepted = world
        .charge(&payments, "slow-1", PAYMENT)
        .send()
        .await
        .expect("charge");
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let status = || {
        world
            .http
            .get(payments.url(&location))
            .header("x-tenant-id", "shop-1")
            .send()
    };
    let first_poll = status().await.expect("status");
    assert_eq!(first_poll.status(), 202, "still charging");
    let first_poll: Value = first_poll.json().await.expect("JSON");
    assert_eq!(first_poll["recovery_point"], "pending");

    let mut last = None;
    until("the final answer", async || {
        let polled = status().await.expect("status");
        let done = polled.status() == 201;
        if done {
            last = Some(polled.json::<Value>().await.expect("JSON"));
        }
        done
    })
    .await;
    let answer = last.expect("the final answer");
    world.charged_once(&answer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_whose_lease_passed_commits_nothing_after_another_process_took_over() {
    let world = World::start(&[]).await;
    // Both processes pause 4 s after the provider answered; the lease is 1 s. A wakes
    // while B, which took the key over, is still in progress: only the fencing token
    // stops A from committing.
    let pausing = [
        ("CHARGE_PAUSE_AFTER_PROVIDER_MS", "4000"),
        ("COMPLETER_INTERVAL_MS", "0"),
    ];
    let paused = world.payments(&pausing).await;
    let other = world.payments(&pausing).await;
    let stale = tokio::spawn(world.charge(&paused, "stale-1", PAYMENT).send());
    until("the provider's charge", async || {
        world.charges().await.len() == 1
    })
    .await;
    // Process B gets the client's retry after A's lease passed, and takes the key over.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let took_over = world
        .charge(&other, "stale-1", PAYMENT)
        .send()
        .await
        .expect("retry on the other process");
    assert_eq!(took_over.status(), 201);
    let answer: Value = took_over.json().await.expect("JSON");

    let stale = stale
        .await
        .expect("task")
        .expect("the paused process answers");
    assert_eq!(stale.status(), 409);
    let problem: Value = stale.json().await.expect("problem");
    assert_eq!(problem["type"], "urn:idem:problem:lease-lost");
    world.charged_once(&answer).await;
    let (owners, status): (i32, Option<i16>) =
        sqlx::query_as("SELECT owners, response_status FROM idem.keys WHERE key = 'stale-1'")
            .fetch_one(&world.payments_db.pool)
            .await
            .expect("key row");
    assert_eq!(
        (owners, status),
        (2, Some(201)),
        "B's answer is the stored one"
    );
}
