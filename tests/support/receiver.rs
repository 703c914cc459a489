//! A webhook receiver on a real socket: answers each POST with the next of its scripted
//! answers (then 200), and records the headers of every request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// One scripted answer: a status and, optionally, a `Retry-After` value.
pub type Answer = (u16, Option<&'static str>);

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    seen: Mutex<Vec<HeaderMap>>,
}

/// A running receiver.
pub struct Receiver {
    /// Its URL.
    pub url: String,
    script: Arc<Script>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start(answers: impl IntoIterator<Item = Answer>) -> Receiver {
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into_iter().collect()),
            seen: Mutex::default(),
        });
        let router = Router::new().route(
            "/hook",
            post({
                let script = script.clone();
                move |headers: HeaderMap| async move { answer(&script, headers) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, script }
    }

    /// The headers of every request so far, in order.
    pub fn seen(&self) -> Vec<HeaderMap> {
        self.script.seen.lock().expect("lock").clone()
    }
}

fn answer(script: &Script, headers: HeaderMap) -> Response {
    script.seen.lock().expect("lock").push(headers);
    let (status, retry_after) = script
        .answers
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or((200, None));
    let status = StatusCode::from_u16(status).expect("status");
    let mut response = status.into_response();
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    response
}
