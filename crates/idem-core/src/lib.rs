//! Pure types and the decision state machine of `idem`: exactly-once effects for
//! retried HTTP requests.
//!
//! This crate does no I/O and needs no async runtime. It holds what every part of
//! `idem` agrees on: the validated [`IdempotencyKey`], the [`TenantId`] that scopes it,
//! the request [`Fingerprint`], the [`StoredResponse`] that a replay returns, and the one
//! function, [`decide`], that turns a key's record into what the request does.
//!
//! With [`BodyMode::CanonicalJson`], two bodies are the same request when they differ
//! only in key order and whitespace. Numbers are compared by their exact JSON text,
//! never rounded through a float, so two amounts of any length fingerprint equal only
//! when written the same; a body whose object repeats a key is compared byte for byte
//! (see [`canonical_json`]).
//!
//! What operators see is [`observe`]: every request's [`Outcome`], and the names and
//! labels of the metrics the other crates emit.
//!
//! Which responses are an outcome, committed and replayed, is [`FinalStatuses`]: by
//! default 2xx, 3xx (a `303 See Other` after a `POST` included) and 4xx other than 408,
//! 409, 425 and 429. Which of their headers are replayed is [`HeaderAllowList`]: by
//! default [`DEFAULT_REPLAYED_HEADERS`], the representation headers among them, so a
//! body stored compressed is replayed with its `Content-Encoding`.
//!
//! ```
//! use chrono::{Duration, Utc};
//! use idem_core::{
//!     decide, BodyMode, Decision, Fingerprint, IdempotencyKey, Record, RecordState,
//!     StoredResponse,
//! };
//!
//! let key = IdempotencyKey::parse("\"order-4711\"")?;
//! assert_eq!(key.as_str(), "order-4711");
//!
//! let fingerprint = Fingerprint::builder("POST", "/payments")
//!     .body(br#"{"amount":100,"currency":"EUR"}"#, BodyMode::CanonicalJson)
//!     .finish();
//!
//! let now = Utc::now();
//! assert_eq!(decide(None, &fingerprint, now), Decision::Execute);
//!
//! let record = Record {
//!     fingerprint,
//!     state: RecordState::Completed(StoredResponse {
//!         status: 201,
//!         headers: vec![("content-type".into(), b"application/json".to_vec())],
//!         body: br#"{"id":"..."}"#.to_vec(),
//!     }),
//!     expires_at: now + Duration::hours(24),
//!     tombstone: None,
//! };
//! assert_eq!(decide(Some(&record), &fingerprint, now), Decision::Replay);
//! # Ok::<(), idem_core::KeyError>(())
//! ```

pub mod conformance;
mod decision;
pub mod delivery;
mod failure;
mod fingerprint;
pub mod headers;
mod key;
pub mod observe;
pub mod pace;
pub mod phased;
pub mod policy;
pub mod protect;
mod response;
pub mod retry;
pub mod seal;
mod streaming;
mod tenant;
mod trace;

pub use decision::{Decision, Record, RecordState, Tombstone, decide};
pub use failure::{FailureKind, aborted_answer_stands, classify_sqlstate};
pub use fingerprint::{
    BodyMode, Fingerprint, FingerprintBuilder, FingerprintLenError, canonical_json,
};
pub use key::{IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use observe::{ClientVersions, Outcome};
pub use response::{
    DEFAULT_REPLAYED_HEADERS, FinalStatuses, HOP_BY_HOP, HeaderAllowList, StoredResponse,
};
pub use streaming::{STREAMING_MEDIA_TYPES, streams_by_media_type};
pub use tenant::{MAX_TENANT_LEN, TenantError, TenantId};
pub use trace::{MAX_TRACE_VALUE_LEN, TraceContext};
