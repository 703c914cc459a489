//! The layer's settings as every step of a request reads them, the grouped values a
//! user sets them with, and the headers the layer names by default: a leaf module (it
//! imports no step of the request).
//!
//! One route to each setting: the route's [`Policy`] (from `idem-core`), where the
//! tenant comes from, and one value per group: [`Protocol`], [`Timeouts`], [`Limits`],
//! [`Protection`], [`Observability`], [`Storage`].

mod limits;
mod observability;
mod protection;
mod protocol;
mod storage;
mod timeouts;

use std::sync::Arc;
use std::time::Duration;

use idem_core::policy::Policy;
use idem_core::{IdempotencyKey, TenantId};
use idem_sqlx::{Backend, StoreError};
use sqlx::PgPool;

use crate::tenant::TenantSource;

pub use limits::Limits;
pub use observability::{CORRELATION_ID, Observability};
pub use protection::Protection;
pub use protocol::Protocol;
pub use storage::{DEFAULT_REPLAY_CACHE_BYTES, Storage};
pub use timeouts::Timeouts;

/// Everything a layer was configured with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub(crate) tenant: TenantSource,
    pub(crate) policy: Policy,
    pub(crate) protocol: Protocol,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    pub(crate) protection: Protection,
    pub(crate) observability: Observability,
    pub(crate) storage: Storage,
    pub(crate) phased: Option<PhasedMode>,
    /// The kind of Postgres the pool reaches, found by the first keyed request.
    pub(crate) backend: Arc<tokio::sync::OnceCell<Backend>>,
}

impl Config {
    /// The kind of Postgres `pool` reaches (plain, or a Citus coordinator), asked of
    /// the store once.
    pub(crate) async fn backend(&self, pool: &PgPool) -> Result<Backend, StoreError> {
        self.backend
            .get_or_try_init(|| Backend::detect(pool))
            .await
            .copied()
    }

    /// The key as the store keeps it: protected when the layer protects keys.
    pub(crate) fn stored_key(&self, tenant: &TenantId, key: IdempotencyKey) -> IdempotencyKey {
        match &self.protection.keys {
            Some(protection) => protection.protect(tenant, &key),
            None => key,
        }
    }
}

/// The phased mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PhasedMode {
    /// How long an owner holds the key without committing a phase.
    pub(crate) lease: Duration,
    /// Answer 202 Accepted to a request still running after this long, pointing at its
    /// status under this path.
    pub(crate) accept: Option<(Duration, String)>,
}
