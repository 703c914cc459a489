//! [`IdempotencyLayer`] and its builder: where the tenant comes from, the route's
//! [`Policy`], and one grouped value per concern.

use std::sync::Arc;
use std::time::Duration;

use idem_core::policy::Policy;
use sqlx::PgPool;
use tower::Layer;

use super::phased::PhasedLayer;
use super::shared::Shared;
use crate::config::{Limits, Observability, PhasedMode, Protection, Protocol, Storage, Timeouts};
use crate::replay::cache::ReplayCache;
use crate::{IdempotencyService, TenantSource};

/// A [`tower::Layer`] that makes requests carrying an `Idempotency-Key` exactly-once.
///
/// For each request whose method takes part (POST and PATCH by default) the layer
/// validates the key, resolves the tenant, buffers and fingerprints the body, then in
/// one Postgres transaction claims (tenant, key), runs the handler with the transaction
/// available as [`Tx`](crate::Tx), stores the final response and commits. A retry with
/// the same key and request replays the stored response byte for byte with
/// `Idempotent-Replayed: true`. Everything the layer answers itself is
/// `application/problem+json` (see [`Problem`](crate::Problem)).
///
/// Each setting has one place: [`tenant`](Self::tenant), the route's
/// [`policy`](Self::policy), and one grouped value per concern ([`Protocol`],
/// [`Timeouts`], [`Limits`], [`Protection`], [`Observability`], [`Storage`]), each
/// with its defaults; the guide's configuration page (`docs/configuration.md` in the
/// repository) has them all in one table. A route whose handler calls other services
/// is made [`phased`](Self::phased) last.
///
/// Add it to each route's method router with
/// [`MethodRouter::route_layer`](axum::routing::MethodRouter::route_layer), so unknown
/// routes and methods a route does not serve answer 404 and 405 untouched
/// ([`Router::route_layer`](axum::Router::route_layer) still wraps each route's 405).
///
/// ```no_run
/// use std::time::Duration;
///
/// use axum::{Router, routing::post, http::StatusCode};
/// use idem_axum::{IdempotencyLayer, Policy, RiskClass, TenantSource, Timeouts, Tx};
///
/// async fn pay(mut tx: Tx) -> StatusCode {
///     match sqlx::query("INSERT INTO payments DEFAULT VALUES").execute(&mut *tx).await {
///         Ok(_) => StatusCode::CREATED,
///         Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
///     }
/// }
///
/// # async fn run(pool: sqlx::PgPool) {
/// let idempotency = IdempotencyLayer::new(pool)
///     .tenant(TenantSource::single())
///     .policy(Policy::for_risk(RiskClass::Critical).canonical_json())
///     .timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(2)));
/// let app: Router = Router::new().route("/payments", post(pay).route_layer(idempotency));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    shared: Shared,
}

impl IdempotencyLayer {
    /// A layer over this pool, with every default. Size the pool for the concurrency
    /// of distinct keys in flight: each holds one connection from the claim to the
    /// commit. Duplicates of a request running in this process wait in memory on it
    /// (single flight) and hold no connection; every service made from this layer (and
    /// its clones) shares them.
    pub fn new(pool: PgPool) -> Self {
        IdempotencyLayer {
            shared: Shared::new(pool),
        }
    }

    /// What the layer was configured with.
    #[cfg(feature = "openapi")]
    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.shared.config
    }

    fn with(self, change: impl FnOnce(&mut crate::config::Config)) -> Self {
        IdempotencyLayer {
            shared: self.shared.with(change),
        }
    }

    /// Where the tenant comes from: a [`TenantId`](crate::TenantId) extension the
    /// authentication middleware inserted (the default), one tenant for every request
    /// ([`TenantSource::single`]), or a function over the request's parts.
    pub fn tenant(self, source: TenantSource) -> Self {
        self.with(|c| c.tenant = source)
    }

    /// The route's [`Policy`]: whether a key is required, what a key reused with a
    /// different request gets, what the fingerprint covers, which statuses are final
    /// and which headers are replayed, what happens when the store is away, and how
    /// long keys count. [`Policy::default`] ([`RiskClass::High`](crate::RiskClass)'s)
    /// by default. Declare it where the route is declared, so the route's idempotency
    /// policy reads in one place:
    ///
    /// ```no_run
    /// use idem_axum::{IdempotencyLayer, Policy, RiskClass};
    ///
    /// # fn run(pool: sqlx::PgPool) {
    /// let payments = IdempotencyLayer::new(pool).policy(
    ///     Policy::for_risk(RiskClass::Critical)
    ///         .fingerprint_fields(["/amount", "/currency"])
    ///         .replay_header("x-request-id"),
    /// );
    /// # }
    /// ```
    pub fn policy(self, mut policy: Policy) -> Self {
        // Header names are case-insensitive; the fingerprint hashes them lower-case,
        // however the policy's field was written.
        for name in &mut policy.fingerprint_headers {
            name.make_ascii_lowercase();
        }
        self.with(|c| c.policy = policy)
    }

    /// The HTTP shape of the layer: the key's header, the methods that take part, the
    /// mismatch status and the Retry-After.
    pub fn protocol(self, protocol: Protocol) -> Self {
        self.with(|c| c.protocol = protocol)
    }

    /// How long a request waits for another one with its key, for the store, and for
    /// its handler's response body.
    pub fn timeouts(self, timeouts: Timeouts) -> Self {
        self.with(|c| c.timeouts = timeouts)
    }

    /// The bodies the layer buffers and stores, the rate of new keys and the quota of
    /// live keys per tenant.
    pub fn limits(self, limits: Limits) -> Self {
        self.with(|c| c.limits = limits)
    }

    /// What is protected at rest: the keys (an HMAC), the response bodies (sealed),
    /// and a redaction of each response before it is stored.
    pub fn protection(self, protection: Protection) -> Self {
        self.with(|c| c.protection = protection)
    }

    /// The correlation header and the client versions the metrics are labelled by.
    pub fn observability(self, observability: Observability) -> Self {
        self.with(|c| c.observability = observability)
    }

    /// How the layer uses the store: the transaction's isolation, a lookup before the
    /// claim, the replay cache, the outbox waker. Every service made from this layer
    /// (and its clones) shares one replay cache; a [`Storage::replay_cache`] of another
    /// size starts a new, empty one (the same size keeps the one the layer has).
    pub fn storage(mut self, storage: Storage) -> Self {
        if storage.replay_cache != self.shared.config.storage.replay_cache {
            self.shared.cache = Arc::new(ReplayCache::new(storage.replay_cache));
        }
        self.with(|c| c.storage = storage)
    }

    /// Makes the route phased, for handlers that call other services and need their
    /// answers: a [`PhasedLayer`] with the settings of this one and an owner's lease of
    /// `lease`. Its handlers take [`Phases`](crate::Phases), not [`Tx`](crate::Tx).
    /// Call it last: configure the layer first, so one base layer serves atomic and
    /// phased routes alike.
    pub fn phased(self, lease: Duration) -> PhasedLayer {
        let phased = Some(PhasedMode {
            lease,
            accept: None,
        });
        PhasedLayer::new(self.shared.with(|c| c.phased = phased))
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.shared.service(inner)
    }
}
