//! What a failed delivery means for the message: retry it (when), or dead-letter it.
//! The outbox relay decides with these for each sink failure, the inbox for each
//! failed processing, and the webhook sink classifies HTTP answers with them.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` that is honoured; a longer one is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How a delivery (or a consumer's processing) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It may succeed later: retry with backoff, and not before `retry_after` when the
    /// destination said so.
    Transient {
        /// The destination's `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// It will never succeed as it is (a permanent 4xx, an unpublishable header):
    /// dead-letter it now, whatever the attempts left.
    Permanent,
}

impl Failure {
    /// A transient failure without a `Retry-After`.
    pub const TRANSIENT: Failure = Failure::Transient { retry_after: None };
}

/// What happens to a message after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this delay.
    RetryIn(Duration),
    /// Stop: keep it as a dead letter (listed, redrivable).
    DeadLetter,
}

/// Decides what follows the failed attempt number `attempts` (counting it) when at
/// most `max_attempts` are allowed: a permanent failure or the last attempt
/// dead-letters; otherwise the message is retried after `backoff` (the caller's
/// jittered exponential delay), or after the destination's `Retry-After` when that is
/// longer.
///
/// ```
/// use std::time::Duration;
/// use idem_core::delivery::{AfterFailure, Failure, after_failure};
///
/// let backoff = Duration::from_millis(400);
/// assert_eq!(after_failure(1, 5, Failure::TRANSIENT, backoff), AfterFailure::RetryIn(backoff));
/// assert_eq!(after_failure(5, 5, Failure::TRANSIENT, backoff), AfterFailure::DeadLetter);
/// assert_eq!(after_failure(1, 5, Failure::Permanent, backoff), AfterFailure::DeadLetter);
/// let later = Failure::Transient { retry_after: Some(Duration::from_secs(30)) };
/// assert_eq!(after_failure(1, 5, later, backoff), AfterFailure::RetryIn(Duration::from_secs(30)));
/// ```
pub fn after_failure(
    attempts: i32,
    max_attempts: i32,
    failure: Failure,
    backoff: Duration,
) -> AfterFailure {
    match failure {
        Failure::Permanent => AfterFailure::DeadLetter,
        Failure::Transient { .. } if attempts >= max_attempts => AfterFailure::DeadLetter,
        Failure::Transient { retry_after } => {
            AfterFailure::RetryIn(retry_after.map_or(backoff, |after| after.max(backoff)))
        }
    }
}

/// Classifies a webhook's non-2xx answer. 4xx answers are permanent (the request
/// itself is wrong; sending it again changes nothing), except 408 Request Timeout,
/// 409 Conflict, 425 Too Early and 429 Too Many Requests, which say "later". 5xx and
/// anything else are transient. `Retry-After` (seconds or an HTTP date, relative to
/// `now`) is honoured on transient answers, clamped to [`MAX_RETRY_AFTER`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use idem_core::delivery::{Failure, classify_http};
///
/// let now = SystemTime::now();
/// assert_eq!(classify_http(422, None, now), Failure::Permanent);
/// assert_eq!(
///     classify_http(429, Some("7"), now),
///     Failure::Transient { retry_after: Some(Duration::from_secs(7)) }
/// );
/// assert_eq!(classify_http(503, Some("soon"), now), Failure::TRANSIENT);
/// ```
pub fn classify_http(status: u16, retry_after: Option<&str>, now: SystemTime) -> Failure {
    let later_4xx = matches!(status, 408 | 409 | 425 | 429);
    if (400..500).contains(&status) && !later_4xx {
        return Failure::Permanent;
    }
    Failure::Transient {
        retry_after: retry_after.and_then(|value| parse_retry_after(value, now)),
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date (a date in the past
/// means now). `None` when it is neither; clamped to [`MAX_RETRY_AFTER`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use idem_core::delivery::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
///     Some(Duration::from_secs(10))
/// );
/// assert_eq!(parse_retry_after("-1", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: an overlong number is still "a long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Duration = Duration::from_millis(250);

    #[test]
    fn permanent_4xx_dead_letter_at_once_and_the_later_ones_retry() {
        let now = SystemTime::now();
        for status in [400, 401, 403, 404, 405, 410, 413, 415, 422, 451] {
            assert_eq!(
                classify_http(status, None, now),
                Failure::Permanent,
                "{status}"
            );
        }
        for status in [408, 409, 425, 429, 500, 502, 503, 504, 302, 100] {
            assert_eq!(
                classify_http(status, None, now),
                Failure::TRANSIENT,
                "{status}"
            );
        }
    }

    #[test]
    fn a_permanent_answer_ignores_its_retry_after() {
        assert_eq!(
            classify_http(404, Some("5"), SystemTime::now()),
            Failure::Permanent
        );
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff_only() {
        let short = Failure::Transient {
            retry_after: Some(Duration::from_millis(10)),
        };
        assert_eq!(
            after_failure(1, 3, short, BACKOFF),
            AfterFailure::RetryIn(BACKOFF)
        );
        let long = Failure::Transient {
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            after_failure(2, 3, long, BACKOFF),
            AfterFailure::RetryIn(Duration::from_secs(60))
        );
    }

    #[test]
    fn the_last_attempt_dead_letters_even_with_a_retry_after() {
        let later = Failure::Transient {
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(
            after_failure(3, 3, later, BACKOFF),
            AfterFailure::DeadLetter
        );
        assert_eq!(
            after_failure(4, 3, later, BACKOFF),
            AfterFailure::DeadLetter
        );
    }

    #[test]
    fn retry_after_dates_in_the_past_mean_now_and_huge_values_are_clamped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
    }
}
