//! Two replicas of the service on one database execute each key once.

use std::collections::HashMap;

use futures_util::future::join_all;
use idem_tests::{ServiceProcess, replayed, test_db};

const BIN: &str = env!("CARGO_BIN_EXE_payments");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_execute_each_of_twenty_keys_once() {
    let db = test_db().await;
    // A short pause inside the handler makes the replicas' requests overlap.
    let delay = [("PAYMENTS_HANDLER_DELAY_MS", "50")];
    let replicas = [
        ServiceProcess::start(BIN, &db.url, &delay).await,
        ServiceProcess::start(BIN, &db.url, &delay).await,
    ];
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let requests = (0..200).map(|i| {
        let key = format!("replica-key-{}", i % 20);
        let replica = &replicas[i % 2];
        let body = format!(r#"{{"amount":{},"currency":"EUR"}}"#, 100 + i % 20);
        let request = client
            .post(replica.url("/payments"))
            .header("x-tenant-id", "t1")
            .header("idempotency-key", &key)
            .header("content-type", "application/json")
            .body(body);
        async move { (key, request.send().await) }
    });
    let mut bodies: HashMap<String, Vec<bytes::Bytes>> = HashMap::new();
    let mut executions = 0;
    for (key, response) in join_all(requests).await {
        let response = response.expect("response");
        let status = response.status().as_u16();
        assert!(status == 201 || status == 409, "no 5xx, got {status}");
        if status == 201 {
            if !replayed(&response) {
                executions += 1;
            }
            bodies
                .entry(key)
                .or_default()
                .push(response.bytes().await.expect("body"));
        }
    }
    assert_eq!(executions, 20, "one execution per key across both replicas");
    assert_eq!(db.payments().await, 20);
    for (key, bodies) in &bodies {
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "{key}: identical bodies"
        );
    }
}
