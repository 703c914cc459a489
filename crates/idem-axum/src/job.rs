//! One request through the layer, in named steps: join the key's flight (or wait on a
//! duplicate of this process), open (transaction and claim), run the handler, settle
//! (store, commit, or roll back).

use std::sync::Arc;

use axum::body::Body;
use chrono::Utc;
use http::{Request, Response};
use idem_core::policy::StoreUnreached;
use idem_core::{Decision, Outcome, decide};
use idem_sqlx::{ReplayTally, StoreError, Tallied};
use sqlx::PgPool;

use crate::Problem;
use crate::answer::outcome;
use crate::answer::unavailable;
use crate::answer::{decided, in_flight};
use crate::bounds::{Inner, ResponseBody};
use crate::cache::ReplayCache;
use crate::config::Config;
use crate::flight::{Flights, Join, Landed, Leader};
use crate::handler::{Handled, roll_back, run_handler};
use crate::observe::Observed;
use crate::request::Keyed;
use crate::store::{BeforeHandler, NotBegun, PgTx, begin, open_keyed};
use idem_core::policy::FailureMode;

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
    /// A request with a key: exactly once. A replay or a mismatch is counted on the
    /// key's row.
    pub(crate) async fn run_keyed<S, B>(
        self,
        keyed: Keyed,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        let answer = self.answer_keyed(&keyed, inner, req).await;
        let tallied = match answer.as_ref().map(|r| r.extensions().get::<Outcome>()) {
            Ok(Some(Outcome::Replayed | Outcome::ReplayedUnstored)) => Some(Tallied::Replay),
            Ok(Some(Outcome::Mismatch)) => Some(Tallied::Mismatch),
            Ok(Some(Outcome::MismatchReported)) => Some(Tallied::ReplayedMismatch),
            _ => None,
        };
        if let Some(what) = tallied {
            self.tally.add(&keyed.tenant, &keyed.key, what);
        }
        answer
    }

    async fn answer_keyed<S, B>(
        &self,
        keyed: &Keyed,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        if let Some(answer) = self.answer_from_memory(keyed) {
            return Ok(answer);
        }
        let leader = match self.lead(keyed).await {
            Ok(leader) => leader,
            Err(answer) => return Ok(answer),
        };
        let tx = match open_keyed(&self.pool, &self.config, keyed).await {
            BeforeHandler::Tx(tx) => {
                self.observed.decided();
                match self.limit(keyed, tx).await {
                    Ok(tx) => tx,
                    Err(answer) => {
                        self.land(keyed, leader, Landed::Unknown);
                        return Ok(answer);
                    }
                }
            }
            BeforeHandler::Answer(answer, landed) => {
                self.land(keyed, leader, landed);
                return Ok(answer);
            }
            BeforeHandler::Unreached(cause) => {
                // Nothing was claimed; the duplicates of this process still wait on
                // this request, so a fail-open route never runs two handlers at once.
                let answer = self.unreachable(cause, inner, req).await;
                drop(leader);
                return answer;
            }
        };
        let (answer, landed) =
            match run_handler(&self.config, &self.observed, tx, Some(keyed), inner, req).await {
                Handled::Final(response, tx, enqueued) => {
                    self.settle_keyed(keyed, response, tx, enqueued).await
                }
                Handled::Answered(answer) => (answer, Landed::Unknown),
                Handled::Failed(e) => return Err(e),
            };
        self.land(keyed, leader, landed);
        Ok(answer)
    }

    /// A replay or a mismatch answered from the finished records in memory.
    pub(crate) fn answer_from_memory(&self, keyed: &Keyed) -> Option<Response<Body>> {
        let (decision, record) = self.cache.decide(keyed)?;
        decided(&self.config, decision, &record)
    }

    /// Tells this process's duplicates what the request left, and keeps a finished
    /// record in memory for the retries still to come.
    fn land(&self, keyed: &Keyed, leader: Leader, landed: Landed) {
        self.keep(keyed, &landed);
        leader.land(landed);
    }

    /// Keeps a finished record in memory, for the retries to come.
    pub(crate) fn keep(&self, keyed: &Keyed, landed: &Landed) {
        if let Landed::Record(record) = landed {
            self.cache.keep(keyed, record);
        }
    }

    /// A request without a key on a route where it is optional: the handler runs in a
    /// transaction, committed on a final answer; nothing is claimed or stored.
    pub(crate) async fn run_unkeyed<S, B>(
        self,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        let tx = match begin(&self.pool, &self.config).await {
            Ok(tx) => tx,
            Err(NotBegun::Answer(answer)) => return Ok(answer),
            Err(NotBegun::Unreached(cause)) => return self.unreachable(cause, inner, req).await,
        };
        match run_handler(&self.config, &self.observed, tx, None, inner, req).await {
            Handled::Final(response, tx, enqueued) => {
                Ok(self.settle_unkeyed(response, tx, enqueued).await)
            }
            Handled::Answered(answer) => Ok(answer),
            Handled::Failed(e) => Err(e),
        }
    }

    /// The limits on a new key, once it is claimed: the tenant's rate of new keys and
    /// its quota of live keys. `Err`: the claim is rolled back, and the answer.
    async fn limit(&self, keyed: &Keyed, mut tx: PgTx) -> Result<PgTx, Response<Body>> {
        // Read in the request's transaction: it sees the key just claimed.
        let admitted = self
            .admit_new_key(keyed, async || {
                idem_sqlx::keys::live_keys(&mut *tx, &keyed.tenant).await
            })
            .await;
        match admitted {
            Ok(()) => Ok(tx),
            Err(answer) => {
                roll_back(&self.config, tx).await;
                Err(answer)
            }
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
            Err(outcome(
                Problem::KeyQuotaExceeded.into_response(),
                Outcome::QuotaExceeded,
            ))
        }
    }

    /// Wakes the outbox relays after a commit, when the handler enqueued.
    pub(crate) fn committed(&self, enqueued: bool) {
        if let (true, Some(waker)) = (enqueued, &self.config.storage.outbox_waker) {
            waker.wake();
        }
    }

    /// Joins the key's flight in this process. `Ok`: this request holds the key here
    /// and goes to the store. `Err`: answered from what the request that held the key
    /// left (a replay or mismatch from memory, or 409 `in-flight` past the wait).
    async fn lead(&self, keyed: &Keyed) -> Result<Leader, Response<Body>> {
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

    /// No transaction could be opened (`cause`: the store's error, `None` when it was
    /// silent), so nothing was claimed: 503, or, on a route that fails open and only
    /// when the database cannot be reached at all, the handler without idempotency
    /// (and without a `Tx`).
    async fn unreachable<S, B>(
        &self,
        cause: Option<StoreError>,
        mut inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        if self.config.policy.failure == FailureMode::Closed {
            return Ok(unavailable(&self.config));
        }
        let why = match &cause {
            Some(e) => {
                idem_sqlx::transaction::unreached(&self.pool, e, self.config.timeouts.store).await
            }
            None => StoreUnreached::Silent,
        };
        if !self.config.policy.failure.runs_without_store(why) {
            tracing::warn!(?why, "the store is up but unusable now; failing closed");
            return Ok(unavailable(&self.config));
        }
        let started = tokio::time::Instant::now();
        let response = inner.call(req).await;
        self.observed.handled(started.elapsed());
        response.map(|r| outcome(r.map(Body::new), Outcome::FailedOpen))
    }
}

/// 429 `new-key-rate`, with the wait rounded up to whole seconds.
fn rate_limited(wait: std::time::Duration) -> Response<Body> {
    let retry_after =
        std::time::Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
    let problem = Problem::NewKeyRateExceeded { retry_after };
    outcome(problem.into_response(), Outcome::RateLimited)
}
