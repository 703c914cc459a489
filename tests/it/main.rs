//! idem's behaviour tests, one binary: a module per behaviour, each test in a fresh
//! database of its own on the binary's one Postgres server (a container, or the
//! server at `DATABASE_URL`). One module alone: `cargo test -p idem-tests --test it
//! replay::`. The suites that own their server (`store_loss.rs`), the process-wide
//! metrics exporter (`metrics.rs`: its unlabelled gauges, such as the quota's usage,
//! would be written by other modules' tests at once), or make every database a Citus
//! one (`citus.rs` and `citus_metrics.rs`, which compile these modules in again) are
//! binaries of their own.

mod aborted_transactions;
mod alert_rules;
mod cancellation;
mod concurrency;
mod connection_kill;
mod expiry;
mod failure_simulation;
mod inbox;
mod inbox_poison;
mod isolation;
mod key_storms;
mod key_validation;
mod keyed_routes;
mod limits;
mod migrations;
mod mismatch;
mod observe_mode;
mod openapi;
mod outbox;
mod payments;
mod phased;
mod phased_accepted;
mod phased_completer;
mod protected_keys;
mod redirects;
mod relay_leases;
mod relay_wakeup;
mod replay;
mod replay_memory;
mod rollback;
mod route_policy;
mod store;
mod store_faults;
mod store_outage;
mod storms;
mod streaming;
mod sweeper;
mod tenants;
mod tombstones;
mod trace_context;
mod unknown_routes;
mod webhook;
