//! What a layer holds and hands to every service it makes.

use std::sync::Arc;

use idem_sqlx::ReplayTally;
use sqlx::PgPool;

use crate::IdempotencyService;
use crate::config::Config;
use crate::replay::cache::ReplayCache;
use crate::replay::flight::Flights;

/// The parts of a layer every service made from it (and from its clones) shares.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) pool: PgPool,
    pub(super) config: Arc<Config>,
    pub(super) flights: Arc<Flights>,
    pub(super) cache: Arc<ReplayCache>,
    pub(super) tally: ReplayTally,
}

impl Shared {
    /// The parts of a layer over `pool` with every default.
    pub(super) fn new(pool: PgPool) -> Self {
        let config = Config::default();
        Shared {
            flights: Arc::new(Flights::default()),
            cache: Arc::new(ReplayCache::new(config.storage.replay_cache)),
            config: Arc::new(config),
            tally: ReplayTally::new(pool.clone()),
            pool,
        }
    }

    /// These parts with `change` made to the configuration.
    pub(super) fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The service these parts make around `inner`.
    pub(super) fn service<S>(&self, inner: S) -> IdempotencyService<S> {
        IdempotencyService {
            inner,
            pool: self.pool.clone(),
            config: self.config.clone(),
            flights: self.flights.clone(),
            cache: self.cache.clone(),
            tally: self.tally.clone(),
        }
    }
}
