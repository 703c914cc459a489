//! What a request is before anything is claimed: its key (`key`), its body read up to
//! its limit (`body`), the URI the client sent (`uri`), its fingerprint
//! (`fingerprint`), and [`Keyed`], what identifies a keyed request as the cache, the
//! store and every step read it.

pub(crate) mod body;
pub(crate) mod fingerprint;
pub(crate) mod key;
pub(crate) mod uri;

use std::sync::Arc;

use idem_core::{Fingerprint, IdempotencyKey, TenantId};
use idem_sqlx::keys::ClaimRequest;

use crate::config::Config;

/// What identifies a keyed request.
#[derive(Clone)]
pub(crate) struct Keyed {
    pub(crate) tenant: TenantId,
    /// The key as the store keeps it.
    pub(crate) key: IdempotencyKey,
    /// The key as the client sent it, when the store keeps it protected: a body sealed
    /// before protection was turned on is bound to this one (in memory only).
    pub(crate) sent: Option<IdempotencyKey>,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) method: String,
    pub(crate) path: String,
    /// The route template the request matched.
    pub(crate) route: Option<Arc<str>>,
    /// The client of the tenant that sent it, when the layer knows its clients.
    pub(crate) client: Option<String>,
}

impl Keyed {
    /// The claim (and completion) request for this key under `config`.
    pub(crate) fn claim_request<'a>(&'a self, config: &Config) -> ClaimRequest<'a> {
        ClaimRequest {
            tenant: &self.tenant,
            key: &self.key,
            fingerprint: self.fingerprint,
            method: &self.method,
            path: &self.path,
            route: self.route.as_deref(),
            retention: config.policy.retention,
            tombstones: config.policy.tombstones,
            wait: config.timeouts.in_flight_wait,
        }
    }
}
