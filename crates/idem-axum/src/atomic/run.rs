//! A request on an atomic route, in named steps: answer from memory or join the key's
//! flight, open (transaction and claim), apply the limits on a new key, run the
//! handler, settle (store, commit, or roll back).

use std::sync::Arc;

use axum::body::Body;
use http::{Request, Response};
use idem_core::Outcome;
use idem_core::policy::{FailureMode, StoreUnreached};
use idem_sqlx::{StoreError, Tallied};
use tracing::Instrument;

use super::handler::{Handled, roll_back, run_handler};
use super::store::{BeforeHandler, NotBegun, PgTx, begin, open_keyed};
use crate::bounds::{Inner, ResponseBody};
use crate::future::{ResponseFuture, run_detached};
use crate::job::Job;
use crate::observe::{Observed, request_span};
use crate::replay::answer::{outcome, unavailable};
use crate::replay::flight::Landed;
use crate::request::Keyed;
use crate::request::uri::original_uri;

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
                self.observed.mark_decided();
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
        self.observed.mark_handled(started.elapsed());
        response.map(|r| outcome(r.map(Body::new), Outcome::FailedOpen))
    }
}

/// A request that claims nothing: its handler runs in a transaction, committed on a
/// final answer (no key where it is optional; observe mode without a usable key).
pub(crate) fn unkeyed<S, B>(
    job: Job,
    observed: Arc<Observed>,
    inner: S,
    req: Request<Body>,
) -> ResponseFuture<S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    let path = original_uri(req.extensions(), req.uri()).path();
    let span = request_span!("unkeyed_request", req.method(), path, observed);
    let fut = run_detached(observed, job.run_unkeyed(inner, req));
    ResponseFuture::new(fut.instrument(span))
}
