//! (z) The idempotency users write by hand instead of using the layer, as the book
//! "Zero To Production in Rust" teaches: in the handler's own transaction, an
//! `INSERT .. ON CONFLICT DO NOTHING` on a keys table (waiting on the unique index for
//! a concurrent duplicate), the handler's writes, an `UPDATE` with the response, one
//! COMMIT. A duplicate reads the saved response.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idem_core::{IdempotencyKey, TenantId};
use sqlx::PgPool;

/// The keys table of the hand-written pattern.
pub const TABLE: &str = "CREATE TABLE IF NOT EXISTS handwritten_idempotency ( \
    tenant_id text NOT NULL, idempotency_key text NOT NULL, \
    response_status_code smallint, response_body bytea, created_at timestamptz NOT NULL, \
    PRIMARY KEY (tenant_id, idempotency_key))";

/// The payments POST route with the hand-written pattern.
pub fn app(pool: PgPool) -> Router {
    Router::new()
        .route("/payments", post(create))
        .layer(middleware::from_fn(payments::auth))
        .with_state(pool)
}

async fn create(
    State(pool): State<PgPool>,
    Extension(tenant): Extension<TenantId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| IdempotencyKey::parse(v).ok());
    let Some(key) = key else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(new) = payments::validate(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match run(&pool, &tenant, &key, new).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "hand-written idempotency failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn run(
    pool: &PgPool,
    tenant: &TenantId,
    key: &IdempotencyKey,
    new: payments::Valid,
) -> Result<Response, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO handwritten_idempotency (tenant_id, idempotency_key, created_at) \
         VALUES ($1, $2, now()) ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return saved(pool, tenant, key).await;
    }
    let payment = payments::record(
        &mut tx,
        tenant,
        new,
        Some(payments::Announce {
            key: Some(key),
            ..Default::default()
        }),
    )
    .await?;
    let body = serde_json::to_vec(&payment).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "UPDATE handwritten_idempotency SET response_status_code = 201, response_body = $3 \
         WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(created(body))
}

async fn saved(
    pool: &PgPool,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Response, sqlx::Error> {
    let row: Option<(Option<i16>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT response_status_code, response_body FROM handwritten_idempotency \
         WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((Some(201), Some(body))) => created(body),
        _ => StatusCode::CONFLICT.into_response(),
    })
}

fn created(body: Vec<u8>) -> Response {
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
