//! The isolation level a request's transaction begins with, set explicitly whatever
//! the server's default.

/// The isolation level a request's transaction begins with.
///
/// The claim is sound under READ COMMITTED: an `INSERT` that waited for another
/// transaction holding the same key then sees its committed row in a new statement.
/// A server (or database) whose `default_transaction_isolation` is stricter would
/// break that, so the level is always set explicitly in the `BEGIN` itself, at no
/// extra round trip. Under a stricter level, chosen for a route's own writes, a key
/// committed after the transaction's snapshot fails the claim with a serialization
/// failure instead; the layer then claims again in a new transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// READ COMMITTED, the default.
    #[default]
    ReadCommitted,
    /// REPEATABLE READ.
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

impl Isolation {
    /// The `BEGIN` statement that opens a transaction at this level.
    pub fn begin_statement(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}
