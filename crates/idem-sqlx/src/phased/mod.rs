//! Phased keys: a claim that commits at once with a lease and a fencing token, phases
//! that each commit their writes with the key's journal, and the fenced completion.
//!
//! Every write a phase owner makes to the key row is guarded by its fencing token: a
//! phase locks the row first (`FOR UPDATE`) and finds its token there, or commits
//! nothing. A take-over waits on that lock and re-checks the lease after it, and every
//! phase commit renews the lease: an owner that keeps committing is never taken over,
//! and one that was cannot commit again.
//!
//! A request [`claim`]s the key (and commits), runs each phase between [`begin`] and
//! [`commit`] (or [`record_failure`]), and [`finish`]es the key with its answer; one
//! that answers something not final [`release_lease`]s it instead. The completer finds
//! the keys whose owner stopped ([`abandoned`]); a status URL reads [`operation`].

mod claim;
mod commit;
mod recovery;

use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_core::phased::Journal;
use idem_core::{IdempotencyKey, Record, TenantId};
use uuid::Uuid;

use crate::keys::ClaimRequest;

pub use claim::claim;
pub use commit::{
    Expiry, PhaseStart, begin, commit, finish, record_failure, release_lease, unclaim,
};
pub use recovery::{Abandoned, Operation, OperationState, abandoned, operation};

/// Seconds, as Postgres intervals take them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What a request asks of the store when it claims a key on a phased route.
#[derive(Debug, Clone)]
pub struct PhasedClaim<'a> {
    /// The key, its request and its retention (`wait` is not used: the claim never
    /// waits on a lock, it answers [`Phased::Busy`]).
    pub request: ClaimRequest<'a>,
    /// How long the owner holds the key without committing a phase.
    pub lease: Duration,
    /// The request's query string (without `?`), kept with its path and body so the
    /// completer can finish the key.
    pub query: Option<&'a str>,
    /// The request's body, kept so the completer can finish the key.
    pub body: &'a [u8],
    /// The request's `Content-Type`, kept with the body.
    pub content_type: Option<&'a str>,
}

/// The ownership of a phased key: its fencing token, and how long a lease lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key's tenant.
    pub tenant: TenantId,
    /// The key (as stored).
    pub key: IdempotencyKey,
    /// What the key's derived keys and kept request are bound to: the key as stored
    /// when it was claimed (the same as `key` unless `key` was rewritten since, as
    /// turning key protection on does).
    pub binding: IdempotencyKey,
    /// The fencing token: the row must still carry it for this owner to commit.
    pub fence: i64,
    /// How long each renewal lasts.
    pub duration: Duration,
    /// The id of the key's operation, for its status URL.
    pub operation: Uuid,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phased {
    /// The key is this request's: run the handler's phases. `resumed` when it was taken
    /// over from an owner whose lease passed; the journal holds what its phases left.
    Owned {
        /// The new owner's lease.
        lease: Lease,
        /// The phases that committed before.
        journal: Journal,
        /// Whether an earlier owner had the key.
        resumed: bool,
    },
    /// Finished, same request: answer from the record (with the store's time).
    Replay(Record, DateTime<Utc>),
    /// A live record of a different request (with the store's time).
    Mismatch(Record, DateTime<Utc>),
    /// The same request finished long enough ago that its key expired, and its
    /// tombstone still stands: refuse it (with the store's time).
    Expired(Record, DateTime<Utc>),
    /// Another owner holds the key and its lease has not passed.
    Busy {
        /// When the lease passes, unless the owner commits another phase.
        until: DateTime<Utc>,
    },
}
