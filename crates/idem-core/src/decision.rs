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

/// What a finished key leaves once its retention has passed, on a route whose policy
/// keeps tombstones: until `until`, a retry of the same request is told the key
/// expired (410 `key-expired`) instead of running again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// When the original request completed.
    pub completed_at: DateTime<Utc>,
    /// The end of the window: the key's expiry plus the route's tombstone window.
    pub until: DateTime<Utc>,
}

/// A key's stored record, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that claimed the key.
    pub fingerprint: Fingerprint,
    /// Where the request stands.
    pub state: RecordState,
    /// When the key stops counting; from then on it is absent, or a tombstone.
    pub expires_at: DateTime<Utc>,
    /// What the key leaves after `expires_at`, when its route keeps tombstones and the
    /// request finished; `None` otherwise.
    pub tombstone: Option<Tombstone>,
}

impl Record {
    /// Whether the request behind the record finished: only a finished record is final
    /// (it never changes until it expires), so only it may be kept in memory.
    pub fn is_finished(&self) -> bool {
        !matches!(self.state, RecordState::InFlight)
    }

    /// The record as a route decides with it: a route that keeps no tombstones
    /// (`route_keeps` false) does not answer from one, whatever the key kept.
    pub fn tombstone_kept(mut self, route_keeps: bool) -> Self {
        if !route_keeps {
            self.tombstone = None;
        }
        self
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
    ///     tombstone: None,
    /// };
    /// // This process's clock runs five minutes behind the store's.
    /// let local_sent = store_now - Duration::minutes(5);
    /// let moved = record.on_local_clock(store_now, local_sent);
    /// assert_eq!(moved.expires_at, local_sent + Duration::minutes(10));
    /// ```
    pub fn on_local_clock(mut self, store_now: DateTime<Utc>, local_sent: DateTime<Utc>) -> Self {
        self.expires_at = moved(self.expires_at, store_now, local_sent);
        if let Some(tombstone) = &mut self.tombstone {
            tombstone.until = moved(tombstone.until, store_now, local_sent);
        }
        self
    }
}

/// `at`, read on the store's clock at `store_now`, on the local clock that read
/// `local_sent` before the read was sent.
fn moved(at: DateTime<Utc>, store_now: DateTime<Utc>, local_sent: DateTime<Utc>) -> DateTime<Utc> {
    let remaining = at.signed_duration_since(store_now);
    local_sent
        .checked_add_signed(remaining)
        .unwrap_or(if remaining > chrono::TimeDelta::zero() {
            DateTime::<Utc>::MAX_UTC
        } else {
            DateTime::<Utc>::MIN_UTC
        })
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
    /// The same request finished so long ago that its key expired, and the key's
    /// tombstone still stands: refuse (410 `key-expired`) rather than run it again.
    Expired,
}

/// Decides what a request does, given the key's record (if any), the request's
/// fingerprint and the current time (the store's clock).
///
/// | record | fingerprint | decision |
/// |---|---|---|
/// | none, or expired (`expires_at <= now`) without a standing tombstone | any | `Execute` |
/// | expired, finished, its tombstone stands (`until > now`) | same | `Expired` |
/// | expired, finished, its tombstone stands | different | `Mismatch` |
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
/// let running = Record {
///     fingerprint: fp,
///     state: RecordState::InFlight,
///     expires_at: now + Duration::hours(24),
///     tombstone: None,
/// };
/// assert_eq!(decide(None, &fp, now), Decision::Execute);
/// assert_eq!(decide(Some(&running), &fp, now), Decision::InFlight);
/// ```
pub fn decide(existing: Option<&Record>, incoming: &Fingerprint, now: DateTime<Utc>) -> Decision {
    let Some(record) = existing else {
        return Decision::Execute;
    };
    if record.expires_at <= now {
        return match record.tombstone {
            Some(tombstone) if tombstone.until > now && record.is_finished() => {
                if record.fingerprint == *incoming {
                    Decision::Expired
                } else {
                    Decision::Mismatch
                }
            }
            _ => Decision::Execute,
        };
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
            tombstone: None,
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
                tombstone: None,
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
    fn a_retry_within_the_tombstone_s_window_is_refused_and_runs_again_after_it() {
        let now = Utc::now();
        let (a, b) = (fp(b"a"), fp(b"b"));
        let expired = |state, until| Record {
            fingerprint: a,
            state,
            expires_at: now - Duration::days(1),
            tombstone: Some(Tombstone {
                completed_at: now - Duration::days(8),
                until,
            }),
        };
        let standing = now + Duration::days(30);
        let unstored = RecordState::CompletedUnstored { status: 201 };
        assert_eq!(
            decide(Some(&expired(completed(), standing)), &a, now),
            Decision::Expired
        );
        assert_eq!(
            decide(Some(&expired(unstored.clone(), standing)), &a, now),
            Decision::Expired
        );
        assert_eq!(
            decide(Some(&expired(completed(), standing)), &b, now),
            Decision::Mismatch
        );
        // The window passed: the key is gone, whatever the request.
        assert_eq!(
            decide(Some(&expired(completed(), now)), &a, now),
            Decision::Execute
        );
        assert_eq!(
            decide(Some(&expired(unstored, now)), &b, now),
            Decision::Execute
        );
        // A request that never finished leaves no tombstone to answer from.
        assert_eq!(
            decide(Some(&expired(RecordState::InFlight, standing)), &a, now),
            Decision::Execute
        );
        // A live key answers as it always did, tombstone or not.
        let live = Record {
            expires_at: now + Duration::hours(1),
            ..expired(completed(), standing)
        };
        assert_eq!(decide(Some(&live), &a, now), Decision::Replay);
    }

    #[test]
    fn a_tombstone_moved_to_the_local_clock_moves_with_its_record() {
        let store_now = Utc::now();
        let until = store_now + Duration::seconds(90);
        let record = Record {
            fingerprint: fp(b"a"),
            state: RecordState::CompletedUnstored { status: 201 },
            expires_at: store_now - Duration::seconds(10),
            tombstone: Some(Tombstone {
                completed_at: store_now - Duration::seconds(100),
                until,
            }),
        };
        let local_sent = store_now - Duration::seconds(3600);
        let moved = record.on_local_clock(store_now, local_sent);
        assert_eq!(
            moved.tombstone.map(|t| t.until),
            Some(local_sent + Duration::seconds(90))
        );
        assert_eq!(moved.expires_at, local_sent - Duration::seconds(10));
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
            tombstone: None,
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
            tombstone: None,
        };
        assert!(!record(RecordState::InFlight).is_finished());
        assert!(record(RecordState::CompletedUnstored { status: 201 }).is_finished());
    }
}
