//! The layer and its configuration builder.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};
use idem_core::policy::{FailureMode, HashPolicy, KeyMode, Policy};
use idem_core::protect::KeyProtection;
use idem_core::{BodyMode, ClientVersions, FinalStatuses, StoredResponse, TenantId};
use idem_sqlx::{Isolation, OutboxWaker, ReplayTally};
use sqlx::PgPool;
use tower::Layer;

use crate::cache::ReplayCache;
use crate::config::{ClientIdentity, Config, PhasedMode};
use crate::flight::Flights;
use crate::limits::{KeyQuota, NewKeyLimiter};
use crate::seal::Redactor;
use crate::{IdempotencyService, TenantSource};
use idem_core::seal::BodySealing;

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
/// Each builder method says its default; the guide's configuration page
/// (`docs/configuration.md` in the repository) has them all in one table, with the
/// per-route [`Policy`] and the risk classes.
///
/// Add it to each route's method router with
/// [`MethodRouter::route_layer`](axum::routing::MethodRouter::route_layer), so unknown
/// routes and methods a route does not serve answer 404 and 405 untouched
/// ([`Router::route_layer`](axum::Router::route_layer) still wraps each route's 405).
///
/// ```no_run
/// use axum::{Router, routing::post, http::StatusCode};
/// use idem_axum::{IdempotencyLayer, Tx};
///
/// async fn pay(mut tx: Tx) -> StatusCode {
///     match sqlx::query("INSERT INTO payments DEFAULT VALUES").execute(&mut *tx).await {
///         Ok(_) => StatusCode::CREATED,
///         Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
///     }
/// }
///
/// # async fn run(pool: sqlx::PgPool) {
/// let idempotency = IdempotencyLayer::new(pool).single_tenant().canonical_json();
/// let app: Router = Router::new().route("/payments", post(pay).route_layer(idempotency));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<Config>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) cache: Arc<ReplayCache>,
    pub(crate) tally: ReplayTally,
}

/// The lease of a phased route configured with `accept_after` before `phased`.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How many bytes of finished records a layer keeps in memory by default.
pub const DEFAULT_REPLAY_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl IdempotencyLayer {
    /// A layer over this pool, with the defaults in the table above. Size the pool for
    /// the concurrency of distinct keys in flight: each holds one connection from the
    /// claim to the commit. Duplicates of a request running in this process wait in
    /// memory on it (single flight) and hold no connection; every service made from
    /// this layer (and its clones) shares them.
    pub fn new(pool: PgPool) -> Self {
        IdempotencyLayer {
            config: Arc::new(Config::default()),
            flights: Arc::new(Flights::default()),
            cache: Arc::new(ReplayCache::new(DEFAULT_REPLAY_CACHE_BYTES)),
            tally: ReplayTally::new(pool.clone()),
            pool,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The header that carries the key.
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// The methods that take part; requests with other methods pass through untouched.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.with(|c| c.methods = methods.into_iter().collect())
    }

    /// Whether a request without a key is refused (400 `key-missing`, the default) or
    /// runs without idempotency: its handler still gets a `Tx`, committed on a final
    /// response, but no key is claimed and no response is stored.
    pub fn require_key(self, required: bool) -> Self {
        self.key_mode(if required {
            KeyMode::Required
        } else {
            KeyMode::Optional
        })
    }

    /// Whether a key is required, optional, or only observed ([`KeyMode::Observe`]:
    /// every request runs as without the layer, and what the layer would have done is
    /// counted in `idem_observed_total`; the first step of a rollout).
    pub fn key_mode(self, mode: KeyMode) -> Self {
        self.with(|c| c.key_mode = mode)
    }

    /// Where the tenant comes from.
    pub fn tenant(self, source: TenantSource) -> Self {
        self.with(|c| c.tenant = source)
    }

    /// Every request belongs to one tenant ([`TenantId::single`]).
    pub fn single_tenant(self) -> Self {
        self.tenant(TenantSource::Fixed(TenantId::single()))
    }

    /// Fingerprints the body as canonical JSON, so key order and whitespace do not make
    /// two requests differ. Bodies that are not JSON are fingerprinted raw.
    pub fn canonical_json(self) -> Self {
        self.with(|c| c.body_mode = BodyMode::CanonicalJson)
    }

    /// Adds a request header to the fingerprint (for example a content-negotiation or
    /// account header that changes what the request means).
    pub fn fingerprint_header(self, name: HeaderName) -> Self {
        self.with(|c| c.fingerprint_headers.push(name))
    }

    /// Fingerprints only these fields of a JSON body, each a JSON pointer (RFC 6901:
    /// `/amount`, `/payee/iban`), as canonical JSON: for clients that put volatile
    /// fields (a timestamp, a trace id) in the bodies of their retries. A listed field
    /// that is absent counts as absent; a body that is not JSON is fingerprinted raw.
    pub fn fingerprint_fields<I, S>(self, pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let pointers = pointers.into_iter().map(Into::into).collect();
        self.with(|c| c.fingerprint_fields = Some(pointers))
    }

    /// The largest request body the layer buffers; larger ones get 413.
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_request_body = bytes)
    }

    /// The largest response body that is stored. A larger final response still
    /// commits (with its status only) and streams to the client; a retry then gets
    /// 410 `response-not-stored` instead of a replay.
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_response_body = bytes)
    }

    /// How long a request waits for another one holding the same key to finish
    /// before answering 409 `in-flight` with Retry-After. Zero answers at once.
    pub fn in_flight_wait(self, wait: Duration) -> Self {
        self.with(|c| c.in_flight_wait = wait)
    }

    /// The status for a key reused with a different request: 422 (the IETF draft's
    /// choice, default) or 409.
    pub fn mismatch_status(self, status: StatusCode) -> Self {
        self.with(|c| c.mismatch_status = status)
    }

    /// What a key reused with a different request gets: refused (strict, the default),
    /// or, during the transition to fingerprinting, logged and counted as
    /// `mismatch_reported` and answered with the stored response.
    pub fn hash_policy(self, policy: HashPolicy) -> Self {
        self.with(|c| c.hash_policy = policy)
    }

    /// Limits each tenant to `per_second` new keys a second, with bursts of `burst`
    /// (`governor`'s GCRA). A request that would run its handler for a new key beyond
    /// it gets 429 `new-key-rate` with Retry-After; its claim is rolled back and
    /// nothing runs. Replays, mismatches and other answers from storage are never
    /// limited, so a client retrying what it already sent is not punished for a storm.
    /// Every service made from this layer (and its clones) shares the allowance; zero
    /// for either number removes the limit.
    pub fn new_key_rate(self, per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second)
            .zip(NonZeroU32::new(burst))
            .map(|(rate, burst)| Arc::new(NewKeyLimiter::new(rate, burst)));
        self.with(|c| c.new_keys = limiter)
    }

    /// Tells the layer which client of a tenant sent a request (for example the API
    /// client id the authentication middleware put in the extensions), so
    /// [`new_key_rate`](Self::new_key_rate) counts each client of a tenant on its own:
    /// one client's storm then does not hold back the tenant's other clients. A
    /// request without an identity (or one over 256 bytes) counts for its tenant.
    pub fn client_identity(
        self,
        identify: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.client_identity = Some(ClientIdentity(Arc::new(identify))))
    }

    /// Lets each tenant hold at most `max_live_keys` live keys (in flight or completed,
    /// not expired). A request that would claim one more gets 507 `key-quota`; its
    /// claim is rolled back and nothing runs. The count is read in the request's own
    /// transaction at most every 10 s per tenant and process (an index scan of the
    /// tenant's keys), and counted on in memory in between, so a quota is held within
    /// a few keys per replica. `idem_key_quota_usage_ratio` reports the highest usage,
    /// for an alert before a tenant reaches it. Every service made from this layer
    /// (and its clones) shares the counts; zero removes the quota.
    pub fn key_quota(self, max_live_keys: u64) -> Self {
        let quota = (max_live_keys > 0).then(|| Arc::new(KeyQuota::new(max_live_keys)));
        self.with(|c| c.key_quota = quota)
    }

    /// Stores each key as its HMAC-SHA-256 under a server secret
    /// ([`KeyProtection`]: `hmac:<id>:<hex>`) instead of as the client sent it, so a dump
    /// of the database reveals no client keys. Every part of idem sees only the
    /// protected key: the key rows, the outbox messages a handler enqueues with
    /// [`Message::from_request`](idem_sqlx::Message::from_request), observe mode's
    /// records, and the handler's own [`IdempotencyKey`](idem_core::IdempotencyKey)
    /// extension. Keys stored before the switch are not found under their HMAC: see
    /// docs/operations.md ("Protected keys") for the migration.
    pub fn protect_keys(self, protection: KeyProtection) -> Self {
        self.with(|c| c.key_protection = Some(protection))
    }

    /// Encrypts stored response bodies at rest (AES-256-GCM under the keys of
    /// `sealing`, each body bound to its tenant and key); replays open them. A body
    /// sealed under a key the layer no longer has is answered 500 `record-corrupt`;
    /// keep rotated keys as [`BodySealing::previous`] until their keys have expired.
    /// Headers and status are stored as they are.
    pub fn seal_bodies(self, sealing: BodySealing) -> Self {
        self.with(|c| c.sealing = Some(sealing))
    }

    /// Changes each final response before it is stored (for example to drop a field
    /// retries should not see again). The first answer goes to the client as the
    /// handler made it; replays, from memory or the store, get the redacted form.
    pub fn redact(self, hook: impl Fn(&mut StoredResponse) + Send + Sync + 'static) -> Self {
        self.with(|c| c.redact = Some(Redactor(Arc::new(hook))))
    }

    /// Applies a route's [`Policy`]: whether a key is required, the hash policy, the
    /// fingerprint's fields, the replayed headers, the failure mode and the retention
    /// (each replacing what an earlier call set). Declare it where the route is declared, so the
    /// route's idempotency policy reads in one place:
    ///
    /// ```no_run
    /// use idem_axum::IdempotencyLayer;
    /// use idem_core::policy::{Policy, RiskClass};
    ///
    /// # fn run(pool: sqlx::PgPool) {
    /// let payments = IdempotencyLayer::new(pool).policy(
    ///     Policy::for_risk(RiskClass::Critical)
    ///         .fingerprint_fields(["/amount", "/currency"])
    ///         .replay_header("x-request-id"),
    /// );
    /// # }
    /// ```
    pub fn policy(self, policy: Policy) -> Self {
        self.with(|c| {
            c.key_mode = policy.keys;
            c.hash_policy = policy.hash;
            c.failure_mode = policy.failure;
            c.retention = policy.retention;
            c.fingerprint_fields = policy.fingerprint_fields;
            c.replay_headers = policy.replayed_headers;
        })
    }

    /// How long a key counts after its request completed; afterwards it runs as new.
    /// Counted from completion, so a duplicate waiting on a slow request never finds
    /// its key expired.
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|c| c.retention = retention)
    }

    /// Which statuses are final (stored, writes committed). By default 2xx, 3xx (a
    /// 303 See Other after a POST is the outcome), and 4xx but 408/409/425/429.
    pub fn final_statuses(self, statuses: FinalStatuses) -> Self {
        self.with(|c| c.final_statuses = statuses)
    }

    /// Adds a response header to those stored and replayed.
    pub fn replay_header(self, name: HeaderName) -> Self {
        self.with(|c| c.replay_headers = c.replay_headers.clone().with(name.as_str()))
    }

    /// What happens when the store is unreachable.
    pub fn failure_mode(self, mode: FailureMode) -> Self {
        self.with(|c| c.failure_mode = mode)
    }

    /// The Retry-After sent with 409 `in-flight` and 503 answers (whole seconds, at
    /// least 1).
    pub fn retry_after(self, after: Duration) -> Self {
        self.with(|c| c.retry_after = after)
    }

    /// Looks the key up with one read on the pool before opening a transaction, so a
    /// replay (or a mismatch) is answered with a single statement and no transaction.
    /// Off by default: every new request then pays that extra read, which costs more
    /// than it saves unless retries are a large share of the route's traffic (see the
    /// benchmark's tables in docs/benchmark.md).
    pub fn replay_lookup_first(self, on: bool) -> Self {
        self.with(|c| c.replay_lookup_first = on)
    }

    /// How many bytes of finished records (response bodies and headers, keys, and a
    /// fixed overhead each) the layer keeps in memory to answer replays and mismatches
    /// without the store. 32 MiB by default; 0 keeps none. A finished record never
    /// changes until it expires, so the copy answers as the store would, on every
    /// replica and after a restart (a key not in memory is read from the store, and
    /// kept). Each copy expires on this process's clock no later than the stored key,
    /// whatever the skew between the two clocks. The least used records are dropped
    /// first when the bound is reached. Every service made from this layer (and its
    /// clones) shares one cache; this call starts a new, empty one.
    pub fn replay_cache(mut self, bytes: u64) -> Self {
        self.cache = Arc::new(ReplayCache::new(bytes));
        self
    }

    /// How long a request waits for the store: to open its transaction and claim the
    /// key (on top of [`in_flight_wait`](Self::in_flight_wait)), and to store the
    /// response and commit. Past it the request gets 503 with Retry-After (or runs
    /// without idempotency under [`FailureMode::Open`], before the handler) instead of
    /// hanging on a store that stopped answering. The store work is not cut off
    /// mid-statement: it goes on in the background, and a transaction it opens too late
    /// is rolled back. A commit that finishes after the answer is found by the retry,
    /// which replays it. The handler's own statements are not bounded by this.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.store_timeout = timeout)
    }

    /// The isolation level of the request's transaction. READ COMMITTED by default,
    /// set in the `BEGIN` itself whatever the server's `default_transaction_isolation`
    /// (the claim relies on it). A stricter level for a route's own writes keeps the
    /// claim correct: a claim that fails to serialize starts over in a new transaction
    /// (and then replays), and a commit that fails to serialize is not final (rolled
    /// back, 503 `commit-failed` with Retry-After; a retry runs again).
    pub fn isolation(self, isolation: Isolation) -> Self {
        self.with(|c| c.isolation = isolation)
    }

    /// How long the layer waits for a final response's body to end before treating it
    /// as a stream: the effects then commit with the status only, and the body passes
    /// through as it comes (a retry gets 410 `response-not-stored`). Bodies of
    /// streaming media types (`text/event-stream`) are never buffered.
    pub fn response_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.response_timeout = timeout)
    }

    /// Wakes the outbox relays through `waker` after each commit of a request whose
    /// handler enqueued a message ([`idem_sqlx::enqueue`]), so a message is published
    /// at once without a `NOTIFY` in the request's transaction (which would serialize
    /// the commits of all requests). Share the waker with the relay
    /// ([`OutboxRelay::waker`](idem_sqlx::OutboxRelay::waker)), or make it with
    /// [`OutboxWaker::notifying`] for relays in other processes.
    pub fn outbox_waker(self, waker: OutboxWaker) -> Self {
        self.with(|c| c.outbox_waker = Some(waker))
    }

    /// The header whose value is the request's correlation id. With the W3C
    /// `traceparent` and `tracestate`, it is handed to the handler as a
    /// [`TraceContext`](idem_core::TraceContext) extension (when the request carried a
    /// valid one), for [`Message::trace`](idem_sqlx::Message::trace) to carry into the
    /// messages the handler enqueues.
    pub fn correlation_header(self, name: HeaderName) -> Self {
        self.with(|c| c.correlation_header = name)
    }

    /// Makes the route phased: for handlers that call other services and need their
    /// answers (see [`Phases`](crate::Phases)). A keyed request's row commits at once,
    /// in progress, with a lease of `lease` and a fencing token; the handler commits
    /// its work in named phases (each phase renews the lease); a retry after the lease
    /// passed takes the key over and resumes after the last phase that committed, and
    /// the earlier owner can no longer commit. A retry while the lease is live waits
    /// (`in_flight_wait`), then replays or answers 409 `in-flight`. Choose `lease`
    /// longer than the slowest step between two phases (a call to another service).
    ///
    /// A final answer is stored with the key when the handler returns it; anything
    /// else (a 5xx, an interrupted phase) ends the lease early, keeps the committed
    /// phases, and lets a retry resume. Handlers take [`Phases`](crate::Phases), not
    /// [`Tx`](crate::Tx). Requests without a key (where it is optional) run as on an
    /// atomic route.
    pub fn phased(self, lease: Duration) -> Self {
        self.with(|c| {
            let accept = c.phased.take().and_then(|p| p.accept);
            c.phased = Some(PhasedMode { lease, accept });
        })
    }

    /// On a [`phased`](Self::phased) route, answers a request that has not finished
    /// within `after` with **202 Accepted**, `Location: {status_path}/{operation id}`
    /// and `Retry-After`; its phases go on, and its final answer is stored as usual.
    /// Serve the status there with [`operations`](Self::operations): it answers from
    /// the key row, 202 with the recovery point while the work runs, the stored final
    /// answer once it finished. A retry of the request itself waits, then replays.
    pub fn accept_after(self, after: Duration, status_path: impl Into<String>) -> Self {
        let status_path = status_path.into();
        self.with(|c| {
            let lease = c.phased.as_ref().map_or(DEFAULT_LEASE, |p| p.lease);
            c.phased = Some(PhasedMode {
                lease,
                accept: Some((after, status_path)),
            });
        })
    }

    /// The status endpoint of this layer's phased operations (see
    /// [`accept_after`](Self::accept_after)), for `GET {status_path}/{id}`. It resolves
    /// the tenant as the layer does, and an operation of another tenant is unknown
    /// (404 `operation-unknown`).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use axum::Router;
    /// use axum::routing::post;
    /// use idem_axum::{IdempotencyLayer, PhaseError, Phases};
    ///
    /// async fn export(phases: Phases) -> Result<&'static str, PhaseError> {
    ///     phases.atomic("exported", async |_tx| Ok(())).await?;
    ///     Ok("done")
    /// }
    ///
    /// # fn run(pool: sqlx::PgPool) {
    /// let layer = IdempotencyLayer::new(pool)
    ///     .single_tenant()
    ///     .phased(Duration::from_secs(30))
    ///     .accept_after(Duration::from_secs(2), "/operations");
    /// let app: Router = Router::new()
    ///     .route("/exports", post(export).route_layer(layer.clone()))
    ///     .route("/operations/{id}", layer.operations());
    /// # }
    /// ```
    pub fn operations<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        crate::phased::operations(self.pool.clone(), self.config.clone())
    }

    /// Labels the layer's metrics by client version: the value of `header` when it is
    /// one of `versions`, `other` when it is another, `none` when the request sent
    /// none. The set bounds the label's values, whatever clients send.
    pub fn client_versions(self, header: HeaderName, versions: ClientVersions) -> Self {
        self.with(|c| c.client_versions = Some((header, versions)))
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            pool: self.pool.clone(),
            config: self.config.clone(),
            flights: self.flights.clone(),
            cache: self.cache.clone(),
            tally: self.tally.clone(),
        }
    }
}
