//! Exponential backoff with full jitter, shared by the relay and the inbox.

use std::time::Duration;

use rand::Rng;

/// A random delay up to `min(max, base * 2^exponent)` (a negative exponent counts as 0).
pub(crate) fn full_jitter(base: Duration, max: Duration, exponent: i32) -> Duration {
    let exp = 2u32.saturating_pow(u32::try_from(exponent).unwrap_or(0).min(30));
    let cap = base.saturating_mul(exp).min(max);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
}
