//! A route's idempotency policy, decided where the route is declared: whether a key is
//! required, how a reused key with a different request is treated, what the
//! fingerprint covers, which answers are final and which of their headers are
//! replayed, what happens when the store is away, how long keys count, and the risk
//! class these follow from.

use std::time::Duration;

use crate::{BodyMode, FinalStatuses, Fingerprint, FingerprintBuilder, HeaderAllowList};

/// Whether requests must carry a key, and what a key does: the steps of a rollout
/// are `Observe`, then `Optional`, then `Required` (then a strict [`HashPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyMode {
    /// A request without a key is refused (400 `key-missing`).
    #[default]
    Required,
    /// A request without a key runs without idempotency (its handler still gets a
    /// transaction, committed on a final answer).
    Optional,
    /// Passive key logging: every request runs as if the layer claimed nothing (its
    /// handler gets a transaction, committed on a final answer). A key is recorded with
    /// its fingerprint, and what the layer [`Would`] have done is counted. Nothing is
    /// answered from storage, nothing stored is ever replayed.
    Observe,
}

/// What the layer would have done with a keyed request, in observe mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Would {
    /// Run it: the key is new (or past its retention).
    Execute,
    /// Replay the first request's answer: the same key and request came before.
    Replay,
    /// Refuse it as a mismatch: the key came before with a different request.
    Mismatch,
    /// Answer 409 `in-flight` (or wait): the key's first request is still running in
    /// this process.
    InFlight,
}

impl Would {
    /// What the layer would have done, from what the observation found: `previous` is
    /// `None` for a key not seen within its retention, else whether the earlier request
    /// had the same fingerprint; `concurrent` when a request with the key is running
    /// in this process.
    pub fn from_observation(previous: Option<bool>, concurrent: bool) -> Would {
        match (previous, concurrent) {
            (Some(false), _) => Would::Mismatch,
            (_, true) => Would::InFlight,
            (Some(true), false) => Would::Replay,
            (None, false) => Would::Execute,
        }
    }

    /// The label value: stable, snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            Would::Execute => "execute",
            Would::Replay => "replay",
            Would::Mismatch => "mismatch",
            Would::InFlight => "in_flight",
        }
    }
}

/// What a key reused with a different request (another fingerprint) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashPolicy {
    /// Refused: 422 (or 409) `key-mismatch`. The default, and the end state.
    #[default]
    Strict,
    /// For the transition to fingerprinting: the mismatch is logged (key hashed) and
    /// counted (`mismatch_reported`), and the stored response is replayed, as if the
    /// requests were the same.
    ReportOnly,
}

/// What the layer does when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Answer 503 + Retry-After; nothing runs. The default, and the only safe choice
    /// for requests with effects.
    #[default]
    Closed,
    /// Run the handler without idempotency, and without a `Tx`, when the database
    /// cannot be reached at all (no connection to it can be made: refused, reset,
    /// unreachable). For low-risk routes whose handlers take `Option<Tx>` and do their
    /// work elsewhere when it is `None` (a cache, a call that is idempotent by itself).
    /// A store that answers slowly, or a pool whose connections are all in use, is
    /// answered 503 as under `Closed` (see [`FailureMode::runs_without_store`]): the
    /// database is up, another replica may hold the key, and two handlers never run
    /// for one key at once. So is any failure after the request's transaction opened.
    Open,
}

/// Why a request could not open its transaction on the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUnreached {
    /// No connection to the database could be made (refused, reset, unreachable):
    /// nobody can hold a key in it now.
    Unreachable,
    /// The pool had no connection free within its acquire timeout while the database
    /// took connections: it is up, and busy.
    PoolExhausted,
    /// The store did not answer within `Timeouts::store`: it may be up and slow, and a
    /// request of another replica may hold the key.
    Silent,
}

impl FailureMode {
    /// Whether a request whose transaction could not be opened (`why`) runs its
    /// handler without idempotency: only on a fail-open route, and only when the
    /// database cannot be reached at all.
    ///
    /// ```
    /// use idem_core::policy::{FailureMode, StoreUnreached};
    ///
    /// assert!(FailureMode::Open.runs_without_store(StoreUnreached::Unreachable));
    /// assert!(!FailureMode::Open.runs_without_store(StoreUnreached::PoolExhausted));
    /// assert!(!FailureMode::Open.runs_without_store(StoreUnreached::Silent));
    /// assert!(!FailureMode::Closed.runs_without_store(StoreUnreached::Unreachable));
    /// ```
    pub fn runs_without_store(self, why: StoreUnreached) -> bool {
        self == FailureMode::Open && why == StoreUnreached::Unreachable
    }
}

/// How much a duplicate of a route's requests would hurt; each class has defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiskClass {
    /// Money moves, or something else that must never happen twice: key required,
    /// strict, fail closed, keys kept 7 days, then a tombstone for 30 more days.
    Critical,
    /// Key required, strict, fail closed, keys kept 24 hours.
    High,
    /// Key optional, strict, fail closed, keys kept 24 hours.
    Medium,
    /// Key optional, strict, fail open, keys kept 1 hour.
    Low,
}

/// A route's policy. Start from [`Policy::for_risk`] (or the default, which is
/// [`RiskClass::High`]'s) and override what the route needs.
///
/// ```
/// use std::time::Duration;
///
/// use idem_core::policy::{FailureMode, HashPolicy, KeyMode, Policy, RiskClass};
///
/// let payments = Policy::for_risk(RiskClass::Critical);
/// assert_eq!(payments.keys, KeyMode::Required);
/// assert_eq!(payments.failure, FailureMode::Closed);
///
/// // A low-risk route in its transition to fingerprinting, kept for a day.
/// let avatar = Policy::for_risk(RiskClass::Low)
///     .hash(HashPolicy::ReportOnly)
///     .retention(Duration::from_secs(24 * 3600));
/// assert_eq!(avatar.failure, FailureMode::Open);
/// assert_eq!(avatar.risk, Some(RiskClass::Low));
///
/// // A route whose clients stamp their retries: only the amount and payee count, and
/// // the request id the handler answers with is replayed too.
/// let transfers = Policy::for_risk(RiskClass::Critical)
///     .fingerprint_fields(["/amount", "/payee"])
///     .replay_header("x-request-id");
/// assert!(transfers.replayed_headers.allows("X-Request-Id"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whether requests must carry a key.
    pub keys: KeyMode,
    /// What a reused key with a different request gets.
    pub hash: HashPolicy,
    /// What happens when the store cannot be reached.
    pub failure: FailureMode,
    /// How long a key counts after its request completed.
    pub retention: Duration,
    /// How long after its retention a finished key leaves a tombstone, so a late retry
    /// of the same request is answered 410 `key-expired` instead of running again;
    /// `None` (the default but for [`RiskClass::Critical`]) leaves none.
    pub tombstones: Option<Duration>,
    /// How the whole body enters the fingerprint (when `fingerprint_fields` is `None`).
    pub body: BodyMode,
    /// The JSON fields (RFC 6901 pointers) the fingerprint covers, for clients that
    /// put volatile fields in their retries; `None` covers the whole body.
    pub fingerprint_fields: Option<Vec<String>>,
    /// The request headers the fingerprint covers (names lower-case), beside the
    /// method, the path and query, and the body.
    pub fingerprint_headers: Vec<String>,
    /// Which statuses are final: stored, and the handler's writes committed.
    pub final_statuses: FinalStatuses,
    /// The response headers stored and replayed with the body and status.
    pub replayed_headers: HeaderAllowList,
    /// The class the defaults came from, if any (for documentation and logs).
    pub risk: Option<RiskClass>,
}

impl Default for Policy {
    /// The layer's own defaults, which are [`RiskClass::High`]'s.
    fn default() -> Self {
        Policy {
            keys: KeyMode::Required,
            hash: HashPolicy::Strict,
            failure: FailureMode::Closed,
            retention: 24 * HOUR,
            tombstones: None,
            body: BodyMode::Raw,
            fingerprint_fields: None,
            fingerprint_headers: Vec::new(),
            final_statuses: FinalStatuses::default(),
            replayed_headers: HeaderAllowList::default(),
            risk: None,
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// How long [`RiskClass::Critical`]'s keys leave a tombstone after their retention.
pub const CRITICAL_TOMBSTONE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

impl Policy {
    /// The defaults of a risk class.
    pub fn for_risk(class: RiskClass) -> Policy {
        let (keys, failure, retention) = match class {
            RiskClass::Critical => (KeyMode::Required, FailureMode::Closed, 7 * 24 * HOUR),
            RiskClass::High => (KeyMode::Required, FailureMode::Closed, 24 * HOUR),
            RiskClass::Medium => (KeyMode::Optional, FailureMode::Closed, 24 * HOUR),
            RiskClass::Low => (KeyMode::Optional, FailureMode::Open, HOUR),
        };
        Policy {
            keys,
            hash: HashPolicy::Strict,
            failure,
            retention,
            tombstones: (class == RiskClass::Critical).then_some(CRITICAL_TOMBSTONE_WINDOW),
            risk: Some(class),
            ..Policy::default()
        }
    }

    /// Whether requests must carry a key.
    pub fn keys(mut self, keys: KeyMode) -> Self {
        self.keys = keys;
        self
    }

    /// What a reused key with a different request gets.
    pub fn hash(mut self, hash: HashPolicy) -> Self {
        self.hash = hash;
        self
    }

    /// What happens when the store cannot be reached.
    pub fn failure(mut self, failure: FailureMode) -> Self {
        self.failure = failure;
        self
    }

    /// How long a key counts after its request completed.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long after its retention a finished key leaves a tombstone (`None`: none).
    /// Within that window a retry of the same request is answered 410 `key-expired`
    /// with the original completion time and status, and the same key with another
    /// request 422 as before; the sweeper turns expired keys into tombstones and
    /// removes them after the window.
    pub fn tombstones(mut self, window: Option<Duration>) -> Self {
        self.tombstones = window;
        self
    }

    /// Fingerprints the body as canonical JSON, so key order and whitespace do not make
    /// two requests differ. Bodies that are not JSON are fingerprinted raw. The default
    /// fingerprints the raw bytes.
    pub fn canonical_json(mut self) -> Self {
        self.body = BodyMode::CanonicalJson;
        self
    }

    /// Adds a request header to the fingerprint (for example a content-negotiation or
    /// account header that changes what the request means).
    pub fn fingerprint_header(mut self, name: &str) -> Self {
        self.fingerprint_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Fingerprints only these fields of a JSON body, each a JSON pointer (RFC 6901:
    /// `/amount`, `/payee/iban`), as canonical JSON: for clients that put volatile
    /// fields (a timestamp, a trace id) in the bodies of their retries. A listed field
    /// that is absent counts as absent; a body that is not JSON is fingerprinted raw.
    pub fn fingerprint_fields<I, S>(mut self, pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fingerprint_fields = Some(pointers.into_iter().map(Into::into).collect());
        self
    }

    /// Adds a response header to those stored and replayed (beside the defaults of
    /// [`HeaderAllowList`]).
    pub fn replay_header(mut self, name: &str) -> Self {
        self.replayed_headers = self.replayed_headers.with(name);
        self
    }

    /// Replaces the response headers stored and replayed.
    pub fn replayed_headers(mut self, headers: HeaderAllowList) -> Self {
        self.replayed_headers = headers;
        self
    }

    /// Which statuses are final (stored, writes committed). By default 2xx, 3xx (a
    /// 303 See Other after a POST is the outcome), and 4xx but 408/409/425/429.
    pub fn final_statuses(mut self, statuses: FinalStatuses) -> Self {
        self.final_statuses = statuses;
        self
    }

    /// The fingerprint of a request whose method, path and query, and covered headers
    /// are in `builder`, with `body` as this policy covers it.
    ///
    /// ```
    /// use idem_core::Fingerprint;
    /// use idem_core::policy::Policy;
    ///
    /// let fields = Policy::default().fingerprint_fields(["/amount"]);
    /// let first = fields.fingerprint_body(
    ///     Fingerprint::builder("POST", "/payments"),
    ///     br#"{"amount":100,"sent_at":"10:00"}"#,
    /// );
    /// let retry = fields.fingerprint_body(
    ///     Fingerprint::builder("POST", "/payments"),
    ///     br#"{"sent_at":"10:01","amount":100}"#,
    /// );
    /// assert_eq!(first, retry);
    /// ```
    pub fn fingerprint_body(&self, builder: FingerprintBuilder, body: &[u8]) -> Fingerprint {
        match &self.fingerprint_fields {
            Some(pointers) => builder.body_fields(body, pointers),
            None => builder.body(body, self.body),
        }
        .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_routes_require_keys_are_strict_and_fail_closed() {
        let p = Policy::for_risk(RiskClass::Critical);
        assert_eq!(
            (p.keys, p.hash, p.failure),
            (KeyMode::Required, HashPolicy::Strict, FailureMode::Closed)
        );
        assert!(p.retention >= Policy::for_risk(RiskClass::High).retention);
    }

    #[test]
    fn only_critical_routes_leave_tombstones_unless_told() {
        assert_eq!(
            Policy::for_risk(RiskClass::Critical).tombstones,
            Some(CRITICAL_TOMBSTONE_WINDOW)
        );
        for class in [RiskClass::High, RiskClass::Medium, RiskClass::Low] {
            assert_eq!(Policy::for_risk(class).tombstones, None, "{class:?}");
        }
        assert_eq!(Policy::default().tombstones, None);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            Policy::default().tombstones(Some(day)).tombstones,
            Some(day)
        );
        assert_eq!(
            Policy::for_risk(RiskClass::Critical)
                .tombstones(None)
                .tombstones,
            None
        );
    }

    #[test]
    fn low_risk_routes_take_optional_keys_and_fail_open() {
        let p = Policy::for_risk(RiskClass::Low);
        assert_eq!((p.keys, p.failure), (KeyMode::Optional, FailureMode::Open));
    }

    #[test]
    fn only_low_risk_fails_open_and_the_default_is_the_layer_s_own() {
        for class in [RiskClass::Critical, RiskClass::High, RiskClass::Medium] {
            assert_eq!(
                Policy::for_risk(class).failure,
                FailureMode::Closed,
                "{class:?}"
            );
        }
        let default = Policy::default();
        assert_eq!(
            (
                default.keys,
                default.hash,
                default.failure,
                default.retention
            ),
            (
                KeyMode::Required,
                HashPolicy::Strict,
                FailureMode::Closed,
                24 * HOUR
            )
        );
    }

    #[test]
    fn an_observation_says_what_the_layer_would_have_done() {
        assert_eq!(Would::from_observation(None, false), Would::Execute);
        assert_eq!(Would::from_observation(Some(true), false), Would::Replay);
        assert_eq!(Would::from_observation(Some(false), false), Would::Mismatch);
        assert_eq!(Would::from_observation(Some(false), true), Would::Mismatch);
        assert_eq!(Would::from_observation(Some(true), true), Would::InFlight);
        assert_eq!(Would::from_observation(None, true), Would::InFlight);
    }

    #[test]
    fn the_policy_s_body_rule_decides_which_changes_make_two_requests_differ() {
        let fingerprint = |policy: &Policy, body: &[u8]| {
            policy.fingerprint_body(Fingerprint::builder("POST", "/pay"), body)
        };
        let (a, b) = (br#"{"amount":5,"at":"1"}"#, br#"{ "at":"1", "amount":5 }"#);
        let raw = Policy::default();
        assert_ne!(
            fingerprint(&raw, a),
            fingerprint(&raw, b),
            "raw bytes differ"
        );
        let canonical = Policy::default().canonical_json();
        assert_eq!(fingerprint(&canonical, a), fingerprint(&canonical, b));
        let amount = Policy::default().fingerprint_fields(["/amount"]);
        let stamped = br#"{"amount":5,"at":"2"}"#;
        assert_eq!(fingerprint(&amount, a), fingerprint(&amount, stamped));
        assert_ne!(fingerprint(&canonical, a), fingerprint(&canonical, stamped));
    }

    #[test]
    fn fingerprinted_header_names_are_kept_lower_case() {
        let policy = Policy::default().fingerprint_header("X-Account");
        assert_eq!(policy.fingerprint_headers, ["x-account"]);
    }

    #[test]
    fn each_field_can_be_overridden() {
        let p = Policy::for_risk(RiskClass::Critical)
            .keys(KeyMode::Optional)
            .hash(HashPolicy::ReportOnly)
            .failure(FailureMode::Open)
            .retention(HOUR);
        assert_eq!(
            (p.keys, p.hash, p.failure, p.retention, p.risk),
            (
                KeyMode::Optional,
                HashPolicy::ReportOnly,
                FailureMode::Open,
                HOUR,
                Some(RiskClass::Critical)
            )
        );
    }
}
