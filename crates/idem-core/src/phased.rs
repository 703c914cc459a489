//! The phased mode's decisions: what a request does with a key whose row committed
//! before the work (a lease and a fencing token on it), the journal of the phases that
//! committed, and the keys a phase passes to other services.
//!
//! In phased mode the key row commits at once, in progress, with a lease
//! (`locked_until`) and a fencing token. The handler runs as named phases, each one
//! transaction that commits its writes with the phase's entry in the journal (its
//! output, or the permanent failure it ended in) and the new recovery point. A retry
//! after the lease passed takes the key over with a fresh token and runs the handler
//! again: every phase already in the journal answers from it instead of running, so
//! the work resumes where it stopped. The stale owner's next phase finds another token
//! on the row and commits nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Fingerprint, IdempotencyKey, Record, RecordState, TenantId, decide};

/// What a request with a key does on a phased route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhasedDecision {
    /// No live record: claim the key (its row commits at once, leased) and run.
    Execute,
    /// Finished, same request: answer from the record.
    Replay,
    /// A live record for a different request: refuse (422 or 409).
    Mismatch,
    /// Finished and expired, its tombstone standing, same request: refuse (410
    /// `key-expired`).
    Expired,
    /// In progress and its owner's lease has not passed: wait for it to finish, or
    /// answer 409 + Retry-After.
    Wait,
    /// In progress and the lease passed (the owner crashed or hangs): take the key
    /// over with a fresh fencing token and resume from the journal.
    TakeOver,
}

/// Decides what a request does on a phased route, given the key's record (if any),
/// the end of its lease (`None` for a finished record, or a row no phased request
/// owns), the request's fingerprint and the store's clock.
///
/// | record | fingerprint | lease | decision |
/// |---|---|---|---|
/// | none, or finished and expired (no standing tombstone) | any | | `Execute` |
/// | finished, expired, its tombstone stands | same | | `Expired` |
/// | live | different | | `Mismatch` |
/// | finished | same | | `Replay` |
/// | in progress | same | until after `now` | `Wait` |
/// | in progress | same | passed, or none | `TakeOver` |
///
/// An in-progress record never expires: its work is half done, and only finishing
/// it (a retry, or the completer) ends it.
///
/// ```
/// use chrono::{Duration, Utc};
/// use idem_core::phased::{PhasedDecision, decide_phased};
/// use idem_core::{BodyMode, Fingerprint, Record, RecordState};
///
/// let now = Utc::now();
/// let fp = Fingerprint::builder("POST", "/p").body(b"{}", BodyMode::Raw).finish();
/// let running = Record {
///     fingerprint: fp,
///     state: RecordState::InFlight,
///     expires_at: now,
///     tombstone: None,
/// };
/// let lease = now + Duration::seconds(10);
/// assert_eq!(decide_phased(Some(&running), Some(lease), &fp, now), PhasedDecision::Wait);
/// let later = lease + Duration::seconds(1);
/// assert_eq!(decide_phased(Some(&running), Some(lease), &fp, later), PhasedDecision::TakeOver);
/// ```
pub fn decide_phased(
    existing: Option<&Record>,
    lease_until: Option<DateTime<Utc>>,
    incoming: &Fingerprint,
    now: DateTime<Utc>,
) -> PhasedDecision {
    let Some(record) = existing else {
        return PhasedDecision::Execute;
    };
    if record.is_finished() {
        return match decide(Some(record), incoming, now) {
            crate::Decision::Execute => PhasedDecision::Execute,
            crate::Decision::Mismatch => PhasedDecision::Mismatch,
            crate::Decision::Expired => PhasedDecision::Expired,
            crate::Decision::Replay | crate::Decision::InFlight => PhasedDecision::Replay,
        };
    }
    debug_assert!(matches!(record.state, RecordState::InFlight));
    if record.fingerprint != *incoming {
        return PhasedDecision::Mismatch;
    }
    match lease_until {
        Some(until) if until > now => PhasedDecision::Wait,
        _ => PhasedDecision::TakeOver,
    }
}

/// What a committed phase left in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseEntry {
    /// The phase committed; its output, as JSON.
    Done(serde_json::Value),
    /// The phase failed permanently (its writes rolled back); the reason. A resumed
    /// handler gets the same failure from the journal, so it compensates the same way.
    Failed(String),
}

/// The phases of a key that committed, by name: stored as a JSON object on the key
/// row (`{"pending": {"done": ...}, "recorded": {"failed": "..."}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Journal {
    entries: BTreeMap<String, PhaseEntry>,
}

impl Journal {
    /// What the phase `name` left, if it committed.
    pub fn entry(&self, name: &str) -> Option<&PhaseEntry> {
        self.entries.get(name)
    }

    /// Records what the phase `name` left (a phase commits once: a later entry of the
    /// same name replaces nothing the store kept, see the store's phase commit).
    pub fn record(&mut self, name: &str, entry: PhaseEntry) {
        self.entries.insert(name.to_owned(), entry);
    }

    /// How many phases committed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no phase committed yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether `name` can name a phase: 1 to 64 of `a-z`, `0-9`, `_`, `-` and `.`, so it
/// reads the same in the journal, the recovery point column, logs and derived keys.
pub fn is_phase_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.'))
}

/// The key a phase sends to another service, so that service dedupes the phase's call
/// however often the phase runs (a resume after a crash calls again with the same
/// key). It is `idem-` and the hex SHA-256 of the tenant, the request's key and the
/// phase's name (zero-byte separated): the same for every run of the phase, different
/// for each tenant, key and phase, and it reveals neither the tenant nor the key.
///
/// ```
/// use idem_core::phased::derived_key;
/// use idem_core::{IdempotencyKey, TenantId};
///
/// let tenant = TenantId::new("acme").unwrap();
/// let key = IdempotencyKey::parse("order-7").unwrap();
/// let charge = derived_key(&tenant, &key, "charge");
/// assert_eq!(charge, derived_key(&tenant, &key, "charge"));
/// assert_ne!(charge, derived_key(&tenant, &key, "refund"));
/// assert!(charge.as_str().starts_with("idem-") && charge.as_str().len() == 69);
/// ```
pub fn derived_key(tenant: &TenantId, key: &IdempotencyKey, phase: &str) -> IdempotencyKey {
    let mut hash = Sha256::new();
    hash.update(tenant.as_str().as_bytes());
    hash.update([0]);
    hash.update(key.as_str().as_bytes());
    hash.update([0]);
    hash.update(phase.as_bytes());
    IdempotencyKey::from_protected(format!("idem-{}", hex::encode(hash.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BodyMode, StoredResponse};
    use chrono::Duration;

    fn fp(body: &[u8]) -> Fingerprint {
        Fingerprint::builder("POST", "/p")
            .body(body, BodyMode::Raw)
            .finish()
    }

    fn record(state: RecordState, expires_at: DateTime<Utc>) -> Record {
        Record {
            fingerprint: fp(b"a"),
            state,
            expires_at,
            tombstone: None,
        }
    }

    fn done() -> RecordState {
        RecordState::Completed(StoredResponse {
            status: 201,
            headers: vec![],
            body: b"{}".to_vec(),
        })
    }

    #[test]
    fn a_live_lease_waits_and_a_passed_one_is_taken_over() {
        let now = Utc::now();
        let running = record(RecordState::InFlight, now - Duration::days(2));
        let live = Some(now + Duration::seconds(1));
        let passed = Some(now - Duration::seconds(1));
        assert_eq!(
            decide_phased(Some(&running), live, &fp(b"a"), now),
            PhasedDecision::Wait
        );
        assert_eq!(
            decide_phased(Some(&running), passed, &fp(b"a"), now),
            PhasedDecision::TakeOver,
            "an in-progress key never expires: it is resumed"
        );
        assert_eq!(
            decide_phased(Some(&running), Some(now), &fp(b"a"), now),
            PhasedDecision::TakeOver,
            "a lease ends at its instant"
        );
        assert_eq!(
            decide_phased(Some(&running), None, &fp(b"a"), now),
            PhasedDecision::TakeOver
        );
    }

    #[test]
    fn another_request_with_the_key_is_a_mismatch_whatever_the_lease() {
        let now = Utc::now();
        let running = record(RecordState::InFlight, now);
        for lease in [Some(now + Duration::seconds(5)), None] {
            assert_eq!(
                decide_phased(Some(&running), lease, &fp(b"b"), now),
                PhasedDecision::Mismatch
            );
        }
    }

    #[test]
    fn finished_keys_replay_until_they_expire() {
        let now = Utc::now();
        let finished = record(done(), now + Duration::hours(1));
        assert_eq!(
            decide_phased(Some(&finished), None, &fp(b"a"), now),
            PhasedDecision::Replay
        );
        assert_eq!(
            decide_phased(Some(&finished), None, &fp(b"b"), now),
            PhasedDecision::Mismatch
        );
        let expired = record(done(), now - Duration::seconds(1));
        assert_eq!(
            decide_phased(Some(&expired), None, &fp(b"b"), now),
            PhasedDecision::Execute
        );
        assert_eq!(
            decide_phased(None, None, &fp(b"a"), now),
            PhasedDecision::Execute
        );
    }

    #[test]
    fn the_journal_is_a_json_object_of_entries() {
        let mut journal = Journal::default();
        journal.record("pending", PhaseEntry::Done(serde_json::json!({"id": 7})));
        journal.record("recorded", PhaseEntry::Failed("card declined".into()));
        let json = serde_json::to_value(&journal).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "pending": {"done": {"id": 7}},
                "recorded": {"failed": "card declined"}
            })
        );
        let back: Journal = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, journal);
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn phase_names_are_short_and_plain() {
        assert!(is_phase_name("charge"));
        assert!(is_phase_name("step-2.refund_1"));
        for bad in ["", "Charge", "a b", "ü", &"x".repeat(65)] {
            assert!(!is_phase_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn derived_keys_differ_by_tenant_key_and_phase_and_are_valid_keys() {
        let t = |s: &str| TenantId::new(s).expect("tenant");
        let k = |s: &str| IdempotencyKey::parse(s).expect("key");
        let base = derived_key(&t("a"), &k("k"), "p");
        assert_ne!(base, derived_key(&t("b"), &k("k"), "p"));
        assert_ne!(base, derived_key(&t("a"), &k("k2"), "p"));
        assert_ne!(base, derived_key(&t("a"), &k("k"), "q"));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(
            derived_key(&t("a"), &k("bc"), "p"),
            derived_key(&t("ab"), &k("c"), "p")
        );
        assert_eq!(IdempotencyKey::parse(base.as_str()).expect("valid"), base);
    }
}
