//! Replays from memory: finished records of this process's keys, bounded by bytes.
//!
//! A finished record never changes until it expires, so a copy answers a replay or a
//! mismatch as the store would, on any replica and after any restart (a miss falls
//! back to the store). Expiry is on this process's clock, moved so that it is never
//! later than the store's ([`Record::on_local_clock`]), and held by a monotonic
//! deadline taken when the record is kept: a wall clock stepped back later never keeps
//! an entry past the store's expiry.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use idem_core::{Decision, IdempotencyKey, Record, RecordState, TenantId, decide};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::request::Keyed;

/// Bytes an entry is counted for beyond its keys, headers and body.
const ENTRY_OVERHEAD: u64 = 160;
/// The entry size the cache's table is sized for.
const TYPICAL_ENTRY: u64 = 1024;

type Key = (TenantId, IdempotencyKey);

/// A finished record, and the monotonic instant it expires at.
#[derive(Clone)]
struct Entry {
    record: Arc<Record>,
    until: Instant,
}

/// The bounded map of finished records. With a bound of 0 it keeps nothing.
pub(crate) struct ReplayCache {
    entries: Option<Cache<Key, Entry, ByBytes>>,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("entries", &self.entries.as_ref().map(Cache::len))
            .finish()
    }
}

impl ReplayCache {
    pub(crate) fn new(bytes: u64) -> Self {
        let entries = (bytes > 0).then(|| {
            let items = usize::try_from((bytes / TYPICAL_ENTRY).max(16)).unwrap_or(usize::MAX);
            Cache::with_weighter(items, bytes, ByBytes)
        });
        ReplayCache { entries }
    }

    /// What the record in memory says of this request: a replay or a mismatch, or
    /// `None` (nothing live in memory: ask the store).
    pub(crate) fn decide(&self, keyed: &Keyed) -> Option<(Decision, Arc<Record>)> {
        let entries = self.entries.as_ref()?;
        let key = (keyed.tenant.clone(), keyed.key.clone());
        let Entry { record, until } = entries.get(&key)?;
        let live = Instant::now() < until;
        match decide(Some(&record), &keyed.fingerprint, Utc::now()) {
            decision @ (Decision::Replay | Decision::Mismatch) if live => Some((decision, record)),
            _ => {
                entries.remove(&key);
                None
            }
        }
    }

    /// Keeps a finished record (on this process's clock) until it expires; anything
    /// else is ignored.
    pub(crate) fn keep(&self, keyed: &Keyed, record: &Arc<Record>) {
        let remaining = record.expires_at.signed_duration_since(Utc::now());
        if let Ok(remaining) = remaining.to_std() {
            self.keep_until(keyed, record, Instant::now() + remaining);
        }
    }

    /// Keeps a finished record until the monotonic instant `until`.
    fn keep_until(&self, keyed: &Keyed, record: &Arc<Record>, until: Instant) {
        let Some(entries) = self.entries.as_ref() else {
            return;
        };
        if record.is_finished() && Instant::now() < until {
            let key = (keyed.tenant.clone(), keyed.key.clone());
            let record = record.clone();
            entries.insert(key, Entry { record, until });
        }
    }
}

/// An entry weighs what it holds.
#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Entry> for ByBytes {
    fn weight(&self, key: &Key, entry: &Entry) -> u64 {
        let stored = match &entry.record.state {
            RecordState::Completed(response) => response.size(),
            RecordState::InFlight | RecordState::CompletedUnstored { .. } => 0,
        };
        let keys = key.0.as_str().len() + key.1.as_str().len();
        ENTRY_OVERHEAD + (stored + keys) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use idem_core::{BodyMode, Fingerprint, StoredResponse};

    use super::*;

    fn keyed() -> Keyed {
        Keyed {
            tenant: TenantId::new("acme").expect("tenant"),
            key: IdempotencyKey::parse("k1").expect("key"),
            sent: None,
            fingerprint: Fingerprint::builder("POST", "/p")
                .body(b"{}", BodyMode::Raw)
                .finish(),
            method: "POST".into(),
            path: "/p".into(),
            route: None,
            client: None,
        }
    }

    fn finished(keyed: &Keyed, expires_in: chrono::Duration) -> Arc<Record> {
        Arc::new(Record {
            fingerprint: keyed.fingerprint,
            state: RecordState::Completed(StoredResponse {
                status: 201,
                headers: Vec::new(),
                body: b"{}".to_vec(),
            }),
            expires_at: Utc::now() + expires_in,
            tombstone: None,
        })
    }

    #[test]
    fn a_kept_record_replays_until_it_expires() {
        let cache = ReplayCache::new(1 << 20);
        let keyed = keyed();
        cache.keep(&keyed, &finished(&keyed, chrono::Duration::hours(1)));
        assert!(matches!(cache.decide(&keyed), Some((Decision::Replay, _))));
        let expired = Keyed {
            key: IdempotencyKey::parse("k2").expect("key"),
            ..keyed
        };
        cache.keep(&expired, &finished(&expired, chrono::Duration::seconds(-1)));
        assert!(
            cache.decide(&expired).is_none(),
            "an expired record is not kept"
        );
    }

    #[test]
    fn a_wall_clock_stepped_back_never_keeps_an_entry_past_its_expiry() {
        let cache = ReplayCache::new(1 << 20);
        let keyed = keyed();
        // Kept with 50 ms left; then the wall clock steps back an hour, so that by it
        // the record lives on: the monotonic deadline still ends it.
        let record = finished(&keyed, chrono::Duration::hours(1));
        cache.keep_until(&keyed, &record, Instant::now() + Duration::from_millis(50));
        assert!(cache.decide(&keyed).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            cache.decide(&keyed).is_none(),
            "expired by the monotonic clock"
        );
    }
}
