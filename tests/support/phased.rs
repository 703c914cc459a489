//! A phased route for the phased tests: `POST /orders` runs phases `first`, `charge`
//! (a call to a provider), `second`, and compensates with `refund` when `second` fails
//! for good.
//!
//! The provider is a real service: an atomic-mode app behind its own idempotency layer
//! on its own socket, called over HTTP with the phase's derived key; it writes an
//! `effects` row per execution (note `provider:charge`, `provider:refund`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use idem_axum::{
    IdempotencyKey, IdempotencyLayer, PhaseError, PhasedLayer, Phases, Storage, TenantId, Timeouts,
    Tx,
};

use crate::{TestApp, TestDb, tenant_from_header};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgConnection;

/// What the phased handler is told to do wrong, once each.
#[derive(Default)]
pub struct Faults {
    /// Answer 503 after the first phase.
    pub interrupt: AtomicUsize,
    /// Pauses after the first phase (milliseconds), one per request, in order.
    pub pauses: Mutex<VecDeque<u64>>,
}

impl Faults {
    fn pause(&self) -> Option<u64> {
        self.pauses.lock().expect("pauses").pop_front()
    }
}

fn take(counter: &AtomicUsize) -> usize {
    counter.swap(0, Ordering::SeqCst)
}

#[derive(Deserialize, Default)]
struct Knobs {
    /// Fail the phase after the charge for good (the refund then runs).
    #[serde(default)]
    fail_after_charge: bool,
    /// Echoed in the answer.
    note: Option<String>,
}

#[derive(Clone)]
struct Provider {
    url: String,
    http: reqwest::Client,
}

impl Provider {
    /// Calls the provider with the phase's key: the provider's own layer dedupes it.
    async fn call(&self, what: &str, key: &IdempotencyKey) -> Result<String, PhaseError> {
        let answer = self
            .http
            .post(format!("{}/{what}", self.url))
            .header("x-tenant-id", "merchant")
            .header("idempotency-key", key.as_str())
            .body("{}")
            .send()
            .await
            .map_err(|e| PhaseError::Transient(e.to_string()))?;
        if !answer.status().is_success() {
            return Err(PhaseError::Transient(format!(
                "provider {}",
                answer.status()
            )));
        }
        let body: Value = answer
            .json()
            .await
            .map_err(|e| PhaseError::Transient(e.to_string()))?;
        Ok(body["id"].as_str().unwrap_or_default().to_owned())
    }
}

async fn effect(tx: &mut PgConnection, tenant: &str, note: &str) -> Result<i64, PhaseError> {
    let id =
        sqlx::query_scalar("INSERT INTO effects (tenant_id, note) VALUES ($1, $2) RETURNING id")
            .bind(tenant)
            .bind(note)
            .fetch_one(tx)
            .await?;
    Ok(id)
}

/// `POST /orders`: phase `first` writes a row; phase `charge` calls the provider and
/// records its charge id; phase `second` writes a row (or fails for good, and then
/// `refund` calls the provider's refund and the answer is 402).
async fn order(
    phases: Phases,
    Extension(tenant): Extension<TenantId>,
    Extension(faults): Extension<Arc<Faults>>,
    Extension(provider): Extension<Provider>,
    Query(knobs): Query<Knobs>,
    body: axum::body::Bytes,
) -> Result<Response, PhaseError> {
    let tenant = tenant.as_str();
    let first: i64 = phases
        .atomic("first", async |tx| effect(tx, tenant, "first").await)
        .await?;
    if take(&faults.interrupt) > 0 {
        return Err(PhaseError::Transient("interrupted on purpose".into()));
    }
    if let Some(pause) = faults.pause() {
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let charge: String = phases
        .remote(
            "charge",
            async |key| provider.call("charges", &key).await,
            async |tx, charge: String| {
                effect(tx, tenant, "charge").await?;
                Ok(charge)
            },
        )
        .await?;
    let second = phases
        .atomic("second", async |tx| {
            if knobs.fail_after_charge {
                return Err(PhaseError::Permanent(
                    "the order cannot be fulfilled".into(),
                ));
            }
            effect(tx, tenant, "second").await
        })
        .await;
    match second {
        Ok(second) => {
            let body = json!({
                "first": first, "charge": charge, "second": second, "note": knobs.note,
                "body_len": body.len(),
            });
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(PhaseError::Failed { reason, .. }) => {
            let refund: String = phases
                .remote(
                    "refund",
                    async |key| provider.call("refunds", &key).await,
                    async |tx, refund: String| {
                        effect(tx, tenant, "refund").await?;
                        Ok(refund)
                    },
                )
                .await?;
            let body = json!({ "refunded": refund, "charge": charge, "reason": reason });
            Ok((StatusCode::PAYMENT_REQUIRED, Json(body)).into_response())
        }
        Err(other) => Err(other),
    }
}

/// The provider: an atomic route that records each execution.
async fn provider_call(
    Extension(what): Extension<&'static str>,
    mut tx: Tx,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO effects (tenant_id, note) VALUES ('merchant', $1) RETURNING id",
    )
    .bind(format!("provider:{what}"))
    .fetch_one(&mut *tx)
    .await
    .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": format!("{what}-{id}") })),
    ))
}

/// The phased app, its provider, and the faults its handler is told to make.
pub struct Setup {
    /// The phased app.
    pub app: TestApp,
    /// Its router, for a completer.
    pub routes: Router,
    /// What its handler is told to do wrong.
    pub faults: Arc<Faults>,
    /// The provider the phase `charge` calls (`POST /charges`, `POST /refunds`).
    pub provider: TestApp,
}

/// Serves the provider and the phased app (lease `lease`, in-flight wait `wait`).
pub async fn setup(db: &TestDb, lease: Duration, wait: Duration) -> Setup {
    setup_with(db, |layer| {
        layer
            .timeouts(Timeouts::default().in_flight_wait(wait))
            .phased(lease)
    })
    .await
}

/// Serves the provider and the phased app, its layer configured by `configure` (which
/// makes it phased), with the operations' status at `GET /operations/{id}`.
pub async fn setup_with(
    db: &TestDb,
    configure: impl FnOnce(IdempotencyLayer) -> PhasedLayer,
) -> Setup {
    let provider_layer = IdempotencyLayer::new(db.pool.clone()).tenant(tenant_from_header());
    let provider = TestApp::spawn(
        Router::new()
            .route("/charges", post(provider_call).layer(Extension("charge")))
            .route("/refunds", post(provider_call).layer(Extension("refund")))
            .layer(provider_layer),
    )
    .await;
    let faults = Arc::new(Faults::default());
    let layer = configure(
        IdempotencyLayer::new(db.pool.clone())
            .tenant(tenant_from_header())
            .storage(Storage::default().replay_cache(0)),
    );
    let routes = Router::new()
        .route("/orders", post(order).route_layer(layer.clone()))
        .route("/operations/{id}", layer.operations())
        .layer(Extension(faults.clone()))
        .layer(Extension(Provider {
            url: provider.url(""),
            http: provider.client.clone(),
        }));
    let app = TestApp::spawn(routes.clone()).await;
    Setup {
        app,
        routes,
        faults,
        provider,
    }
}

/// How many `effects` rows have this note.
pub async fn notes(db: &TestDb, note: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE note = $1")
        .bind(note)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

/// `POST /orders{query}` with key `key` as tenant `t1`.
pub async fn order_request(app: &TestApp, key: &str, query: &str) -> reqwest::Response {
    app.send(&format!("/orders{query}"), "t1", Some(key), "{}")
        .await
}
