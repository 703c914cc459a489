//! The response future of [`IdempotencyService`](crate::IdempotencyService), and the
//! task a request's work runs in, apart from the client's connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::Response;
use tracing::Instrument;

use crate::Problem;
use crate::observe::{Observed, report_result};
use crate::replay::answer::problem_answer;

/// The response future of [`IdempotencyService`](crate::IdempotencyService).
pub struct ResponseFuture<E> {
    inner: BoxFuture<'static, Result<Response<Body>, E>>,
}

impl<E> std::fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> ResponseFuture<E> {
    pub(crate) fn new(
        inner: impl Future<Output = Result<Response<Body>, E>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            inner: Box::pin(inner),
        }
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// Runs a job in its own task, so a client that disconnects (dropping the response
/// future) cannot cut the claim -> handler -> commit section in half. The request is
/// reported in that task too: a request whose client left is still counted.
pub(crate) async fn run_detached<E: Send + 'static>(
    observed: Arc<Observed>,
    job: impl Future<Output = Result<Response<Body>, E>> + Send + 'static,
) -> Result<Response<Body>, E> {
    let reporting = observed.clone();
    let task = async move { report_result(&reporting, job.await) };
    match tokio::spawn(task.in_current_span()).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "idempotent request task failed");
            let answer = problem_answer(Problem::HandlerPanicked);
            report_result(&observed, Ok(answer))
        }
    }
}
