//! The completer: finishes phased keys whose lease passed with nobody coming back for
//! them, by running their kept request again through the route, as a retry would.

use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::{Request, Response, header};
use idem_core::{Fingerprint, IdempotencyKey, TenantId};
use idem_sqlx::StoreError;
use idem_sqlx::phased::Abandoned;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

/// Put in a request's extensions by the completer: the layer takes the key, tenant and
/// fingerprint from it instead of from the request (which carries neither a key header
/// nor what the application's authentication adds). Requests from clients cannot carry
/// it.
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    pub(crate) tenant: TenantId,
    pub(crate) key: IdempotencyKey,
    /// What the kept body is sealed for (see [`idem_sqlx::phased::Lease::binding`]).
    pub(crate) binding: IdempotencyKey,
    pub(crate) fingerprint: Fingerprint,
}

/// Finishes phased keys whose owner's lease passed without a retry (the client gave
/// up, or the process that ran them died): every `interval` it finds them and runs
/// their request again (method, path, query, body and `Content-Type`, as the claim kept
/// them) through `routes`, which resumes each after its last committed phase and
/// stores its final answer, compensating where the handler does.
///
/// `routes` is the router with the phased routes and their layers, without the
/// application's outer middleware: the completer's requests carry the tenant and key
/// in a way only the layer reads, and nothing else the application's authentication
/// would add. Handlers of phased routes should need no more than the tenant and the
/// request. The kept path is the one the client sent: give it the router that serves
/// that path (with any `Router::nest` prefix), not a nested router alone. A kept
/// request the routes answer 404 or 405 is logged as a warning.
///
/// ```no_run
/// use std::time::Duration;
///
/// use axum::{Router, routing::post};
/// use idem_axum::{Completer, IdempotencyLayer, PhaseError, Phases, TenantSource};
/// use tokio_util::sync::CancellationToken;
///
/// async fn charge(phases: Phases) -> Result<&'static str, PhaseError> {
///     phases.atomic("done", async |_tx| Ok(())).await?;
///     Ok("charged")
/// }
///
/// # async fn run(pool: sqlx::PgPool) {
/// let layer = IdempotencyLayer::new(pool.clone())
///     .tenant(TenantSource::single())
///     .phased(Duration::from_secs(30));
/// let routes: Router = Router::new().route("/charges", post(charge).route_layer(layer));
/// let shutdown = CancellationToken::new();
/// tokio::spawn(Completer::new(pool, routes.clone()).run(shutdown.clone()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Completer<S> {
    pool: sqlx::PgPool,
    routes: S,
    interval: Duration,
    after: Duration,
    batch_size: i64,
    concurrency: usize,
    max_owners: i64,
}

impl<S> Completer<S> {
    /// A completer over `pool` and `routes`: a round every 5 s, keys whose lease passed
    /// at least 1 s ago (a retry that follows the lease gets the first chance), 100
    /// keys a round, 8 at once, keys that had fewer than 20 owners.
    pub fn new(pool: sqlx::PgPool, routes: S) -> Self {
        Completer {
            pool,
            routes,
            interval: Duration::from_secs(5),
            after: Duration::from_secs(1),
            batch_size: 100,
            concurrency: 8,
            max_owners: 20,
        }
    }

    /// Leaves alone a key that had `owners` owners already (`idem.keys.owners` counts
    /// them): one whose every run ends unfinished (a handler that keeps answering 5xx)
    /// is then left in progress for an operator (`idem keys show` prints its journal),
    /// rather than run again every round.
    pub fn max_owners(mut self, owners: u32) -> Self {
        self.max_owners = i64::from(owners.max(1));
        self
    }

    /// How often it looks for abandoned keys.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long after a lease passed a key counts as abandoned.
    pub fn after(mut self, after: Duration) -> Self {
        self.after = after;
        self
    }

    /// How many keys one round takes up at most.
    pub fn batch_size(mut self, batch_size: i64) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How many keys it runs at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
}

impl<S, B> Completer<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
{
    /// Runs rounds until `shutdown` is cancelled (a round in progress is not cut off).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.complete_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(keys = n, "the completer resumed abandoned keys"),
                Err(e) => tracing::warn!(error = %e, "finding abandoned keys failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One round: resumes the abandoned keys found now; how many it ran.
    pub async fn complete_once(&self) -> Result<usize, StoreError> {
        let found =
            idem_sqlx::phased::abandoned(&self.pool, self.batch_size, self.after, self.max_owners)
                .await?;
        let n = found.len();
        futures_util::stream::iter(found)
            .for_each_concurrent(self.concurrency, |key| self.resume(key))
            .await;
        Ok(n)
    }

    async fn resume(&self, key: Abandoned) {
        let Some(req) = request(&key) else {
            tracing::error!(path = %key.path, "a kept request cannot be rebuilt");
            return;
        };
        match self.routes.clone().oneshot(req).await {
            Ok(response) if matches!(response.status().as_u16(), 404 | 405) => tracing::warn!(
                key_hash = %key.key.short_hash(),
                path = %key.path,
                status = response.status().as_u16(),
                "the completer's routes do not serve a kept request (give it the router \
                 that serves the path the client sent)"
            ),
            Ok(response) => tracing::info!(
                key_hash = %key.key.short_hash(),
                status = response.status().as_u16(),
                "the completer ran an abandoned key"
            ),
            Err(e) => tracing::warn!(error = %e, "the completer's request failed"),
        }
    }
}

/// The kept request, with the [`Resume`] extension.
fn request(key: &Abandoned) -> Option<Request<Body>> {
    let uri = match &key.query {
        Some(query) => format!("{}?{query}", key.path),
        None => key.path.clone(),
    };
    let mut builder = Request::builder()
        .method(key.method.as_str())
        .uri(uri)
        .extension(Resume {
            tenant: key.tenant.clone(),
            key: key.key.clone(),
            binding: key.binding.clone(),
            fingerprint: key.fingerprint,
        });
    if let Some(content_type) = &key.content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(Body::from(key.body.clone())).ok()
}
