//! The layers a route is wrapped in: [`IdempotencyLayer`] (atomic: the handler's
//! writes and the stored answer in one transaction) and the [`PhasedLayer`] it makes
//! for routes whose handlers call other services. Both hold the same parts
//! (`shared`) and make the same [`IdempotencyService`](crate::IdempotencyService).

mod idempotency;
mod phased;
mod shared;

pub use idempotency::IdempotencyLayer;
pub use phased::PhasedLayer;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use idem_core::policy::{KeyMode, Policy};
    use tower::Layer;

    use super::*;
    use crate::config::{PhasedMode, Storage, Timeouts};

    fn pool() -> sqlx::PgPool {
        // Never connected: the layer only keeps it.
        sqlx::PgPool::connect_lazy("postgres://idem@127.0.0.1:1/none").expect("lazy pool")
    }

    #[tokio::test]
    async fn a_phased_layer_keeps_the_settings_of_the_layer_it_was_made_from() {
        let base = IdempotencyLayer::new(pool())
            .policy(Policy::default().keys(KeyMode::Optional))
            .timeouts(Timeouts::default().in_flight_wait(Duration::from_secs(2)));
        let phased = base.clone().phased(Duration::from_secs(30));
        let service = phased.layer(());
        assert_eq!(service.config.policy.keys, KeyMode::Optional);
        assert_eq!(
            service.config.timeouts.in_flight_wait,
            Duration::from_secs(2)
        );
        assert_eq!(
            service.config.phased,
            Some(PhasedMode {
                lease: Duration::from_secs(30),
                accept: None
            })
        );
        assert_eq!(base.layer(()).config.phased, None, "the base stays atomic");
    }

    #[tokio::test]
    async fn accepting_after_a_while_keeps_the_phased_lease() {
        let layer = IdempotencyLayer::new(pool())
            .phased(Duration::from_secs(30))
            .accept_after(Duration::from_secs(2), "/operations");
        assert_eq!(
            layer.layer(()).config.phased,
            Some(PhasedMode {
                lease: Duration::from_secs(30),
                accept: Some((Duration::from_secs(2), "/operations".to_owned()))
            })
        );
    }

    #[tokio::test]
    async fn services_of_one_layer_share_its_flights_and_its_cache_until_the_cache_is_resized() {
        let layer = IdempotencyLayer::new(pool());
        let (one, two) = (layer.layer(()), layer.clone().layer(()));
        assert!(Arc::ptr_eq(&one.flights, &two.flights));
        assert!(Arc::ptr_eq(&one.cache, &two.cache));
        let serializable = Storage::default().isolation(crate::Isolation::Serializable);
        let same_size = layer.clone().storage(serializable).layer(());
        assert!(Arc::ptr_eq(&one.cache, &same_size.cache));
        let resized = layer.storage(Storage::default().replay_cache(0)).layer(());
        assert!(!Arc::ptr_eq(&one.cache, &resized.cache));
    }

    #[tokio::test]
    async fn fingerprinted_header_names_are_lower_case_however_the_policy_wrote_them() {
        let mut policy = Policy::default();
        policy.fingerprint_headers.push("X-Account".to_owned());
        let service = IdempotencyLayer::new(pool()).policy(policy).layer(());
        assert_eq!(service.config.policy.fingerprint_headers, ["x-account"]);
    }
}
