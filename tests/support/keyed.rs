//! The route kinds a keyed request can meet, served alike so one suite
//! (`tests/it/keyed_routes.rs`) runs the same cases against each: `POST /effects` as
//! tenant `x-tenant-id`, a key required, writing one `effects` row (note: the body)
//! per execution that commits, and answering 201 with the row's id and note (see
//! [`effects_router`]); `?sleep_ms=` holds the answer, and
//! [`Faults::fail_next`] makes the handler answer 503 after writing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use idem_axum::{IdempotencyLayer, PhaseError, Phases, Storage, TenantId, Timeouts};

use crate::app::{Knobs, effect_answer, take_one};
use crate::{Faults, TestApp, TestDb, effects_router, tenant_from_header};

/// How a keyed route runs its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The atomic layer: the handler's transaction, the claim and the stored answer
    /// commit together.
    Atomic,
    /// The phased layer: the key's row commits at once with a lease, and the handler
    /// writes its row in one `phases.atomic` phase.
    Phased,
    /// The atomic layer with [`Storage::lookup_first`], and no replay cache, so that
    /// retries are answered by the lookup before the claim.
    LookupFirst,
}

/// The owner's lease of the phased route: far longer than any request of the suite.
pub const PHASED_LEASE: Duration = Duration::from_secs(30);

/// Serves `POST /effects` on `db` as a route of `kind`, with an in-flight wait long
/// enough for concurrent duplicates to wait for the first and replay it, and no replay
/// cache (so each retry is answered by the store); returns the app and the switches its
/// handler reads.
pub async fn keyed_app(db: &TestDb, kind: RouteKind) -> (TestApp, Arc<Faults>) {
    keyed_app_with(db, kind, |layer| layer).await
}

/// [`keyed_app`] with its layer changed by `configure` first (a policy, a protection;
/// not its storage, which the route kind sets).
pub async fn keyed_app_with(
    db: &TestDb,
    kind: RouteKind,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> (TestApp, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    // No replay cache: every retry reaches the store (the claim, or the lookup).
    let layer = configure(IdempotencyLayer::new(db.pool.clone()))
        .tenant(tenant_from_header())
        .timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(20)))
        .storage(Storage::default().replay_cache(0));
    let router = match kind {
        RouteKind::Atomic => effects_router(db.pool.clone(), layer, faults.clone()),
        RouteKind::LookupFirst => {
            let storage = Storage::default().lookup_first(true).replay_cache(0);
            effects_router(db.pool.clone(), layer.storage(storage), faults.clone())
        }
        RouteKind::Phased => Router::new()
            .route(
                "/effects",
                post(phased_effect).route_layer(layer.phased(PHASED_LEASE)),
            )
            .layer(Extension(faults.clone())),
    };
    (TestApp::spawn(router).await, faults)
}

/// The phased twin of the effects router's handler: its row written in the phase
/// `effect`, then the same answer.
async fn phased_effect(
    phases: Phases,
    Extension(tenant): Extension<TenantId>,
    Extension(faults): Extension<Arc<Faults>>,
    Query(knobs): Query<Knobs>,
    body: Bytes,
) -> Result<Response, PhaseError> {
    faults.runs.fetch_add(1, Ordering::SeqCst);
    let note = String::from_utf8_lossy(&body).into_owned();
    let id: i64 = phases
        .atomic("effect", async |tx| {
            let id = sqlx::query_scalar(
                "INSERT INTO effects (tenant_id, note) VALUES ($1, $2) RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(&note)
            .fetch_one(tx)
            .await?;
            Ok(id)
        })
        .await?;
    if take_one(&faults.fail_next) {
        return Ok((StatusCode::SERVICE_UNAVAILABLE, "try again").into_response());
    }
    if knobs.sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.sleep_ms)).await;
    }
    Ok(effect_answer(StatusCode::CREATED, id, &note))
}

/// One test per case and route kind: `$module::{atomic,phased,lookup_first}::{case}`,
/// each calling the module's `async fn case(kind: RouteKind)`.
#[macro_export]
macro_rules! keyed_route_cases {
    (kinds: [$($module:ident => $kind:ident),* $(,)?], cases: $cases:tt) => {
        $($crate::keyed_route_cases!(@kind $module $kind $cases);)*
    };
    (@kind $module:ident $kind:ident [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::RouteKind::$kind).await;
                }
            )*
        }
    };
}
