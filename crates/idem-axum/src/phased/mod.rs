//! Phased mode: exactly once across calls to other services.
//!
//! A route made phased with [`IdempotencyLayer::phased`](crate::IdempotencyLayer::phased)
//! commits its key row at once, in progress, with a lease and a fencing token, and its
//! handler commits its work in named [`Phases`], each one transaction with the phase's
//! output in the key's journal. A retry after the lease passed takes the key over and
//! runs the handler again, which resumes after the last phase that committed; the
//! stale owner can no longer commit. Between phases the handler calls other services
//! with keys derived from the request's key and the phase, so they dedupe the calls a
//! resume repeats.

mod completer;
mod gate;
mod phases;
mod run;
mod status;

pub use completer::Completer;
pub(crate) use completer::Resume;
pub use phases::{PhaseError, Phases};
pub(crate) use status::operations;
