//! OpenAPI 3.1 for idempotent routes (feature `openapi`), with
//! [utoipa](https://docs.rs/utoipa) and utoipa-axum: the route's layer documents what
//! it adds to each operation whose method takes part, from its own configuration (the
//! one source, no second list to keep in step): the key's header parameter (required
//! or optional, its length and characters), `Idempotent-Replayed` on the route's own
//! answers, and every problem answer the layer can give there (400 `key-missing` and
//! `key-invalid`, 409 `in-flight`, 410, 413, 422 `key-mismatch`, 429 `new-key-rate`,
//! 503 with `Retry-After`, 507 `key-quota`, ... as configured), each with the RFC 9457
//! problem schema and its `type`.
//!
//! ```no_run
//! use axum::Json;
//! use idem_axum::openapi::idempotent;
//! use idem_axum::{IdempotencyLayer, Policy, RiskClass, Tx};
//! use utoipa_axum::{router::OpenApiRouter, routes};
//!
//! /// Creates a payment.
//! #[utoipa::path(post, path = "/payments", responses((status = 201, description = "Created")))]
//! async fn create_payment(tx: Tx) -> axum::http::StatusCode {
//!     # let _ = tx;
//!     axum::http::StatusCode::CREATED
//! }
//!
//! /// Health, without the layer.
//! #[utoipa::path(get, path = "/health", responses((status = 200, description = "Up")))]
//! async fn health() {}
//!
//! # fn run(pool: sqlx::PgPool) {
//! let layer = IdempotencyLayer::new(pool).policy(Policy::for_risk(RiskClass::Critical));
//! let (router, api) = OpenApiRouter::new()
//!     .routes(idempotent(routes!(create_payment), layer))
//!     .routes(routes!(health))
//!     .split_for_parts();
//! let app: axum::Router = router.route("/openapi.json", axum::routing::get(Json(api)));
//! # }
//! ```

mod contract;
mod document;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::Route;
use tower::{Layer, Service};
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::Paths;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::{IdempotencyLayer, PhasedLayer};
use contract::Contract;

pub use document::PROBLEM_SCHEMA;

/// A layer that can say, in OpenAPI, what it adds to the routes it wraps.
pub trait Documented {
    /// Writes the layer's contract into every operation of `paths` whose method takes
    /// part; returns the component schemas those operations refer to (name, schema),
    /// to be added to the document's components.
    fn document_paths(
        &self,
        paths: &mut Paths,
    ) -> Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::Schema>)>;

    /// [`document_paths`](Self::document_paths) over a whole document, its component
    /// schemas added: for a document whose paths all have this layer.
    fn document(&self, api: &mut OpenApi) {
        let schemas = self.document_paths(&mut api.paths);
        api.components
            .get_or_insert_with(Default::default)
            .schemas
            .extend(schemas);
    }
}

impl Documented for IdempotencyLayer {
    fn document_paths(
        &self,
        paths: &mut Paths,
    ) -> Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::Schema>)> {
        document::write(&Contract::of(self.config()), paths)
    }
}

impl Documented for PhasedLayer {
    fn document_paths(
        &self,
        paths: &mut Paths,
    ) -> Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::Schema>)> {
        document::write(&Contract::of(self.config()), paths)
    }
}

/// The routes of `routes` (what utoipa-axum's `routes!` makes) behind `layer`, added
/// with `route_layer` as the layer's docs advise, and their operations documented
/// with what the layer adds ([`Documented`]). Routes added without it carry none of it.
pub fn idempotent<S, L>(routes: UtoipaMethodRouter<S>, layer: L) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
    L: Documented + Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    let (mut schemas, mut paths, router) = routes;
    schemas.extend(layer.document_paths(&mut paths));
    (schemas, paths, router.route_layer(layer))
}
