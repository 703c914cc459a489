//! The status of phased operations answered 202 Accepted: 202 with the recovery point
//! while the phases run, the stored final answer once they finished.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::routing::{MethodRouter, get};
use http::{HeaderValue, Response, StatusCode, header};
use idem_core::FailureKind;
use idem_sqlx::phased::{Operation, OperationState};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Problem;
use crate::config::Config;
use crate::replay::answer::{corrupt, replay, store_fault, unavailable};
use crate::replay::seal;

/// How long a client waits before asking again about an operation in progress.
const POLL_AFTER: Duration = Duration::from_secs(1);

/// `GET {status_path}/{id}` for the layer's phased operations.
pub(crate) fn operations<S: Clone + Send + Sync + 'static>(
    pool: PgPool,
    config: Arc<Config>,
) -> MethodRouter<S> {
    get(move |Path(id): Path<Uuid>, req: Request| {
        let (pool, config) = (pool.clone(), config.clone());
        async move { status(&pool, &config, id, req).await }
    })
}

async fn status(pool: &PgPool, config: &Config, id: Uuid, req: Request) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let Some(tenant) = config.tenant.resolve(&parts) else {
        return Problem::TenantUnresolved.into_response();
    };
    let found = match idem_sqlx::phased::operation(pool, &tenant, id).await {
        Ok(found) => found,
        Err(e) if e.kind() == FailureKind::Fault => return store_fault(&e),
        Err(e) => {
            tracing::warn!(error = %e, "reading an operation's status failed");
            return unavailable(config);
        }
    };
    let Some(Operation { key, state, .. }) = found else {
        return Problem::OperationUnknown.into_response();
    };
    match state {
        OperationState::InProgress { recovery_point, .. } => in_progress(id, recovery_point),
        OperationState::Finished(record) => {
            match seal::from_store(config.protection.bodies.as_ref(), &tenant, [&key], record) {
                Some(record) => replay(config, &record),
                None => corrupt(),
            }
        }
    }
}

/// 202 with where the operation stands.
pub(crate) fn in_progress(id: Uuid, recovery_point: Option<String>) -> Response<Body> {
    let body = json!({
        "status": "in_progress",
        "operation": id,
        "recovery_point": recovery_point,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER.as_secs()));
    response
}
