//! Observe mode (passive key logging, the first step of a rollout): every request runs
//! as without the layer; a key is recorded with its fingerprint, and what the layer
//! would have done is counted and logged.

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use idem_core::policy::Would;
use idem_core::{Fingerprint, IdempotencyKey, TenantId};
use tracing::Instrument;

use crate::atomic::run::unkeyed;
use crate::atomic::store::bounded;
use crate::bounds::{Inner, ResponseBody};
use crate::future::{ResponseFuture, run_detached};
use crate::job::Job;
use crate::observe::{Observed, request_span};
use crate::replay::flight::Join;
use crate::request::fingerprint::fingerprint;
use crate::request::key::read_key;

/// A request on a route in observe mode. Without a usable key (none, an invalid one,
/// no tenant) it simply runs; with one, the sighting is recorded first.
pub(crate) fn run<S, B>(
    job: Job,
    inner: S,
    req: Request<Body>,
    observed: Arc<Observed>,
) -> ResponseFuture<S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    let config = job.config.clone();
    let key = read_key(&config, &req).ok().flatten();
    let (parts, body) = req.into_parts();
    let tenant = key.as_ref().and_then(|_| config.tenant.resolve(&parts));
    let (Some(key), Some(tenant)) = (key, tenant) else {
        return unkeyed(job, observed, inner, Request::from_parts(parts, body));
    };
    let key = config.stored_key(&tenant, key);
    let span = request_span!(
        "observed_request",
        &parts.method,
        parts.uri.path(),
        observed,
        idem.tenant = %tenant,
        idem.key_hash = %key.short_hash(),
        idem.would = tracing::field::Empty,
    );
    let fut = async move {
        let body = match job.read_request_body(body).await {
            Ok(body) => body,
            Err(rejected) => return Ok(rejected),
        };
        let print = fingerprint(&config, &parts, &body).await;
        // Another request of this process holding the key makes this one a
        // concurrent duplicate; nobody waits on anybody.
        let leader = match job.flights.join(&tenant, &key) {
            Join::Leader(leader) => Some(leader),
            Join::Follower(_) => None,
        };
        job.observe(&tenant, &key, print, leader.is_none()).await;
        let req = Request::from_parts(parts, Body::from(body));
        let answer = run_detached(observed, job.run_unkeyed(inner, req)).await;
        drop(leader);
        answer
    };
    ResponseFuture::new(fut.instrument(span))
}

impl Job {
    /// Records the sighting of a key and counts what the layer would have done with
    /// it. A store that fails is logged; the request runs regardless.
    async fn observe(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
        print: Fingerprint,
        concurrent: bool,
    ) {
        let work = {
            let (pool, tenant, key) = (self.pool.clone(), tenant.clone(), key.clone());
            let route = self.observed.route().cloned();
            let retention = self.config.policy.retention;
            async move {
                idem_sqlx::keys::observe(&pool, &tenant, &key, &print, route.as_deref(), retention)
                    .await
            }
        };
        match bounded(self.config.timeouts.store, work, |_| async {}).await {
            Some(Ok(previous)) => {
                let would = Would::from_observation(previous, concurrent);
                tracing::info!(would = would.as_str(), "idempotency key observed");
                self.observed.would(would);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "observing the key failed"),
            None => tracing::warn!("observing the key took longer than the store timeout"),
        }
    }
}
