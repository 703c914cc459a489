//! A rate of new keys per tenant, through `governor`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use idem_core::TenantId;

/// How many tenants the limiter tracks before it forgets those with a full bucket.
const TRACKED_TENANTS: usize = 10_000;

/// Who a rate of new keys is counted for: a tenant, or one client of a tenant when the
/// layer knows its clients.
pub(crate) type Claimant = (TenantId, Option<String>);

/// The rate of new keys each tenant (or each client of a tenant) may claim.
pub(crate) struct NewKeyLimiter {
    limiter: DefaultKeyedRateLimiter<Claimant>,
    clock: DefaultClock,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl std::fmt::Debug for NewKeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKeyLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl NewKeyLimiter {
    pub(crate) fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        NewKeyLimiter {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            per_second,
            burst,
        }
    }

    /// Takes one new key from the claimant's allowance; `Err(wait)` when it has none
    /// left for `wait`.
    pub(crate) fn admit(&self, claimant: &Claimant) -> Result<(), Duration> {
        if self.limiter.len() > TRACKED_TENANTS {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(claimant)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_allowance() {
        let three = NonZeroU32::new(3).expect("3");
        let limiter = NewKeyLimiter::new(NonZeroU32::MIN, three);
        let (a, b) = (
            TenantId::new("a").expect("a"),
            TenantId::new("b").expect("b"),
        );
        let (a, b) = ((a, None), (b, None));
        for _ in 0..3 {
            assert!(limiter.admit(&a).is_ok());
        }
        let wait = limiter.admit(&a).expect_err("a's burst is used");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.admit(&b).is_ok(), "b is not a's storm");
        let other_client = (a.0.clone(), Some("app-2".to_owned()));
        assert!(
            limiter.admit(&other_client).is_ok(),
            "nor another client's of a"
        );
    }
}
