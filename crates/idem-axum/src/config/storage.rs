//! [`Storage`]: how the layer uses the store: the transaction's isolation, whether a
//! replay is looked up first, the memory kept for replays, and who is woken after a
//! commit that enqueued a message.

use idem_sqlx::{Isolation, OutboxWaker};

/// How many bytes of finished records a layer keeps in memory by default.
pub const DEFAULT_REPLAY_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// How the layer uses the store; set with
/// [`IdempotencyLayer::storage`](crate::IdempotencyLayer::storage).
///
/// ```
/// use idem_axum::{Isolation, Storage};
///
/// let storage = Storage::default()
///     .isolation(Isolation::RepeatableRead)
///     .replay_cache(8 * 1024 * 1024);
/// # let _ = storage;
/// ```
#[derive(Debug, Clone)]
pub struct Storage {
    pub(crate) isolation: Isolation,
    pub(crate) lookup_first: bool,
    pub(crate) replay_cache: u64,
    pub(crate) outbox_waker: Option<OutboxWaker>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            isolation: Isolation::ReadCommitted,
            lookup_first: false,
            replay_cache: DEFAULT_REPLAY_CACHE_BYTES,
            outbox_waker: None,
        }
    }
}

impl Storage {
    /// The isolation level of the request's transaction. READ COMMITTED by default,
    /// set in the `BEGIN` itself whatever the server's `default_transaction_isolation`
    /// (the claim relies on it). A stricter level for a route's own writes keeps the
    /// claim correct: a claim that fails to serialize starts over in a new transaction
    /// (and then replays), and a commit that fails to serialize is not final (rolled
    /// back, 503 `commit-failed` with Retry-After; a retry runs again).
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Looks the key up with one read on the pool before opening a transaction, so a
    /// replay (or a mismatch) is answered with a single statement and no transaction.
    /// Off by default: every new request then pays that extra read, which costs more
    /// than it saves unless retries are a large share of the route's traffic (see the
    /// benchmark's tables in docs/benchmark.md).
    pub fn lookup_first(mut self, on: bool) -> Self {
        self.lookup_first = on;
        self
    }

    /// How many bytes of finished records (response bodies and headers, keys, and a
    /// fixed overhead each) the layer keeps in memory to answer replays and mismatches
    /// without the store. [`DEFAULT_REPLAY_CACHE_BYTES`] (32 MiB) by default; 0 keeps
    /// none. A finished record never changes until it expires, so the copy answers as
    /// the store would, on every replica and after a restart (a key not in memory is
    /// read from the store, and kept). Each copy expires on this process's clock no
    /// later than the stored key, whatever the skew between the two clocks. The least
    /// used records are dropped first when the bound is reached. Every service made
    /// from a layer (and its clones) shares one cache.
    pub fn replay_cache(mut self, bytes: u64) -> Self {
        self.replay_cache = bytes;
        self
    }

    /// Wakes the outbox relays through `waker` after each commit of a request whose
    /// handler enqueued a message ([`idem_sqlx::outbox::enqueue`]), so a message is published
    /// at once without a `NOTIFY` in the request's transaction (which would serialize
    /// the commits of all requests). Share the waker with the relay
    /// ([`OutboxRelay::waker`](idem_sqlx::OutboxRelay::waker)), or make it with
    /// [`OutboxWaker::notifying`] for relays in other processes.
    pub fn outbox_waker(mut self, waker: OutboxWaker) -> Self {
        self.outbox_waker = Some(waker);
        self
    }
}
