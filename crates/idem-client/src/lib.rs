//! A retrying client for services behind idem's layer: the client half of
//! exactly-once.
//!
//! [`IdempotentRetry`] is a [`reqwest_middleware`] middleware. It sends every POST and
//! PATCH with an `Idempotency-Key` (a fresh UUIDv7, or the caller's
//! [`OperationKey`]), and retries with the same key when that is safe and useful: after
//! a connection failure or a timeout (the server may have acted; the key makes the
//! retry receive that first answer instead of acting twice), after 408, 425, 429, 502,
//! 503 and 504, and after every answer of idem's layer that says "retry with the same
//! key" (409 `in-flight` and `lease-lost`, 503 `phase-interrupted`, `commit-failed` and
//! `store-unavailable`: [`idem_core::retry::SAME_KEY_RETRY_PROBLEMS`]). Never after a
//! validation failure or a key reused for a different request. An [`OperationKey`] that
//! is no header value fails the request with an [`OperationKeyError`] before anything
//! is sent. Retries back off exponentially with full
//! jitter, honour `Retry-After`, stop at a number of attempts and a deadline, and draw
//! from a [`RetryBudget`] per host, so that a partial outage does not turn into a
//! retry storm.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use idem_client::{Attempts, IdempotentRetry, RetryError};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(
//!         IdempotentRetry::new()
//!             .max_attempts(5)
//!             .attempt_timeout(Duration::from_secs(2))
//!             .deadline(Duration::from_secs(20)),
//!     )
//!     .build();
//! let sent = client
//!     .post("http://127.0.0.1:3000/payments")
//!     .header("x-tenant-id", "acme")
//!     .header("content-type", "application/json")
//!     .body(r#"{"amount":1250,"currency":"EUR"}"#)
//!     .send()
//!     .await;
//! match sent {
//!     Ok(response) => {
//!         let attempts = response.extensions().get::<Attempts>().cloned();
//!         println!("{} {:?}", response.status(), attempts);
//!     }
//!     Err(e) => match RetryError::of(&e) {
//!         Some(stopped) => println!("gave up: {} after {}", stopped.reason, stopped.attempts),
//!         None => println!("failed: {e}"),
//!     },
//! }
//! # Ok(())
//! # }
//! ```

mod budget;
mod classify;
mod key;
mod middleware;
mod outcome;

pub use budget::{BudgetScope, RetryBudget};
pub use idem_core::headers::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use idem_core::retry::StopReason;
pub use key::{OperationKey, OperationKeyError};
pub use middleware::IdempotentRetry;
pub use outcome::{AttemptTimedOut, Attempts, RetryError};
