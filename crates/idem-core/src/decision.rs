//! Records as the store holds them, and the one function that decides what a request
//! with a key does.

use chrono::{DateTime, Utc};

use crate::{Fingerprint, StoredResponse};

/// The state of a stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed by a request that has not finished (visible only to its own transaction
    /// in atomic mode, or to everyone in a phased mode).
    InFlight,
    /// Finished; the response is stored and replays byte for byte.
    Completed(StoredResponse),
    /// Finished, but the response was larger than the storage limit: the effects are
    /// committed and the status is known, the body is not.
    CompletedUnstored {
        /// The status the original request answered with.
        status: u16,
    },
}

/// A key's stored record, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that claimed the key.
    pub fingerprint: Fingerprint,
    /// Where the request stands.
    pub state: RecordState,
    /// When the key stops counting; from then on it is absent.
    pub expires_at: DateTime<Utc>,
}

impl Record {
    /// Whether the request behind the record finished: only a finished record is final
    /// (it never changes until it expires), so only it may be kept in memory.
    pub fn is_finished(&self) -> bool {
        !matches!(self.state, RecordState::InFlight)
    }

    /// The record with its expiry moved from the store's clock to this process's:
    /// it still counts for `expires_at - store_now`, measured from `local_sent`, the
    /// local time taken before the read that saw `store_now` was sent. The store read
    /// its clock after that, so the moved expiry is never later than the store's,
    /// however far apart the two clocks are.
    ///
    /// ```
    /// use chrono::{Duration, TimeZone, Utc};
    /// use idem_core::{BodyMode, Fingerprint, Record, RecordState};
    ///
    /// let store_now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    /// let fp = Fingerprint::builder("POST", "/p").body(b"{}", BodyMode::Raw).finish();
    /// let record = Record {
    ///     fingerprint: fp,
    ///     state: RecordState::CompletedUnstored { status: 201 },
    ///     expires_at: store_now + Duration::minutes(10),
    /// };
    /// // This process's clock runs five minutes behind the store's.
    /// let local_sent = store_now - Duration::minutes(5);
    /// let moved = record.on_local_clock(store_now, local_sent);
    /// assert_eq!(moved.expires_at, local_sent + Duration::minutes(10));
    /// ```
    pub fn on_local_clock(mut self, store_now: DateTime<Utc>, local_sent: DateTime<Utc>) -> Self {
        let remaining = self.expires_at.signed_duration_since(store_now);
        self.expires_at = local_sent.checked_add_signed(remaining).unwrap_or(
            if remaining > chrono::TimeDelta::zero() {
                DateTime::<Utc>::MAX_UTC
            } else {
                DateTime::<Utc>::MIN_UTC
            },
        );
        self
    }
}

/// What a request carrying a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No live record: run the handler (claiming or replacing the key).
    Execute,
    /// A finished record with the same fingerprint: answer from the record.
    Replay,
    /// A live record for a different request: refuse (422 or 409).
    Mismatch,
    /// The same request is still running: wait for it, or answer 409 + Retry-After.
    InFlight,
}

/// Decides what a request does, given the key's record (if any), the request's
/// fingerprint and the current time (the store's clock).
///
/// | record | fingerprint | decision |
/// |---|---|---|
/// | none, or expired (`expires_at <= now`) | any | `Execute` |
/// | live | different | `Mismatch` |
/// | live, finished | same | `Replay` |
/// | live, in flight | same | `InFlight` |
///
/// ```
/// use chrono::{Duration, Utc};
/// use idem_core::{decide, BodyMode, Decision, Fingerprint, Record, RecordState};
///
/// let now = Utc::now();
/// let fp = Fingerprint::builder("POST", "/p").body(b"{}", BodyMode::Raw).finish();
/// let running = Record { fingerprint: fp, state: RecordState::InFlight, expires_at: now + Duration::hours(24) };
/// assert_eq!(decide(None, &fp, now), Decision::Execute);
/// assert_eq!(decide(Some(&running), &fp, now), Decision::InFlight);
/// ```
pub fn decide(existing: Option<&Record>, incoming: &Fingerprint, now: DateTime<Utc>) -> Decision {
    let Some(record) = existing else {
        return Decision::Execute;
    };
    if record.expires_at <= now {
        return Decision::Execute;
    }
    if record.fingerprint != *incoming {
        return Decision::Mismatch;
    }
    match record.state {
        RecordState::InFlight => Decision::InFlight,
        RecordState::Completed(_) | RecordState::CompletedUnstored { .. } => Decision::Replay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BodyMode;
    use chrono::Duration;
    use proptest::prelude::*;

    fn fp(body: &[u8]) -> Fingerprint {
        Fingerprint::builder("POST", "/p")
            .body(body, BodyMode::Raw)
            .finish()
    }

    fn completed() -> RecordState {
        RecordState::Completed(StoredResponse {
            status: 201,
            headers: vec![],
            body: b"{}".to_vec(),
        })
    }

    fn state(n: u8) -> RecordState {
        match n % 3 {
            0 => RecordState::InFlight,
            1 => completed(),
            _ => RecordState::CompletedUnstored { status: 201 },
        }
    }

    #[test]
    fn table() {
        let now = Utc::now();
        let live = now + Duration::hours(1);
        let a = fp(b"a");
        let b = fp(b"b");
        let rec = |fingerprint, state, expires_at| Record {
            fingerprint,
            state,
            expires_at,
        };
        assert_eq!(decide(None, &a, now), Decision::Execute);
        assert_eq!(
            decide(Some(&rec(a, completed(), live)), &a, now),
            Decision::Replay
        );
        assert_eq!(
            decide(
                Some(&rec(
                    a,
                    RecordState::CompletedUnstored { status: 201 },
                    live
                )),
                &a,
                now
            ),
            Decision::Replay
        );
        assert_eq!(
            decide(Some(&rec(a, completed(), live)), &b, now),
            Decision::Mismatch
        );
        assert_eq!(
            decide(Some(&rec(a, RecordState::InFlight, live)), &a, now),
            Decision::InFlight
        );
        assert_eq!(
            decide(Some(&rec(a, RecordState::InFlight, live)), &b, now),
            Decision::Mismatch
        );
        assert_eq!(
            decide(Some(&rec(a, completed(), now)), &b, now),
            Decision::Execute
        );
        assert_eq!(
            decide(
                Some(&rec(a, completed(), now - Duration::seconds(1))),
                &a,
                now
            ),
            Decision::Execute
        );
    }

    proptest! {
        #[test]
        fn decision_follows_the_table(
            same in any::<bool>(),
            st in 0u8..3,
            offset_secs in -100_000i64..100_000,
            present in any::<bool>(),
        ) {
            let now = Utc::now();
            let stored = fp(b"stored");
            let incoming = if same { stored } else { fp(b"other") };
            let record = Record {
                fingerprint: stored,
                state: state(st),
                expires_at: now + Duration::seconds(offset_secs),
            };
            let got = decide(present.then_some(&record), &incoming, now);
            let expected = if !present || offset_secs <= 0 {
                Decision::Execute
            } else if !same {
                Decision::Mismatch
            } else if st == 0 {
                Decision::InFlight
            } else {
                Decision::Replay
            };
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_record_moved_to_the_local_clock_never_outlives_the_store_s_expiry() {
        use chrono::Duration;
        let fp = Fingerprint::builder("POST", "/p")
            .body(b"{}", crate::BodyMode::Raw)
            .finish();
        let store_now = Utc::now();
        let record = Record {
            fingerprint: fp,
            state: RecordState::CompletedUnstored { status: 201 },
            expires_at: store_now + Duration::seconds(60),
        };
        for skew in [-3600, -1, 0, 1, 3600] {
            // The local clock reads `skew` seconds ahead of the store's, and the read
            // reached the store 20 ms after it was sent.
            let local_sent = store_now + Duration::seconds(skew) - Duration::milliseconds(20);
            let moved = record.clone().on_local_clock(store_now, local_sent);
            let store_expiry_on_local_clock = record.expires_at + Duration::seconds(skew);
            assert!(
                moved.expires_at <= store_expiry_on_local_clock,
                "skew {skew}"
            );
            assert_eq!(moved.expires_at, local_sent + Duration::seconds(60));
        }
    }

    #[test]
    fn only_a_finished_record_is_final() {
        let fp = Fingerprint::builder("POST", "/p")
            .body(b"{}", crate::BodyMode::Raw)
            .finish();
        let at = Utc::now();
        let record = |state| Record {
            fingerprint: fp,
            state,
            expires_at: at,
        };
        assert!(!record(RecordState::InFlight).is_finished());
        assert!(record(RecordState::CompletedUnstored { status: 201 }).is_finished());
    }
}
