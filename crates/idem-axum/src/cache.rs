//! Replays from memory: finished records of this process's keys, bounded by bytes.
//!
//! A finished record never changes until it expires, so a copy answers a replay or a
//! mismatch as the store would, on any replica and after any restart (a miss falls
//! back to the store). Expiry is on this process's clock, moved so that it is never
//! later than the store's ([`Record::on_local_clock`]).

use std::sync::Arc;

use chrono::Utc;
use idem_core::{Decision, IdempotencyKey, Record, RecordState, TenantId, decide};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::store::Keyed;

/// Bytes an entry is counted for beyond its keys, headers and body.
const ENTRY_OVERHEAD: u64 = 160;
/// The entry size the cache's table is sized for.
const TYPICAL_ENTRY: u64 = 1024;

type Key = (TenantId, IdempotencyKey);

/// The bounded map of finished records. With a bound of 0 it keeps nothing.
pub(crate) struct ReplayCache {
    entries: Option<Cache<Key, Arc<Record>, ByBytes>>,
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
        let record = entries.get(&key)?;
        match decide(Some(&record), &keyed.fingerprint, Utc::now()) {
            decision @ (Decision::Replay | Decision::Mismatch) => Some((decision, record)),
            Decision::Execute | Decision::InFlight => {
                entries.remove(&key);
                None
            }
        }
    }

    /// Keeps a finished record (on this process's clock); anything else is ignored.
    pub(crate) fn keep(&self, keyed: &Keyed, record: &Arc<Record>) {
        let Some(entries) = self.entries.as_ref() else {
            return;
        };
        if record.is_finished() && record.expires_at > Utc::now() {
            let key = (keyed.tenant.clone(), keyed.key.clone());
            entries.insert(key, record.clone());
        }
    }
}

/// An entry weighs what it holds.
#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Arc<Record>> for ByBytes {
    fn weight(&self, key: &Key, record: &Arc<Record>) -> u64 {
        let stored = match &record.state {
            RecordState::Completed(response) => response.size(),
            RecordState::InFlight | RecordState::CompletedUnstored { .. } => 0,
        };
        let keys = key.0.as_str().len() + key.1.as_str().len();
        ENTRY_OVERHEAD + (stored + keys) as u64
    }
}
