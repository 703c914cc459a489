//! The outbox relay on a Citus cluster whose outbox changes under it (the cluster at
//! `IDEM_TEST_CITUS_URL`, or the one `scripts/citus.sh` starts): a relay started
//! before idem's tables were distributed claims the coordinator's local outbox, and the
//! distributed one once `distribute` has run. (Relays sharing a distributed outbox:
//! `outbox.rs`, `relay_leases.rs` and `relay_wakeup.rs`, which the Citus suite runs on
//! the cluster.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_core::{IdempotencyKey, TenantId};
use idem_sqlx::{Message, OutboxMessage, OutboxRelay, Sink, SinkError};
use idem_tests::{TestDb, citus_test_db, until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts deliveries per message id.
#[derive(Default)]
struct Counting {
    calls: Mutex<HashMap<Uuid, usize>>,
}

impl Sink for Counting {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(message.id)
            .or_default() += 1;
        Ok(())
    }
}

/// Enqueues `n` messages, the `i`th from tenant `tenant-{i % 7}`, in one transaction.
async fn enqueue_for_tenants(db: &TestDb, n: usize) {
    let mut tx = db.pool.begin().await.expect("begin");
    for i in 0..n {
        let tenant = TenantId::new(format!("tenant-{}", i % 7)).expect("tenant");
        let key = IdempotencyKey::parse(&format!("key-{i}")).expect("key");
        let message =
            Message::new("orders", format!("m{i}").into_bytes()).from_request(&tenant, &key);
        idem_sqlx::enqueue(&mut tx, message).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

async fn outbox_is_distributed(db: &TestDb) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition \
                        WHERE logicalrelid = 'idem.outbox'::regclass)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("pg_dist_partition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_before_the_outbox_is_distributed_delivers_before_and_after() {
    let db = citus_test_db(4).await;
    sqlx::query("SELECT undistribute_table('idem.outbox')")
        .execute(&db.pool)
        .await
        .expect("the outbox back on the coordinator");
    assert!(!outbox_is_distributed(&db).await);
    let sink = Arc::new(Counting::default());
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::builder(db.pool.clone(), sink.clone())
        .batch_size(10)
        .poll_interval(Duration::from_millis(50))
        .listen(false)
        .build()
        .expect("relay settings");
    let task = tokio::spawn(relay.run(shutdown.clone()));

    enqueue_for_tenants(&db, 30).await;
    until("the local outbox delivered", async || {
        db.undelivered().await == 0
    })
    .await;

    let distributed = idem_sqlx::distribute(&db.pool, Some("effects"))
        .await
        .expect("distribute");
    assert_eq!(
        distributed,
        idem_sqlx::Distribution::Distributed {
            newly: vec!["idem.outbox"]
        }
    );
    enqueue_for_tenants(&db, 30).await;
    until("the distributed outbox delivered", async || {
        db.undelivered().await == 0
    })
    .await;
    shutdown.cancel();
    task.await.expect("join").expect("relay");

    let calls = sink.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 60);
    assert!(calls.values().all(|&n| n == 1), "each delivered once");
}
