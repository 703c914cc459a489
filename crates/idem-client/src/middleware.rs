//! The middleware and its configuration builder.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Extensions, HeaderName, Method};
use idem_core::headers::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use idem_core::retry::{RetryStatuses, StopReason, Verdict, stop_reason};
use reqwest_middleware::{Middleware, Next};
use retry_policies::policies::ExponentialBackoff;
use retry_policies::{Jitter, RetryDecision, RetryPolicy};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::budget::{BudgetScope, Budgets, RetryBudget};
use crate::classify::{problem_type, retry_after, transport_retryable};
use crate::key::{OperationKey, assign};
use crate::outcome::{AttemptTimedOut, Attempts, RetryError};

#[derive(Debug, Clone)]
struct Config {
    header: HeaderName,
    methods: Vec<Method>,
    max_attempts: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    deadline: Duration,
    attempt_timeout: Option<Duration>,
    max_retry_after: Duration,
    statuses: RetryStatuses,
    budget: RetryBudget,
    budget_scope: BudgetScope,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header: HeaderName::from_static(IDEMPOTENCY_KEY),
            methods: vec![Method::POST, Method::PATCH],
            max_attempts: 4,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            attempt_timeout: None,
            max_retry_after: Duration::from_secs(30),
            statuses: RetryStatuses::default(),
            budget: RetryBudget::default(),
            budget_scope: BudgetScope::Host,
        }
    }
}

/// A [`reqwest_middleware::Middleware`] that sends every POST and PATCH with an
/// `Idempotency-Key` and retries it, with the same key, when retrying is safe and
/// useful.
///
/// | option | default |
/// |---|---|
/// | [`header_name`](Self::header_name) | `Idempotency-Key` |
/// | [`methods`](Self::methods) | POST, PATCH (others pass through untouched) |
/// | [`max_attempts`](Self::max_attempts) | 4 (the first and three retries) |
/// | [`backoff`](Self::backoff) | exponential from 100 ms to 5 s, full jitter |
/// | [`deadline`](Self::deadline) | 30 s for all attempts and waits together |
/// | [`attempt_timeout`](Self::attempt_timeout) | none (the client's own timeout) |
/// | [`max_retry_after`](Self::max_retry_after) | 30 s |
/// | [`retry_500`](Self::retry_500) | off |
/// | [`budget`](Self::budget) | 10% of the last 10 s of requests plus 1 retry a second |
/// | [`budget_scope`](Self::budget_scope) | per host |
///
/// Retried, always with the same key: connection failures and timeouts, 408, 425, 429,
/// 502, 503, 504, and every answer whose problem type says "retry with the same key"
/// (idem's 409 `in-flight` and `lease-lost`, and its 503s; see
/// [`idem_core::retry::RetryStatuses::verdict`]); a `Retry-After` on the answer is
/// waited for (at most [`max_retry_after`](Self::max_retry_after)) when it is longer
/// than the backoff. Never retried: other 4xx, the mismatch answer, and 500 unless
/// configured. A request whose body cannot be cloned (a stream) is sent once.
///
/// A request carrying an [`OperationKey`](crate::OperationKey) that is not a valid
/// header value fails with an [`OperationKeyError`](crate::OperationKeyError) before
/// anything is sent (as reqwest fails a request with an invalid header at `send`).
///
/// ```no_run
/// use idem_client::{Attempts, IdempotentRetry};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(IdempotentRetry::new())
///     .build();
/// let response = client
///     .post("http://127.0.0.1:3000/payments")
///     .header("content-type", "application/json")
///     .body(r#"{"amount":1250,"currency":"EUR"}"#)
///     .send()
///     .await?;
/// let attempts = response.extensions().get::<Attempts>().cloned();
/// println!("{} after {:?}", response.status(), attempts);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct IdempotentRetry {
    config: Arc<Config>,
    budgets: Arc<Budgets>,
}

impl Default for IdempotentRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotentRetry {
    /// The middleware with the defaults in the table above.
    pub fn new() -> Self {
        let config = Config::default();
        IdempotentRetry {
            budgets: Arc::new(Budgets::new(config.budget, config.budget_scope)),
            config: Arc::new(config),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self.budgets = Arc::new(Budgets::new(self.config.budget, self.config.budget_scope));
        self
    }

    /// The header that carries the key.
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// The methods that get a key and are retried; others pass through untouched.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.with(|c| c.methods = methods.into_iter().collect())
    }

    /// Attempts per request, the first included (at least 1).
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.with(|c| c.max_attempts = attempts.max(1))
    }

    /// The backoff before each retry: exponential from `min` (doubling) up to `max`,
    /// each delay drawn uniformly between zero and that bound (full jitter).
    pub fn backoff(self, min: Duration, max: Duration) -> Self {
        self.with(|c| {
            c.backoff_min = min;
            c.backoff_max = max.max(min);
        })
    }

    /// The longest a request may take, all attempts and waits together. An attempt is
    /// cut off at the deadline, and a retry that would start after it is not made.
    pub fn deadline(self, deadline: Duration) -> Self {
        self.with(|c| c.deadline = deadline)
    }

    /// The longest one attempt may take before it counts as timed out (and is retried).
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.attempt_timeout = Some(timeout))
    }

    /// The longest `Retry-After` that is waited for; a longer one is cut to it.
    pub fn max_retry_after(self, max: Duration) -> Self {
        self.with(|c| c.max_retry_after = max)
    }

    /// Whether a 500 is retried.
    pub fn retry_500(self, on: bool) -> Self {
        self.with(|c| c.statuses.retry_500 = on)
    }

    /// The retry budget. Each request deposits into its scope's budget; each retry
    /// withdraws one token, and when none is left the last answer (or failure) is
    /// returned instead of retrying.
    pub fn budget(self, budget: RetryBudget) -> Self {
        self.with(|c| c.budget = budget)
    }

    /// Whether requests share a budget per host (default) or per path.
    pub fn budget_scope(self, scope: BudgetScope) -> Self {
        self.with(|c| c.budget_scope = scope)
    }

    fn backoff_policy(&self) -> ExponentialBackoff {
        ExponentialBackoff::builder()
            .retry_bounds(self.config.backoff_min, self.config.backoff_max)
            .jitter(Jitter::Full)
            .build_with_max_retries(self.config.max_attempts.saturating_sub(1))
    }
}

/// What one attempt brought back.
enum Tried {
    /// An answer, with the verdict on it and why to stop at it if it is not retried.
    Answer(reqwest::Response, Verdict, StopReason),
    /// No answer; `true` when a retry may bring one.
    Failed(Box<dyn std::error::Error + Send + Sync>, bool),
}

/// One request's retries.
struct Run<'a> {
    retry: &'a IdempotentRetry,
    budget: Arc<TpsBudget>,
    key: Option<String>,
    started: SystemTime,
    deadline: Instant,
    attempts: u32,
}

impl Run<'_> {
    /// Sends one attempt, bounded by the attempt timeout and the deadline.
    async fn attempt(
        &mut self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Tried {
        self.attempts += 1;
        let left = self.deadline.saturating_duration_since(Instant::now());
        let limit = self
            .retry
            .config
            .attempt_timeout
            .map_or(left, |t| t.min(left));
        let sent = match tokio::time::timeout(limit, next.run(request, extensions)).await {
            Ok(sent) => sent,
            Err(_) => return Tried::Failed(Box::new(AttemptTimedOut(limit)), true),
        };
        match sent {
            Ok(response) => self.verdict(response).await,
            Err(e) => {
                let retryable = transport_retryable(&e);
                Tried::Failed(Box::new(e), retryable)
            }
        }
    }

    async fn verdict(&self, response: reqwest::Response) -> Tried {
        match problem_type(response, &self.retry.config.statuses).await {
            Ok((kind, response)) => {
                let status = response.status().as_u16();
                let verdict = self.retry.config.statuses.verdict(status, kind.as_deref());
                Tried::Answer(response, verdict, stop_reason(status, kind.as_deref()))
            }
            Err(e) => {
                let retryable = !e.is_builder();
                Tried::Failed(Box::new(e), retryable)
            }
        }
    }

    /// How long to wait before the next attempt, or why there is none. The budget is
    /// asked last, so a retry that would not be made anyway takes no token.
    fn next_delay(&self, retry_after: Option<Duration>) -> Result<Duration, StopReason> {
        let now = SystemTime::now();
        let backoff = match self
            .retry
            .backoff_policy()
            .should_retry(self.started, self.attempts - 1)
        {
            RetryDecision::Retry { execute_after } => {
                execute_after.duration_since(now).unwrap_or_default()
            }
            RetryDecision::DoNotRetry => return Err(StopReason::Attempts),
        };
        let wanted = retry_after.map(|ra| ra.min(self.retry.config.max_retry_after));
        let delay = wanted.map_or(backoff, |ra| ra.max(backoff));
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|start| start >= self.deadline)
        {
            return Err(StopReason::Deadline);
        }
        if !self.budget.withdraw() {
            return Err(StopReason::Budget);
        }
        Ok(delay)
    }

    /// Sends a request that cannot be sent again: whatever it brings back is final.
    async fn once(
        &mut self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        match self.attempt(request, extensions, next).await {
            Tried::Answer(response, Verdict::Success, _) => Ok(self.answered(response, None)),
            Tried::Answer(response, _, stop) => Ok(self.answered(response, Some(stop))),
            Tried::Failed(error, _) => Err(self.failed(StopReason::NotRetryable, error)),
        }
    }

    fn answered(
        &self,
        mut response: reqwest::Response,
        stopped: Option<StopReason>,
    ) -> reqwest::Response {
        let replayed = response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        response.extensions_mut().insert(Attempts {
            key: self.key.clone(),
            attempts: self.attempts,
            replayed,
            stopped,
        });
        response
    }

    fn failed(
        &self,
        reason: StopReason,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> reqwest_middleware::Error {
        reqwest_middleware::Error::middleware(RetryError {
            reason,
            attempts: self.attempts,
            key: self.key.clone(),
            source,
        })
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotentRetry {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if !self.config.methods.contains(request.method()) {
            return next.run(request, extensions).await;
        }
        // A key that cannot be sent fails the request before anything goes out: never an
        // unkeyed request, and no deposit in the budget.
        let key = assign(
            &mut request,
            &self.config.header,
            extensions.get::<OperationKey>(),
        )
        .map_err(reqwest_middleware::Error::middleware)?;
        let budget = self.budgets.for_url(request.url());
        budget.deposit();
        let mut run = Run {
            retry: self,
            budget,
            key,
            started: SystemTime::now(),
            deadline: far_or(Instant::now(), self.config.deadline),
            attempts: 0,
        };
        loop {
            let Some(attempt) = request.try_clone() else {
                // A body that cannot be cloned (a stream) is sent once.
                return run.once(request, extensions, next).await;
            };
            let (retry_after, last) = match run.attempt(attempt, extensions, next.clone()).await {
                Tried::Answer(response, Verdict::Success, _) => {
                    return Ok(run.answered(response, None));
                }
                Tried::Answer(response, Verdict::Final, stop) => {
                    return Ok(run.answered(response, Some(stop)));
                }
                Tried::Answer(response, Verdict::Retry, _) => {
                    (retry_after(&response), Ok(response))
                }
                Tried::Failed(error, false) => {
                    return Err(run.failed(StopReason::NotRetryable, error));
                }
                Tried::Failed(error, true) => (None, Err(error)),
            };
            match (run.next_delay(retry_after), last) {
                (Ok(delay), _) => {
                    tracing::debug!(attempt = run.attempts, ?delay, key = ?run.key, "retrying");
                    tokio::time::sleep(delay).await;
                }
                (Err(reason), Ok(response)) => return Ok(run.answered(response, Some(reason))),
                (Err(reason), Err(error)) => return Err(run.failed(reason, error)),
            }
        }
    }
}

/// `from + after`, or about thirty years on when that overflows (a deadline of
/// `Duration::MAX` means none).
fn far_or(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(Duration::from_secs(30 * 365 * 24 * 3600)))
        .unwrap_or(from)
}
