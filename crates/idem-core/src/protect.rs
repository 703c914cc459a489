//! Keys as the store keeps them: a keyed hash (HMAC-SHA-256 under a server secret) in
//! place of the client's key, so a dump of the database reveals no client keys.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::{IdempotencyKey, TenantId};

/// The prefix of every protected key: `hmac:<secret id>:<64 hex digits>`.
pub const PROTECTED_PREFIX: &str = "hmac:";

/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a [`KeyProtection`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtectionError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("the key secret must be at least {MIN_SECRET_LEN} bytes, not {0}")]
    SecretTooShort(usize),
    /// The secret's id is empty, longer than 16 bytes, or not `[A-Za-z0-9_-]`.
    #[error("the key secret's id must be 1 to 16 of A-Z, a-z, 0-9, '_' and '-'")]
    BadId,
}

/// Whether `id` may name a server secret in stored data: 1 to 16 of `A-Z`, `a-z`,
/// `0-9`, `_` and `-` (never the `:` that separates it from what follows).
pub fn is_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 16
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Turns (tenant, key) into the key the store keeps: `hmac:<id>:<hex>`, the HMAC-SHA-256
/// of the tenant, a zero byte and the key, under the secret. The same (tenant, key)
/// always gives the same stored key under one secret, so claims, replays and
/// mismatches work as with clear keys; the id names the secret, for rotation.
///
/// ```
/// use idem_core::protect::KeyProtection;
/// use idem_core::{IdempotencyKey, TenantId};
///
/// let protection = KeyProtection::hmac("k1", &[7u8; 32])?;
/// let tenant = TenantId::new("acme").expect("tenant");
/// let key = IdempotencyKey::parse("order-4711").expect("key");
/// let stored = protection.protect(&tenant, &key);
/// assert!(stored.as_str().starts_with("hmac:k1:"));
/// assert!(!stored.as_str().contains("order-4711"));
/// assert_eq!(stored, protection.protect(&tenant, &key));
/// # Ok::<(), idem_core::protect::ProtectionError>(())
/// ```
#[derive(Clone)]
pub struct KeyProtection {
    id: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("KeyProtection")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyProtection {
    /// HMAC-SHA-256 under `secret` (at least 32 bytes; use random bytes, kept like any
    /// other server secret), named `id`.
    pub fn hmac(id: &str, secret: &[u8]) -> Result<Self, ProtectionError> {
        if !is_secret_id(id) {
            return Err(ProtectionError::BadId);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(ProtectionError::SecretTooShort(secret.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| ProtectionError::SecretTooShort(secret.len()))?;
        Ok(KeyProtection {
            id: id.to_owned(),
            mac,
        })
    }

    /// The secret's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key the store keeps for (tenant, key).
    pub fn protect(&self, tenant: &TenantId, key: &IdempotencyKey) -> IdempotencyKey {
        let mut mac = self.mac.clone();
        mac.update(tenant.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(key.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        IdempotencyKey::from_protected(format!(
            "{PROTECTED_PREFIX}{}:{}",
            self.id,
            hex::encode(digest)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, IdempotencyKey) {
        (
            TenantId::new("acme").expect("tenant"),
            IdempotencyKey::parse("order-1").expect("key"),
        )
    }

    #[test]
    fn the_stored_key_is_stable_and_hides_the_client_key() {
        let p = KeyProtection::hmac("1", &[1u8; 32]).expect("protection");
        let (tenant, key) = ids();
        let stored = p.protect(&tenant, &key);
        assert_eq!(stored, p.protect(&tenant, &key));
        assert_eq!(stored.as_str().len(), "hmac:1:".len() + 64);
        assert!(
            IdempotencyKey::parse(stored.as_str()).is_ok(),
            "a valid key itself"
        );
    }

    #[test]
    fn tenants_and_secrets_give_different_stored_keys() {
        let (tenant, key) = ids();
        let p = KeyProtection::hmac("1", &[1u8; 32]).expect("protection");
        let other_tenant = TenantId::new("globex").expect("tenant");
        assert_ne!(p.protect(&tenant, &key), p.protect(&other_tenant, &key));
        let q = KeyProtection::hmac("1", &[2u8; 32]).expect("protection");
        assert_ne!(p.protect(&tenant, &key), q.protect(&tenant, &key));
    }

    #[test]
    fn known_answer_matches_pgcrypto() {
        // What the migration in docs/operations.md computes in Postgres:
        // 'hmac:1:' || encode(hmac(convert_to('acme', 'UTF8') || '\x00'::bytea ||
        //   convert_to('order-1', 'UTF8'), decode(repeat('0b', 32), 'hex'), 'sha256'), 'hex')
        let p = KeyProtection::hmac("1", &[0x0b; 32]).expect("protection");
        let (tenant, key) = ids();
        assert_eq!(
            p.protect(&tenant, &key).as_str(),
            "hmac:1:4aa05e8efee9c4d306fa9ec6499ec12c6c06d5e81e7b5ddac28528a48f20636c"
        );
    }

    #[test]
    fn short_secrets_and_odd_ids_are_refused() {
        assert_eq!(
            KeyProtection::hmac("1", b"short").err(),
            Some(ProtectionError::SecretTooShort(5))
        );
        for id in ["", "a:b", "x".repeat(17).as_str()] {
            assert_eq!(
                KeyProtection::hmac(id, &[0; 32]).err(),
                Some(ProtectionError::BadId),
                "{id:?}"
            );
        }
    }

    #[test]
    fn the_debug_output_shows_no_secret() {
        let p = KeyProtection::hmac("k9", &[0x5a; 32]).expect("protection");
        let debug = format!("{p:?}");
        assert!(debug.contains("k9") && !debug.contains("5a") && !debug.contains("90"));
    }
}
