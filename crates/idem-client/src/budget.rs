//! The retry budget: a token bucket per host (or per path) that lets retries be at
//! most a share of the requests, so a partial outage does not become a retry storm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tower::retry::budget::TpsBudget;

/// What a retry budget is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BudgetScope {
    /// One budget per host and port (the default).
    #[default]
    Host,
    /// One budget per host, port and path.
    Path,
}

/// How many budgets a client keeps; requests beyond share one more.
const MAX_BUDGETS: usize = 1024;

/// The budget's parameters (tower's `TpsBudget`, after Finagle's retry budget).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// How long a request's deposit counts (1 to 60 s).
    pub ttl: Duration,
    /// Retries allowed per second whatever the traffic, for clients that send few
    /// requests.
    pub min_per_sec: u32,
    /// Retries allowed per request on top, as a fraction (0.1: one retry per ten
    /// requests).
    pub ratio: f32,
}

impl Default for RetryBudget {
    /// 10% of the requests of the last 10 s, plus one retry a second.
    fn default() -> Self {
        RetryBudget {
            ttl: Duration::from_secs(10),
            min_per_sec: 1,
            ratio: 0.1,
        }
    }
}

impl RetryBudget {
    fn bucket(&self) -> TpsBudget {
        // TpsBudget asserts its bounds; keep within them whatever was configured.
        let ttl = self
            .ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if self.ratio.is_finite() {
            self.ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let min_per_sec = self.min_per_sec.min(i32::MAX as u32 - 1);
        TpsBudget::new(ttl, min_per_sec, ratio)
    }
}

/// The budgets of one client, by scope key.
pub(crate) struct Budgets {
    config: RetryBudget,
    scope: BudgetScope,
    by_key: Mutex<HashMap<String, Arc<TpsBudget>>>,
    overflow: Arc<TpsBudget>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("config", &self.config)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Budgets {
    pub(crate) fn new(config: RetryBudget, scope: BudgetScope) -> Self {
        Budgets {
            overflow: Arc::new(config.bucket()),
            config,
            scope,
            by_key: Mutex::default(),
        }
    }

    /// The budget of `url`'s host (or path).
    pub(crate) fn for_url(&self, url: &reqwest::Url) -> Arc<TpsBudget> {
        let host = url.host_str().unwrap_or("");
        let port = url.port_or_known_default().unwrap_or(0);
        let key = match self.scope {
            BudgetScope::Host => format!("{host}:{port}"),
            BudgetScope::Path => format!("{host}:{port}{}", url.path()),
        };
        let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = by_key.get(&key) {
            return budget.clone();
        }
        if by_key.len() >= MAX_BUDGETS {
            return self.overflow.clone();
        }
        let budget = Arc::new(self.config.bucket());
        by_key.insert(key, budget.clone());
        budget
    }
}

#[cfg(test)]
mod tests {
    use tower::retry::budget::Budget;

    use super::*;

    #[tokio::test]
    async fn retries_are_held_to_the_ratio_plus_the_reserve() {
        let config = RetryBudget {
            ttl: Duration::from_secs(10),
            min_per_sec: 1,
            ratio: 0.1,
        };
        let budgets = Budgets::new(config, BudgetScope::Host);
        let budget = budgets.for_url(&"http://a.example/x".parse().expect("url"));
        for _ in 0..100 {
            budget.deposit();
        }
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
            assert!(retries < 1000, "the budget never ran out");
        }
        // 10 from the reserve (1 a second over 10 s) and 10 from 100 requests.
        assert!((15..=25).contains(&retries), "{retries} retries");
    }

    #[tokio::test]
    async fn hosts_have_their_own_budget_and_paths_share_it_unless_asked() {
        let budgets = Budgets::new(RetryBudget::default(), BudgetScope::Host);
        let a = budgets.for_url(&"http://a.example/x".parse().expect("url"));
        let a2 = budgets.for_url(&"http://a.example/y".parse().expect("url"));
        let b = budgets.for_url(&"http://b.example/x".parse().expect("url"));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
        let by_path = Budgets::new(RetryBudget::default(), BudgetScope::Path);
        let x = by_path.for_url(&"http://a.example/x".parse().expect("url"));
        let y = by_path.for_url(&"http://a.example/y".parse().expect("url"));
        assert!(!Arc::ptr_eq(&x, &y));
    }

    #[test]
    fn out_of_range_settings_are_clamped_not_panicked_on() {
        let wild = RetryBudget {
            ttl: Duration::ZERO,
            min_per_sec: u32::MAX,
            ratio: f32::NAN,
        };
        let _ = wild.bucket();
    }
}
