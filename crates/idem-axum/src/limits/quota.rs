//! A quota of live keys per tenant, counted in the store and cached for a while.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use idem_core::TenantId;
use tokio::time::Instant;

/// How long a tenant's count is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(10);

/// How many tenants' counts are kept; beyond it the stalest are forgotten.
const TRACKED_TENANTS: usize = 10_000;

/// How often the highest usage is found again among all tenants' counts (in between,
/// it only rises with the count just admitted).
const RESCAN: Duration = Duration::from_secs(1);

/// Each tenant may hold at most `max_live` live keys (in flight or completed, not
/// expired).
#[derive(Debug)]
pub(crate) struct KeyQuota {
    max_live: u64,
    counts: Mutex<Counts>,
}

/// The tenants' counts, and the highest of them as last found.
#[derive(Debug, Default)]
struct Counts {
    by_tenant: HashMap<TenantId, Usage>,
    highest: u64,
    rescanned: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    live: u64,
    read_at: Instant,
}

impl KeyQuota {
    pub(crate) fn new(max_live: u64) -> Self {
        KeyQuota {
            max_live,
            counts: Mutex::default(),
        }
    }

    /// The tenant's live keys with the one just claimed, when a recent count is known.
    pub(crate) fn cached_with_new(&self, tenant: &TenantId) -> Option<u64> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let known = counts.by_tenant.get(tenant)?;
        (known.read_at.elapsed() < REFRESH).then(|| known.live.saturating_add(1))
    }

    /// Whether `live` keys (the new one included) are within the quota; when they
    /// are, they become the tenant's count. `fresh`: `live` was just read from the
    /// store (else it is the cached count plus one, and keeps the count's age).
    pub(crate) fn admit(&self, tenant: &TenantId, live: u64, fresh: bool) -> bool {
        let within = live <= self.max_live;
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = &mut counts.by_tenant;
        if usage.len() >= TRACKED_TENANTS && !usage.contains_key(tenant) {
            usage.retain(|_, u| u.read_at.elapsed() < REFRESH);
        }
        let read_at = match usage.get(tenant) {
            Some(known) if !fresh => known.read_at,
            _ => Instant::now(),
        };
        let counted = if within { live } else { live.saturating_sub(1) };
        usage.insert(
            tenant.clone(),
            Usage {
                live: counted,
                read_at,
            },
        );
        counts.highest = counts.highest.max(counted);
        if counts.rescanned.is_none_or(|at| at.elapsed() >= RESCAN) {
            counts.highest = counts.by_tenant.values().map(|u| u.live).max().unwrap_or(0);
            counts.rescanned = Some(Instant::now());
        }
        let highest = counts.highest;
        drop(counts);
        self.report(highest);
        within
    }

    /// The highest usage among the tenants this process knows, as a share of the quota.
    fn report(&self, highest: u64) {
        let ratio = highest as f64 / self.max_live.max(1) as f64;
        #[cfg(feature = "metrics")]
        metrics::gauge!(idem_core::observe::names::KEY_QUOTA_USAGE).set(ratio);
        #[cfg(not(feature = "metrics"))]
        let _ = ratio;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_is_held_to_its_quota_and_others_are_not() {
        let quota = KeyQuota::new(2);
        let (a, b) = (
            TenantId::new("a").expect("a"),
            TenantId::new("b").expect("b"),
        );
        assert_eq!(quota.cached_with_new(&a), None, "nothing read yet");
        assert!(quota.admit(&a, 1, true));
        assert_eq!(quota.cached_with_new(&a), Some(2));
        assert!(quota.admit(&a, 2, false));
        assert_eq!(quota.cached_with_new(&a), Some(3));
        assert!(!quota.admit(&a, 3, false), "over the quota");
        assert_eq!(
            quota.cached_with_new(&a),
            Some(3),
            "the refused key is not counted"
        );
        assert!(quota.admit(&b, 1, true));
    }
}
