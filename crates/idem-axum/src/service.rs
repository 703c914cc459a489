//! The service the layer wraps around a handler, and its response future.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body::Body as HttpBody;
use idem_core::{Fingerprint, IdempotencyKey, KeyError, StoredResponse};
use idem_sqlx::{Completion, StoreError};
use sqlx::PgPool;
use tower::Service;
use tracing::Instrument;

use crate::Problem;
use crate::answer::outcome;
use crate::body::{Buffered, buffer, read_body};
use crate::layer::{Config, FailureMode};
use crate::store::{Keyed, Opened, PgTx, bounded, open, rollback};
use crate::tx::TxSlot;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the layer needs of the service it wraps (axum's routers meet it).
trait Inner<B>:
    Service<Request<Body>, Response = Response<B>, Future: Send + 'static, Error: Send + 'static>
    + Send
    + 'static
{
}

impl<S, B> Inner<B> for S
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

/// What the layer needs of the wrapped service's response bodies.
trait ResponseBody: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// The [`tower::Service`] made by [`IdempotencyLayer`](crate::IdempotencyLayer).
#[derive(Debug, Clone)]
pub struct IdempotencyService<S> {
    pub(crate) inner: S,
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<Config>,
}

/// The response future of [`IdempotencyService`].
pub struct ResponseFuture<E> {
    inner: BoxFuture<'static, Result<Response<Body>, E>>,
}

impl<E> std::fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone is not necessarily ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let pool = self.pool.clone();

        if !config.methods.contains(req.method()) {
            return passthrough(inner, req);
        }
        let key = match read_key(&config, &req) {
            Ok(key) => key,
            Err(reason) => return ready(Problem::KeyInvalid { reason }),
        };
        let Some(key) = key else {
            if config.key_required {
                return ready(Problem::KeyMissing {
                    header: config.header.to_string(),
                });
            }
            // No key on a route where it is optional: the handler still gets a `Tx`,
            // committed on a final response, but nothing is claimed or stored.
            let span = tracing::info_span!(
                "unkeyed_request",
                method = %req.method(),
                path = %req.uri().path(),
                outcome = tracing::field::Empty,
            );
            let job = Job {
                config,
                pool,
                keyed: None,
            };
            return spawn_job(job, inner, req, span);
        };
        let (parts, body) = req.into_parts();
        let Some(tenant) = config.tenant.resolve(&parts) else {
            return ready(Problem::TenantUnresolved);
        };

        let span = tracing::info_span!(
            "idempotent_request",
            tenant = %tenant,
            key_hash = %key.short_hash(),
            method = %parts.method,
            path = %parts.uri.path(),
            outcome = tracing::field::Empty,
        );
        let fut = async move {
            let body = match read_body(body, config.max_request_body).await {
                Ok(body) => body,
                Err(problem) => return Ok(outcome(problem.into_response(), "rejected")),
            };
            let fingerprint = fingerprint(&config, &parts, &body);
            let job = Job {
                config,
                pool,
                keyed: Some(Keyed {
                    tenant,
                    key,
                    fingerprint,
                }),
            };
            run_spawned(job, inner, Request::from_parts(parts, Body::from(body))).await
        }
        .instrument(span);
        ResponseFuture {
            inner: Box::pin(fut),
        }
    }
}

/// Runs a job in its own task, so a client that disconnects (dropping the response
/// future) cannot cut the claim -> handler -> commit section in half.
async fn run_spawned<S, B>(
    job: Job,
    inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    match tokio::spawn(job.run(inner, req).in_current_span()).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "idempotent request task failed");
            Ok(outcome(
                Problem::HandlerPanicked.into_response(),
                "panicked",
            ))
        }
    }
}

fn spawn_job<S, B>(
    job: Job,
    inner: S,
    req: Request<Body>,
    span: tracing::Span,
) -> ResponseFuture<S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    ResponseFuture {
        inner: Box::pin(run_spawned(job, inner, req).instrument(span)),
    }
}

fn passthrough<S, B>(mut inner: S, req: Request<Body>) -> ResponseFuture<S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    let fut = inner.call(req);
    ResponseFuture {
        inner: Box::pin(async move { fut.await.map(|r| r.map(Body::new)) }),
    }
}

fn ready<E: Send + 'static>(problem: Problem) -> ResponseFuture<E> {
    let response = problem.into_response();
    ResponseFuture {
        inner: Box::pin(async move { Ok(response) }),
    }
}

fn read_key(config: &Config, req: &Request<Body>) -> Result<Option<IdempotencyKey>, String> {
    let mut values = req.headers().get_all(&config.header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!(
            "the `{}` header was sent more than once",
            config.header
        ));
    }
    IdempotencyKey::from_bytes(value.as_bytes())
        .map(Some)
        .map_err(|e: KeyError| e.to_string())
}

fn fingerprint(config: &Config, parts: &Parts, body: &[u8]) -> Fingerprint {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let mut builder = Fingerprint::builder(parts.method.as_str(), path);
    for name in &config.fingerprint_headers {
        builder = builder.header(
            name.as_str(),
            parts.headers.get(name).map(HeaderValue::as_bytes),
        );
    }
    builder.body(body, config.body_mode).finish()
}

/// One request in a transaction, from the claim (when keyed) to the commit.
struct Job {
    config: Arc<Config>,
    pool: PgPool,
    keyed: Option<Keyed>,
}

impl Job {
    async fn run<S, B>(self, inner: S, mut req: Request<Body>) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        let config = self.config.clone();
        let opening = open(
            self.pool.clone(),
            config.clone(),
            self.keyed.clone(),
            req.method().as_str().to_owned(),
            req.uri().path().to_owned(),
        );
        // The claim may wait for a running duplicate first; the store's own bound
        // comes on top of that wait.
        let limit = config.store_timeout.saturating_add(config.in_flight_wait);
        let opened = bounded(limit, opening, |opened| async move {
            if let Opened::Tx(tx) = opened {
                rollback(tx).await;
            }
        })
        .await;
        let tx = match opened {
            Some(Opened::Tx(tx)) => tx,
            Some(Opened::Answer(answer)) => return Ok(answer),
            Some(Opened::Unavailable) => return self.unavailable(inner, req).await,
            None => {
                tracing::warn!("idempotency store did not answer within store_timeout");
                return self.unavailable(inner, req).await;
            }
        };

        let slot = TxSlot::new(tx);
        req.extensions_mut().insert(slot.clone());
        if let Some(keyed) = &self.keyed {
            req.extensions_mut().insert(keyed.key.clone());
            req.extensions_mut().insert(keyed.tenant.clone());
        }
        let result = AssertUnwindSafe(call(inner, req)).catch_unwind().await;
        let Some(tx) = slot.take() else {
            // A Tx outlived the handler; it rolls back when its holder drops it.
            tracing::error!("a Tx was still held when the handler returned; nothing committed");
            return Ok(outcome(
                Problem::TransactionHeld.into_response(),
                "transaction_held",
            ));
        };
        let response = match result {
            Err(_panic) => {
                self.roll_back(tx).await;
                return Ok(outcome(
                    Problem::HandlerPanicked.into_response(),
                    "panicked",
                ));
            }
            Ok(Err(e)) => {
                self.roll_back(tx).await;
                tracing::Span::current().record("outcome", "handler_error");
                return Err(e);
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !config.final_statuses.is_final(status.as_u16()) {
            self.roll_back(tx).await;
            return Ok(outcome(response.map(Body::new), "rolled_back"));
        }

        let Some(keyed) = self.keyed.clone() else {
            let committed =
                self.bounded_commit(async move { tx.commit().await.map_err(StoreError::from) });
            return Ok(match committed.await {
                Ok(()) => outcome(response.map(Body::new), "committed"),
                Err(problem) => outcome(problem.into_response(), "commit_failed"),
            });
        };
        let (parts, body) = response.into_parts();
        let buffered = match buffer(Body::new(body), config.max_response_body).await {
            Ok(buffered) => buffered,
            Err(e) => {
                tracing::warn!(error = %e, "response body failed; rolling back");
                self.roll_back(tx).await;
                return Ok(outcome(
                    Problem::ResponseUnreadable.into_response(),
                    "rolled_back",
                ));
            }
        };
        let (stored, body) = match buffered {
            Buffered::Complete(bytes) => {
                let stored = StoredResponse {
                    status: status.as_u16(),
                    headers: parts
                        .headers
                        .iter()
                        .filter(|(name, _)| config.replay_headers.allows(name.as_str()))
                        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                        .collect(),
                    body: bytes.to_vec(),
                };
                (Some(stored), Body::from(bytes))
            }
            Buffered::TooLarge(body) => (None, body),
        };
        let committed = self.bounded_commit(async move {
            let completion = match &stored {
                Some(stored) => Completion::Response(stored),
                None => Completion::StatusOnly(status.as_u16()),
            };
            let mut tx = tx;
            let done = idem_sqlx::complete(&mut tx, &keyed.tenant, &keyed.key, completion).await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "storing the response failed; rolling back");
                rollback(tx).await;
                return Err(e);
            }
            tx.commit().await.map_err(StoreError::from)
        });
        if let Err(problem) = committed.await {
            return Ok(outcome(problem.into_response(), "commit_failed"));
        }
        Ok(outcome(Response::from_parts(parts, body), "executed"))
    }

    /// Stores and commits, bounded by `store_timeout`. Past the bound the commit goes on
    /// in a task of its own, and the answer is 503: a retry replays the request if
    /// it committed and runs it if it did not.
    async fn bounded_commit(
        &self,
        commit: impl Future<Output = Result<(), StoreError>> + Send + 'static,
    ) -> Result<(), Problem> {
        let retry_after = self.config.retry_after;
        match bounded(self.config.store_timeout, commit, |_| async {}).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "commit failed");
                Err(Problem::CommitFailed { retry_after })
            }
            None => {
                tracing::warn!("commit not confirmed within store_timeout");
                Err(Problem::CommitFailed { retry_after })
            }
        }
    }

    /// Rolls `tx` back, waiting at most `store_timeout` (the rollback goes on past it).
    async fn roll_back(&self, tx: PgTx) {
        bounded(self.config.store_timeout, rollback(tx), |()| async {}).await;
    }

    /// The store could not be reached: fail closed (503), or run the handler without
    /// idempotency when the route fails open.
    async fn unavailable<S, B>(
        self,
        inner: S,
        req: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Inner<B>,
        B: ResponseBody,
    {
        match self.config.failure_mode {
            FailureMode::Closed => {
                let problem = Problem::StoreUnavailable {
                    retry_after: self.config.retry_after,
                };
                Ok(outcome(problem.into_response(), "store_unavailable"))
            }
            FailureMode::Open => {
                tracing::Span::current().record("outcome", "failed_open");
                call(inner, req).await.map(|r| r.map(Body::new))
            }
        }
    }
}

async fn call<S, B>(mut inner: S, req: Request<Body>) -> Result<Response<B>, S::Error>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    inner.call(req).await
}
