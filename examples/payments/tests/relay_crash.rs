//! Relays as separate processes, one SIGKILLed mid-batch: every message is published,
//! none is lost, and the copies a second relay publishes again are dropped by
//! JetStream's duplicate window, so the stream holds each message once.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use idem_sqlx::Message;
use idem_tests::{TestDb, TestStream, WorkerProcess, test_db};

const RELAY: &str = env!("CARGO_BIN_EXE_payments-relay");
const MESSAGES: usize = 600;

async fn scalar(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&db.pool)
        .await
        .expect("scalar")
}

fn nats_url() -> String {
    std::env::var("IDEM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn relay(db: &TestDb, batch: &str, concurrency: &str) -> WorkerProcess {
    WorkerProcess::start(
        RELAY,
        &db.url,
        &[
            "--batch-size",
            batch,
            "--concurrency",
            concurrency,
            "--lease-ms",
            "3000",
            "--delivery-timeout-ms",
            "1000",
            "--poll-ms",
            "100",
        ],
        &[("NATS_URL", &nats_url())],
    )
}

/// The `Nats-Msg-Id` of every message in the stream.
async fn stored_ids(stream: &TestStream) -> Vec<String> {
    let consumer = stream.reader().await;
    let mut ids = Vec::new();
    while ids.len() < MESSAGES + 10 {
        let mut batch = consumer
            .fetch()
            .max_messages(200)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        let before = ids.len();
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .expect("id");
            ids.push(id.as_str().to_owned());
        }
        if ids.len() == before {
            break;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_one_sigkilled_mid_batch_publish_every_message_once() {
    let db = test_db().await;
    let stream = TestStream::create(Duration::from_secs(120)).await;
    let mut tx = db.pool.begin().await.expect("begin");
    for i in 0..MESSAGES {
        idem_sqlx::outbox::enqueue(
            &mut tx,
            Message::new(stream.subject("orders"), format!("m{i}")),
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");

    // One relay takes a batch of 300 and delivers it one at a time; kill it mid-way.
    let mut doomed = relay(&db, "300", "1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stream.messages().await < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill().await;
    let leased = scalar(
        &db,
        "SELECT count(*) FROM idem.outbox WHERE delivered_at IS NULL AND leased_by IS NOT NULL",
    )
    .await;
    assert!(
        leased > 0,
        "killed mid-batch: messages of its batch still leased to it"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(DISTINCT leased_by) FROM idem.outbox WHERE leased_by IS NOT NULL"
        )
        .await,
        1
    );

    // Two more relays finish the outbox, the killed one's batch once its lease ends.
    let _relays = [relay(&db, "50", "4"), relay(&db, "50", "4")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while scalar(
        &db,
        "SELECT count(*) FROM idem.outbox WHERE delivered_at IS NULL",
    )
    .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relays did not finish the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM idem.outbox WHERE dead_lettered_at IS NOT NULL"
        )
        .await,
        0
    );

    let stored = stored_ids(&stream).await;
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(stored.len(), MESSAGES, "each message stored once");
    let outbox: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM idem.outbox")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    let outbox: HashSet<String> = outbox.iter().map(ToString::to_string).collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<HashSet<_>>(),
        outbox,
        "every message published"
    );
    stream.delete().await;
}
