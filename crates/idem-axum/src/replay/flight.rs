//! Single flight: duplicates of a request running in this process wait in memory on
//! the request that holds the key, instead of each holding a pooled connection and a
//! transaction blocked on the key's row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use idem_core::{IdempotencyKey, Record, TenantId};
use tokio::sync::watch;

/// How the request that held a key left it, as its duplicates need to know.
#[derive(Debug, Clone)]
pub(crate) enum Landed {
    /// The key has a committed record (executed now, or found in the store): the
    /// duplicates decide against it without a trip to the store.
    Record(Arc<Record>),
    /// Another process holds the key and did not finish within the wait.
    Busy,
    /// Nothing known to be committed (rolled back, failed, unavailable): a duplicate
    /// goes to the store itself.
    Unknown,
}

type FlightKey = (TenantId, IdempotencyKey);
type Slot = Arc<watch::Sender<Option<Landed>>>;

/// The keys held by requests of this process, with a channel each for their duplicates.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    held: Mutex<HashMap<FlightKey, Slot>>,
}

/// What a request that joins a key's flight does.
pub(crate) enum Join {
    /// It holds the key in this process: go to the store, then [`Leader::land`].
    Leader(Leader),
    /// Another request of this process holds it: wait for its landing.
    Follower(watch::Receiver<Option<Landed>>),
}

impl Flights {
    /// Joins the flight of (tenant, key): leads it when no request of this process
    /// holds the key, follows the one that does otherwise.
    pub(crate) fn join(self: &Arc<Self>, tenant: &TenantId, key: &IdempotencyKey) -> Join {
        let flight_key = (tenant.clone(), key.clone());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = held.get(&flight_key) {
            return Join::Follower(slot.subscribe());
        }
        let slot: Slot = Arc::new(watch::Sender::new(None));
        held.insert(flight_key.clone(), slot.clone());
        Join::Leader(Leader {
            flights: self.clone(),
            key: flight_key,
            slot,
            landed: false,
        })
    }

    fn release(&self, key: &FlightKey, slot: &Slot) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            held.remove(key);
        }
    }
}

/// The request that holds a key in this process. Dropping it without landing (a
/// panic, a cancelled task) tells the duplicates that nothing is known.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: FlightKey,
    slot: Slot,
    landed: bool,
}

impl Leader {
    /// Releases the key and tells every duplicate waiting on it how it was left.
    pub(crate) fn land(mut self, landed: Landed) {
        self.finish(landed);
    }

    fn finish(&mut self, landed: Landed) {
        if self.landed {
            return;
        }
        self.landed = true;
        // Release first: a request arriving after this point goes to the store, which
        // already shows what was committed.
        self.flights.release(&self.key, &self.slot);
        self.slot.send_replace(Some(landed));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish(Landed::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, IdempotencyKey) {
        (
            TenantId::new("t").expect("tenant"),
            IdempotencyKey::parse("k").expect("key"),
        )
    }

    #[tokio::test]
    async fn followers_learn_how_the_leader_landed_and_the_key_is_released() {
        let flights = Arc::new(Flights::default());
        let (tenant, key) = ids();
        let Join::Leader(leader) = flights.join(&tenant, &key) else {
            panic!("the first request leads");
        };
        let Join::Follower(mut rx) = flights.join(&tenant, &key) else {
            panic!("the second request follows");
        };
        leader.land(Landed::Busy);
        let landed = rx.wait_for(Option::is_some).await.expect("landed").clone();
        assert!(matches!(landed, Some(Landed::Busy)));
        assert!(
            matches!(flights.join(&tenant, &key), Join::Leader(_)),
            "after landing the next request leads again"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_lands_unknown() {
        let flights = Arc::new(Flights::default());
        let (tenant, key) = ids();
        let leader = flights.join(&tenant, &key);
        let Join::Follower(mut rx) = flights.join(&tenant, &key) else {
            panic!("follows");
        };
        drop(leader);
        let landed = rx.wait_for(Option::is_some).await.expect("landed").clone();
        assert!(matches!(landed, Some(Landed::Unknown)));
    }
}
