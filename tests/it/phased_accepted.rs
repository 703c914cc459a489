//! Long phased requests answer 202 Accepted with a status URL; the status answers from
//! the key row (in progress with its recovery point, then the final answer), only to
//! the tenant that made the request.

use std::time::Duration;

use idem_tests::phased::{order_request, setup_with};
use idem_tests::{TestApp, problem_type, replayed, test_db};
use serde_json::Value;

async fn status(app: &TestApp, location: &str, tenant: &str) -> reqwest::Response {
    app.client
        .get(app.url(location))
        .header("x-tenant-id", tenant)
        .send()
        .await
        .expect("GET status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_request_is_accepted_and_its_status_turns_into_the_final_answer() {
    let db = test_db().await;
    let s = setup_with(&db, |layer| {
        layer
            .phased(Duration::from_secs(10))
            .accept_after(Duration::from_millis(300), "/operations")
    })
    .await;
    // The provider's call waits 1.5 s after the first phase.
    s.faults.pauses.lock().expect("pauses").push_back(1500);
    let accepted = order_request(&s.app, "a1", "").await;
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.starts_with("/operations/"), "{location}");
    assert!(accepted.headers().contains_key("retry-after"));

    let running = status(&s.app, &location, "t1").await;
    assert_eq!(running.status(), 202);
    let running: Value = running.json().await.expect("status body");
    assert_eq!(running["status"], "in_progress");
    assert_eq!(
        running["recovery_point"], "first",
        "the first phase committed"
    );

    let unknown = status(&s.app, &location, "t2").await;
    assert_eq!(
        unknown.status(),
        404,
        "another tenant's operation is unknown"
    );
    assert_eq!(
        problem_type(unknown).await,
        "urn:idem:problem:operation-unknown"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let polled = status(&s.app, &location, "t1").await;
        if polled.status() != 202 || tokio::time::Instant::now() > deadline {
            break polled;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.status(), 201, "the final answer");
    assert!(replayed(&done));
    let final_body = done.text().await.expect("body");

    let retry = order_request(&s.app, "a1", "").await;
    assert_eq!(retry.status(), 201);
    assert!(replayed(&retry));
    assert_eq!(retry.text().await.expect("body"), final_body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_finishes_in_time_answers_at_once() {
    let db = test_db().await;
    let s = setup_with(&db, |layer| {
        layer
            .phased(Duration::from_secs(10))
            .accept_after(Duration::from_secs(5), "/operations")
    })
    .await;
    let answered = order_request(&s.app, "a2", "").await;
    assert_eq!(answered.status(), 201);
    assert!(!replayed(&answered));
}
