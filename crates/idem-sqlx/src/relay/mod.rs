//! The outbox relay: delivers committed outbox messages through a [`Sink`], outside any
//! database transaction, under a lease; retries with backoff; dead-letters poison
//! messages.

mod conn;
mod lease;
mod listen;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use idem_core::delivery::{AfterFailure, after_failure};
use idem_core::observe::names;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use sink::{Sink, SinkError};

use crate::StoreError;
use crate::backoff::full_jitter;
use crate::observe;
use crate::{OutboxMessage, OutboxWaker};
use conn::OwnConnection;
use lease::Held;
use listen::Listening;

/// Delivers outbox messages after they commit.
///
/// Each round **claims** up to `batch_size` due messages in one short statement (`FOR
/// UPDATE SKIP LOCKED`, so relays in one process or many never claim the same message
/// at once): their `available_at` moves to the end of a **lease** and the attempt is
/// counted. It then **delivers** them with no transaction open, `concurrency` at a
/// time, each bounded by the delivery timeout, and records the outcomes in short
/// statements of their own: the delivered ones together at the end of the round (one
/// `UPDATE`, not a commit per message), and at the latest shortly before the lease
/// ends (see [`lease`](OutboxRelayBuilder::lease)), so another relay never takes a
/// message this one delivered; each failure as it happens, to be retried
/// later (exponential backoff with full jitter, or the destination's `Retry-After`
/// when longer), or, after `max_attempts` or on a permanent failure, dead-lettered (kept, listed by [`dead_letters`](crate::outbox::dead_letters),
/// re-driven by [`redrive`](crate::outbox::redrive)). A relay that dies mid-batch leaves its
/// messages leased; another relay takes them when the lease ends (and the downstream
/// dedupe on the message id makes a second delivery harmless). A message whose lease
/// ran out `max_attempts` times without an outcome (it crashes relays) is dead-lettered.
///
/// Claims and delivered marks go through a connection of the relay's own (outside the
/// pool, so it never waits behind requests) that commits with `synchronous_commit =
/// off`: one lost in a database crash only means a delivery again. Failures are written
/// through the pool.
///
/// On a Citus coordinator whose outbox is distributed by tenant (looked up when the
/// relay opens its connection), where `FOR UPDATE` may touch only one shard, a round
/// reads the oldest `batch_size` due messages across the shards without locks, then
/// claims shard by shard (the shard with the oldest message first), each in a
/// transaction routed to its worker by the tenants read there, `SKIP LOCKED` within
/// it: the batch stays oldest first across every tenant and within `batch_size`, and
/// any number of relays share every shard. Each outcome names the message's tenant,
/// so it reaches one shard; the delivered marks are one statement per shard.
/// `synchronous_commit = off` is carried to the workers in those transactions.
///
/// It wakes on an [`OutboxWaker`] of this process, on `LISTEN idem_outbox` (set up
/// again with backoff when it fails), and polls as the backstop.
///
/// ```no_run
/// use std::time::Duration;
///
/// use idem_sqlx::{OutboxMessage, OutboxRelay, Sink, SinkError};
/// use tokio_util::sync::CancellationToken;
///
/// struct Log;
/// impl Sink for Log {
///     async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
///         println!("{} {}", message.topic, message.id);
///         Ok(())
///     }
/// }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let shutdown = CancellationToken::new();
/// OutboxRelay::builder(pool, Log)
///     .max_attempts(5)
///     .delivery_timeout(Duration::from_secs(5))
///     .build()? // refuses a lease not longer than the delivery timeout
///     .run(shutdown.clone())
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct OutboxRelay<S> {
    pool: PgPool,
    own: OwnConnection,
    sink: Arc<S>,
    id: Uuid,
    batch_size: i64,
    concurrency: usize,
    poll_interval: Duration,
    max_attempts: i32,
    backoff_base: Duration,
    backoff_max: Duration,
    lease: Duration,
    delivery_timeout: Duration,
    waker: OutboxWaker,
    listen: bool,
}

impl<S: Sink> OutboxRelay<S> {
    /// A relay over `pool` delivering to `sink` with the defaults: batches of 100
    /// delivered 16 at a time, a 10-second delivery timeout under a 60-second lease,
    /// polling every second, 10 attempts, backoff from 100 ms up to 5 minutes,
    /// listening on `idem_outbox`. To change them, use [`builder`](Self::builder).
    pub fn new(pool: PgPool, sink: S) -> Self {
        OutboxRelay {
            own: OwnConnection::new(pool.clone()),
            pool,
            sink: Arc::new(sink),
            id: Uuid::now_v7(),
            batch_size: 100,
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(300),
            lease: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(10),
            waker: OutboxWaker::new(),
            listen: true,
        }
    }

    /// Configures a relay over `pool` delivering to `sink`, starting from the defaults
    /// of [`new`](Self::new); [`build`](OutboxRelayBuilder::build) checks the settings.
    pub fn builder(pool: PgPool, sink: S) -> OutboxRelayBuilder<S> {
        OutboxRelayBuilder {
            relay: OutboxRelay::new(pool, sink),
        }
    }

    /// This relay's id, recorded as `leased_by` on the messages it holds.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Runs until `shutdown` is cancelled. Store errors are logged and retried after
    /// the poll interval; the relay never gives up on its own. A round in progress when
    /// `shutdown` comes is finished first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let mut listening = Listening::new(self.pool.clone(), self.listen);
        while !shutdown.is_cancelled() {
            listening.prepare().await;
            let full = match self.relay_once().await {
                Ok(n) => n as i64 >= self.batch_size,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.woken() => {}
                () = listening.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        Ok(())
    }

    /// One round: claims a batch, delivers it, records the outcomes. Returns how many
    /// messages it claimed.
    pub async fn relay_once(&self) -> Result<usize, StoreError> {
        let (id, limit, lease) = (self.id, self.batch_size, self.lease);
        let claimed = self
            .own
            .run(|conn, backend| Box::pin(lease::claim(conn, backend, id, limit, lease)))
            .await?;
        let count = claimed.messages.len();
        let Some(lease_ends) = claimed.lease_ends else {
            return Ok(0);
        };
        // The deliveries end by then (one starts only if its timeout does), and are
        // recorded then at the latest, before the lease ends and another relay may take
        // them, even while failures are still being recorded through the pool.
        let record_by = lease_ends
            .checked_sub(self.record_reserve())
            .unwrap_or(lease_ends);
        let mut outcomes = futures_util::stream::iter(claimed.messages)
            .map(|(message, held)| self.settle(message, held, record_by))
            .buffer_unordered(self.concurrency);
        let record_time = tokio::time::sleep_until(record_by);
        tokio::pin!(record_time);
        let mut recorded_early = false;
        let mut delivered = Vec::new();
        loop {
            tokio::select! {
                outcome = outcomes.next() => match outcome {
                    Some(Some(held)) => {
                        delivered.push(held);
                        if recorded_early {
                            // Ended just past the time: recorded at once.
                            self.mark_delivered(std::mem::take(&mut delivered)).await;
                        }
                    }
                    Some(None) => {}
                    None => break,
                },
                () = &mut record_time, if !recorded_early => {
                    recorded_early = true;
                    self.mark_delivered(std::mem::take(&mut delivered)).await;
                }
            }
        }
        self.mark_delivered(delivered).await;
        Ok(count)
    }

    /// The last part of a lease, kept for recording the round's deliveries: the smaller
    /// of 1 s and half of what the lease leaves after one delivery timeout.
    fn record_reserve(&self) -> Duration {
        (self.lease.saturating_sub(self.delivery_timeout) / 2).min(Duration::from_secs(1))
    }

    /// Records deliveries: in one statement per shard (one in all on plain Postgres).
    async fn mark_delivered(&self, delivered: Vec<Held>) {
        if delivered.is_empty() {
            return;
        }
        let count = delivered.len();
        let marked = self
            .own
            .run(move |conn, backend| {
                Box::pin(async move { lease::delivered(conn, backend, &delivered).await })
            })
            .await;
        if let Err(e) = marked {
            // Their leases end and they are delivered again (deduplicated downstream).
            tracing::warn!(error = %e, count, "outbox deliveries not recorded");
        }
    }

    /// Delivers one claimed message if its delivery, timeout included, can end by
    /// `end_by`, and gives it back unattempted otherwise. `Some(held)` when it was
    /// delivered (recorded with the others of the round); every other outcome is
    /// recorded here.
    async fn settle(&self, message: OutboxMessage, held: Held, end_by: Instant) -> Option<Held> {
        let recorded = if message.attempts > self.max_attempts {
            let error = format!(
                "its lease ran out {} times without an outcome (a relay died or hung)",
                message.attempts - 1
            );
            self.give_up(&message, &held, &error).await
        } else if Instant::now() + self.delivery_timeout > end_by {
            lease::release(&self.pool, self.id, &held).await
        } else {
            match self.deliver(&message).await {
                Ok(()) => {
                    delivered(&message);
                    return Some(held);
                }
                Err(e) => self.failed(&message, &held, &e).await,
            }
        };
        if let Err(e) = recorded {
            // The lease ends and the message is tried again.
            tracing::warn!(message_id = %message.id, error = %e, "outbox outcome not recorded");
        }
        None
    }

    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        match tokio::time::timeout(self.delivery_timeout, self.sink.deliver(message)).await {
            Ok(delivered) => delivered,
            Err(_elapsed) => Err(SinkError::new(format!(
                "delivery timed out after {:?}",
                self.delivery_timeout
            ))),
        }
    }

    async fn failed(
        &self,
        message: &OutboxMessage,
        held: &Held,
        error: &SinkError,
    ) -> Result<(), StoreError> {
        observe::count(names::OUTBOX_FAILED, names::TOPIC, &message.topic, 1);
        let backoff = self.backoff_for(message.attempts);
        match after_failure(
            message.attempts,
            self.max_attempts,
            error.failure(),
            backoff,
        ) {
            AfterFailure::DeadLetter => self.give_up(message, held, error.message()).await,
            AfterFailure::RetryIn(delay) => {
                tracing::warn!(
                    message_id = %message.id,
                    attempts = message.attempts,
                    error = %error,
                    ?delay,
                    "outbox delivery failed; retrying"
                );
                lease::retry(&self.pool, self.id, held, error.message(), delay).await
            }
        }
    }

    async fn give_up(
        &self,
        message: &OutboxMessage,
        held: &Held,
        error: &str,
    ) -> Result<(), StoreError> {
        observe::count(names::OUTBOX_DEAD_LETTERED, names::TOPIC, &message.topic, 1);
        tracing::error!(
            message_id = %message.id,
            topic = %message.topic,
            attempts = message.attempts,
            error,
            "outbox message dead-lettered"
        );
        lease::dead_letter(&self.pool, self.id, held, error).await
    }

    /// Exponential backoff with full jitter.
    fn backoff_for(&self, attempts: i32) -> Duration {
        full_jitter(self.backoff_base, self.backoff_max, attempts)
    }
}

/// The settings of an [`OutboxRelay`], from [`OutboxRelay::builder`]; checked by
/// [`build`](Self::build).
pub struct OutboxRelayBuilder<S> {
    relay: OutboxRelay<S>,
}

impl<S: Sink> OutboxRelayBuilder<S> {
    /// Messages claimed per round.
    pub fn batch_size(mut self, n: i64) -> Self {
        self.relay.batch_size = n.max(1);
        self
    }

    /// Deliveries in flight at once within a round.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.relay.concurrency = n.max(1);
        self
    }

    /// How often to look for messages when nothing wakes the relay.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.relay.poll_interval = every;
        self
    }

    /// Attempts before a message is dead-lettered.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.relay.max_attempts = n.max(1);
        self
    }

    /// The backoff: attempt `n` waits a random time up to `min(max, base * 2^n)`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.relay.backoff_base = base;
        self.relay.backoff_max = max;
        self
    }

    /// How long a claimed batch stays with this relay, measured by the database's
    /// clock; it must be longer than the [delivery timeout](Self::delivery_timeout).
    /// The last part of a lease (the smaller of 1 s and half of what the lease leaves
    /// after one delivery timeout) is kept for recording the round's deliveries: a
    /// delivery starts only while it can end, timeout included, before that part, and
    /// a message whose delivery cannot is given back unattempted. Another relay takes
    /// the messages of a relay that died once the lease ends.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.relay.lease = lease;
        self
    }

    /// The longest one delivery may take; past it the attempt counts as a transient
    /// failure. It must be shorter than the [lease](Self::lease).
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.relay.delivery_timeout = timeout;
        self
    }

    /// Wakes on this waker too (share it with the code that commits the messages, e.g.
    /// `Storage::outbox_waker`).
    pub fn waker(mut self, waker: OutboxWaker) -> Self {
        self.relay.waker = waker;
        self
    }

    /// Whether to `LISTEN idem_outbox` (default yes).
    pub fn listen(mut self, on: bool) -> Self {
        self.relay.listen = on;
        self
    }

    /// The relay, or why these settings cannot work: a lease not longer than the
    /// delivery timeout leaves no time to deliver anything
    /// ([`RelayConfigError::LeaseNotLongerThanDeliveryTimeout`]).
    pub fn build(self) -> Result<OutboxRelay<S>, RelayConfigError> {
        let (lease, delivery_timeout) = (self.relay.lease, self.relay.delivery_timeout);
        if lease <= delivery_timeout {
            return Err(RelayConfigError::LeaseNotLongerThanDeliveryTimeout {
                lease,
                delivery_timeout,
            });
        }
        Ok(self.relay)
    }
}

/// Settings an [`OutboxRelayBuilder`] refuses to build a relay with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayConfigError {
    /// The lease is not longer than the delivery timeout: no delivery could be sure to
    /// end within its lease, so every claimed message would be given back unattempted,
    /// round after round.
    #[error(
        "the relay's lease ({lease:?}) must be longer than its delivery timeout \
         ({delivery_timeout:?}): no delivery could end within the lease"
    )]
    LeaseNotLongerThanDeliveryTimeout {
        /// The lease asked for.
        lease: Duration,
        /// The delivery timeout asked for.
        delivery_timeout: Duration,
    },
}

/// Counts a delivery, and the time from its enqueueing transaction to now.
fn delivered(message: &OutboxMessage) {
    observe::count(names::OUTBOX_DELIVERED, names::TOPIC, &message.topic, 1);
    let waited = (chrono::Utc::now() - message.created_at)
        .to_std()
        .unwrap_or_default();
    observe::observe(
        names::OUTBOX_PUBLISH_SECONDS,
        names::TOPIC,
        &message.topic,
        waited.as_secs_f64(),
    );
}
