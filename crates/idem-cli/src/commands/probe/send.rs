//! The requests of `idem probe`: with the sample body and the configured header
//! fields, with a key, without one, several at once, or sent and hung up on.

use std::time::Duration;

use idem_core::conformance::Answer;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{Error, Failure, patience};
use crate::args::ProbeArgs;

/// Where the probe sends, and what every request carries.
pub(super) struct Target {
    client: reqwest::Client,
    url: Url,
    method: Method,
    headers: HeaderMap,
    key_header: HeaderName,
    patience: Duration,
}

impl Target {
    /// The route `args` names, its header fields parsed.
    pub(super) fn new(args: &ProbeArgs) -> Result<Target, Failure> {
        let invalid = |what: String| Failure::Error(Error::Invalid(what));
        let url = Url::parse(&args.url).map_err(|e| invalid(format!("URL {}: {e}", args.url)))?;
        let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(format!("method {}", args.method)))?;
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_str(&args.content_type)
            .map_err(|_| invalid(format!("content type {}", args.content_type)))?;
        headers.insert(CONTENT_TYPE, content_type);
        for field in &args.headers {
            let (name, value) = field
                .split_once(':')
                .ok_or_else(|| invalid(format!("--header {field}: expected `Name: value`")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(format!("--header {field}: not a header name")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| invalid(format!("--header {field}: not a header value")))?;
            headers.append(name, value);
        }
        let key_header = HeaderName::from_bytes(args.key_header.as_bytes())
            .map_err(|_| invalid(format!("--key-header {}", args.key_header)))?;
        let patience = patience(args);
        let client = reqwest::Client::builder()
            .timeout(patience)
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        Ok(Target {
            client,
            url,
            method,
            headers,
            key_header,
            patience,
        })
    }

    /// Sends `body` with the header fields, and each of `keys` as a key field
    /// (`None`: no key field at all).
    pub(super) async fn send(
        &self,
        keys: Option<&[String]>,
        body: &[u8],
    ) -> Result<Answer, Failure> {
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .body(body.to_vec());
        for key in keys.unwrap_or_default() {
            request = request.header(self.key_header.clone(), key.as_str());
        }
        Ok(answer(request.send().await?).await?)
    }

    /// Sends `body` with `key`.
    pub(super) async fn send_keyed(&self, key: &str, body: &[u8]) -> Result<Answer, Failure> {
        self.send(Some(&[key.to_owned()]), body).await
    }

    /// Sends `body` with `key` `count` times at once; their answers.
    pub(super) async fn send_concurrently(
        &self,
        key: &str,
        body: &[u8],
        count: usize,
    ) -> Result<Vec<Answer>, Failure> {
        let sends = (0..count.max(2)).map(|_| self.send_keyed(key, body));
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect()
    }

    /// Sends `body` with `key` until the answer is not 409 (a request with the key
    /// still in flight), 200 ms apart, for at most the probe's patience; the last
    /// answer.
    pub(super) async fn send_until_settled(
        &self,
        key: &str,
        body: &[u8],
    ) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            let answer = self.send_keyed(key, body).await?;
            if answer.status != 409 || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `body` with `key` over a connection of its own and closes it as soon as the
    /// request is written, before any answer: a client that gave up. `false` when the
    /// URL is not plain HTTP (nothing was sent).
    pub(super) async fn send_and_hang_up(&self, key: &str, body: &[u8]) -> Result<bool, Failure> {
        if self.url.scheme() != "http" {
            return Ok(false);
        }
        let unreachable =
            |e: std::io::Error| Failure::Error(Error::Invalid(format!("probe: {}: {e}", self.url)));
        let addresses = self.url.socket_addrs(|| Some(80)).map_err(unreachable)?;
        let host = self.url.host_str().unwrap_or("localhost");
        let port = self.url.port_or_known_default().unwrap_or(80);
        let target = match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_owned(),
        };
        let mut request = format!(
            "{} {target} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {}\r\n",
            self.method,
            body.len()
        )
        .into_bytes();
        for (name, value) in &self.headers {
            request.extend_from_slice(name.as_str().as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(format!("{}: {key}\r\n\r\n", self.key_header).as_bytes());
        request.extend_from_slice(body);
        let mut stream = tokio::net::TcpStream::connect(addresses.as_slice())
            .await
            .map_err(unreachable)?;
        stream.write_all(&request).await.map_err(unreachable)?;
        drop(stream);
        // Let the service read the request before the retry arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(true)
    }
}

/// A fresh key.
pub(super) fn new_key() -> String {
    format!("probe-{}", uuid::Uuid::new_v4())
}

/// `body` as another request: a JSON object with its first number raised by one, or
/// else `-probe` added to its first string; `None` for anything else.
pub(super) fn other_body(body: &str) -> Option<String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(body) else {
        return None;
    };
    let number = fields.values_mut().find(|v| v.is_number());
    if let Some(number) = number {
        *number = match number.as_i64() {
            Some(n) => Value::from(n.wrapping_add(1)),
            None => Value::from(number.as_f64().unwrap_or_default() + 1.0),
        };
    } else {
        let text = fields.values_mut().find(|v| v.is_string())?;
        *text = Value::from(format!("{}-probe", text.as_str().unwrap_or_default()));
    }
    serde_json::to_string(&Value::Object(fields)).ok()
}

/// The answer as the judgments read it.
async fn answer(response: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let body = response.bytes().await?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Option<String>) -> Value {
        serde_json::from_str(&body.expect("another body")).expect("json")
    }

    #[test]
    fn the_other_body_changes_the_first_number_or_else_the_first_string() {
        assert_eq!(
            parsed(other_body(r#"{"currency":"EUR","amount":1250}"#)),
            serde_json::json!({"amount": 1251, "currency": "EUR"})
        );
        assert_eq!(
            parsed(other_body(r#"{"note":"a"}"#)),
            serde_json::json!({"note": "a-probe"})
        );
        assert_eq!(other_body("[1]"), None);
        assert_eq!(other_body(r#"{"ok":true}"#), None);
        assert_eq!(other_body("not json"), None);
    }
}
