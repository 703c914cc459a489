//! [`PhasedLayer`]: the layer of a phased route, made by
//! [`IdempotencyLayer::phased`](crate::IdempotencyLayer::phased).

use std::time::Duration;

use axum::routing::MethodRouter;
use tower::Layer;

use super::shared::Shared;
use crate::IdempotencyService;

/// The layer of a phased route: for handlers that call other services and need their
/// answers (see [`Phases`](crate::Phases)). A keyed request's row commits at once, in
/// progress, with a lease and a fencing token; the handler commits its work in named
/// phases (each phase renews the lease); a retry after the lease passed takes the key
/// over and resumes after the last phase that committed, and the earlier owner can no
/// longer commit. A retry while the lease is live waits (the in-flight wait of
/// [`Timeouts`](crate::Timeouts)), then replays or answers 409 `in-flight`. Choose the
/// lease longer than the slowest step between two phases (a call to another service).
///
/// A final answer is stored with the key when the handler returns it; anything else
/// (a 5xx, an interrupted phase) ends the lease early, keeps the committed phases, and
/// lets a retry resume. Handlers take [`Phases`](crate::Phases), not
/// [`Tx`](crate::Tx). Requests without a key (where it is optional) run as on an
/// atomic route.
///
/// ```no_run
/// use std::time::Duration;
///
/// use axum::Router;
/// use axum::routing::post;
/// use idem_axum::{IdempotencyLayer, PhaseError, Phases, TenantSource};
///
/// async fn export(phases: Phases) -> Result<&'static str, PhaseError> {
///     phases.atomic("exported", async |_tx| Ok(())).await?;
///     Ok("done")
/// }
///
/// # fn run(pool: sqlx::PgPool) {
/// let layer = IdempotencyLayer::new(pool)
///     .tenant(TenantSource::single())
///     .phased(Duration::from_secs(30))
///     .accept_after(Duration::from_secs(2), "/operations");
/// let app: Router = Router::new()
///     .route("/exports", post(export).route_layer(layer.clone()))
///     .route("/operations/{id}", layer.operations());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PhasedLayer {
    shared: Shared,
}

impl PhasedLayer {
    /// What the layer was configured with.
    #[cfg(feature = "openapi")]
    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.shared.config
    }

    pub(super) fn new(shared: Shared) -> Self {
        PhasedLayer { shared }
    }

    /// Answers a request that has not finished within `after` with **202 Accepted**,
    /// `Location: {status_path}/{operation id}` and `Retry-After`; its phases go on,
    /// and its final answer is stored as usual. Serve the status there with
    /// [`operations`](Self::operations): it answers from the key row, 202 with the
    /// recovery point while the work runs, the stored final answer once it finished. A
    /// retry of the request itself waits, then replays. Off by default.
    pub fn accept_after(self, after: Duration, status_path: impl Into<String>) -> Self {
        let accept = Some((after, status_path.into()));
        let shared = self.shared.with(|c| {
            if let Some(phased) = &mut c.phased {
                phased.accept = accept;
            }
        });
        PhasedLayer { shared }
    }

    /// The status endpoint of this layer's operations answered 202 (see
    /// [`accept_after`](Self::accept_after)), for `GET {status_path}/{id}`. It resolves
    /// the tenant as the layer does, and an operation of another tenant is unknown
    /// (404 `operation-unknown`).
    pub fn operations<S: Clone + Send + Sync + 'static>(&self) -> MethodRouter<S> {
        crate::phased::operations(self.shared.pool.clone(), self.shared.config.clone())
    }
}

impl<S> Layer<S> for PhasedLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.shared.service(inner)
    }
}
