//! An example payments API on `idem-axum`.
//!
//! `POST /payments` requires an `Idempotency-Key`: a client that retries after a
//! timeout is charged once and receives the first attempt's response. The tenant comes
//! from an `X-Tenant-Id` header through [`auth`], a stand-in for real authentication.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! payments::migrate(&pool).await?;
//! let app = payments::app(pool);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

pub mod charged;
mod dev_db;
pub mod ledger;
pub mod metrics;
pub mod provider;

pub use dev_db::DevDatabase;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use idem_axum::openapi::idempotent;
use idem_axum::{
    IdempotencyKey, IdempotencyLayer, Observability, Policy, RiskClass, TenantId, TraceContext, Tx,
};
use idem_sqlx::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// The header the stand-in authentication reads the tenant from.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The application's own migrations (table `payments`), in the default
/// `_sqlx_migrations` history table, beside idem's own.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs idem's migrations, then the application's.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    idem_sqlx::MIGRATOR.run(pool).await?;
    MIGRATOR.run(pool).await
}

/// The example's tables distributed by tenant on a Citus coordinator, idem's
/// co-located with them, so that a payment (its row, its key, its outbox message) is one
/// transaction on one worker. Idempotent, run at every start after [`migrate`]; on plain
/// Postgres it does nothing and answers [`Distribution::NotCitus`](idem_sqlx::citus::Distribution).
pub async fn distribute(
    pool: &PgPool,
) -> Result<idem_sqlx::citus::Distribution, idem_sqlx::StoreError> {
    if idem_sqlx::Backend::detect(pool).await? == idem_sqlx::Backend::Citus {
        for table in ["payments", "ledger_entries"] {
            sqlx::query(
                "SELECT create_distributed_table($1::regclass, 'tenant_id', colocate_with => 'default') \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
            )
            .bind(table)
            .execute(pool)
            .await?;
        }
    }
    idem_sqlx::citus::distribute(pool, Some("payments")).await
}

/// The router with the idempotency layer configured as the example uses it.
pub fn app(pool: PgPool) -> Router {
    app_with(pool.clone(), idempotency(pool))
}

/// The header the example's clients send their version in.
pub const CLIENT_VERSION: &str = "x-client-version";

/// The client versions the metrics tell apart; any other is `other`.
pub const CLIENT_VERSIONS: [&str; 3] = ["ios/5.2", "android/5.2", "web/2026.11"];

/// The idempotency layer as the example configures it: the policy of a critical route
/// (a key required, strict fingerprints, fail closed, keys kept 7 days), canonical
/// JSON fingerprints, metrics labelled by [`CLIENT_VERSIONS`]. `main` adds an
/// [`OutboxWaker`](idem_sqlx::OutboxWaker) so the relay publishes each payment's
/// message at once.
pub fn idempotency(pool: PgPool) -> IdempotencyLayer {
    IdempotencyLayer::new(pool)
        .policy(Policy::for_risk(RiskClass::Critical).canonical_json())
        .observability(Observability::default().client_versions(
            axum::http::HeaderName::from_static(CLIENT_VERSION),
            idem_axum::ClientVersions::new(CLIENT_VERSIONS),
        ))
}

/// The router with a caller-configured idempotency layer, and `GET /openapi.json`,
/// the API's OpenAPI 3.1 document (the idempotency parts written by the layer).
///
/// The layer is added to each route's method router with `route_layer` (by
/// [`idempotent`](idem_axum::openapi::idempotent)), so it wraps only the handlers: an
/// unknown path gets the router's 404 and a method a route does not serve its 405,
/// untouched, and their keys stay unused. (`Router::route_layer` would leave the 404
/// alone but still wrap each route's 405.)
pub fn app_with(pool: PgPool, idempotency: IdempotencyLayer) -> Router {
    let (api, document) = api(idempotency).split_for_parts();
    api
        // Outermost: authentication runs before routing, so the idempotency layer finds
        // the tenant in the request extensions. The document needs none.
        .layer(middleware::from_fn(auth))
        .route("/openapi.json", get(Json(document)))
        .with_state(pool)
}

/// The payments API: its routes behind `idempotency`, and their OpenAPI document.
pub fn api(idempotency: IdempotencyLayer) -> OpenApiRouter<PgPool> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(idempotent(routes!(create_payment), idempotency.clone()))
        .routes(idempotent(routes!(show_payment), idempotency))
}

/// The document's own parts; the paths come from the handlers' `#[utoipa::path]`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "payments",
        description = "An example payments API on idem: `POST /payments` requires an \
                       `Idempotency-Key`; a retry is charged once and receives the first \
                       attempt's answer."
    ),
    components(schemas(Payment, NewPaymentDoc, PaymentProblem))
)]
struct ApiDoc;

/// A `POST /payments` body, as the document shows it.
#[derive(ToSchema)]
#[schema(as = NewPayment)]
#[allow(dead_code)] // only its schema is used
struct NewPaymentDoc {
    /// The amount in minor units (cents), a positive integer.
    amount: i64,
    /// The ISO 4217 currency code: three upper-case letters.
    currency: String,
    /// The client's own reference, at most 255 bytes.
    reference: Option<String>,
}

/// A problem the payments handlers answer with themselves (`urn:payments:problem:*`).
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
struct PaymentProblem {
    /// `urn:payments:problem:<slug>`.
    r#type: String,
    title: String,
    status: u16,
    detail: String,
}

/// Stand-in authentication: takes the tenant from `X-Tenant-Id` and puts it in the
/// request extensions, where the idempotency layer and the handlers read it. A real
/// service derives the tenant from a verified credential instead.
pub async fn auth(mut req: Request, next: Next) -> Response {
    let tenant = req
        .headers()
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TenantId::new(v).ok());
    match tenant {
        Some(tenant) => {
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        None => problem(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Missing or invalid X-Tenant-Id header.",
        ),
    }
}

/// A payment as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, sqlx::FromRow, ToSchema)]
pub struct Payment {
    /// The payment's id.
    pub id: Uuid,
    /// The amount in minor units (cents).
    pub amount: i64,
    /// The ISO 4217 currency code.
    pub currency: String,
    /// The client's own reference, if any.
    pub reference: Option<String>,
    /// Always `created` in this example.
    pub status: String,
    /// When the payment was created.
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    amount: serde_json::Value,
    currency: String,
    #[serde(default)]
    reference: Option<String>,
}

/// Parses and checks a `POST /payments` body; the error says what is wrong.
pub fn validate(body: &[u8]) -> Result<Valid, String> {
    let new: NewPayment =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let amount = new
        .amount
        .as_i64()
        .filter(|a| *a > 0)
        .ok_or("`amount` must be a positive integer in minor units")?;
    if new.currency.len() != 3 || !new.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("`currency` must be three upper-case letters (ISO 4217)".into());
    }
    if new.reference.as_ref().is_some_and(|r| r.len() > 255) {
        return Err("`reference` must be at most 255 bytes".into());
    }
    Ok(Valid {
        amount,
        currency: new.currency,
        reference: new.reference,
    })
}

/// Creates a payment: charged once however often the client retries with its key.
#[utoipa::path(
    post,
    path = "/payments",
    request_body(content = NewPaymentDoc, content_type = "application/json"),
    params(("x-tenant-id" = String, Header, description = "The tenant (stand-in authentication).")),
    responses(
        (status = 201, description = "The payment was created.", body = Payment,
         headers(("location" = String, description = "The payment's URL."))),
        (status = 400, description = "The payment is invalid.", body = PaymentProblem,
         content_type = "application/problem+json"),
    )
)]
async fn create_payment(
    Extension(tenant): Extension<TenantId>,
    delay: Option<Extension<HandlerDelay>>,
    subject: Option<Extension<EventSubject>>,
    key: Option<Extension<IdempotencyKey>>,
    trace: Option<Extension<TraceContext>>,
    mut tx: Tx,
    body: Bytes,
) -> Response {
    let new = match validate(&body) {
        Ok(new) => new,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "invalid-payment", &detail),
    };
    let announce = Announce {
        subject: subject.map(|s| s.0.0),
        key: key.as_ref().map(|k| &k.0),
        trace: trace.as_ref().map(|t| &t.0),
    };
    let payment = record(&mut tx, &tenant, new, Some(announce)).await;
    if let Some(Extension(HandlerDelay(delay))) = delay {
        tokio::time::sleep(delay).await;
    }
    created(payment)
}

/// The subject `payment.created` messages go to (default
/// [`ledger::PAYMENT_CREATED`]); an `Extension` of it overrides the default.
#[derive(Debug, Clone)]
pub struct EventSubject(pub String);

/// How [`record`] announces a payment in the outbox.
#[derive(Debug, Clone, Default)]
pub struct Announce<'a> {
    /// The subject (default [`ledger::PAYMENT_CREATED`]).
    pub subject: Option<String>,
    /// The request's idempotency key, recorded with the message.
    pub key: Option<&'a IdempotencyKey>,
    /// The request's trace context, carried in the message's headers.
    pub trace: Option<&'a TraceContext>,
}

/// What `POST /payments` writes on its transaction, with or without the layer: the
/// payment, and, unless `announce` is `None`, `payment.created` in the outbox, so the
/// message commits with the payment (and the stored response), or not at all. The
/// benchmark sends exactly these statements (`None`: its baseline without the outbox).
pub async fn record(
    conn: &mut PgConnection,
    tenant: &TenantId,
    new: Valid,
    announce: Option<Announce<'_>>,
) -> Result<Payment, sqlx::Error> {
    let payment = insert_payment(conn, tenant, new).await?;
    let Some(announce) = announce else {
        return Ok(payment);
    };
    let subject = announce
        .subject
        .unwrap_or_else(|| ledger::PAYMENT_CREATED.to_owned());
    let payload = serde_json::to_vec(&payment).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut message = Message::new(subject, payload).header("content-type", "application/json");
    if let Some(key) = announce.key {
        message = message.from_request(tenant, key);
    }
    if let Some(trace) = announce.trace {
        message = message.trace(trace);
    }
    match idem_sqlx::outbox::enqueue(conn, message).await {
        Ok(_) => Ok(payment),
        Err(idem_sqlx::StoreError::Database(e)) => Err(e),
        Err(e) => Err(sqlx::Error::Protocol(e.to_string())),
    }
}

/// A pause inside `POST /payments`, after its insert and before its answer, while the
/// transaction is open. Only for failure tests (a crash or a lost connection in the
/// middle of a request); `main` sets it from `PAYMENTS_HANDLER_DELAY_MS`.
#[derive(Debug, Clone, Copy)]
pub struct HandlerDelay(pub std::time::Duration);

/// A validated payment request (from [`validate`]).
#[derive(Debug, Clone)]
pub struct Valid {
    amount: i64,
    currency: String,
    reference: Option<String>,
}

/// Inserts a payment on `conn` (the request's transaction).
async fn insert_payment(
    conn: &mut PgConnection,
    tenant: &TenantId,
    new: Valid,
) -> Result<Payment, sqlx::Error> {
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO payments (id, tenant_id, amount, currency, reference) \
         VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
    )
    .bind(id)
    .bind(tenant.as_str())
    .bind(new.amount)
    .bind(&new.currency)
    .bind(&new.reference)
    .fetch_one(conn)
    .await?;
    Ok(Payment {
        id,
        amount: new.amount,
        currency: new.currency,
        reference: new.reference,
        status: "created".into(),
        created_at,
    })
}

/// 201 with the payment and its `Location`, or a 500 problem.
fn created(payment: Result<Payment, sqlx::Error>) -> Response {
    let payment = match payment {
        Ok(payment) => payment,
        Err(e) => {
            tracing::error!(error = %e, "inserting payment failed");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "The payment could not be created.",
            );
        }
    };
    let mut response = (StatusCode::CREATED, Json(&payment)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/payments/{}", payment.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The same service without the idempotency layer: `POST /payments` runs the same
/// insert and enqueue in its own transaction. The benchmark's baseline; not for
/// production.
pub fn bare_app(pool: PgPool) -> Router {
    bare_router(pool, Outbox(true))
}

/// [`bare_app`] without the outbox message: `POST /payments` only inserts the payment.
/// The benchmark's measure of what the enqueue costs; not for production.
pub fn bare_app_without_outbox(pool: PgPool) -> Router {
    bare_router(pool, Outbox(false))
}

/// Whether the bare handler enqueues its message.
#[derive(Debug, Clone, Copy)]
struct Outbox(bool);

fn bare_router(pool: PgPool, outbox: Outbox) -> Router {
    Router::new()
        .route("/payments", post(create_payment_bare))
        .route("/payments/{id}", get(show_payment))
        .layer(Extension(outbox))
        .layer(middleware::from_fn(auth))
        .with_state(pool)
}

async fn create_payment_bare(
    State(pool): State<PgPool>,
    Extension(tenant): Extension<TenantId>,
    Extension(Outbox(outbox)): Extension<Outbox>,
    body: Bytes,
) -> Response {
    let new = match validate(&body) {
        Ok(new) => new,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "invalid-payment", &detail),
    };
    let result = async {
        let mut tx = pool.begin().await?;
        let announce = outbox.then(Announce::default);
        let payment = record(&mut tx, &tenant, new, announce).await?;
        tx.commit().await?;
        Ok(payment)
    }
    .await;
    created(result)
}

/// Reads a payment of the tenant.
#[utoipa::path(
    get,
    path = "/payments/{id}",
    params(
        ("id" = String, Path, description = "The payment's id."),
        ("x-tenant-id" = String, Header, description = "The tenant (stand-in authentication)."),
    ),
    responses(
        (status = 200, description = "The payment.", body = Payment),
        (status = 404, description = "No such payment of the tenant.", body = PaymentProblem,
         content_type = "application/problem+json"),
    )
)]
async fn show_payment(
    State(pool): State<PgPool>,
    Extension(tenant): Extension<TenantId>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return problem(StatusCode::NOT_FOUND, "not-found", "No such payment.");
    };
    let row: Result<Option<Payment>, _> = sqlx::query_as(
        "SELECT id, amount, currency, reference, status, created_at FROM payments \
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(tenant.as_str())
    .fetch_optional(&pool)
    .await;
    match row {
        Ok(Some(payment)) => Json(payment).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "not-found", "No such payment."),
        Err(e) => {
            tracing::error!(error = %e, "reading payment failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The payment could not be read.",
            )
        }
    }
}

/// An application-level problem+json answer.
fn problem(status: StatusCode, slug: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("urn:payments:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(idem_axum::PROBLEM_JSON),
    );
    response
}

/// Resolves on Ctrl-C or SIGTERM: the signal to shut down gracefully.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
