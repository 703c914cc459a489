//! The Postgres store of `idem`: unique-constraint key claims, completion with the
//! response, and replay lookup, all inside the caller's transaction; a transactional
//! outbox with its relay; an inbox for idempotent consumers; a sweeper that keeps the
//! tables small; [`StoreGauges`], which reads what the tables hold into gauges.
//!
//! With the `metrics` feature (on by default) the relay, the inbox, [`ReplayTally`] and
//! [`StoreGauges`] emit the metrics named in [`idem_core::observe::names`] through the
//! `metrics` facade; the application installs the exporter.
//!
//! The key claim, the handler's own writes and the stored response commit in one
//! transaction: either all of it happened or none of it did. The tables live in the
//! `idem` schema; run [`MIGRATOR`] once at start-up.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use idem_core::{BodyMode, Fingerprint, IdempotencyKey, StoredResponse, TenantId};
//! use idem_sqlx::keys::{self, Claim, ClaimRequest, Completion};
//! use idem_sqlx::{Isolation, transaction};
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! idem_sqlx::MIGRATOR.run(&pool).await?;
//!
//! let tenant = TenantId::new("acme")?;
//! let key = IdempotencyKey::parse("order-4711")?;
//! let fingerprint = Fingerprint::builder("POST", "/payments")
//!     .body(br#"{"amount":100}"#, BodyMode::Raw)
//!     .finish();
//!
//! let mut tx = transaction::begin(&pool, Isolation::ReadCommitted).await?;
//! let request = ClaimRequest {
//!     tenant: &tenant,
//!     key: &key,
//!     fingerprint,
//!     method: "POST",
//!     path: "/payments",
//!     route: Some("/payments"),
//!     retention: Duration::from_secs(24 * 3600),
//!     tombstones: None,
//!     wait: Duration::from_secs(5),
//! };
//! match keys::claim(&mut tx, &request).await? {
//!     Claim::Claimed => {
//!         // ... the handler's own writes on `tx` ...
//!         let response = StoredResponse { status: 201, headers: vec![], body: b"{}".to_vec() };
//!         keys::complete(&mut tx, &request, Completion::Response(&response)).await?;
//!         tx.commit().await?;
//!     }
//!     Claim::Replay(record, _) => println!("replay {:?}", record.state),
//!     Claim::Mismatch(..) => println!("same key, different request"),
//!     Claim::InFlight => println!("still running; retry later"),
//!     Claim::Expired(..) => println!("done long ago; its key expired (410)"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! The root holds what an application builds and wires up once: [`MIGRATOR`], the
//! [`Isolation`] its transactions begin with, the [`Backend`] it runs on, the
//! [`StoreError`] every call returns; the outbox's [`Message`], its [`OutboxRelay`] with
//! a [`Sink`] (`WebhookSink`, `JetStreamSink`) and the [`OutboxWaker`]; the [`Inbox`];
//! the [`Sweeper`], the [`ReplayTally`] and the [`StoreGauges`]. The statements a
//! request or an operator runs sit in modules named for what they act on:
//!
//! - [`transaction`]: opening a request's transaction ([`transaction::begin`]) and why
//!   one could not be opened ([`transaction::unreached`]).
//! - [`keys`]: a key on an atomic route: [`keys::claim`], [`keys::complete`],
//!   [`keys::record`] outside the request's transaction, [`keys::lookup`], observe-mode
//!   sightings ([`keys::observe`]), [`keys::live_keys`] and [`keys::sweep_expired`].
//!   - [`keys::inspect`]: one key as an operator reads it ([`keys::inspect::details`])
//!     and its eviction ([`keys::inspect::evict`]).
//! - [`phased`]: a key on a phased route: its claim with a lease and a fencing token,
//!   the phases ([`phased::begin`], [`phased::commit`]), the fenced
//!   [`phased::finish`], and what the completer and the status URL read
//!   ([`phased::abandoned`], [`phased::operation`]).
//! - [`outbox`]: [`outbox::enqueue`] on the request's transaction, the dead letters
//!   ([`outbox::dead_letters`], [`outbox::redrive`], [`outbox::purge`]) and the
//!   channel relays listen on.
//!   - [`outbox::headers`]: the headers a message is delivered with.
//! - [`citus`]: scaling out on Citus ([`citus::distribute`]).

mod backend;
mod backoff;
pub mod citus;
mod error;
mod gauges;
mod inbox;
mod isolation;
mod json_headers;
pub mod keys;
mod migrate;
#[cfg(feature = "nats")]
mod nats;
mod observe;
pub mod outbox;
pub mod phased;
mod relay;
mod replays;
mod sql;
mod sweeper;
pub mod transaction;
#[cfg(feature = "http")]
mod webhook;

pub use backend::Backend;
pub use error::StoreError;
pub use gauges::{RouteKeys, StoreGauges, StoreStats};
pub use inbox::{DeadMessage, Inbox, InboxError, InboxMessage, Processed};
pub use isolation::Isolation;
pub use migrate::{MIGRATIONS_TABLE, MIGRATOR, SCHEMA};
#[cfg(feature = "nats")]
pub use nats::JetStreamSink;
pub use outbox::message::{Message, OutboxMessage};
pub use outbox::waker::OutboxWaker;
pub use relay::{OutboxRelay, OutboxRelayBuilder, RelayConfigError, Sink, SinkError};
pub use replays::{REPLAY_FLUSH_DELAY, ReplayTally, Tallied};
pub use sweeper::{Sweeper, Swept};
#[cfg(feature = "http")]
pub use webhook::WebhookSink;
