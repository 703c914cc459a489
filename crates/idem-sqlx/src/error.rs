//! Errors of the store, and how each is classified.

use idem_core::{FailureKind, classify_sqlstate};
use thiserror::Error;

/// SQLSTATE `in_failed_sql_transaction`: a statement was sent on a transaction that an
/// earlier statement had already aborted.
pub(crate) const IN_FAILED_TRANSACTION: &str = "25P02";

/// What went wrong talking to the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row does not have the shape idem writes (for example, a fingerprint
    /// that is not 32 bytes). Someone else wrote it, or the migrations are not applied.
    #[error("corrupt idempotency record: {0}")]
    Corrupt(String),
    /// The key was neither claimable nor readable after several attempts (it kept being
    /// replaced or deleted concurrently).
    #[error("the key kept changing while it was being claimed")]
    Contended,
    /// The row to complete was not found in this transaction: it was never claimed here.
    #[error("no claimed key to complete in this transaction")]
    NotClaimed,
    /// A phased key's row no longer carries this owner's fencing token (another
    /// request took the key over after the lease passed), or it finished: the stale
    /// owner commits nothing.
    #[error("the key was taken over by another owner; this one may no longer commit")]
    Fenced,
    /// [`distribute`](crate::citus::distribute) found idem's tables distributed but not in one
    /// co-location group with the table named (distributed earlier without it, or with
    /// another): every keyed request would be a two-phase commit across workers.
    /// Re-distribute them (`undistribute_table`, then `distribute` again).
    #[error("not co-located on Citus: {0}")]
    NotColocated(String),
}

impl StoreError {
    /// The SQLSTATE the database reported, if the error came from the database.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// What kind of failure this is (see [`FailureKind`]): only connection, pool and
    /// timeout failures are [`FailureKind::Unavailable`]; a missing table, a permission
    /// error or a corrupt row is a [`FailureKind::Fault`].
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e
                .code()
                .map_or(FailureKind::Fault, |code| classify_sqlstate(&code)),
            StoreError::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed,
            ) => FailureKind::Unavailable,
            StoreError::Database(_) => FailureKind::Fault,
            StoreError::Contended | StoreError::Fenced => FailureKind::Serialization,
            StoreError::Corrupt(_) | StoreError::NotClaimed | StoreError::NotColocated(_) => {
                FailureKind::Fault
            }
        }
    }

    /// Whether the store is unreachable or shedding load (as opposed to a bug, a
    /// misconfiguration or corrupt data); callers answer these with 503 and Retry-After.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == FailureKind::Unavailable
    }

    /// Whether the statement failed because the transaction had already been aborted
    /// by an earlier failed statement (SQLSTATE 25P02): nothing of it can commit.
    pub fn is_transaction_aborted(&self) -> bool {
        self.sqlstate().as_deref() == Some(IN_FAILED_TRANSACTION)
    }
}
