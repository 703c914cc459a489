//! idem-client against the payments service as a child process (real Postgres, real
//! sockets), and against small servers of the test's own for the answers the service
//! never gives (always 503, Retry-After): a response lost after the commit is received
//! on the retry, an in-flight retry ends with the one result, final answers are not
//! retried, the budget holds retries to its share, and retries are spread by jitter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use idem_client::{Attempts, IdempotentRetry, OperationKey, RetryBudget, RetryError, StopReason};
use idem_tests::{ResponseDropper, ServiceProcess, TestApp, test_db};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::Value;
use tokio::time::Instant;

const PAYMENTS: &str = env!("CARGO_BIN_EXE_payments");
const PAYMENT: &str = r#"{"amount":1250,"currency":"EUR"}"#;

fn client(retry: IdempotentRetry) -> ClientWithMiddleware {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    ClientBuilder::new(http).with(retry).build()
}

fn pay(client: &ClientWithMiddleware, url: &str, body: &str) -> reqwest_middleware::RequestBuilder {
    client
        .post(url)
        .header("x-tenant-id", "acme")
        .header("content-type", "application/json")
        .body(body.to_owned())
}

fn attempts(response: &reqwest::Response) -> Attempts {
    response
        .extensions()
        .get::<Attempts>()
        .cloned()
        .expect("the middleware's Attempts extension")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_lost_after_the_commit_is_received_on_the_retry_and_charged_once() {
    let db = test_db().await;
    let service = ServiceProcess::start(PAYMENTS, &db.url, &[]).await;
    let proxy = ResponseDropper::start(service.addr, 1).await;
    let client = client(
        IdempotentRetry::new().backoff(Duration::from_millis(10), Duration::from_millis(50)),
    );

    let response = pay(&client, &format!("http://{}/payments", proxy.addr), PAYMENT)
        .send()
        .await
        .expect("the retry answers");
    assert_eq!(proxy.dropped(), 1, "the first answer was lost on the way");
    assert_eq!(response.status(), 201);
    let outcome = attempts(&response);
    assert_eq!(outcome.attempts, 2);
    assert!(outcome.replayed, "the retry got the stored answer");
    let key = outcome.key.expect("a generated key");
    assert_eq!(
        uuid::Uuid::parse_str(&key).expect("UUID").get_version_num(),
        7
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(db.payments().await, 1, "charged once");
    let stored: uuid::Uuid = sqlx::query_scalar("SELECT id FROM payments")
        .fetch_one(&db.pool)
        .await
        .expect("the payment");
    assert_eq!(
        body["id"],
        stored.to_string(),
        "the first attempt's payment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_finds_the_first_attempt_in_flight_ends_with_its_one_result() {
    let db = test_db().await;
    let service = ServiceProcess::start(
        PAYMENTS,
        &db.url,
        &[
            ("PAYMENTS_HANDLER_DELAY_MS", "1500"),
            ("IN_FLIGHT_WAIT_MS", "0"),
        ],
    )
    .await;
    let client = client(
        IdempotentRetry::new()
            .attempt_timeout(Duration::from_millis(300))
            .backoff(Duration::from_millis(200), Duration::from_millis(400))
            .max_attempts(30)
            .deadline(Duration::from_secs(20)),
    );
    let response = pay(&client, &service.url("/payments"), PAYMENT)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let outcome = attempts(&response);
    assert!(outcome.replayed, "{outcome:?}");
    assert!(outcome.attempts >= 3, "{outcome:?}");
    assert_eq!(db.payments().await, 1);
    // The service answered 409 in-flight to at least one of the retries.
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(service.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let in_flight = metrics
        .lines()
        .filter(|l| l.starts_with("idem_requests_total{") && l.contains("outcome=\"in_flight\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    assert!(
        in_flight >= 1.0,
        "no 409 in-flight was answered:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_answers_are_returned_after_one_attempt() {
    let db = test_db().await;
    let service = ServiceProcess::start(PAYMENTS, &db.url, &[]).await;
    let client = client(IdempotentRetry::new());
    let url = service.url("/payments");

    // 400: an invalid payment.
    let invalid = pay(&client, &url, r#"{"amount":-5,"currency":"EUR"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(invalid.status(), 400);
    let outcome = attempts(&invalid);
    assert_eq!(
        (outcome.attempts, outcome.stopped),
        (1, Some(StopReason::NotRetryable))
    );

    // 422: one operation's key reused for a different payment (the mismatch answer).
    let operation = OperationKey("order-4711".into());
    let first = pay(&client, &url, PAYMENT)
        .with_extension(operation.clone())
        .send()
        .await
        .expect("answered");
    assert_eq!(first.status(), 201);
    assert_eq!(attempts(&first).key.as_deref(), Some("order-4711"));
    let reused = pay(&client, &url, r#"{"amount":99,"currency":"EUR"}"#)
        .with_extension(operation.clone())
        .send()
        .await
        .expect("answered");
    assert_eq!(reused.status(), 422);
    let outcome = attempts(&reused);
    assert_eq!(
        (outcome.attempts, outcome.stopped),
        (1, Some(StopReason::NotRetryable))
    );

    // 410 key-expired: the first payment's retry, after its key's retention (the example's
    // route is critical, so its keys leave tombstones), reaching another replica.
    db.expire_keys().await;
    let replica = ServiceProcess::start(PAYMENTS, &db.url, &[]).await;
    let late = pay(&client, &replica.url("/payments"), PAYMENT)
        .with_extension(operation)
        .send()
        .await
        .expect("answered");
    assert_eq!(late.status(), 410);
    let outcome = attempts(&late);
    assert_eq!(
        (outcome.attempts, outcome.stopped),
        (1, Some(StopReason::KeyExpired))
    );
    let body: Value = late.json().await.expect("the problem body");
    assert_eq!(body["type"], idem_core::retry::KEY_EXPIRED_PROBLEM);
    assert_eq!(body["original_status"], 201);
    assert_eq!(db.payments().await, 1);
}

/// A server of the test's own: every request to `/pay` answers what `answer` says for
/// its key and attempt (1 for the first), and each arrival is recorded.
#[derive(Clone, Default)]
struct Recorder {
    arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    requests: Arc<AtomicUsize>,
}

impl Recorder {
    async fn serve(
        &self,
        answer: impl Fn(&str, usize) -> (StatusCode, Option<&'static str>)
        + Clone
        + Send
        + Sync
        + 'static,
    ) -> TestApp {
        let recorder = self.clone();
        let handler = move |headers: HeaderMap| {
            let recorder = recorder.clone();
            let answer = answer.clone();
            async move {
                recorder.requests.fetch_add(1, Ordering::SeqCst);
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let attempt = {
                    let mut arrivals = recorder.arrivals.lock().expect("arrivals");
                    let times = arrivals.entry(key.clone()).or_default();
                    times.push(Instant::now());
                    times.len()
                };
                let (status, retry_after) = answer(&key, attempt);
                match retry_after {
                    Some(after) => (status, [("retry-after", after)]).into_response(),
                    None => status.into_response(),
                }
            }
        };
        TestApp::spawn(Router::new().route("/pay", post(handler))).await
    }

    fn gaps(&self) -> Vec<Duration> {
        let arrivals = self.arrivals.lock().expect("arrivals");
        arrivals
            .values()
            .filter(|t| t.len() >= 2)
            .map(|t| t[1] - t[0])
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_always_answers_503_gets_at_most_the_budgeted_retries() {
    let recorder = Recorder::default();
    let server = recorder
        .serve(|_, _| (StatusCode::SERVICE_UNAVAILABLE, None))
        .await;
    let budget = RetryBudget {
        ttl: Duration::from_secs(10),
        min_per_sec: 1,
        ratio: 0.1,
    };
    let client = client(
        IdempotentRetry::new()
            .budget(budget)
            .max_attempts(4)
            .backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    let url = server.url("/pay");
    let started = Instant::now();
    let mut stopped: HashMap<Option<StopReason>, usize> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let response = client.post(&url).body("{}").send().await.expect("answered");
            assert_eq!(response.status(), 503);
            attempts(&response).stopped
        });
        while tasks.len() >= 20 {
            let reason = tasks.join_next().await.expect("task").expect("joined");
            *stopped.entry(reason).or_default() += 1;
        }
    }
    while let Some(reason) = tasks.join_next().await {
        *stopped.entry(reason.expect("joined")).or_default() += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let retries = recorder.requests.load(Ordering::SeqCst) - 1000;
    // 10% of 1,000 requests, the 10 s reserve of 1 a second, and 1 a second more
    // while the test ran. Without a budget, up to 3,000 retries.
    let allowed = 100.0 + 10.0 + elapsed.ceil();
    assert!(
        retries as f64 <= allowed,
        "{retries} retries, {allowed} allowed"
    );
    assert!(retries >= 50, "the budget allows retries: {retries}");
    assert!(
        stopped.get(&Some(StopReason::Budget)).copied().unwrap_or(0) >= 800,
        "most requests stopped on the budget: {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delays_are_spread_by_jitter_and_retry_after_is_honoured() {
    // Jitter: every key's first attempt gets 503, its retry 201.
    let recorder = Recorder::default();
    let server = recorder
        .serve(|_, attempt| match attempt {
            1 => (StatusCode::SERVICE_UNAVAILABLE, None),
            _ => (StatusCode::CREATED, None),
        })
        .await;
    let jittered = client(
        IdempotentRetry::new()
            .backoff(Duration::from_millis(300), Duration::from_secs(1))
            .budget(RetryBudget {
                ratio: 1.0,
                ..RetryBudget::default()
            }),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (client, url) = (jittered.clone(), server.url("/pay"));
        tasks.spawn(async move {
            client
                .post(&url)
                .body("{}")
                .send()
                .await
                .expect("answered")
                .status()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("joined"), 201);
    }
    let gaps = recorder.gaps();
    assert_eq!(gaps.len(), 40);
    let ms: Vec<u128> = gaps.iter().map(Duration::as_millis).collect();
    let (min, max) = (ms.iter().min().copied(), ms.iter().max().copied());
    let (Some(min), Some(max)) = (min, max) else {
        panic!("no gaps");
    };
    // Full jitter draws each first delay from 0 to 300 ms.
    assert!(max <= 1000, "a delay beyond the backoff: {ms:?}");
    assert!(max - min >= 100, "the delays are not spread: {ms:?}");
    let mut buckets: Vec<u128> = ms.iter().map(|m| m / 30).collect();
    buckets.sort_unstable();
    buckets.dedup();
    assert!(buckets.len() >= 5, "the delays bunch up: {ms:?}");

    // Retry-After: 1 s, far above the 10 ms backoff, is waited for.
    let recorder = Recorder::default();
    let server = recorder
        .serve(|_, attempt| match attempt {
            1 => (StatusCode::SERVICE_UNAVAILABLE, Some("1")),
            _ => (StatusCode::CREATED, None),
        })
        .await;
    let quick = client(
        IdempotentRetry::new().backoff(Duration::from_millis(10), Duration::from_millis(20)),
    );
    let response = quick
        .post(server.url("/pay"))
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let gaps = recorder.gaps();
    assert_eq!(gaps.len(), 1);
    assert!(
        gaps[0] >= Duration::from_millis(1000) && gaps[0] < Duration::from_secs(3),
        "waited {:?} for Retry-After: 1",
        gaps[0]
    );

    // A Retry-After past the request's deadline ends the request instead.
    let recorder = Recorder::default();
    let server = recorder
        .serve(|_, _| (StatusCode::SERVICE_UNAVAILABLE, Some("120")))
        .await;
    let patient = client(
        IdempotentRetry::new()
            .deadline(Duration::from_secs(2))
            .max_retry_after(Duration::from_secs(60)),
    );
    let response = patient
        .post(server.url("/pay"))
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 503);
    assert_eq!(attempts(&response).stopped, Some(StopReason::Deadline));
    assert_eq!(recorder.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_answers_fails_with_the_reason_retrying_stopped() {
    // A port nothing listens on: every attempt fails to connect.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        probe.local_addr().expect("addr").port()
    };
    let client = client(
        IdempotentRetry::new()
            .max_attempts(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    let error = client
        .post(format!("http://127.0.0.1:{port}/payments"))
        .body("{}")
        .send()
        .await
        .expect_err("nothing answers");
    let stopped = RetryError::of(&error).expect("a RetryError");
    assert_eq!(
        (stopped.reason, stopped.attempts),
        (StopReason::Attempts, 3)
    );
    assert!(stopped.key.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_sent_once_and_reported_as_not_retryable() {
    let recorder = Recorder::default();
    let server = recorder
        .serve(|_, _| (StatusCode::SERVICE_UNAVAILABLE, None))
        .await;
    let client =
        client(IdempotentRetry::new().backoff(Duration::from_millis(1), Duration::from_millis(5)));
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("{"), Ok("}")];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = client
        .post(server.url("/pay"))
        .body(body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 503);
    let outcome = attempts(&response);
    assert_eq!(
        (outcome.attempts, outcome.stopped),
        (1, Some(StopReason::NotRetryable))
    );
    assert_eq!(recorder.requests.load(Ordering::SeqCst), 1);
}
