//! A Tower layer for Axum that gives retried HTTP requests exactly-once effects.
//!
//! A client that times out on `POST /payments` and retries with the same
//! `Idempotency-Key` must be charged once and must receive the response the first
//! attempt produced. [`IdempotencyLayer`] claims the key, the handler's own writes
//! (through the [`Tx`] extractor) and the stored response in ONE Postgres
//! transaction: either all of it commits or none of it does, so a crash, a panic or a
//! 5xx leaves no trace and a retry simply runs again.
//!
//! ```no_run
//! use axum::{Json, Router, http::StatusCode, routing::post};
//! use idem_axum::{IdempotencyLayer, Policy, TenantSource, Tx};
//! use serde_json::{Value, json};
//!
//! async fn create_payment(mut tx: Tx, Json(body): Json<Value>) -> Result<(StatusCode, Json<Value>), StatusCode> {
//!     let amount = body["amount"].as_i64().ok_or(StatusCode::BAD_REQUEST)?;
//!     let id: uuid::Uuid = sqlx::query_scalar("INSERT INTO payments (amount) VALUES ($1) RETURNING id")
//!         .bind(amount)
//!         .fetch_one(&mut *tx)
//!         .await
//!         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     Ok((StatusCode::CREATED, Json(json!({ "id": id, "amount": amount }))))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
//!     idem_sqlx::MIGRATOR.run(&pool).await?;
//!
//!     // On the route's method router: unknown paths and methods stay 404 and 405.
//!     let idempotency = IdempotencyLayer::new(pool)
//!         .tenant(TenantSource::single())
//!         .policy(Policy::default().canonical_json());
//!     let app = Router::new().route("/payments", post(create_payment).route_layer(idempotency));
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! See [`IdempotencyLayer`] for the settings (one place for each: the tenant, the
//! route's [`Policy`], and a grouped value per concern) and [`Problem`] for every
//! answer the layer makes itself.
//!
//! # How a request flows (a map of the modules)
//!
//! Modules import one way: the leaves first, then each step, then the service and
//! the layers that build on them.
//!
//! - Leaves: `config` (the settings every step reads: the route's [`Policy`] and one
//!   value per group, [`Protocol`], [`Timeouts`], [`Limits`], [`Protection`],
//!   [`Observability`], [`Storage`], each in its own file; the default header names),
//!   `tenant`, `limits` (the rate of new keys, the quota of live keys), `problem`
//!   (every answer the layer makes itself), `bounds` (what the steps need of the
//!   wrapped service and its bodies), `observe` (the metrics and span of each
//!   request).
//! - `request`: what a request is before anything is claimed: its key, its body up to
//!   the limit, the URI the client sent, its fingerprint, and `Keyed`, the identity
//!   every later step reads.
//! - `replay`: how a duplicate is answered without running anything: from the request
//!   of this process that holds its key (`flight`), from the records kept in memory
//!   (`cache`), from the store's record (`seal` opens sealed bodies); `answer` builds
//!   every response the layer makes from a record or a store failure, each with its
//!   outcome.
//! - `job`: `Job`, what every step needs, and the steps both paths share
//!   (answer from memory, join the key's flight, the limits on a new key).
//! - `atomic`: the atomic path, in named steps (`run`): `store` opens the transaction
//!   and claims the key, `handler` runs the wrapped service with it as [`Tx`],
//!   `settle` stores the final answer and commits, or rolls back.
//! - `phased`: the phased path (claim with a lease, [`Phases`], the [`Completer`], the
//!   status of operations answered 202); `observe_mode`: observe mode (keys logged, never
//!   enforced: the first step of a rollout).
//! - `future`: the [`ResponseFuture`] and the task a request's work runs in, apart from
//!   the client's connection.
//! - `service`: the [`IdempotencyService`] takes a request apart (method, key, tenant)
//!   and sends it down one path; `layer`: [`IdempotencyLayer`] and the
//!   [`PhasedLayer`] it makes, both over the same shared parts.
//!
//! With the `metrics` feature (on by default) the layer counts every request by
//! [`Outcome`], method, route template and client version, and times the store's
//! decision and its own overhead, through the `metrics` facade; the application
//! installs the exporter. The names are in [`idem_core::observe::names`]. Every response
//! the layer handled also carries its [`Outcome`] as a response extension.

mod atomic;
mod bounds;
mod config;
mod future;
mod job;
mod layer;
mod limits;
mod observe;
mod observe_mode;
#[cfg(feature = "openapi")]
pub mod openapi;
mod phased;
mod problem;
mod replay;
mod request;
mod service;
mod tenant;

pub use atomic::Tx;
pub use config::{
    CORRELATION_ID, DEFAULT_REPLAY_CACHE_BYTES, Limits, Observability, Protection, Protocol,
    Storage, Timeouts,
};
pub use future::ResponseFuture;
pub use idem_core::headers::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use idem_core::policy::{FailureMode, HashPolicy, KeyMode, Policy, RiskClass, Would};
pub use idem_core::protect::KeyProtection;
pub use idem_core::seal::{BodySealing, SealingError};
pub use idem_core::{
    ClientVersions, FinalStatuses, IdempotencyKey, Outcome, TenantId, TraceContext,
};
pub use idem_sqlx::{Isolation, OutboxWaker, ReplayTally, StoreGauges};
pub use layer::{IdempotencyLayer, PhasedLayer};
pub use phased::{Completer, PhaseError, Phases};
pub use problem::{PROBLEM_JSON, Problem};
pub use service::IdempotencyService;
pub use tenant::TenantSource;
