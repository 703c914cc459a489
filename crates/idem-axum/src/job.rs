//! [`Job`]: what every step of a request needs, and the steps the atomic and phased
//! paths share: answering from memory, joining the key's flight (or waiting on a
//! duplicate of this process), the limits on a new key, waking the relays after a
//! commit. Each path adds its own steps in its own `impl Job`: `atomic::run` (open,
//! run the handler, settle), `phased::run` (claim a lease, run the phases, finish),
//! `observe_mode`.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use chrono::Utc;
use http::Response;
use idem_core::{Decision, decide};
use idem_sqlx::ReplayTally;
use sqlx::PgPool;

use crate::Problem;
use crate::config::Config;
use crate::observe::{Observed, report};
use crate::replay::answer::{decided, in_flight, problem_answer, unavailable};
use crate::replay::cache::ReplayCache;
use crate::replay::flight::{Flights, Join, Landed, Leader};
use crate::request::Keyed;
use crate::request::body::read_body;

/// What every step of a request needs.
#[derive(Clone)]
pub(crate) struct Job {
    pub(crate) config: Arc<Config>,
    pub(crate) pool: PgPool,
    pub(crate) flights: Arc<Flights>,
    pub(crate) cache: Arc<ReplayCache>,
    pub(crate) tally: ReplayTally,
    pub(crate) observed: Arc<Observed>,
}

impl Job {
    /// A replay or a mismatch answered from the finished records in memory.
    pub(crate) fn answer_from_memory(&self, keyed: &Keyed) -> Option<Response<Body>> {
        let (decision, record) = self.cache.decide(keyed)?;
        decided(&self.config, decision, &record)
    }

    /// Tells this process's duplicates what the request left, and keeps a finished
    /// record in memory for the retries still to come.
    pub(crate) fn land(&self, keyed: &Keyed, leader: Leader, landed: Landed) {
        self.keep(keyed, &landed);
        leader.land(landed);
    }

    /// Keeps a finished record in memory, for the retries to come.
    pub(crate) fn keep(&self, keyed: &Keyed, landed: &Landed) {
        if let Landed::Record(record) = landed {
            self.cache.keep(keyed, record);
        }
    }

    /// Whether the tenant may have one more key, just claimed: its rate of new keys
    /// and its quota of live keys (`count` reads its live keys, the new one included,
    /// when the cached count is too old). `Err`: the answer; the caller undoes the
    /// claim.
    pub(crate) async fn admit_new_key(
        &self,
        keyed: &Keyed,
        count: impl AsyncFnOnce() -> Result<u64, idem_sqlx::StoreError>,
    ) -> Result<(), Response<Body>> {
        let tenant = &keyed.tenant;
        if let Some(limiter) = &self.config.limits.new_keys
            && let Err(wait) = limiter.admit(&(tenant.clone(), keyed.client.clone()))
        {
            return Err(rate_limited(wait));
        }
        let Some(quota) = &self.config.limits.key_quota else {
            return Ok(());
        };
        let (live, fresh) = match quota.cached_with_new(tenant) {
            Some(live) => (live, false),
            None => match count().await {
                Ok(live) => (live, true),
                Err(e) => {
                    tracing::warn!(error = %e, "counting the tenant's keys failed");
                    return Err(unavailable(&self.config));
                }
            },
        };
        if quota.admit(tenant, live, fresh) {
            Ok(())
        } else {
            Err(problem_answer(Problem::KeyQuotaExceeded))
        }
    }

    /// The request body, buffered up to the limit; past it (or unreadable) the layer's
    /// rejection, already reported.
    pub(crate) async fn read_request_body(&self, body: Body) -> Result<Bytes, Response<Body>> {
        read_body(body, self.config.limits.request_body)
            .await
            .map_err(|problem| report(&self.observed, problem_answer(problem)))
    }

    /// Wakes the outbox relays after a commit, when the handler enqueued.
    pub(crate) fn wake_relays(&self, enqueued: bool) {
        if let (true, Some(waker)) = (enqueued, &self.config.storage.outbox_waker) {
            waker.wake();
        }
    }

    /// Joins the key's flight in this process. `Ok`: this request holds the key here
    /// and goes to the store. `Err`: answered from what the request that held the key
    /// left (a replay or mismatch from memory, or 409 `in-flight` past the wait).
    pub(crate) async fn lead(&self, keyed: &Keyed) -> Result<Leader, Response<Body>> {
        let deadline = tokio::time::Instant::now() + self.config.timeouts.in_flight_wait;
        loop {
            let mut landing = match self.flights.join(&keyed.tenant, &keyed.key) {
                Join::Leader(leader) => return Ok(leader),
                Join::Follower(landing) => landing,
            };
            let landed =
                match tokio::time::timeout_at(deadline, landing.wait_for(Option::is_some)).await {
                    Ok(Ok(landed)) => landed.clone(),
                    Ok(Err(_closed)) => None,
                    Err(_elapsed) => return Err(in_flight(&self.config)),
                };
            match landed {
                Some(Landed::Record(record)) => {
                    let decision = decide(Some(&record), &keyed.fingerprint, Utc::now());
                    if let Some(answer) = decided(&self.config, decision, &record) {
                        return Err(answer);
                    }
                    if decision == Decision::InFlight {
                        return Err(in_flight(&self.config));
                    }
                }
                Some(Landed::Busy) => return Err(in_flight(&self.config)),
                Some(Landed::Unknown) | None => continue,
            }
        }
    }
}

/// 429 `new-key-rate`, with the wait rounded up to whole seconds.
fn rate_limited(wait: std::time::Duration) -> Response<Body> {
    let retry_after =
        std::time::Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
    let problem = Problem::NewKeyRateExceeded { retry_after };
    problem_answer(problem)
}
