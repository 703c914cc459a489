//! The metrics tests (`it/metrics.rs`) on the Citus cluster: the replay tally written
//! shard by shard and the store's gauges read across the shards, in a binary of their
//! own as on plain Postgres (the exporter is process-wide). Its name, `citus_metrics-*`,
//! makes every test database a Citus one, as in `citus.rs`.

#[path = "it/metrics.rs"]
mod metrics;
