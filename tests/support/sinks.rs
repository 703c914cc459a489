//! Outbox sinks for the relay tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use idem_sqlx::{JetStreamSink, OutboxMessage, Sink, SinkError};
use uuid::Uuid;

use crate::TestStream;

/// Counts deliveries per message id; accepts every message, or publishes it through
/// JetStream ([`publishing`](Self::publishing)), after a pause
/// ([`after`](Self::after)) when one is set.
#[derive(Default)]
pub struct CountingSink {
    inner: Option<JetStreamSink>,
    pause: Duration,
    calls: Mutex<HashMap<Uuid, usize>>,
}

impl CountingSink {
    /// A sink that publishes each message on `stream`'s JetStream.
    pub fn publishing(stream: &TestStream) -> Self {
        CountingSink {
            inner: Some(JetStreamSink::new(stream.js.clone())),
            ..CountingSink::default()
        }
    }

    /// The same sink, pausing `pause` in each delivery before it publishes.
    pub fn after(self, pause: Duration) -> Self {
        CountingSink { pause, ..self }
    }

    /// How many times each message was delivered so far.
    pub fn calls(&self) -> HashMap<Uuid, usize> {
        self.calls.lock().expect("lock").clone()
    }
}

impl Sink for CountingSink {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(message.id)
            .or_default() += 1;
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        match &self.inner {
            Some(inner) => inner.deliver(message).await,
            None => Ok(()),
        }
    }
}
