//! Waking relays after a commit that enqueued, without a `NOTIFY` in the request's
//! transaction.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};

use super::OUTBOX_CHANNEL;

/// The least time between two `NOTIFY`s of one [`OutboxWaker::notifying`] waker: wakes in
/// between are folded into the next one.
pub const NOTIFY_SPACING: Duration = Duration::from_millis(5);

/// Wakes outbox relays after a transaction that enqueued messages has committed.
///
/// Postgres serializes the commits of transactions that `NOTIFY` (one lock, held
/// through the WAL flush), so [`enqueue`](crate::outbox::enqueue) sends none. Instead, after
/// the commit, the code that committed calls [`wake`](Self::wake): it wakes the relays
/// of this process that share the waker at once (no database round trip), and, when
/// made with [`notifying`](Self::notifying), a background task sends one
/// `NOTIFY idem_outbox` from its own connection for relays in other processes, at most
/// one every [`NOTIFY_SPACING`] however many commits woke it. Relays still poll, so a
/// lost wake-up only delays a message to the next poll.
///
/// ```no_run
/// use idem_sqlx::{OutboxRelay, OutboxWaker};
/// # use idem_sqlx::{OutboxMessage, Sink, SinkError};
/// # struct Log;
/// # impl Sink for Log {
/// #     async fn deliver(&self, _: &OutboxMessage) -> Result<(), SinkError> { Ok(()) }
/// # }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), idem_sqlx::RelayConfigError> {
/// let waker = OutboxWaker::new();
/// let relay = OutboxRelay::builder(pool.clone(), Log)
///     .waker(waker.clone())
///     .build()?;
/// // ... hand `waker` to the idempotency layer (`Storage::outbox_waker`), or
/// // call `waker.wake()` after committing a transaction that enqueued.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct OutboxWaker {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    local: Notify,
    remote: Option<mpsc::Sender<()>>,
}

impl OutboxWaker {
    /// A waker for relays in this process.
    pub fn new() -> Self {
        OutboxWaker::default()
    }

    /// A waker that also notifies relays in other processes: a task (spawned here, so
    /// call it inside a Tokio runtime) sends `NOTIFY idem_outbox` on a connection of
    /// `pool` after wakes, spaced by [`NOTIFY_SPACING`]. The task ends when the last
    /// clone of the waker is dropped.
    ///
    /// A notification reaches only the sessions of the server it is sent on: on a Citus
    /// cluster, give it a pool on the coordinator, where relays listen (their pools
    /// are on the coordinator too).
    pub fn notifying(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(notify_on_wake(pool, rx));
        OutboxWaker {
            shared: Arc::new(Shared {
                local: Notify::new(),
                remote: Some(tx),
            }),
        }
    }

    /// Wakes the relays: cheap (no I/O on the caller's task), and wakes that come while
    /// relays are busy fold into one.
    pub fn wake(&self) {
        self.shared.local.notify_one();
        if let Some(remote) = &self.shared.remote {
            // Full: a NOTIFY is already due and will cover this wake.
            let _ = remote.try_send(());
        }
    }

    /// Resolves at the next wake (or at once, if one came since the last).
    pub(crate) async fn woken(&self) {
        self.shared.local.notified().await;
    }
}

async fn notify_on_wake(pool: PgPool, mut wakes: mpsc::Receiver<()>) {
    while wakes.recv().await.is_some() {
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "outbox waker could not NOTIFY; relays will poll");
        }
        tokio::time::sleep(NOTIFY_SPACING).await;
    }
}
