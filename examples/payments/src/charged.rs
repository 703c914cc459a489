//! `POST /payments/charged`: a payment charged through the card [`provider`], in
//! phased mode, exactly once across the call.
//!
//! 1. phase `pending`: the payment is recorded as `pending`;
//! 2. phase `charge`: the provider is called with a key derived from the request's
//!    key (so a resumed request's call is answered, not charged again), then the charge
//!    id is recorded and the payment is `charged`;
//! 3. phase `announced`: `payments.charged` is enqueued on the outbox; the answer is
//!    201 with the payment and its charge.
//!
//! A payment in `XTS` (ISO 4217's code for testing) is charged and then refused by the
//! `announced` phase for good, to show compensation: phase `refund` refunds the charge
//! at the provider (again with a derived key) and the payment is `refunded`; the
//! answer, 402 with the reason, is stored and replayed.
//!
//! A request still running after the route's `accept_after` is answered 202 with the
//! `Location` of `GET /operations/{id}`.
//!
//! [`provider`]: crate::provider

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use idem_axum::{IdempotencyLayer, PhaseError, Phases, Policy, RiskClass, TenantId};
use idem_sqlx::Message;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::provider::{ChargeRequest, ProviderClient, ProviderError};
use crate::{Payment, Valid, insert_payment, problem, validate};

/// The subject charged payments are announced on.
pub const PAYMENT_CHARGED: &str = "payments.charged";

/// The currency the example refuses after charging, to show compensation.
pub const REFUSED_CURRENCY: &str = "XTS";

/// The phased route's settings.
#[derive(Debug, Clone)]
pub struct Charging {
    /// The provider.
    pub provider: ProviderClient,
    /// How long an owner holds a key between two phases.
    pub lease: Duration,
    /// When to answer 202 Accepted instead of waiting for the provider.
    pub accept_after: Duration,
}

/// A pause right after the provider answered a charge, before the charge is recorded:
/// only for the crash tests, which kill the process there. `main` sets it from
/// `CHARGE_PAUSE_AFTER_PROVIDER_MS`.
#[derive(Debug, Clone, Copy)]
pub struct PauseAfterProvider(pub Duration);

/// The layer of the phased route before [`routes`] makes it phased: a critical
/// route's policy, canonical JSON.
pub fn idempotency(pool: PgPool) -> IdempotencyLayer {
    IdempotencyLayer::new(pool).policy(Policy::for_risk(RiskClass::Critical).canonical_json())
}

/// `POST /payments/charged` and `GET /operations/{id}` behind `layer` made phased with
/// `charging`'s lease (202 after `accept_after`, the status under `/operations`),
/// without the authentication (the service adds it outside; the completer runs these
/// routes directly).
pub fn routes(layer: IdempotencyLayer, charging: &Charging) -> Router {
    let layer = layer
        .phased(charging.lease)
        .accept_after(charging.accept_after, "/operations");
    Router::new()
        .route("/payments/charged", post(charge).route_layer(layer.clone()))
        .route("/operations/{id}", layer.operations())
        .layer(Extension(charging.provider.clone()))
}

/// A charged payment, as the route answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChargedPayment {
    /// The payment.
    #[serde(flatten)]
    pub payment: Payment,
    /// The provider's charge id.
    pub charge_id: Option<String>,
    /// The provider's refund id, when the payment was refunded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Why the payment was refused after its charge, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

async fn charge(
    phases: Phases,
    Extension(tenant): Extension<TenantId>,
    Extension(provider): Extension<ProviderClient>,
    pause: Option<Extension<PauseAfterProvider>>,
    body: Bytes,
) -> Result<Response, PhaseError> {
    let new = match validate(&body) {
        Ok(new) => new,
        Err(detail) => {
            return Ok(problem(StatusCode::BAD_REQUEST, "invalid-payment", &detail));
        }
    };
    let charge_request = ChargeRequest {
        amount: new.amount,
        currency: new.currency.clone(),
    };
    let mut payment: Payment = phases
        .atomic("pending", async |tx| pending(tx, &tenant, new).await)
        .await?;
    let charge_id: String = phases
        .remote(
            "charge",
            async |key| {
                let charge = provider
                    .charge(&tenant, &key, phases.trace(), &charge_request)
                    .await
                    .map_err(phase_error)?;
                if let Some(Extension(PauseAfterProvider(pause))) = pause {
                    tracing::warn!(?pause, "pausing after the provider answered (tests only)");
                    tokio::time::sleep(pause).await;
                }
                Ok(charge.id)
            },
            async |tx, charge_id: String| {
                set_status(tx, &tenant, &payment, "charged", Some(&charge_id)).await?;
                Ok(charge_id)
            },
        )
        .await?;
    payment.status = "charged".into();
    let charged = ChargedPayment {
        payment,
        charge_id: Some(charge_id),
        refund_id: None,
        failure: None,
    };
    let announced = phases
        .atomic("announced", async |tx| {
            if charged.payment.currency == REFUSED_CURRENCY {
                return Err(PhaseError::Permanent(format!(
                    "{REFUSED_CURRENCY} payments are never settled"
                )));
            }
            announce(tx, &tenant, &charged, &phases).await
        })
        .await;
    match announced {
        Ok(()) => Ok(answer(StatusCode::CREATED, &charged)),
        Err(PhaseError::Failed { reason, .. }) => {
            let mut refunded = compensate(&phases, &provider, &tenant, charged).await?;
            refunded.failure = Some(reason);
            Ok(answer(StatusCode::PAYMENT_REQUIRED, &refunded))
        }
        Err(other) => Err(other),
    }
}

/// Phase `refund`: the charge is refunded at the provider and the payment marked so.
async fn compensate(
    phases: &Phases,
    provider: &ProviderClient,
    tenant: &TenantId,
    mut charged: ChargedPayment,
) -> Result<ChargedPayment, PhaseError> {
    let charge_id = charged.charge_id.clone().unwrap_or_default();
    let refund_id: String = phases
        .remote(
            "refund",
            async |key| {
                let refund = provider
                    .refund(tenant, &key, phases.trace(), &charge_id)
                    .await
                    .map_err(phase_error)?;
                Ok(refund.id)
            },
            async |tx, refund_id: String| {
                set_status(tx, tenant, &charged.payment, "refunded", Some(&charge_id)).await?;
                Ok(refund_id)
            },
        )
        .await?;
    charged.payment.status = "refunded".into();
    charged.refund_id = Some(refund_id);
    Ok(charged)
}

/// Phase `pending`'s write: the payment, before anything is charged.
async fn pending(
    tx: &mut PgConnection,
    tenant: &TenantId,
    new: Valid,
) -> Result<Payment, PhaseError> {
    let mut payment = insert_payment(tx, tenant, new).await?;
    sqlx::query("UPDATE payments SET status = 'pending' WHERE tenant_id = $1 AND id = $2")
        .bind(tenant.as_str())
        .bind(payment.id)
        .execute(tx)
        .await?;
    payment.status = "pending".into();
    Ok(payment)
}

async fn set_status(
    tx: &mut PgConnection,
    tenant: &TenantId,
    payment: &Payment,
    status: &str,
    charge_id: Option<&str>,
) -> Result<(), PhaseError> {
    sqlx::query("UPDATE payments SET status = $2, charge_id = $3 WHERE id = $1 AND tenant_id = $4")
        .bind(payment.id)
        .bind(status)
        .bind(charge_id)
        .bind(tenant.as_str())
        .execute(tx)
        .await?;
    Ok(())
}

/// Phase `announced`'s write: `payments.charged` in the outbox.
async fn announce(
    tx: &mut PgConnection,
    tenant: &TenantId,
    charged: &ChargedPayment,
    phases: &Phases,
) -> Result<(), PhaseError> {
    let payload = serde_json::to_vec(charged).map_err(|e| PhaseError::Journal(e.to_string()))?;
    let mut message = Message::new(PAYMENT_CHARGED, payload)
        .header("content-type", "application/json")
        .from_request(tenant, &phases.derived_key("announced"));
    if let Some(trace) = phases.trace() {
        message = message.trace(trace);
    }
    idem_sqlx::outbox::enqueue(tx, message).await?;
    Ok(())
}

fn phase_error(e: ProviderError) -> PhaseError {
    match e {
        ProviderError::Unavailable(reason) => PhaseError::Transient(reason),
        ProviderError::Refused(reason) => PhaseError::Permanent(reason),
    }
}

fn answer(status: StatusCode, charged: &ChargedPayment) -> Response {
    let mut response = (status, Json(charged)).into_response();
    let location = format!("/payments/{}", charged.payment.id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}
