//! The outbox relay: delivers committed outbox messages through a [`Sink`], retries
//! with backoff, dead-letters poison messages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::outbox::{OUTBOX_CHANNEL, OutboxMessage, decode_message};

/// Why a sink could not deliver a message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    /// A sink error from anything printable.
    pub fn new(e: impl std::fmt::Display) -> Self {
        SinkError(e.to_string())
    }
}

/// Where a relay delivers messages: a broker, a webhook.
///
/// A sink must be idempotent on [`OutboxMessage::id`]: a message whose delivery
/// succeeded but whose "delivered" mark was lost (a crash between the two) is delivered
/// again. Brokers do this with the id as their dedupe key (JetStream's `Nats-Msg-Id`,
/// a webhook's `Idempotency-Key`).
pub trait Sink: Send + Sync + 'static {
    /// Delivers one message; `Ok` only once the destination has it.
    fn deliver(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A shared sink: several relays (or a relay and the code that inspects the sink) can
/// hold one.
impl<S: Sink> Sink for Arc<S> {
    fn deliver(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        S::deliver(self, message)
    }
}

/// Delivers outbox messages after they commit.
///
/// Each round claims up to `batch_size` pending messages with `FOR UPDATE SKIP LOCKED`
/// (so several relays, in one process or many, share the queue without delivering a
/// message concurrently), delivers them, and marks each delivered, or schedules a retry
/// with exponential backoff and full jitter, or, after `max_attempts`, dead-letters it
/// (kept in the table, listed by [`dead_letters`](crate::dead_letters), re-driven by
/// [`redrive`](crate::redrive)). It wakes on `LISTEN idem_outbox`, with polling as the
/// fallback.
///
/// ```no_run
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
/// # async fn run(pool: sqlx::PgPool) -> Result<(), idem_sqlx::StoreError> {
/// let shutdown = CancellationToken::new();
/// OutboxRelay::new(pool, Log).max_attempts(5).run(shutdown.clone()).await?;
/// # Ok(())
/// # }
/// ```
pub struct OutboxRelay<S> {
    pool: PgPool,
    sink: Arc<S>,
    batch_size: i64,
    poll_interval: Duration,
    max_attempts: i32,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl<S: Sink> OutboxRelay<S> {
    /// A relay over `pool` delivering to `sink`: batches of 100, polling every second,
    /// 10 attempts, backoff from 100 ms up to 5 minutes.
    pub fn new(pool: PgPool, sink: S) -> Self {
        OutboxRelay {
            pool,
            sink: Arc::new(sink),
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(300),
        }
    }

    /// Messages claimed per round.
    pub fn batch_size(mut self, n: i64) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How often to look for messages when no notification arrives.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Attempts before a message is dead-lettered.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The backoff: attempt `n` waits a random time up to `min(max, base * 2^n)`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Runs until `shutdown` is cancelled. Store errors are logged and retried after
    /// the poll interval; the relay never gives up on its own.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let listen = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(OUTBOX_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = listen
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "outbox relay cannot LISTEN; polling only"))
            .ok();
        while !shutdown.is_cancelled() {
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
            let notified = async {
                match listener.as_mut() {
                    Some(l) => {
                        if l.recv().await.is_err() {
                            tokio::time::sleep(self.poll_interval).await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = notified => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        Ok(())
    }

    /// One round: claims a batch, delivers it, records the outcomes, commits. Returns
    /// how many messages it handled.
    pub async fn relay_once(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, topic, payload, headers, tenant_id, idempotency_key, attempts, last_error, created_at \
             FROM idem.outbox \
             WHERE delivered_at IS NULL AND dead_lettered_at IS NULL AND available_at <= now() \
             ORDER BY available_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let messages = rows
            .iter()
            .map(decode_message)
            .collect::<Result<Vec<_>, _>>()?;
        for message in &messages {
            match self.sink.deliver(message).await {
                Ok(()) => {
                    sqlx::query(
                        "UPDATE idem.outbox SET delivered_at = now(), attempts = attempts + 1, \
                         last_error = NULL WHERE id = $1",
                    )
                    .bind(message.id)
                    .execute(&mut *tx)
                    .await?;
                }
                Err(e) => self.failed(&mut tx, message, &e).await?,
            }
        }
        tx.commit().await?;
        Ok(messages.len())
    }

    async fn failed(
        &self,
        tx: &mut sqlx::PgConnection,
        message: &OutboxMessage,
        error: &SinkError,
    ) -> Result<(), StoreError> {
        let attempts = message.attempts + 1;
        if attempts >= self.max_attempts {
            tracing::error!(
                message_id = %message.id,
                topic = %message.topic,
                attempts,
                error = %error,
                "outbox message dead-lettered"
            );
            sqlx::query(
                "UPDATE idem.outbox SET attempts = $2, last_error = $3, dead_lettered_at = now() \
                 WHERE id = $1",
            )
            .bind(message.id)
            .bind(attempts)
            .bind(&error.0)
            .execute(&mut *tx)
            .await?;
        } else {
            let delay = self.backoff_for(attempts);
            tracing::warn!(message_id = %message.id, attempts, error = %error, ?delay, "outbox delivery failed; retrying");
            sqlx::query(
                "UPDATE idem.outbox SET attempts = $2, last_error = $3, \
                 available_at = now() + make_interval(secs => $4) WHERE id = $1",
            )
            .bind(message.id)
            .bind(attempts)
            .bind(&error.0)
            .bind(delay.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Exponential backoff with full jitter.
    fn backoff_for(&self, attempts: i32) -> Duration {
        let exp = 2u32.saturating_pow(u32::try_from(attempts).unwrap_or(0).min(30));
        let cap = self.backoff_base.saturating_mul(exp).min(self.backoff_max);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}
