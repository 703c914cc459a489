//! The service the layer wraps around a handler, and its response future.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{MatchedPath, OriginalUri};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use idem_core::policy::KeyMode;
use idem_core::seal::{Opened, is_sealed};
use idem_sqlx::ReplayTally;
use sqlx::PgPool;
use tower::Service;
use tracing::Instrument;

use crate::atomic::run::unkeyed;
use crate::bounds::{BoxError, Inner, ResponseBody};
use crate::config::Config;
use crate::future::{ResponseFuture, run_detached};
use crate::job::Job;
use crate::observe::{Observed, report, request_span};
use crate::phased::Resume;
use crate::replay::answer::problem_answer;
use crate::replay::cache::ReplayCache;
use crate::replay::flight::Flights;
use crate::request::Keyed;
use crate::request::body::read_body;
use crate::request::fingerprint::fingerprint;
use crate::request::key::read_key;
use crate::request::uri::request_uri;
use crate::{Problem, observe_mode};

/// The [`tower::Service`] made by [`IdempotencyLayer`](crate::IdempotencyLayer).
#[derive(Debug, Clone)]
pub struct IdempotencyService<S> {
    pub(crate) inner: S,
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<Config>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) cache: Arc<ReplayCache>,
    pub(crate) tally: ReplayTally,
}

impl<S> IdempotencyService<S> {
    /// What every step of a request needs.
    pub(crate) fn job(&self, observed: Arc<Observed>) -> Job {
        Job {
            config: self.config.clone(),
            pool: self.pool.clone(),
            flights: self.flights.clone(),
            cache: self.cache.clone(),
            tally: self.tally.clone(),
            observed,
        }
    }
}

impl<S, B> Service<Request<Body>> for IdempotencyService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone is not necessarily ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();

        if !config.protocol.methods.contains(req.method()) || unmatched(&req) {
            return passthrough(inner, req);
        }
        let observed = Observed::start(&config, &req);
        if config.phased.is_some()
            && let Some(resume) = req.extensions_mut().remove::<Resume>()
        {
            return run_resumed(self.job(observed.clone()), observed, resume, inner, req);
        }
        if config.policy.keys == KeyMode::Observe {
            return observe_mode::run(self.job(observed.clone()), inner, req, observed);
        }
        let key = match read_key(&config, &req) {
            Ok(key) => key,
            Err(reason) => return ready(&observed, Problem::KeyInvalid { reason }),
        };
        let job = self.job(observed.clone());
        let Some(key) = key else {
            if config.policy.keys == KeyMode::Required {
                let header = config.protocol.key_header.to_string();
                return ready(&observed, Problem::KeyMissing { header });
            }
            // No key on a route where it is optional: the handler still gets a `Tx`,
            // committed on a final response, but nothing is claimed or stored.
            return unkeyed(job, observed, inner, req);
        };
        let (parts, body) = req.into_parts();
        let Some(tenant) = config.tenant.resolve(&parts) else {
            return ready(&observed, Problem::TenantUnresolved);
        };
        let sent = config.protection.keys.is_some().then(|| key.clone());
        let key = config.stored_key(&tenant, key);
        let span = request_span!(
            "idempotent_request",
            &parts.method,
            request_uri(&parts).path(),
            observed,
            idem.tenant = %tenant,
            idem.key_hash = %key.short_hash(),
        );
        let fut = async move {
            let body = match job.read_request_body(body).await {
                Ok(body) => body,
                Err(rejected) => return Ok(rejected),
            };
            let keyed = Keyed {
                fingerprint: fingerprint(&config, &parts, &body).await,
                tenant,
                key,
                sent,
                method: parts.method.as_str().to_owned(),
                path: request_uri(&parts).path().to_owned(),
                route: observed.route().cloned(),
                client: config.limits.client(&parts),
            };
            if config.phased.is_some() {
                let req = Request::from_parts(parts, Body::from(body.clone()));
                return run_detached(observed, job.run_phased(keyed, body, inner, req)).await;
            }
            let req = Request::from_parts(parts, Body::from(body));
            run_detached(observed, job.run_keyed(keyed, inner, req)).await
        }
        .instrument(span);
        ResponseFuture::new(fut)
    }
}

/// A phased key's kept request, run again by the completer: the key, tenant and
/// fingerprint are the claim's, from the [`Resume`] extension.
fn run_resumed<S, B>(
    job: Job,
    observed: Arc<Observed>,
    resume: Resume,
    inner: S,
    req: Request<Body>,
) -> ResponseFuture<S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    let (parts, body) = req.into_parts();
    let span = request_span!(
        "resumed_request",
        &parts.method,
        request_uri(&parts).path(),
        observed,
        idem.tenant = %resume.tenant,
        idem.key_hash = %resume.key.short_hash(),
    );
    let fut = async move {
        // The kept body was within the request body limit when its request arrived; sealed,
        // it is longer by the sealing's overhead. The limit is the client's, not the
        // completer's: it is read whole, and opened.
        let body = match read_body(body, usize::MAX).await {
            Ok(body) => body,
            Err(problem) => {
                let answer = problem_answer(problem);
                return Ok(report(&observed, answer));
            }
        };
        let Some(body) = opened_request(&job.config, &resume, body) else {
            let answer = problem_answer(Problem::RecordCorrupt);
            return Ok(report(&observed, answer));
        };
        let keyed = Keyed {
            fingerprint: resume.fingerprint,
            tenant: resume.tenant,
            key: resume.key,
            sent: None,
            method: parts.method.as_str().to_owned(),
            path: request_uri(&parts).path().to_owned(),
            route: observed.route().cloned(),
            client: None,
        };
        let req = Request::from_parts(parts, Body::from(body.clone()));
        run_detached(observed, job.run_phased(keyed, body, inner, req)).await
    };
    ResponseFuture::new(fut.instrument(span))
}

/// A kept request body as the handler gets it: opened when it was sealed (`None` when
/// no key of this layer opens it).
fn opened_request(config: &Config, resume: &Resume, body: Bytes) -> Option<Bytes> {
    let opened = match &config.protection.bodies {
        Some(sealing) => sealing.open_request(&resume.tenant, &resume.binding, &body),
        None if is_sealed(&body) => Opened::Unreadable,
        None => Opened::Plain,
    };
    match opened {
        Opened::Plain => Some(body),
        Opened::Sealed(plain) => Some(Bytes::from(plain)),
        Opened::Unreadable => {
            tracing::error!("a kept request body is sealed under a key this layer does not have");
            None
        }
    }
}

fn passthrough<S, B>(mut inner: S, req: Request<Body>) -> ResponseFuture<S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    let fut = inner.call(req);
    ResponseFuture::new(async move { fut.await.map(|r| r.map(Body::new)) })
}

/// The layer's own answer, made before anything ran: counted as `rejected`.
fn ready<E: Send + 'static>(observed: &Observed, problem: Problem) -> ResponseFuture<E> {
    let response = report(observed, problem_answer(problem));
    ResponseFuture::new(async move { Ok(response) })
}

/// Whether an axum router passed the request on without matching a route (its
/// fallback: a 404): such a request is the router's to answer, and spends no key.
/// A request that reached the layer outside any router carries no [`OriginalUri`] and
/// takes part as usual.
fn unmatched(req: &Request<Body>) -> bool {
    let extensions = req.extensions();
    extensions.get::<OriginalUri>().is_some() && extensions.get::<MatchedPath>().is_none()
}
