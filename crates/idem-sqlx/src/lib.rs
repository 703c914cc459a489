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
//! use idem_sqlx::{Claim, ClaimRequest, Completion};
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
//! let mut tx = idem_sqlx::begin(&pool, idem_sqlx::Isolation::ReadCommitted).await?;
//! let request = ClaimRequest {
//!     tenant: &tenant,
//!     key: &key,
//!     fingerprint,
//!     method: "POST",
//!     path: "/payments",
//!     route: Some("/payments"),
//!     retention: Duration::from_secs(24 * 3600),
//!     wait: Duration::from_secs(5),
//! };
//! match idem_sqlx::claim(&mut tx, &request).await? {
//!     Claim::Claimed => {
//!         // ... the handler's own writes on `tx` ...
//!         let response = StoredResponse { status: 201, headers: vec![], body: b"{}".to_vec() };
//!         idem_sqlx::complete(&mut tx, &request, Completion::Response(&response)).await?;
//!         tx.commit().await?;
//!     }
//!     Claim::Replay(record, _) => println!("replay {:?}", record.state),
//!     Claim::Mismatch(..) => println!("same key, different request"),
//!     Claim::InFlight => println!("still running; retry later"),
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod citus;
mod error;
mod gauges;
mod inbox;
mod inspect;
mod isolation;
mod json_headers;
mod keys;
mod migrate;
#[cfg(feature = "nats")]
mod nats;
mod observe;
mod observed;
mod outbox;
mod phases;
mod relay;
mod replays;
mod sql;
mod sweeper;
#[cfg(feature = "http")]
mod webhook;

pub use citus::{Backend, DISTRIBUTED_TABLES, Distribution, distribute};
pub use error::StoreError;
pub use gauges::{RouteKeys, StoreGauges, StoreStats};
pub use inbox::{DeadMessage, Inbox, InboxError, InboxMessage, Processed};
pub use inspect::{KeyDetails, PhasedDetails, evict_key, key_details};
pub use isolation::{Isolation, begin, unreached};
pub use keys::{
    Claim, ClaimRequest, Completion, claim, claim_on, complete, live_keys, lookup, record,
    record_on, sweep_expired,
};
pub use migrate::{MIGRATIONS_TABLE, MIGRATOR, SCHEMA};
#[cfg(feature = "nats")]
pub use nats::JetStreamSink;
pub use observed::observe_key;
pub use outbox::{
    CORRELATION_ID, DeliveryHeaders, IDEMPOTENCY_KEY, Message, NOTIFY_SPACING, OUTBOX_CHANNEL,
    OutboxMessage, OutboxWaker, REQUEST_KEY, TENANT_ID, TOPIC, TRACEPARENT, TRACESTATE,
    dead_letters, enqueue, purge, redrive, track_enqueues,
};
pub use phases::{
    Abandoned, Expiry, Lease, Operation, OperationState, PhaseStart, Phased, PhasedClaim,
    abandoned, begin_phase, claim_phased, commit_phase, finish_phased, operation, record_failure,
    release_lease, unclaim,
};
pub use relay::{OutboxRelay, OutboxRelayBuilder, RelayConfigError, Sink, SinkError};
pub use replays::{REPLAY_FLUSH_DELAY, ReplayTally, Tallied};
pub use sweeper::{Sweeper, Swept};
#[cfg(feature = "http")]
pub use webhook::WebhookSink;
