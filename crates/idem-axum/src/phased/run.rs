//! A keyed request on a phased route: claim (committed at once, leased), run the
//! handler with its [`Phases`], then settle: store a final answer under the fencing
//! token, or end the lease early so a retry resumes.

use std::panic::AssertUnwindSafe;

use axum::body::Body;
use bytes::Bytes;
use chrono::Utc;
use futures_util::FutureExt;
use http::{Request, Response, header};
use idem_core::{FailureKind, Outcome, StoredResponse};
use idem_sqlx::StoreError;
use idem_sqlx::phased::{Lease, Phased, PhasedClaim};

use super::gate::{self, Attempt, Gated};
use super::phases::{PhaseAnswer, Phases};
use crate::Problem;
use crate::atomic::handler::trace_context;
use crate::atomic::settle::{collect, completion, finished_record, seal_for_store};
use crate::atomic::store::{bounded, landed_record, open_record};
use crate::bounds::{Inner, ResponseBody};
use crate::job::Job;
use crate::replay::answer::{
    expired, in_flight, mismatched, outcome, problem_answer, replay, store_fault, unavailable,
};
use crate::request::Keyed;

/// How often a request polls a key whose owner holds a live lease.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The request as the claim keeps it, for the completer.
#[derive(Debug, Clone)]
struct Kept {
    body: Bytes,
    query: Option<String>,
    content_type: Option<String>,
}

/// Where the claim left a phased request.
enum ClaimOutcome {
    /// Run the handler as the key's owner.
    Owned(Lease, idem_core::phased::Journal, bool),
    /// Answered without running (replay, mismatch, in flight, store failure).
    Answer(Response<Body>),
}

impl Job {
    /// A keyed request on a phased route: exactly once across its phases.
    pub(crate) async fn run_phased<S, B>(
        self,
        keyed: Keyed,
        body: Bytes,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        if let Some(answer) = self.answer_from_memory(&keyed) {
            return Ok(answer);
        }
        let Some(body) = self.kept_body(&keyed, body) else {
            return Ok(problem_answer(Problem::StoreFault));
        };
        let kept = Kept {
            body,
            query: crate::request::uri::kept_query(&req),
            content_type: req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let (lease, journal, resumed) = match self.open_phased(&keyed, kept).await {
            ClaimOutcome::Owned(lease, journal, resumed) => (lease, journal, resumed),
            ClaimOutcome::Answer(answer) => return Ok(answer),
        };
        self.observed.mark_decided();
        let phases = Phases::new(
            self.pool.clone(),
            lease.clone(),
            journal,
            resumed,
            trace_context(&req, &self.config.observability.correlation_header),
        );
        self.run_or_accept(keyed, lease, phases, inner, req).await
    }

    /// Runs the handler's phases; on a route with `accept_after`, answers 202 when they
    /// are still running by then, and lets them go on in their own task.
    async fn run_or_accept<S, B>(
        self,
        keyed: Keyed,
        lease: Lease,
        phases: Phases,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        let accept = self.config.phased.as_ref().and_then(|p| p.accept.clone());
        let Some((after, status_path)) = accept else {
            return self.run_phases(&keyed, lease, phases, inner, req).await;
        };
        let operation = lease.operation;
        let mut running =
            tokio::spawn(async move { self.run_phases(&keyed, lease, phases, inner, req).await });
        tokio::select! {
            done = &mut running => match done {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::error!(error = %e, "a phased request's task failed");
                    Ok(problem_answer(Problem::HandlerPanicked))
                }
            },
            () = tokio::time::sleep(after) => Ok(accepted(&status_path, operation)),
        }
    }

    /// Claims the key, waiting (at most `Timeouts::in_flight_wait`) while another owner holds a
    /// live lease on it.
    async fn open_phased(&self, keyed: &Keyed, kept: Kept) -> ClaimOutcome {
        let deadline = tokio::time::Instant::now() + self.config.timeouts.in_flight_wait;
        loop {
            let sent = Utc::now();
            let claiming = {
                let (job, keyed) = (self.clone(), keyed.clone());
                let kept = kept.clone();
                async move |mut tx: sqlx::PgTransaction<'static>| {
                    let config = &job.config;
                    let claim = PhasedClaim {
                        request: keyed.claim_request(config),
                        lease: config
                            .phased
                            .as_ref()
                            .map_or_else(Default::default, |p| p.lease),
                        query: kept.query.as_deref(),
                        body: &kept.body,
                        content_type: kept.content_type.as_deref(),
                    };
                    let claimed = idem_sqlx::phased::claim(&mut tx, &claim).await;
                    let attempt = match claimed {
                        // A new key counts against the tenant's limits before it
                        // commits: refused, it rolls back and nothing of it remains.
                        Ok(Phased::Owned { resumed: false, .. }) => {
                            let count =
                                async || idem_sqlx::keys::live_keys(&mut *tx, &keyed.tenant).await;
                            match job.admit_new_key(&keyed, count).await {
                                Ok(()) => claimed.map(Attempt::Answered),
                                Err(answer) => Ok(Attempt::Refused(answer)),
                            }
                        }
                        other => other.map(Attempt::Answered),
                    };
                    (tx, attempt)
                }
            };
            let gated = gate::claim(&self.pool, self.config.timeouts.store, claiming).await;
            let answered = match gated {
                Gated::Answered(Phased::Owned {
                    lease,
                    journal,
                    resumed,
                }) => return ClaimOutcome::Owned(lease, journal, resumed),
                Gated::Answered(Phased::Replay(record, now)) => {
                    self.answer_stored(keyed, record, (now, sent), replay)
                }
                Gated::Answered(Phased::Mismatch(record, now)) => {
                    self.answer_stored(keyed, record, (now, sent), mismatched)
                }
                Gated::Answered(Phased::Expired(record, now)) => {
                    self.answer_stored(keyed, record, (now, sent), |_, record| expired(record))
                }
                Gated::Answered(Phased::Busy { .. }) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        in_flight(&self.config)
                    } else {
                        tokio::time::sleep(BUSY_POLL.min(deadline - now)).await;
                        continue;
                    }
                }
                Gated::NotClaimed(Some(e)) if e.kind() == FailureKind::Fault => store_fault(&e),
                Gated::NotClaimed(Some(e)) => {
                    tracing::warn!(error = %e, "phased claim failed; nothing was claimed");
                    unavailable(&self.config)
                }
                Gated::NotClaimed(None) => {
                    tracing::warn!(
                        "the phased claim did not finish within the store timeout; rolled back"
                    );
                    unavailable(&self.config)
                }
                Gated::Refused(answer) => answer,
                // The claim may have committed: the answer must not say that nothing
                // ran, whatever the error (a late claim is undone in the background).
                Gated::Unknown(e) => {
                    if let Some(e) = &e {
                        tracing::warn!(error = %e, "the phased claim's commit failed");
                    }
                    self.commit_failed(None)
                }
            };
            return ClaimOutcome::Answer(answered);
        }
    }

    /// The answer `answer` makes from a finished record read from the store (its body
    /// opened), which is kept in memory for the retries to come. `clocks`: the store's
    /// time of the read, and the local time before it.
    fn answer_stored(
        &self,
        keyed: &Keyed,
        record: idem_core::Record,
        clocks: (chrono::DateTime<Utc>, chrono::DateTime<Utc>),
        answer: fn(&crate::config::Config, &idem_core::Record) -> Response<Body>,
    ) -> Response<Body> {
        let Some(record) = open_record(&self.config, keyed, record) else {
            return crate::replay::answer::corrupt();
        };
        let answered = answer(&self.config, &record);
        self.keep(keyed, &landed_record(record, clocks.0, clocks.1));
        answered
    }

    /// The request body as the claim keeps it: sealed when the layer seals bodies
    /// (`None` when it cannot be).
    fn kept_body(&self, keyed: &Keyed, body: Bytes) -> Option<Bytes> {
        let Some(sealing) = &self.config.protection.bodies else {
            return Some(body);
        };
        let sealed = sealing.seal_request(&keyed.tenant, &keyed.key, &body);
        if sealed.is_none() {
            tracing::error!("the request body could not be sealed; nothing was claimed");
        }
        sealed.map(Bytes::from)
    }

    /// Runs the handler with `phases` in its extensions, then settles its answer.
    async fn run_phases<S, B>(
        &self,
        keyed: &Keyed,
        lease: Lease,
        phases: Phases,
        mut inner: S,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        if let Some(context) = phases.trace().cloned() {
            req.extensions_mut().insert(context);
        }
        let journal = phases.clone();
        req.extensions_mut().insert(phases);
        req.extensions_mut().insert(keyed.key.clone());
        req.extensions_mut().insert(keyed.tenant.clone());
        let started = tokio::time::Instant::now();
        let result = AssertUnwindSafe(async move { inner.call(req).await })
            .catch_unwind()
            .await;
        self.observed.mark_handled(started.elapsed());
        let response = match result {
            Err(_panic) => {
                self.release(&lease).await;
                return Ok(problem_answer(Problem::HandlerPanicked));
            }
            Ok(Err(e)) => {
                self.release(&lease).await;
                return Err(e);
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let answer = response.extensions().get::<PhaseAnswer>().copied();
        let permanent = answer == Some(PhaseAnswer::PermanentFailure);
        if !(self.config.policy.final_statuses.is_final(status) || permanent) {
            self.release(&lease).await;
            let kind = match answer {
                Some(PhaseAnswer::LeaseLost) => Outcome::LeaseLost,
                _ => Outcome::Suspended,
            };
            return Ok(outcome(response.map(Body::new), kind));
        }
        Ok(self.finish(keyed, &lease, response, &journal).await)
    }

    /// Stores a final answer on the key, if this request still owns it (with the
    /// journal `phases` leaves sealed, when the layer seals bodies).
    async fn finish<B: ResponseBody>(
        &self,
        keyed: &Keyed,
        lease: &Lease,
        response: Response<B>,
        phases: &Phases,
    ) -> Response<Body> {
        let resumed = phases.resumed();
        let journal = self
            .config
            .protection
            .bodies
            .as_ref()
            .map(|sealing| sealed_journal(sealing, lease, &phases.journal()));
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let (stored, body) = match collect(&self.config, status, &parts, body).await {
            Ok(collected) => collected,
            Err(e) => {
                tracing::warn!(error = %e, "response body failed; the key stays in progress");
                self.release(lease).await;
                let answer = Problem::ResponseUnreadable.into_response();
                return outcome(answer, Outcome::Suspended);
            }
        };
        let stored_size = stored.as_ref().map(StoredResponse::size);
        let sent = Utc::now();
        let work = {
            let (pool, config, keyed) = (self.pool.clone(), self.config.clone(), keyed.clone());
            let (lease, stored) = (lease.clone(), stored.clone());
            async move {
                let stored = stored.and_then(|s| seal_for_store(&config, &keyed, s));
                let completion = completion(status, stored.as_ref());
                idem_sqlx::phased::finish(&pool, &lease, completion, journal).await
            }
        };
        match bounded(self.config.timeouts.store, work, |_| async {}).await {
            Some(Ok(expiry)) => {
                if let Some(size) = stored_size {
                    self.observed.record_stored(size);
                }
                // Kept in memory by the row's retention, set when the key was claimed.
                let record = finished_record(keyed, status, stored, expiry.expires_at);
                self.keep(keyed, &landed_record(record, expiry.store_now, sent));
                let kind = if resumed {
                    Outcome::Resumed
                } else {
                    Outcome::Executed
                };
                outcome(Response::from_parts(parts, body), kind)
            }
            Some(Err(StoreError::Fenced)) => lease_lost(),
            Some(Err(e)) => {
                self.release(lease).await;
                self.commit_failed(Some(&e))
            }
            None => self.commit_failed(None),
        }
    }

    /// Ends the lease early, so a retry resumes at once (best effort: a lease that is
    /// not released passes by itself).
    async fn release(&self, lease: &Lease) {
        let work = {
            let (pool, lease) = (self.pool.clone(), lease.clone());
            async move { idem_sqlx::phased::release_lease(&pool, &lease).await }
        };
        if let Some(Err(e)) = bounded(self.config.timeouts.store, work, |_| async {}).await {
            tracing::warn!(error = %e, "releasing the lease failed; it passes by itself");
        }
    }
}

/// A finished key's journal as the store keeps it when the layer seals bodies:
/// `{"sealed": "<hex>"}`, bound to its row (never in the clear; empty when it cannot be
/// sealed).
fn sealed_journal(
    sealing: &idem_core::seal::BodySealing,
    lease: &Lease,
    journal: &idem_core::phased::Journal,
) -> serde_json::Value {
    let sealed = serde_json::to_vec(journal)
        .ok()
        .and_then(|plain| sealing.seal_journal(&lease.tenant, &lease.key, &plain));
    match sealed {
        Some(sealed) => serde_json::json!({ "sealed": hex::encode(sealed) }),
        None => {
            tracing::error!("a finished key's journal could not be sealed; it is dropped");
            serde_json::json!({})
        }
    }
}

/// 202 Accepted: the request goes on; its status is at `{status_path}/{operation}`.
fn accepted(status_path: &str, operation: uuid::Uuid) -> Response<Body> {
    let mut response = super::status::in_progress(operation, None);
    let location = format!("{}/{operation}", status_path.trim_end_matches('/'));
    if let Ok(location) = http::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    outcome(response, Outcome::Accepted)
}

/// 409 `lease-lost`: another request owns the key now.
fn lease_lost() -> Response<Body> {
    let problem = Problem::LeaseLost {
        retry_after: std::time::Duration::from_secs(1),
    };
    problem_answer(problem)
}
