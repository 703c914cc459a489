//! The metrics `idem` emits: names, kinds, labels and meanings, in one place. The
//! metrics table of docs/observability.md lists the same (a test keeps the two together).
//!
//! Durations are in seconds and sizes in bytes, as Prometheus names them.

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value that goes up and down, set from a periodic query.
    Gauge,
    /// A distribution (Prometheus buckets).
    Histogram,
}

/// One metric: its name, kind, labels and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The metric's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it counts or measures.
    pub help: &'static str,
}

/// Label: the request method.
pub const METHOD: &str = "method";
/// Label: the matched route template (axum's `MatchedPath`), never the raw path.
pub const ROUTE: &str = "route";
/// Label: an [`Outcome`](super::Outcome).
pub const OUTCOME: &str = "outcome";
/// Label: the client version, folded into a bounded set ([`super::ClientVersions`]).
pub const CLIENT_VERSION: &str = "client_version";
/// Label: an outbox message's topic.
pub const TOPIC: &str = "topic";
/// Label: an inbox consumer's name.
pub const CONSUMER: &str = "consumer";
/// Label: what the layer would have done in observe mode
/// ([`Would`](crate::policy::Would)).
pub const WOULD: &str = "would";

/// The `route` of a request that matched no route template (the layer was not added
/// with `route_layer`, or the router had none), and of keys stored without one.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Requests the layer handled, by outcome.
pub const REQUESTS: &str = "idem_requests_total";
/// From a keyed request's arrival to the store's decision (claimed, replay, mismatch,
/// in flight).
pub const DECISION_SECONDS: &str = "idem_decision_seconds";
/// The time a request spent in the layer, less its handler's.
pub const OVERHEAD_SECONDS: &str = "idem_layer_overhead_seconds";
/// The size of each stored response (body and replayed headers).
pub const STORED_RESPONSE_BYTES: &str = "idem_stored_response_bytes";
/// Keyed requests on routes in observe mode, by what the layer would have done.
pub const OBSERVED: &str = "idem_observed_total";
/// The highest share of its live-key quota any tenant uses, in this process.
pub const KEY_QUOTA_USAGE: &str = "idem_key_quota_usage_ratio";
/// Phased keys in progress whose owner's lease passed (periodic): work a retry or the
/// completer has yet to finish.
pub const PHASED_ABANDONED: &str = "idem_phased_keys_abandoned";
/// Keys replayed for the first time: their client retried and received the stored
/// answer.
pub const KEYS_RETRIED: &str = "idem_keys_retried_total";
/// Live keys, from the periodic store query.
pub const KEYS_LIVE: &str = "idem_keys_live";
/// Bytes stored by live keys (the rows' size on disk, compressed), periodic.
pub const KEYS_STORED_BYTES: &str = "idem_keys_stored_bytes";
/// Live keys replayed at least once, periodic.
pub const KEYS_REPLAYED: &str = "idem_keys_replayed";
/// Replays of live keys, summed, periodic.
pub const KEY_REPLAYS: &str = "idem_key_replays";
/// Outbox messages waiting to be delivered, periodic.
pub const OUTBOX_PENDING: &str = "idem_outbox_pending";
/// Age of the oldest message waiting to be delivered (the outbox's lag), periodic.
pub const OUTBOX_LAG_SECONDS: &str = "idem_outbox_oldest_pending_seconds";
/// Dead-lettered outbox messages (kept until redriven or purged), periodic.
pub const OUTBOX_DEAD: &str = "idem_outbox_dead_letters";
/// Outbox messages delivered.
pub const OUTBOX_DELIVERED: &str = "idem_outbox_delivered_total";
/// Failed delivery attempts (each will be retried or dead-lettered).
pub const OUTBOX_FAILED: &str = "idem_outbox_failed_attempts_total";
/// Outbox messages dead-lettered.
pub const OUTBOX_DEAD_LETTERED: &str = "idem_outbox_dead_lettered_total";
/// From a message's commit to its delivery.
pub const OUTBOX_PUBLISH_SECONDS: &str = "idem_outbox_publish_seconds";
/// Inbox messages processed (the work committed).
pub const INBOX_PROCESSED: &str = "idem_inbox_processed_total";
/// Redelivered inbox messages skipped because they were processed before.
pub const INBOX_DUPLICATES: &str = "idem_inbox_duplicates_total";
/// Inbox work that failed (the message will be redelivered or dead-lettered).
pub const INBOX_FAILURES: &str = "idem_inbox_failures_total";
/// Inbox messages dead-lettered.
pub const INBOX_DEAD_LETTERED: &str = "idem_inbox_dead_lettered_total";
/// Dead-lettered inbox messages (kept until redriven or purged), periodic.
pub const INBOX_DEAD: &str = "idem_inbox_dead_letters";

const REQUEST_LABELS: &[&str] = &[METHOD, ROUTE, OUTCOME, CLIENT_VERSION];
const TIMING_LABELS: &[&str] = &[METHOD, ROUTE];

/// Every metric, in the order of docs/observability.md's table.
pub const ALL: &[Metric] = &[
    Metric {
        name: REQUESTS,
        kind: Kind::Counter,
        labels: REQUEST_LABELS,
        help: "Requests the idempotency layer handled, by outcome.",
    },
    Metric {
        name: DECISION_SECONDS,
        kind: Kind::Histogram,
        labels: TIMING_LABELS,
        help: "From a keyed request's arrival to the store's decision (claim, replay, mismatch, in flight).",
    },
    Metric {
        name: OVERHEAD_SECONDS,
        kind: Kind::Histogram,
        labels: TIMING_LABELS,
        help: "Time a request spent in the idempotency layer, less its handler's.",
    },
    Metric {
        name: STORED_RESPONSE_BYTES,
        kind: Kind::Histogram,
        labels: &[ROUTE],
        help: "Size of each stored response (body and replayed headers).",
    },
    Metric {
        name: OBSERVED,
        kind: Kind::Counter,
        labels: &[METHOD, ROUTE, WOULD],
        help: "Keyed requests on routes in observe mode, by what the layer would have done.",
    },
    Metric {
        name: KEY_QUOTA_USAGE,
        kind: Kind::Gauge,
        labels: &[],
        help: "The highest share of its live-key quota any tenant uses (this process's tenants).",
    },
    Metric {
        name: PHASED_ABANDONED,
        kind: Kind::Gauge,
        labels: &[],
        help: "Phased keys in progress whose owner's lease passed.",
    },
    Metric {
        name: KEYS_RETRIED,
        kind: Kind::Counter,
        labels: &[ROUTE],
        help: "Keys replayed for the first time: the client retried and got the stored answer.",
    },
    Metric {
        name: KEYS_LIVE,
        kind: Kind::Gauge,
        labels: &[ROUTE],
        help: "Live idempotency keys.",
    },
    Metric {
        name: KEYS_STORED_BYTES,
        kind: Kind::Gauge,
        labels: &[ROUTE],
        help: "Bytes stored by live idempotency keys.",
    },
    Metric {
        name: KEYS_REPLAYED,
        kind: Kind::Gauge,
        labels: &[ROUTE],
        help: "Live keys replayed at least once.",
    },
    Metric {
        name: KEY_REPLAYS,
        kind: Kind::Gauge,
        labels: &[ROUTE],
        help: "Replays of live keys, summed.",
    },
    Metric {
        name: OUTBOX_PENDING,
        kind: Kind::Gauge,
        labels: &[],
        help: "Outbox messages waiting to be delivered.",
    },
    Metric {
        name: OUTBOX_LAG_SECONDS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Age of the oldest outbox message waiting to be delivered.",
    },
    Metric {
        name: OUTBOX_DEAD,
        kind: Kind::Gauge,
        labels: &[],
        help: "Dead-lettered outbox messages.",
    },
    Metric {
        name: OUTBOX_DELIVERED,
        kind: Kind::Counter,
        labels: &[TOPIC],
        help: "Outbox messages delivered.",
    },
    Metric {
        name: OUTBOX_FAILED,
        kind: Kind::Counter,
        labels: &[TOPIC],
        help: "Failed outbox delivery attempts.",
    },
    Metric {
        name: OUTBOX_DEAD_LETTERED,
        kind: Kind::Counter,
        labels: &[TOPIC],
        help: "Outbox messages dead-lettered.",
    },
    Metric {
        name: OUTBOX_PUBLISH_SECONDS,
        kind: Kind::Histogram,
        labels: &[TOPIC],
        help: "From an outbox message's commit to its delivery.",
    },
    Metric {
        name: INBOX_PROCESSED,
        kind: Kind::Counter,
        labels: &[CONSUMER],
        help: "Inbox messages processed.",
    },
    Metric {
        name: INBOX_DUPLICATES,
        kind: Kind::Counter,
        labels: &[CONSUMER],
        help: "Redelivered inbox messages skipped as duplicates.",
    },
    Metric {
        name: INBOX_FAILURES,
        kind: Kind::Counter,
        labels: &[CONSUMER],
        help: "Inbox work that failed.",
    },
    Metric {
        name: INBOX_DEAD_LETTERED,
        kind: Kind::Counter,
        labels: &[CONSUMER],
        help: "Inbox messages dead-lettered.",
    },
    Metric {
        name: INBOX_DEAD,
        kind: Kind::Gauge,
        labels: &[CONSUMER],
        help: "Dead-lettered inbox messages.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for metric in ALL {
            let name = metric.name;
            assert!(name.starts_with("idem_"), "{name}");
            assert_eq!(
                metric.kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters, and only counters, end in _total"
            );
            if name.contains("seconds") {
                assert!(name.ends_with("_seconds"), "{name}: the unit comes last");
            }
        }
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "each name once");
    }

    #[test]
    fn no_metric_is_labelled_by_key_tenant_or_raw_path() {
        for metric in ALL {
            for label in metric.labels {
                assert!(
                    ![
                        "key",
                        "idempotency_key",
                        "tenant",
                        "tenant_id",
                        "path",
                        "message_id"
                    ]
                    .contains(label),
                    "{}: {label}",
                    metric.name
                );
            }
        }
    }

    #[test]
    fn the_observability_guide_documents_every_metric() {
        let guide = include_str!("../../../../docs/observability.md");
        for metric in ALL {
            assert!(
                guide.contains(&format!("`{}`", metric.name)),
                "docs/observability.md's metrics table lacks `{}`",
                metric.name
            );
        }
    }
}
