//! Errors of the store.

use thiserror::Error;

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
}

impl StoreError {
    /// Whether the error means the store is unreachable or failing (as opposed to a
    /// bug or corrupt data); callers answer these with 503 and Retry-After.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => !matches!(
                e,
                sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnIndexOutOfBounds { .. }
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::Encode(_)
            ),
            StoreError::Contended => true,
            StoreError::Corrupt(_) | StoreError::NotClaimed => false,
        }
    }
}
