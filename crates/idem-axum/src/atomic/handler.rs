//! Running the handler with the request's transaction in its extensions, and taking the
//! transaction back when it is done.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, OnceLock, PoisonError};

use axum::body::Body;
use futures_util::FutureExt;
use http::{HeaderName, Request, Response};
use idem_core::{Outcome, TraceContext};

use crate::Problem;
use crate::atomic::store::{PgTx, bounded, discard};
use crate::atomic::tx::TxSlot;
use crate::bounds::{Inner, ResponseBody};
use crate::config::Config;
use crate::observe::Observed;
use crate::replay::answer::{outcome, problem_answer};
use crate::request::Keyed;

/// How the handler left the request.
pub(crate) enum Handled<B, E> {
    /// A final response, with the transaction still open: settle it. `true` when the
    /// handler enqueued outbox messages (wake the relays after the commit).
    Final(Response<B>, PgTx, bool),
    /// Answered, with the transaction rolled back: a non-final response passed on, or
    /// the layer's own answer (panic, `Tx` held past the handler).
    Answered(Response<Body>),
    /// The wrapped service failed; the transaction was rolled back.
    Failed(E),
}

/// Runs the handler with `tx` available as [`Tx`](crate::Tx) (and the key and tenant,
/// when keyed, and the request's trace context, as extensions). Rolls back everything
/// that is not final.
pub(crate) async fn run_handler<S, B>(
    config: &Config,
    observed: &Observed,
    tx: PgTx,
    keyed: Option<&Keyed>,
    mut inner: S,
    mut req: Request<Body>,
) -> Handled<B, S::Error>
where
    S: Inner<B>,
    B: ResponseBody,
{
    let slot = TxSlot::new(tx);
    req.extensions_mut().insert(slot.clone());
    if let Some(keyed) = keyed {
        req.extensions_mut().insert(keyed.key.clone());
        req.extensions_mut().insert(keyed.tenant.clone());
    }
    if let Some(context) = trace_context(&req, &config.observability.correlation_header) {
        req.extensions_mut().insert(context);
    }
    // `inner` is the service that was polled ready for this request.
    let started = tokio::time::Instant::now();
    let (result, enqueued) = idem_sqlx::outbox::track_enqueues(
        AssertUnwindSafe(async move { inner.call(req).await }).catch_unwind(),
    )
    .await;
    observed.mark_handled(started.elapsed());
    let untaken = keyed.is_some() && !slot.was_taken();
    let Some(tx) = slot.take() else {
        // A Tx outlived the handler; it rolls back when its holder drops it.
        tracing::error!("a Tx was still held when the handler returned; nothing committed");
        return Handled::Answered(problem_answer(Problem::TransactionHeld));
    };
    match result {
        Err(_panic) => {
            roll_back(config, tx).await;
            Handled::Answered(problem_answer(Problem::HandlerPanicked))
        }
        Ok(Err(e)) => {
            roll_back(config, tx).await;
            Handled::Failed(e)
        }
        Ok(Ok(response))
            if !config
                .policy
                .final_statuses
                .is_final(response.status().as_u16())
                || (untaken && routers_own_405(&response)) =>
        {
            roll_back(config, tx).await;
            Handled::Answered(outcome(response.map(Body::new), Outcome::RolledBack))
        }
        Ok(Ok(response)) => {
            if let (true, Some(keyed)) = (untaken, keyed) {
                warn_untaken(observed.route().map_or(&*keyed.path, |route| route));
            }
            Handled::Final(response, tx, enqueued)
        }
    }
}

/// Whether a response is taken for the router's own 405 (a method the route does not
/// serve, answered by axum's method router, which `Router::layer` wraps too; axum adds
/// its `Allow` header outside the layer): 405 from a request that never took its `Tx`.
/// Nothing of it is in the transaction; it is passed on, and the key stays unused.
fn routers_own_405<B>(response: &Response<B>) -> bool {
    response.status() == http::StatusCode::METHOD_NOT_ALLOWED
}

/// Warns, once per route and process, that a keyed handler never took its
/// [`Tx`](crate::Tx): whatever it wrote went around the transaction its answer commits in,
/// and a retry that runs it again (its answer not final, a crash) repeats those writes.
fn warn_untaken(route: &str) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut warned = WARNED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if warned.len() < MAX_WARNED_ROUTES && warned.insert(route.to_owned()) {
        tracing::warn!(
            route,
            "a keyed handler did not take its Tx: its writes are not part of the \
             idempotent transaction (take `idem_axum::Tx` and write on it)"
        );
    }
}

/// The most routes [`warn_untaken`] remembers (a route is its template, so this bounds
/// only routers without templates).
const MAX_WARNED_ROUTES: usize = 1024;

/// The request's `traceparent`, `tracestate` and correlation id, when it carried any
/// that are valid.
pub(crate) fn trace_context(req: &Request<Body>, correlation: &HeaderName) -> Option<TraceContext> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    TraceContext::from_headers(
        header("traceparent"),
        header("tracestate"),
        req.headers().get(correlation).and_then(|v| v.to_str().ok()),
    )
}

/// Rolls `tx` back, waiting at most `Timeouts::store` (the rollback goes on past it).
pub(crate) async fn roll_back(config: &Config, tx: PgTx) {
    bounded(config.timeouts.store, discard(tx), |()| async {}).await;
}
