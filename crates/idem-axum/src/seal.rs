//! Stored response bodies encrypted at rest (AES-256-GCM, keys named for rotation), and
//! the hook that redacts a response before it is stored.

use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use idem_core::protect::is_secret_id;
use idem_core::{IdempotencyKey, Record, RecordState, StoredResponse, TenantId};

/// How a sealed body starts: `idem-aead1:<key id>:<12-byte nonce><ciphertext and tag>`.
const MAGIC: &[u8] = b"idem-aead1:";

/// The nonce's length (96 bits, GCM's standard).
const NONCE_LEN: usize = 12;

/// Why a [`BodySealing`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealingError {
    /// The key is not 32 bytes.
    #[error("a body key must be 32 bytes (AES-256), not {0}")]
    KeyLength(usize),
    /// The key's id is empty, longer than 16 bytes, or not `[A-Za-z0-9_-]`.
    #[error("a body key's id must be 1 to 16 of A-Z, a-z, 0-9, '_' and '-'")]
    BadId,
}

/// The keys that encrypt stored response bodies: the current one seals every new body,
/// earlier ones (added with [`previous`](Self::previous)) still open the bodies they
/// sealed, so a key can be rotated while its bodies live. Each body is bound to its
/// (tenant, key): a sealed body moved to another row does not open. Bodies stored
/// before sealing was turned on are replayed as they are.
///
/// ```
/// use idem_axum::BodySealing;
///
/// let sealing = BodySealing::new("2026-11", &[7u8; 32])?.previous("2026-05", &[9u8; 32])?;
/// # Ok::<(), idem_axum::SealingError>(())
/// ```
#[derive(Clone)]
pub struct BodySealing {
    current: (String, Aes256Gcm),
    previous: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for BodySealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ids only, never the keys.
        f.debug_struct("BodySealing")
            .field("current", &self.current.0)
            .field(
                "previous",
                &self.previous.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn cipher(id: &str, key: &[u8]) -> Result<(String, Aes256Gcm), SealingError> {
    if !is_secret_id(id) {
        return Err(SealingError::BadId);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SealingError::KeyLength(key.len()))?;
    Ok((id.to_owned(), cipher))
}

/// What a stored body turned out to be.
enum Opened {
    /// Stored in the clear (before sealing was turned on).
    Plain,
    /// Sealed, and opened.
    Sealed(Vec<u8>),
    /// Sealed, and no key here opens it.
    Unreadable,
}

impl BodySealing {
    /// Seals new bodies with `key` (32 bytes), named `id`.
    pub fn new(id: &str, key: &[u8]) -> Result<Self, SealingError> {
        Ok(BodySealing {
            current: cipher(id, key)?,
            previous: Vec::new(),
        })
    }

    /// Adds an earlier key, which only opens the bodies it sealed.
    pub fn previous(mut self, id: &str, key: &[u8]) -> Result<Self, SealingError> {
        self.previous.push(cipher(id, key)?);
        Ok(self)
    }

    /// `body` sealed under the current key, bound to `aad`; `None` if it cannot be.
    fn seal(&self, aad: &[u8], body: &[u8]) -> Option<Vec<u8>> {
        let (id, cipher) = &self.current;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher.encrypt(&nonce, Payload { msg: body, aad }).ok()?;
        let mut out = Vec::with_capacity(MAGIC.len() + id.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(id.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, aad: &[u8], stored: &[u8]) -> Opened {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Opened::Plain;
        };
        let Some(colon) = rest.iter().position(|&b| b == b':') else {
            return Opened::Unreadable;
        };
        let (id, rest) = (&rest[..colon], &rest[colon + 1..]);
        if rest.len() < NONCE_LEN {
            return Opened::Unreadable;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(known, _)| known.as_bytes() == id);
        let Some((_, cipher)) = key else {
            return Opened::Unreadable;
        };
        match cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad }) {
            Ok(body) => Opened::Sealed(body),
            Err(_) => Opened::Unreadable,
        }
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

/// What binds a sealed body to its row.
fn aad(tenant: &TenantId, key: &IdempotencyKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.as_str().len() + 1 + key.as_str().len());
    aad.extend_from_slice(tenant.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

/// The response as it is written to the store: sealed when the layer seals bodies.
/// `None` when it cannot be sealed (the key then keeps its status only).
pub(crate) fn for_store(
    sealing: Option<&BodySealing>,
    tenant: &TenantId,
    key: &IdempotencyKey,
    stored: StoredResponse,
) -> Option<StoredResponse> {
    let Some(sealing) = sealing else {
        return Some(stored);
    };
    match sealing.seal(&aad(tenant, key), &stored.body) {
        Some(body) => Some(StoredResponse { body, ..stored }),
        None => {
            tracing::error!("the response could not be sealed; storing its status only");
            None
        }
    }
}

/// A record as read from the store, its body opened. `None` when it is sealed and no
/// key of this layer opens it.
pub(crate) fn from_store(
    sealing: Option<&BodySealing>,
    tenant: &TenantId,
    key: &IdempotencyKey,
    mut record: Record,
) -> Option<Record> {
    let RecordState::Completed(stored) = &mut record.state else {
        return Some(record);
    };
    let opened = match sealing {
        Some(sealing) => sealing.open(&aad(tenant, key), &stored.body),
        None if stored.body.starts_with(MAGIC) => Opened::Unreadable,
        None => Opened::Plain,
    };
    match opened {
        Opened::Plain => {}
        Opened::Sealed(body) => stored.body = body,
        Opened::Unreadable => {
            tracing::error!("a stored response is sealed under a key this layer does not have");
            return None;
        }
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, IdempotencyKey) {
        (
            TenantId::new("acme").expect("tenant"),
            IdempotencyKey::parse("k").expect("key"),
        )
    }

    #[test]
    fn a_sealed_body_opens_with_its_key_and_its_row_only() {
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        let sealed = sealing.seal(b"row-1", b"secret body").expect("sealed");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert!(
            matches!(sealing.open(b"row-1", &sealed), Opened::Sealed(b) if b == b"secret body")
        );
        assert!(matches!(
            sealing.open(b"row-2", &sealed),
            Opened::Unreadable
        ));
        let other = BodySealing::new("a", &[2; 32]).expect("sealing");
        assert!(matches!(other.open(b"row-1", &sealed), Opened::Unreadable));
        assert!(matches!(sealing.open(b"row-1", b"plain"), Opened::Plain));
    }

    #[test]
    fn a_rotated_key_still_opens_what_it_sealed() {
        let old = BodySealing::new("old", &[1; 32]).expect("old");
        let sealed = old.seal(b"row", b"body").expect("sealed");
        let rotated = BodySealing::new("new", &[2; 32])
            .expect("new")
            .previous("old", &[1; 32])
            .expect("previous");
        assert!(matches!(rotated.open(b"row", &sealed), Opened::Sealed(b) if b == b"body"));
        let resealed = rotated.seal(b"row", b"body").expect("sealed");
        assert!(resealed.starts_with(b"idem-aead1:new:"));
    }

    #[test]
    fn bad_keys_and_ids_are_refused_and_truncated_bodies_do_not_open() {
        assert_eq!(
            BodySealing::new("a", &[0; 16]).err(),
            Some(SealingError::KeyLength(16))
        );
        assert_eq!(
            BodySealing::new("a:b", &[0; 32]).err(),
            Some(SealingError::BadId)
        );
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        assert!(matches!(
            sealing.open(b"", b"idem-aead1:a:short"),
            Opened::Unreadable
        ));
        assert!(matches!(
            sealing.open(b"", b"idem-aead1:nocolon"),
            Opened::Unreadable
        ));
        let sealed = sealing.seal(b"", b"body").expect("sealed");
        assert!(matches!(
            sealing.open(b"", &sealed[..sealed.len() - 1]),
            Opened::Unreadable
        ));
    }

    #[test]
    fn records_from_the_store_open_or_are_refused() {
        let (tenant, key) = ids();
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        let stored = StoredResponse {
            status: 201,
            headers: vec![],
            body: b"{\"card\":\"4242\"}".to_vec(),
        };
        let written = for_store(Some(&sealing), &tenant, &key, stored.clone()).expect("sealed");
        let record = |body: Vec<u8>| Record {
            fingerprint: idem_core::Fingerprint::builder("POST", "/")
                .body(b"", idem_core::BodyMode::Raw)
                .finish(),
            state: RecordState::Completed(StoredResponse {
                body,
                ..stored.clone()
            }),
            expires_at: chrono::Utc::now(),
        };
        let opened =
            from_store(Some(&sealing), &tenant, &key, record(written.body.clone())).expect("opens");
        assert_eq!(opened.state, RecordState::Completed(stored.clone()));
        assert!(from_store(None, &tenant, &key, record(written.body)).is_none());
        assert!(from_store(None, &tenant, &key, record(stored.body.clone())).is_some());
    }
}
