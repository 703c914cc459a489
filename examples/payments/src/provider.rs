//! A small card provider, as another company would run it: its own service, its own
//! database, and idem's layer in front of its `POST` routes, so a charge sent twice
//! with the same `Idempotency-Key` is made once. The payments service calls it from a
//! phased route ([`crate::charged`]) with keys derived from its own request's key.
//!
//! - `POST /charges` `{"amount": 1250, "currency": "EUR"}`: 201 `{"id": "ch_...", ...}`;
//! - `POST /charges/{id}/refunds`: 201 `{"id": "re_...", "charge": "ch_..."}`, 404 for
//!   a charge of another merchant or none.
//!
//! The merchant is the `X-Tenant-Id` header (the example's stand-in authentication).

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router, middleware};
use idem_axum::{IdempotencyKey, IdempotencyLayer, Policy, TenantId, TraceContext, Tx};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

use crate::{auth, problem};

/// The provider's migrations, in the `provider` schema with their own history table.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./provider-migrations");
    migrator.create_schema("provider");
    migrator.dangerous_set_table_name("provider._sqlx_migrations");
    migrator
});

/// Runs idem's migrations (its layer needs them), then the provider's.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    idem_sqlx::MIGRATOR.run(pool).await?;
    MIGRATOR.run(pool).await
}

/// How long the provider takes to charge (for the example's slow-provider runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChargeDelay(pub Duration);

/// The provider's router: its routes behind idem's layer (a key required), and the
/// stand-in authentication outside it.
pub fn app(pool: PgPool, delay: ChargeDelay) -> Router {
    let idempotency =
        IdempotencyLayer::new(pool.clone()).policy(Policy::default().canonical_json());
    Router::new()
        .route("/charges", post(charge).route_layer(idempotency.clone()))
        .route(
            "/charges/{id}/refunds",
            post(refund).route_layer(idempotency),
        )
        .layer(Extension(delay))
        .layer(middleware::from_fn(auth))
        .with_state(pool)
}

/// A charge request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// The amount in minor units.
    pub amount: i64,
    /// The ISO 4217 currency code.
    pub currency: String,
}

/// A charge, as the provider answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Charge {
    /// The charge's id (`ch_...`).
    pub id: String,
    /// The amount in minor units.
    pub amount: i64,
    /// The ISO 4217 currency code.
    pub currency: String,
}

/// A refund, as the provider answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refund {
    /// The refund's id (`re_...`).
    pub id: String,
    /// The refunded charge.
    pub charge: String,
}

async fn charge(
    Extension(merchant): Extension<TenantId>,
    Extension(ChargeDelay(delay)): Extension<ChargeDelay>,
    mut tx: Tx,
    Json(req): Json<ChargeRequest>,
) -> Response {
    if req.amount <= 0 || req.currency.len() != 3 {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-charge",
            "Bad amount or currency.",
        );
    }
    let id = format!("ch_{}", Uuid::now_v7().simple());
    let inserted = sqlx::query(
        "INSERT INTO provider.charges (id, merchant, amount, currency) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(merchant.as_str())
    .bind(req.amount)
    .bind(&req.currency)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        tracing::error!(error = %e, "recording a charge failed");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    drop(tx);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let charge = Charge {
        id,
        amount: req.amount,
        currency: req.currency,
    };
    (StatusCode::CREATED, Json(charge)).into_response()
}

async fn refund(
    Extension(merchant): Extension<TenantId>,
    Path(charge): Path<String>,
    mut tx: Tx,
) -> Response {
    let refunded = sqlx::query(
        "UPDATE provider.charges SET status = 'refunded', refunded_at = now() \
         WHERE id = $1 AND merchant = $2 AND status = 'captured'",
    )
    .bind(&charge)
    .bind(merchant.as_str())
    .execute(&mut *tx)
    .await;
    match refunded {
        Ok(done) if done.rows_affected() == 1 => {
            let refund = Refund {
                id: format!("re_{}", Uuid::now_v7().simple()),
                charge,
            };
            (StatusCode::CREATED, Json(refund)).into_response()
        }
        Ok(_) => problem(
            StatusCode::NOT_FOUND,
            "no-charge",
            "No such captured charge.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "recording a refund failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// How the payments service calls the provider.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    base: String,
    http: reqwest::Client,
}

/// Why a call to the provider did not give an answer to record.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or answered 5xx, 408, 409 or 429: a retry
    /// with the same key may succeed (and is answered once).
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the call: retrying will not change it.
    #[error("the provider refused: {0}")]
    Refused(String),
}

impl ProviderClient {
    /// A client of the provider at `base` (such as `http://127.0.0.1:3100`).
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        ProviderClient {
            base: base.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// Charges `merchant` for `req`, with `key` (the phase's derived key) as the
    /// provider's `Idempotency-Key`, and the trace context passed on.
    pub async fn charge(
        &self,
        merchant: &TenantId,
        key: &IdempotencyKey,
        trace: Option<&TraceContext>,
        req: &ChargeRequest,
    ) -> Result<Charge, ProviderError> {
        let body = serde_json::to_vec(req).map_err(|e| ProviderError::Refused(e.to_string()))?;
        self.post(
            &format!("{}/charges", self.base),
            merchant,
            key,
            trace,
            body,
        )
        .await
    }

    /// Refunds `charge` of `merchant`, with `key` as the provider's `Idempotency-Key`.
    pub async fn refund(
        &self,
        merchant: &TenantId,
        key: &IdempotencyKey,
        trace: Option<&TraceContext>,
        charge: &str,
    ) -> Result<Refund, ProviderError> {
        let url = format!("{}/charges/{charge}/refunds", self.base);
        self.post(&url, merchant, key, trace, b"{}".to_vec()).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        merchant: &TenantId,
        key: &IdempotencyKey,
        trace: Option<&TraceContext>,
        body: Vec<u8>,
    ) -> Result<T, ProviderError> {
        let mut req = self
            .http
            .post(url)
            .header(crate::TENANT_HEADER, merchant.as_str())
            .header("idempotency-key", key.as_str())
            .header("content-type", "application/json")
            .body(body);
        if let Some(trace) = trace {
            let passed = [
                ("traceparent", trace.traceparent()),
                ("tracestate", trace.tracestate()),
                (idem_axum::CORRELATION_ID, trace.correlation_id()),
            ];
            for (name, value) in passed {
                if let Some(value) = value {
                    req = req.header(name, value);
                }
            }
        }
        let answer = req
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        let status = answer.status();
        if status.is_success() {
            return answer
                .json()
                .await
                .map_err(|e| ProviderError::Unavailable(e.to_string()));
        }
        let text = answer.text().await.unwrap_or_default();
        let retryable = status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 429);
        if retryable {
            Err(ProviderError::Unavailable(format!("{status}: {text}")))
        } else {
            Err(ProviderError::Refused(format!("{status}: {text}")))
        }
    }
}
