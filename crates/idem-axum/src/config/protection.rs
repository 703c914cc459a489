//! [`Protection`]: what the layer hides of what it stores: the keys (an HMAC), the
//! response bodies (sealed), and any part of a response (a redaction hook).

use std::sync::Arc;

use idem_core::StoredResponse;
use idem_core::protect::KeyProtection;
use idem_core::seal::BodySealing;

/// Protection at rest; set with
/// [`IdempotencyLayer::protection`](crate::IdempotencyLayer::protection). Nothing is
/// protected by default.
///
/// ```
/// use idem_axum::{BodySealing, KeyProtection, Protection};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Real secrets come from the server's secret store, never from the code.
/// let protection = Protection::default()
///     .keys(KeyProtection::hmac("k1", &[7; 32])?)
///     .bodies(BodySealing::new("s1", &[9; 32])?)
///     .redact(|response| response.headers.retain(|(name, _)| name != "x-card-token"));
/// # let _ = protection;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Protection {
    pub(crate) keys: Option<KeyProtection>,
    pub(crate) bodies: Option<BodySealing>,
    pub(crate) redact: Option<Redactor>,
}

impl Protection {
    /// Stores each key as its HMAC-SHA-256 under a server secret
    /// ([`KeyProtection`]: `hmac:<id>:<hex>`) instead of as the client sent it, so a dump
    /// of the database reveals no client keys. Every part of idem sees only the
    /// protected key: the key rows, the outbox messages a handler enqueues with
    /// [`Message::from_request`](idem_sqlx::Message::from_request), observe mode's
    /// records, and the handler's own [`IdempotencyKey`](idem_core::IdempotencyKey)
    /// extension. Keys stored before the switch are not found under their HMAC: see
    /// docs/operations.md ("Protected keys") for the migration.
    pub fn keys(mut self, protection: KeyProtection) -> Self {
        self.keys = Some(protection);
        self
    }

    /// Encrypts stored response bodies at rest (AES-256-GCM under the keys of
    /// `sealing`, each body bound to its tenant and key); replays open them. A body
    /// sealed under a key the layer no longer has is answered 500 `record-corrupt`;
    /// keep rotated keys as [`BodySealing::previous`] until their keys have expired.
    /// Headers and status are stored as they are.
    pub fn bodies(mut self, sealing: BodySealing) -> Self {
        self.bodies = Some(sealing);
        self
    }

    /// Changes each final response before it is stored (for example to drop a field
    /// retries should not see again). The first answer goes to the client as the
    /// handler made it; replays, from memory or the store, get the redacted form.
    pub fn redact(mut self, hook: impl Fn(&mut StoredResponse) + Send + Sync + 'static) -> Self {
        self.redact = Some(Redactor(Arc::new(hook)));
        self
    }
}

/// A hook that changes a final response before it is stored (the client's first answer
/// is sent as the handler made it; replays get the stored form).
#[derive(Clone)]
pub(crate) struct Redactor(pub(crate) Arc<dyn Fn(&mut StoredResponse) + Send + Sync>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}
