//! idem-client against a real HTTP server on a real socket: a small axum app on
//! 127.0.0.1:0 that answers from a script and records the idempotency key of every
//! request it receives, and when.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idem_client::{Attempts, IdempotentRetry};
use reqwest_middleware::ClientWithMiddleware;

/// One answer of the script: status, problem type (sent as problem+json), Retry-After.
#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    problem: Option<&'static str>,
    retry_after: Option<&'static str>,
}

const CREATED: Answer = Answer {
    status: 201,
    problem: None,
    retry_after: None,
};

/// A request the server received.
#[derive(Debug, Clone)]
struct Received {
    key: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct Script {
    answers: Vec<Answer>,
    received: Vec<Received>,
}

/// The test server: answers its script in order (then 201), recording each request.
struct Server {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Server {
    async fn start(answers: Vec<Answer>) -> Server {
        let script = Arc::new(Mutex::new(Script {
            answers,
            received: Vec::new(),
        }));
        let app = Router::new()
            .route("/payments", post(answer))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { addr, script }
    }

    fn url(&self) -> String {
        format!("http://{}/payments", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .received
            .clone()
    }
}

async fn answer(State(script): State<Arc<Mutex<Script>>>, headers: HeaderMap) -> Response {
    let next = {
        let mut script = script.lock().unwrap_or_else(PoisonError::into_inner);
        script.received.push(Received {
            key: headers
                .get("idempotency-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            at: Instant::now(),
        });
        if script.answers.is_empty() {
            CREATED
        } else {
            script.answers.remove(0)
        }
    };
    let status = StatusCode::from_u16(next.status).expect("status");
    let mut response = match next.problem {
        Some(kind) => {
            let body = serde_json::json!({
                "type": kind,
                "title": "scripted",
                "status": next.status,
                "detail": "scripted answer",
            });
            let mut response = (status, body.to_string()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            response
        }
        None => (status, r#"{"id":"pay_1"}"#).into_response(),
    };
    if let Some(after) = next.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    response
}

/// A client whose own backoff is a millisecond or two, so that a longer wait can only
/// come from the answer's `Retry-After`.
fn client() -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            IdempotentRetry::new()
                .backoff(Duration::from_millis(1), Duration::from_millis(2))
                .deadline(Duration::from_secs(20)),
        )
        .build()
}

fn attempts(response: &reqwest::Response) -> Attempts {
    response
        .extensions()
        .get::<Attempts>()
        .cloned()
        .expect("the middleware's Attempts")
}

mod retry_with_the_same_key {
    use idem_client::{OperationKey, StopReason};
    use idem_core::retry::LEASE_LOST_PROBLEM;

    use super::*;

    const LEASE_LOST: Answer = Answer {
        status: 409,
        problem: Some(LEASE_LOST_PROBLEM),
        retry_after: Some("1"),
    };

    #[tokio::test]
    async fn a_lease_lost_answer_is_retried_with_the_same_key_after_retry_after() {
        let server = Server::start(vec![LEASE_LOST]).await;
        let response = client()
            .post(server.url())
            .body(r#"{"amount":1250}"#)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 201);
        let attempts = attempts(&response);
        assert_eq!(attempts.attempts, 2);
        assert_eq!(attempts.stopped, None);

        let received = server.received();
        assert_eq!(received.len(), 2, "{received:?}");
        let key = received[0].key.clone().expect("the first attempt's key");
        assert_eq!(received[1].key.as_deref(), Some(key.as_str()));
        assert_eq!(attempts.key.as_deref(), Some(key.as_str()));
        let waited = received[1].at - received[0].at;
        assert!(
            waited >= Duration::from_secs(1),
            "retried after {waited:?}, before the Retry-After of 1 s"
        );
    }

    #[tokio::test]
    async fn an_operation_key_is_kept_across_a_lease_lost_retry() {
        let server = Server::start(vec![LEASE_LOST]).await;
        let response = client()
            .post(server.url())
            .with_extension(OperationKey("order-4711".into()))
            .body(r#"{"amount":1250}"#)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 201);
        let keys: Vec<_> = server.received().into_iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            vec![Some("order-4711".to_owned()), Some("order-4711".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_409_that_does_not_say_retry_is_returned_after_one_attempt() {
        let mismatch = Answer {
            status: 409,
            problem: Some("urn:idem:problem:key-mismatch"),
            retry_after: Some("1"),
        };
        let server = Server::start(vec![mismatch]).await;
        let response = client()
            .post(server.url())
            .body(r#"{"amount":1250}"#)
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 409);
        let attempts = attempts(&response);
        assert_eq!(attempts.attempts, 1);
        assert_eq!(attempts.stopped, Some(StopReason::NotRetryable));
        assert_eq!(server.received().len(), 1);
        // The body read for the problem type is still there for the caller.
        let body: serde_json::Value = response.json().await.expect("the problem body");
        assert_eq!(body["type"], "urn:idem:problem:key-mismatch");
    }
}

mod invalid_operation_key {
    use idem_client::{OperationKey, OperationKeyError, RetryError};

    use super::*;

    #[tokio::test]
    async fn an_operation_key_that_is_no_header_value_is_refused_before_sending() {
        let server = Server::start(Vec::new()).await;
        let client = client();
        let error = client
            .post(server.url())
            .with_extension(OperationKey("order\n4711".into()))
            .body(r#"{"amount":1250}"#)
            .send()
            .await
            .expect_err("a key that is no header value must fail the request");
        assert_eq!(
            OperationKeyError::of(&error),
            Some(&OperationKeyError::NotAHeaderValue {
                character: '\n',
                position: 5,
            }),
            "{error:?}"
        );
        assert!(RetryError::of(&error).is_none(), "{error:?}");
        assert!(server.received().is_empty(), "{:?}", server.received());

        // The server was there and counting: a valid key reaches it, once.
        let response = client
            .post(server.url())
            .with_extension(OperationKey("order-4711".into()))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status(), 201);
        let keys: Vec<_> = server.received().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, vec![Some("order-4711".to_owned())]);
    }

    #[tokio::test]
    async fn a_non_ascii_operation_key_is_refused_before_sending() {
        let server = Server::start(Vec::new()).await;
        let error = client()
            .post(server.url())
            .with_extension(OperationKey("commande-é".into()))
            .send()
            .await
            .expect_err("a non-ASCII key must fail the request");
        assert_eq!(
            OperationKeyError::of(&error),
            Some(&OperationKeyError::NotAHeaderValue {
                character: 'é',
                position: 9,
            })
        );
        assert!(server.received().is_empty(), "{:?}", server.received());
    }
}
