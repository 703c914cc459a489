//! The layer's settings as every step of a request reads them, and the headers it
//! names by default: a leaf module (it imports no step of the request).

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};
use idem_core::policy::{FailureMode, HashPolicy, KeyMode};
use idem_core::protect::KeyProtection;
use idem_core::seal::BodySealing;
use idem_core::{
    BodyMode, ClientVersions, FinalStatuses, HeaderAllowList, IdempotencyKey, TenantId,
};
use idem_sqlx::{Backend, Isolation, OutboxWaker, StoreError};
use sqlx::PgPool;

use crate::limits::{KeyQuota, NewKeyLimiter};
use crate::seal::Redactor;
use crate::tenant::TenantSource;

/// The header that carries the key, by default.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header that carries a request's correlation id, by default.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) key_mode: KeyMode,
    pub(crate) tenant: TenantSource,
    pub(crate) body_mode: BodyMode,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) fingerprint_fields: Option<Vec<String>>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) in_flight_wait: Duration,
    pub(crate) mismatch_status: StatusCode,
    pub(crate) retention: Duration,
    pub(crate) final_statuses: FinalStatuses,
    pub(crate) replay_headers: HeaderAllowList,
    pub(crate) failure_mode: FailureMode,
    pub(crate) retry_after: Duration,
    pub(crate) replay_lookup_first: bool,
    pub(crate) store_timeout: Duration,
    pub(crate) isolation: Isolation,
    pub(crate) response_timeout: Duration,
    pub(crate) outbox_waker: Option<OutboxWaker>,
    pub(crate) correlation_header: HeaderName,
    pub(crate) client_versions: Option<(HeaderName, ClientVersions)>,
    pub(crate) hash_policy: HashPolicy,
    pub(crate) new_keys: Option<Arc<NewKeyLimiter>>,
    pub(crate) client_identity: Option<ClientIdentity>,
    pub(crate) key_quota: Option<Arc<KeyQuota>>,
    pub(crate) key_protection: Option<KeyProtection>,
    pub(crate) sealing: Option<BodySealing>,
    pub(crate) redact: Option<Redactor>,
    pub(crate) phased: Option<PhasedMode>,
    /// The kind of Postgres the pool reaches, found by the first keyed request.
    pub(crate) backend: Arc<tokio::sync::OnceCell<Backend>>,
}

/// How the layer finds the client of a tenant that sent a request.
#[derive(Clone)]
pub(crate) struct ClientIdentity(pub(crate) Arc<IdentifyFn>);

/// A function over the request's parts that names its client.
pub(crate) type IdentifyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity")
    }
}

/// The longest client identity counted on its own.
const MAX_CLIENT_IDENTITY: usize = 256;

impl Config {
    /// The client of the tenant that sent `parts`, when the layer knows its clients.
    pub(crate) fn client(&self, parts: &Parts) -> Option<String> {
        let identify = self.client_identity.as_ref()?;
        (identify.0)(parts).filter(|id| id.len() <= MAX_CLIENT_IDENTITY)
    }

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
        match &self.key_protection {
            Some(protection) => protection.protect(tenant, &key),
            None => key,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header: HeaderName::from_static(IDEMPOTENCY_KEY),
            methods: vec![Method::POST, Method::PATCH],
            key_mode: KeyMode::Required,
            tenant: TenantSource::Extension,
            body_mode: BodyMode::Raw,
            fingerprint_headers: Vec::new(),
            fingerprint_fields: None,
            max_request_body: 1024 * 1024,
            max_response_body: 1024 * 1024,
            in_flight_wait: Duration::from_secs(5),
            mismatch_status: StatusCode::UNPROCESSABLE_ENTITY,
            retention: Duration::from_secs(24 * 3600),
            final_statuses: FinalStatuses::default(),
            replay_headers: HeaderAllowList::default(),
            failure_mode: FailureMode::Closed,
            retry_after: Duration::from_secs(1),
            replay_lookup_first: false,
            store_timeout: Duration::from_secs(10),
            isolation: Isolation::ReadCommitted,
            response_timeout: Duration::from_secs(1),
            outbox_waker: None,
            correlation_header: HeaderName::from_static(CORRELATION_ID),
            client_versions: None,
            hash_policy: HashPolicy::Strict,
            new_keys: None,
            client_identity: None,
            key_quota: None,
            key_protection: None,
            sealing: None,
            redact: None,
            phased: None,
            backend: Arc::default(),
        }
    }
}

/// The phased mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PhasedMode {
    /// How long an owner holds the key without committing a phase.
    pub(crate) lease: std::time::Duration,
    /// Answer 202 Accepted to a request still running after this long, pointing at its
    /// status under this path.
    pub(crate) accept: Option<(std::time::Duration, String)>,
}
