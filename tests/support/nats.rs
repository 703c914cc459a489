//! NATS JetStream for tests: the server at `IDEM_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`, which `scripts/services.sh` starts), one stream per test.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, Context, stream};
use futures_util::StreamExt;

/// A JetStream stream of one test, deleted when the test calls [`TestStream::delete`].
pub struct TestStream {
    /// The JetStream context.
    pub js: Context,
    /// The stream's name.
    pub name: String,
    /// The subject prefix the stream captures (`<prefix>.>`).
    pub prefix: String,
}

impl TestStream {
    /// Creates a stream for `<unique prefix>.>` with the given duplicate window.
    pub async fn create(duplicate_window: Duration) -> TestStream {
        let url = std::env::var("IDEM_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("NATS at {url} (run scripts/services.sh): {e}"));
        let js = jetstream::new(client);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("T{id}");
        let prefix = format!("t{id}");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window,
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        TestStream { js, name, prefix }
    }

    /// The durable pull consumer `ledger` on this stream, redelivering after 1 s.
    pub async fn ledger_consumer(&self) -> PullConsumer {
        self.consumer(consumer::pull::Config {
            durable_name: Some("ledger".to_owned()),
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
    }

    /// An ephemeral pull consumer that reads the stream from its first message.
    pub async fn reader(&self) -> PullConsumer {
        self.consumer(consumer::pull::Config::default()).await
    }

    async fn consumer(&self, config: consumer::pull::Config) -> PullConsumer {
        self.js
            .get_stream(&self.name)
            .await
            .expect("stream")
            .create_consumer(config)
            .await
            .expect("consumer")
    }

    /// A subject inside the stream.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    /// Messages stored in the stream.
    pub async fn messages(&self) -> u64 {
        let stream = self.js.get_stream(&self.name).await.expect("stream");
        stream.get_info().await.expect("stream info").state.messages
    }

    /// Deletes the stream.
    pub async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// Fetches up to `n` messages from `consumer`, waiting at most `expires` for them.
pub async fn fetch(
    consumer: &PullConsumer,
    n: usize,
    expires: Duration,
) -> Vec<jetstream::Message> {
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(expires)
        .messages()
        .await
        .expect("fetch");
    let mut messages = Vec::new();
    while let Some(m) = batch.next().await {
        messages.push(m.expect("message"));
    }
    messages
}
