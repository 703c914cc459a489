//! Stored response bodies encrypted at rest: AES-256-GCM, each body bound to its
//! (tenant, key), keys named by id so they can be rotated. The layer seals and opens
//! with it; operator tools open with it.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::protect::is_secret_id;
use crate::{IdempotencyKey, TenantId};

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
/// use idem_core::seal::BodySealing;
///
/// let sealing = BodySealing::new("2026-11", &[7u8; 32])?.previous("2026-05", &[9u8; 32])?;
/// # Ok::<(), idem_core::seal::SealingError>(())
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
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

    /// `body` sealed under the current key for (tenant, key)'s row; `None` if it cannot
    /// be.
    pub fn seal(&self, tenant: &TenantId, key: &IdempotencyKey, body: &[u8]) -> Option<Vec<u8>> {
        self.seal_bound(&aad(tenant, key), body)
    }

    /// A body as stored in (tenant, key)'s row: in the clear, opened, or unreadable
    /// (sealed under a key this sealing does not have, or for another row).
    pub fn open(&self, tenant: &TenantId, key: &IdempotencyKey, stored: &[u8]) -> Opened {
        self.open_bound(&aad(tenant, key), stored)
    }

    /// A phased key's kept request body, sealed for (tenant, key)'s row: bound apart
    /// from the response body, so neither opens in the other's place.
    pub fn seal_request(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        self.seal_bound(&request_aad(tenant, key), body)
    }

    /// A kept request body as stored in (tenant, key)'s row (see
    /// [`seal_request`](Self::seal_request)).
    pub fn open_request(&self, tenant: &TenantId, key: &IdempotencyKey, stored: &[u8]) -> Opened {
        self.open_bound(&request_aad(tenant, key), stored)
    }

    /// A finished phased key's journal (its JSON), sealed for (tenant, key)'s row:
    /// bound apart from the bodies.
    pub fn seal_journal(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
        journal: &[u8],
    ) -> Option<Vec<u8>> {
        self.seal_bound(&journal_aad(tenant, key), journal)
    }

    /// A journal as sealed by [`seal_journal`](Self::seal_journal).
    pub fn open_journal(&self, tenant: &TenantId, key: &IdempotencyKey, stored: &[u8]) -> Opened {
        self.open_bound(&journal_aad(tenant, key), stored)
    }

    fn seal_bound(&self, aad: &[u8], body: &[u8]) -> Option<Vec<u8>> {
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

    fn open_bound(&self, aad: &[u8], stored: &[u8]) -> Opened {
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

/// Whether a stored body is sealed (whatever key sealed it).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// What binds a sealed request body to its row.
fn request_aad(tenant: &TenantId, key: &IdempotencyKey) -> Vec<u8> {
    let mut aad = aad(tenant, key);
    aad.extend_from_slice(b"\0request");
    aad
}

/// What binds a sealed journal to its row.
fn journal_aad(tenant: &TenantId, key: &IdempotencyKey) -> Vec<u8> {
    let mut aad = aad(tenant, key);
    aad.extend_from_slice(b"\0journal");
    aad
}

/// What binds a sealed body to its row.
fn aad(tenant: &TenantId, key: &IdempotencyKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.as_str().len() + 1 + key.as_str().len());
    aad.extend_from_slice(tenant.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_body_opens_with_its_key_and_its_row_only() {
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        let sealed = sealing
            .seal_bound(b"row-1", b"secret body")
            .expect("sealed");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert!(
            matches!(sealing.open_bound(b"row-1", &sealed), Opened::Sealed(b) if b == b"secret body")
        );
        assert!(matches!(
            sealing.open_bound(b"row-2", &sealed),
            Opened::Unreadable
        ));
        let other = BodySealing::new("a", &[2; 32]).expect("sealing");
        assert!(matches!(
            other.open_bound(b"row-1", &sealed),
            Opened::Unreadable
        ));
        assert!(matches!(
            sealing.open_bound(b"row-1", b"plain"),
            Opened::Plain
        ));
    }

    #[test]
    fn a_sealed_journal_opens_as_a_journal_only() {
        let tenant = TenantId::new("acme").expect("tenant");
        let key = IdempotencyKey::parse("k").expect("key");
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        let sealed = sealing
            .seal_journal(&tenant, &key, br#"{"charge":{"done":"ch_1"}}"#)
            .expect("sealed");
        assert!(matches!(
            sealing.open_journal(&tenant, &key, &sealed),
            Opened::Sealed(b) if b == br#"{"charge":{"done":"ch_1"}}"#
        ));
        assert_eq!(sealing.open(&tenant, &key, &sealed), Opened::Unreadable);
        assert_eq!(
            sealing.open_request(&tenant, &key, &sealed),
            Opened::Unreadable
        );
        let other = IdempotencyKey::parse("k2").expect("key");
        assert_eq!(
            sealing.open_journal(&tenant, &other, &sealed),
            Opened::Unreadable
        );
    }

    #[test]
    fn a_sealed_request_body_opens_as_a_request_only() {
        let tenant = TenantId::new("acme").expect("tenant");
        let key = IdempotencyKey::parse("k").expect("key");
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        let sealed = sealing
            .seal_request(&tenant, &key, b"card")
            .expect("sealed");
        assert!(
            matches!(sealing.open_request(&tenant, &key, &sealed), Opened::Sealed(b) if b == b"card")
        );
        assert_eq!(sealing.open(&tenant, &key, &sealed), Opened::Unreadable);
        let response = sealing.seal(&tenant, &key, b"body").expect("sealed");
        assert_eq!(
            sealing.open_request(&tenant, &key, &response),
            Opened::Unreadable
        );
    }

    #[test]
    fn a_rotated_key_still_opens_what_it_sealed() {
        let old = BodySealing::new("old", &[1; 32]).expect("old");
        let sealed = old.seal_bound(b"row", b"body").expect("sealed");
        let rotated = BodySealing::new("new", &[2; 32])
            .expect("new")
            .previous("old", &[1; 32])
            .expect("previous");
        assert!(matches!(rotated.open_bound(b"row", &sealed), Opened::Sealed(b) if b == b"body"));
        let resealed = rotated.seal_bound(b"row", b"body").expect("sealed");
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
            sealing.open_bound(b"", b"idem-aead1:a:short"),
            Opened::Unreadable
        ));
        assert!(matches!(
            sealing.open_bound(b"", b"idem-aead1:nocolon"),
            Opened::Unreadable
        ));
        let sealed = sealing.seal_bound(b"", b"body").expect("sealed");
        assert!(matches!(
            sealing.open_bound(b"", &sealed[..sealed.len() - 1]),
            Opened::Unreadable
        ));
    }
}
