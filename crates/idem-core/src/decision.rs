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
}
