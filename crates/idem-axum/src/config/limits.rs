//! [`Limits`]: the bodies the layer buffers and stores, and the limits against key
//! storms (a rate of new keys, a quota of live keys).

use std::num::NonZeroU32;
use std::sync::Arc;

use http::request::Parts;

use crate::limits::{KeyQuota, NewKeyLimiter};

/// What the layer accepts and keeps; set with
/// [`IdempotencyLayer::limits`](crate::IdempotencyLayer::limits). Every service made
/// from a layer (and its clones) shares the allowances of the rate and the quota.
///
/// ```
/// use idem_axum::Limits;
///
/// let limits = Limits::default()
///     .request_body(64 * 1024)
///     .new_key_rate(50, 100)
///     .key_quota(1_000_000);
/// # let _ = limits;
/// ```
#[derive(Debug, Clone)]
pub struct Limits {
    pub(crate) request_body: usize,
    pub(crate) response_body: usize,
    pub(crate) new_keys: Option<Arc<NewKeyLimiter>>,
    pub(crate) client_identity: Option<ClientIdentity>,
    pub(crate) key_quota: Option<Arc<KeyQuota>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_body: 1024 * 1024,
            response_body: 1024 * 1024,
            new_keys: None,
            client_identity: None,
            key_quota: None,
        }
    }
}

impl Limits {
    /// The largest request body the layer buffers; larger ones get 413. 1 MiB by
    /// default.
    pub fn request_body(mut self, bytes: usize) -> Self {
        self.request_body = bytes;
        self
    }

    /// The largest response body that is stored. A larger final response still
    /// commits (with its status only) and streams to the client; a retry then gets
    /// 410 `response-not-stored` instead of a replay. 1 MiB by default.
    pub fn response_body(mut self, bytes: usize) -> Self {
        self.response_body = bytes;
        self
    }

    /// Limits each tenant to `per_second` new keys a second, with bursts of `burst`
    /// (`governor`'s GCRA). A request that would run its handler for a new key beyond
    /// it gets 429 `new-key-rate` with Retry-After; its claim is rolled back and
    /// nothing runs. Replays, mismatches and other answers from storage are never
    /// limited, so a client retrying what it already sent is not punished for a storm.
    /// None by default; zero for either number removes the limit.
    pub fn new_key_rate(mut self, per_second: u32, burst: u32) -> Self {
        self.new_keys = NonZeroU32::new(per_second)
            .zip(NonZeroU32::new(burst))
            .map(|(rate, burst)| Arc::new(NewKeyLimiter::new(rate, burst)));
        self
    }

    /// Tells the layer which client of a tenant sent a request (for example the API
    /// client id the authentication middleware put in the extensions), so
    /// [`new_key_rate`](Self::new_key_rate) counts each client of a tenant on its own:
    /// one client's storm then does not hold back the tenant's other clients. A
    /// request without an identity (or one over 256 bytes) counts for its tenant.
    pub fn client_identity(
        mut self,
        identify: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.client_identity = Some(ClientIdentity(Arc::new(identify)));
        self
    }

    /// Lets each tenant hold at most `max_live_keys` live keys (in flight or completed,
    /// not expired). A request that would claim one more gets 507 `key-quota`; its
    /// claim is rolled back and nothing runs. The count is read in the request's own
    /// transaction at most every 10 s per tenant and process (an index scan of the
    /// tenant's keys), and counted on in memory in between, so a quota is held within
    /// a few keys per replica. `idem_key_quota_usage_ratio` reports the highest usage,
    /// for an alert before a tenant reaches it. None by default; zero removes the quota.
    pub fn key_quota(mut self, max_live_keys: u64) -> Self {
        self.key_quota = (max_live_keys > 0).then(|| Arc::new(KeyQuota::new(max_live_keys)));
        self
    }

    /// The client of the tenant that sent `parts`, when the layer knows its clients.
    pub(crate) fn client(&self, parts: &Parts) -> Option<String> {
        let identify = self.client_identity.as_ref()?;
        (identify.0)(parts).filter(|id| id.len() <= MAX_CLIENT_IDENTITY)
    }
}

/// How the layer finds the client of a tenant that sent a request.
#[derive(Clone)]
pub(crate) struct ClientIdentity(Arc<IdentifyFn>);

/// A function over the request's parts that names its client.
type IdentifyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity")
    }
}

/// The longest client identity counted on its own.
const MAX_CLIENT_IDENTITY: usize = 256;
