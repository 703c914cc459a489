//! How background work paces itself beside the requests it shares a database with.

use std::time::Duration;

/// The share of its time a sweeper spends deleting by default: after a batch it waits
/// nine times as long as the batch took.
pub const SWEEP_SHARE: f64 = 0.1;

/// The smallest share [`pause_after`] honours: a pause is at most 99 times its batch.
pub const MIN_SHARE: f64 = 0.01;

/// How long to wait after a batch that took `took`, so that batches take `share` of
/// the time: a share of 1 or more never waits, one below [`MIN_SHARE`] counts as
/// `MIN_SHARE`, NaN as [`SWEEP_SHARE`]. A loaded database makes batches slower, and so
/// the waits longer: the work backs off exactly when requests need the database most.
pub fn pause_after(took: Duration, share: f64) -> Duration {
    let share = if share.is_nan() {
        SWEEP_SHARE
    } else {
        share.max(MIN_SHARE)
    };
    if share >= 1.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(took.as_secs_f64() * (1.0 - share) / share).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_followed_by_a_pause_that_keeps_it_to_its_share() {
        let took = Duration::from_millis(10);
        assert_eq!(pause_after(took, 0.2), Duration::from_millis(40));
        assert_eq!(pause_after(took, SWEEP_SHARE), Duration::from_millis(90));
        assert_eq!(pause_after(took, 0.5), Duration::from_millis(10));
    }

    #[test]
    fn a_whole_share_never_waits_and_a_tiny_one_waits_a_bounded_time() {
        let took = Duration::from_millis(10);
        assert_eq!(pause_after(took, 1.0), Duration::ZERO);
        assert_eq!(pause_after(took, 3.0), Duration::ZERO);
        assert_eq!(pause_after(took, 0.0), Duration::from_millis(990));
        assert_eq!(pause_after(took, 1e-300), Duration::from_millis(990));
        assert_eq!(pause_after(took, -1.0), Duration::from_millis(990));
        assert_eq!(pause_after(took, f64::NAN), pause_after(took, SWEEP_SHARE));
        assert_eq!(pause_after(Duration::MAX, 0.5), Duration::MAX);
    }
}
