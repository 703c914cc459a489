//! The tenant a key belongs to. A key's identity is (tenant, key), never the key alone.

use std::fmt;

use thiserror::Error;

/// The longest tenant id accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 255;

/// The tenant that owns an idempotency key.
///
/// Two tenants may use the same key text without interfering: the store's primary key
/// is (tenant, key). Single-tenant services use [`TenantId::single`].
///
/// ```
/// use idem_core::TenantId;
///
/// let acme = TenantId::new("acme")?;
/// assert_eq!(acme.as_str(), "acme");
/// assert!(TenantId::new("").is_err());
/// # Ok::<(), idem_core::TenantError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Why a value is not a valid tenant id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TenantError {
    /// The tenant id is empty.
    #[error("the tenant id is empty")]
    Empty,
    /// The tenant id is longer than [`MAX_TENANT_LEN`] bytes.
    #[error("the tenant id is {len} bytes long; at most {MAX_TENANT_LEN} are allowed")]
    TooLong {
        /// The length that was received, in bytes.
        len: usize,
    },
    /// The tenant id has a control character.
    #[error("the tenant id has a control character")]
    ControlCharacter,
}

impl TenantId {
    /// Validates a tenant id: 1 to [`MAX_TENANT_LEN`] bytes, no control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, TenantError> {
        let id = id.into();
        if id.is_empty() {
            return Err(TenantError::Empty);
        }
        if id.len() > MAX_TENANT_LEN {
            return Err(TenantError::TooLong { len: id.len() });
        }
        if id.chars().any(char::is_control) {
            return Err(TenantError::ControlCharacter);
        }
        Ok(TenantId(id))
    }

    /// The tenant of a single-tenant service (`"default"`).
    pub fn single() -> Self {
        TenantId("default".to_owned())
    }

    /// The tenant id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantId").field(&self.0).finish()
    }
}

impl std::str::FromStr for TenantId {
    type Err = TenantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(TenantId::new(""), Err(TenantError::Empty));
        assert_eq!(
            TenantId::new("t".repeat(256)),
            Err(TenantError::TooLong { len: 256 })
        );
        assert_eq!(TenantId::new("a\nb"), Err(TenantError::ControlCharacter));
        assert_eq!(
            TenantId::new("tenant-1").map(|t| t.0),
            Ok("tenant-1".into())
        );
    }
}
