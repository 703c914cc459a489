//! `LISTEN idem_outbox` that recovers: set up with backoff when the database is away,
//! and drained before each round so a backlog of notifications costs one round.

use std::time::Duration;

use futures_util::FutureExt;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::time::Instant;

use crate::outbox::OUTBOX_CHANNEL;

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The relay's listener: connected, or waiting to retry.
pub(super) struct Listening {
    pool: PgPool,
    listener: Option<PgListener>,
    retry_at: Instant,
    backoff: Duration,
    enabled: bool,
}

impl Listening {
    pub(super) fn new(pool: PgPool, enabled: bool) -> Self {
        Listening {
            pool,
            listener: None,
            retry_at: Instant::now(),
            backoff: FIRST_RETRY,
            enabled,
        }
    }

    /// Before a round: sets up `LISTEN` when it is missing and its retry is due
    /// (awaited here, never inside the relay's `select!`, where a wake could cancel it
    /// half-way every time), then throws away the notifications already received: the
    /// round about to run covers them all.
    pub(super) async fn prepare(&mut self) {
        if self.enabled && self.listener.is_none() && Instant::now() >= self.retry_at {
            self.connect().await;
        }
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        // `try_recv` polled once: a notification already on the socket is ready.
        while let Some(Ok(Some(_))) = listener.try_recv().now_or_never() {}
    }

    /// Resolves when a notification arrives, when the connection was lost (a round then
    /// catches up on what it missed), or when a retry of `LISTEN` is due. Never resolves
    /// when listening is off.
    pub(super) async fn notified(&mut self) {
        if !self.enabled {
            return std::future::pending().await;
        }
        match self.listener.as_mut() {
            Some(listener) => match listener.try_recv().await {
                Ok(Some(_)) => {}
                // The connection was lost; sqlx reconnects and listens again on the
                // next call. Run a round meanwhile: notifications were lost with it.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay lost its LISTEN connection");
                    self.listener = None;
                    self.retry_at = Instant::now() + self.backoff;
                }
            },
            None => tokio::time::sleep_until(self.retry_at).await,
        }
    }

    async fn connect(&mut self) {
        let connected = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(OUTBOX_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        // Bounded: a pool drained by requests must not hold up the relay's round.
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, connected)
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        match connected {
            Ok(listener) => {
                self.listener = Some(listener);
                self.backoff = FIRST_RETRY;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    retry_in = ?self.backoff,
                    "outbox relay cannot LISTEN yet; polling meanwhile"
                );
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(LAST_RETRY);
            }
        }
    }
}
