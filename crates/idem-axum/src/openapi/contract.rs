//! What a route behind the layer promises its clients, from the layer's configuration
//! alone: the key header and whether it is required, the methods that take part, and
//! every answer the layer itself can give there. The OpenAPI document is written from
//! it, so the route's policy is the one source.

use std::time::Duration;

use http::{Method, StatusCode};
use idem_core::policy::{HashPolicy, KeyMode};

use crate::Problem;
use crate::TenantSource;
use crate::config::Config;

/// A route's idempotency contract.
#[derive(Debug, Clone)]
pub(crate) struct Contract {
    /// The header the key travels in.
    pub(crate) key_header: String,
    /// Whether a request without a key is refused (400 `key-missing`).
    pub(crate) key_required: bool,
    /// The methods that take part.
    pub(crate) methods: Vec<Method>,
    /// Whether the route answers from stored responses (replays carry
    /// `Idempotent-Replayed: true`); not in observe mode.
    pub(crate) replays: bool,
    /// One problem of each kind the layer can answer with on the route.
    pub(crate) answers: Vec<Problem>,
}

impl Contract {
    /// The contract of a route configured with `config`.
    pub(crate) fn of(config: &Config) -> Contract {
        let observe = config.policy.keys == KeyMode::Observe;
        Contract {
            key_header: config.protocol.key_header.as_str().to_owned(),
            key_required: config.policy.keys == KeyMode::Required,
            methods: config.protocol.methods.clone(),
            replays: !observe,
            answers: if observe { Vec::new() } else { answers(config) },
        }
    }

    /// The answers grouped by status, in status order.
    pub(crate) fn by_status(&self) -> Vec<(StatusCode, Vec<&Problem>)> {
        let mut statuses: Vec<StatusCode> = self.answers.iter().map(Problem::status).collect();
        statuses.sort();
        statuses.dedup();
        statuses
            .into_iter()
            .map(|status| {
                let problems = self.answers.iter().filter(|p| p.status() == status);
                (status, problems.collect())
            })
            .collect()
    }
}

/// Every problem the layer can answer on a keyed route configured with `config` (not
/// in observe mode), one of each kind.
fn answers(config: &Config) -> Vec<Problem> {
    let retry_after = config.protocol.retry_after;
    let mut answers = vec![
        Problem::KeyInvalid {
            reason: String::new(),
        },
        Problem::BodyUnreadable,
        Problem::BodyTooLarge {
            limit: config.limits.request_body,
        },
        Problem::InFlight { retry_after },
        Problem::ResponseNotStored { original_status: 0 },
        Problem::StoreUnavailable { retry_after },
        Problem::CommitFailed { retry_after },
        Problem::HandlerPanicked,
        Problem::TransactionAborted,
        Problem::TransactionHeld,
        Problem::StoreFault,
        Problem::RecordCorrupt,
        Problem::ResponseUnreadable,
    ];
    if config.policy.keys == KeyMode::Required {
        answers.push(Problem::KeyMissing {
            header: config.protocol.key_header.as_str().to_owned(),
        });
    }
    if !matches!(config.tenant, TenantSource::Fixed(_)) {
        answers.push(Problem::TenantUnresolved);
    }
    if config.policy.hash == HashPolicy::Strict {
        answers.push(Problem::KeyMismatch {
            status: config.protocol.mismatch_status,
        });
    }
    if config.policy.tombstones.is_some() {
        answers.push(Problem::KeyExpired {
            original_status: 0,
            completed_at: chrono::DateTime::UNIX_EPOCH,
        });
    }
    if config.limits.new_keys.is_some() {
        answers.push(Problem::NewKeyRateExceeded {
            retry_after: Duration::from_secs(1),
        });
    }
    if config.limits.key_quota.is_some() {
        answers.push(Problem::KeyQuotaExceeded);
    }
    if config.phased.is_some() {
        answers.extend([
            Problem::LeaseLost { retry_after },
            Problem::PhaseInterrupted { retry_after },
            Problem::PhaseFailed {
                phase: String::new(),
                reason: String::new(),
            },
        ]);
    }
    answers
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use idem_core::policy::{Policy, RiskClass};

    use super::*;
    use crate::config::PhasedMode;

    fn slugs(config: &Config) -> BTreeSet<&'static str> {
        Contract::of(config)
            .answers
            .iter()
            .map(Problem::slug)
            .collect()
    }

    #[test]
    fn a_critical_route_answers_every_case_of_the_contract() {
        let config = Config {
            policy: Policy::for_risk(RiskClass::Critical),
            ..Config::default()
        };
        let answered = slugs(&config);
        for slug in [
            "key-missing",
            "key-invalid",
            "in-flight",
            "response-not-stored",
            "key-expired",
            "body-too-large",
            "key-mismatch",
            "store-unavailable",
            "commit-failed",
        ] {
            assert!(answered.contains(slug), "{slug} in {answered:?}");
        }
        for absent in ["new-key-rate", "key-quota", "lease-lost", "phase-failed"] {
            assert!(!answered.contains(absent), "{absent}: not configured");
        }
        assert!(Contract::of(&config).key_required);
    }

    #[test]
    fn what_a_route_answers_follows_its_configuration() {
        let optional = Config {
            policy: Policy::for_risk(RiskClass::Low).hash(HashPolicy::ReportOnly),
            tenant: TenantSource::single(),
            ..Config::default()
        };
        let refused = slugs(&optional);
        for absent in [
            "key-missing",
            "key-mismatch",
            "key-expired",
            "tenant-unresolved",
        ] {
            assert!(!refused.contains(absent), "{absent} in {refused:?}");
        }
        assert!(!Contract::of(&optional).key_required);

        let limited = Config {
            limits: crate::Limits::default()
                .new_key_rate(10, 10)
                .key_quota(1000),
            phased: Some(PhasedMode {
                lease: Duration::from_secs(30),
                accept: None,
            }),
            ..Config::default()
        };
        let limits = slugs(&limited);
        for present in [
            "new-key-rate",
            "key-quota",
            "lease-lost",
            "phase-interrupted",
        ] {
            assert!(limits.contains(present), "{present} in {limits:?}");
        }
    }

    #[test]
    fn a_route_in_observe_mode_answers_nothing_of_its_own() {
        let config = Config {
            policy: Policy::default().keys(KeyMode::Observe),
            ..Config::default()
        };
        let contract = Contract::of(&config);
        assert!(contract.answers.is_empty());
        assert!(!contract.key_required && !contract.replays);
    }

    #[test]
    fn answers_group_by_status_in_order() {
        let config = Config {
            protocol: crate::Protocol::default().mismatch_status(StatusCode::CONFLICT),
            ..Config::default()
        };
        let contract = Contract::of(&config);
        let grouped = contract.by_status();
        let statuses: Vec<u16> = grouped.iter().map(|(s, _)| s.as_u16()).collect();
        let mut sorted = statuses.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(statuses, sorted);
        let conflict: BTreeSet<&str> = grouped
            .iter()
            .find(|(s, _)| *s == StatusCode::CONFLICT)
            .map(|(_, p)| p.iter().map(|p| p.slug()).collect())
            .unwrap_or_default();
        assert_eq!(conflict, BTreeSet::from(["in-flight", "key-mismatch"]));
    }
}
