//! What the layer reports of each request: its outcome, decision latency and added
//! latency, as metrics (with the `metrics` feature) and on the request's span.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::MatchedPath;
use http::{Method, Request, Response};
use idem_core::Outcome;
#[cfg(feature = "metrics")]
use idem_core::observe::names;
use idem_core::observe::{NO_VERSION, OTHER_VERSION};
use tokio::time::Instant;

use crate::config::Config;

/// The request's span, with OpenTelemetry's HTTP field names where one exists; the
/// outcome, status and decision latency are recorded when the request finishes.
macro_rules! request_span_impl {
    ($name:literal, $method:expr, $path:expr, $observed:expr $(, $($field:tt)+)?) => {
        tracing::info_span!(
            $name,
            http.request.method = %$method,
            url.path = %$path,
            http.route = $observed.route().map(|r| &**r),
            http.response.status_code = tracing::field::Empty,
            idem.outcome = tracing::field::Empty,
            idem.decision_ms = tracing::field::Empty,
            $($($field)+)?
        )
    };
}

pub(crate) use request_span_impl as request_span;

/// One request as the layer observes it: its labels and its clocks. Shared between
/// the response future and the task that runs the request.
#[derive(Debug)]
pub(crate) struct Observed {
    arrived: Instant,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    method: &'static str,
    route: Option<Arc<str>>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    client_version: Cow<'static, str>,
    /// When the store decided what the request does (a keyed request that ran).
    decided: OnceLock<Instant>,
    /// How long the handler took.
    handler: OnceLock<Duration>,
}

impl Observed {
    /// Starts observing `req` as it arrives in the layer.
    pub(crate) fn start(config: &Config, req: &Request<Body>) -> Arc<Self> {
        let client_version = match &config.observability.client_versions {
            Some((header, versions)) => {
                let value = req.headers().get(header).and_then(|v| v.to_str().ok());
                match versions.label(value) {
                    NO_VERSION => Cow::Borrowed(NO_VERSION),
                    OTHER_VERSION => Cow::Borrowed(OTHER_VERSION),
                    known => Cow::Owned(known.to_owned()),
                }
            }
            None => Cow::Borrowed(NO_VERSION),
        };
        Arc::new(Observed {
            arrived: Instant::now(),
            method: method_label(req.method()),
            route: req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| Arc::from(p.as_str())),
            client_version,
            decided: OnceLock::new(),
            handler: OnceLock::new(),
        })
    }

    /// The route template the request matched, if any.
    pub(crate) fn route(&self) -> Option<&Arc<str>> {
        self.route.as_ref()
    }

    /// The store decided now (for a request that goes on to its handler).
    pub(crate) fn mark_decided(&self) {
        let _ = self.decided.set(Instant::now());
    }

    /// The handler took `took`.
    pub(crate) fn mark_handled(&self, took: Duration) {
        let _ = self.handler.set(took);
    }

    /// Reports the request once its answer is known: the outcome (from the answer's
    /// [`Outcome`] extension; `None` when the wrapped service failed), its timings.
    pub(crate) fn finish(&self, outcome: Outcome, status: Option<u16>) {
        let now = Instant::now();
        let decision = outcome
            .is_decision()
            .then(|| self.decided.get().copied().unwrap_or(now) - self.arrived);
        let handler = self.handler.get().copied().unwrap_or_default();
        let overhead = (now - self.arrived).saturating_sub(handler);
        let span = tracing::Span::current();
        span.record("idem.outcome", outcome.as_str());
        if let Some(status) = status {
            span.record("http.response.status_code", status);
        }
        if let Some(decision) = decision {
            span.record("idem.decision_ms", decision.as_secs_f64() * 1000.0);
        }
        self.emit(outcome, decision, overhead);
    }

    #[cfg(feature = "metrics")]
    fn emit(&self, outcome: Outcome, decision: Option<Duration>, overhead: Duration) {
        let route = self.route_label();
        metrics::counter!(
            names::REQUESTS,
            names::METHOD => self.method,
            names::ROUTE => route.clone(),
            names::OUTCOME => outcome.as_str(),
            names::CLIENT_VERSION => self.client_version.clone(),
        )
        .increment(1);
        if let Some(decision) = decision {
            metrics::histogram!(
                names::DECISION_SECONDS,
                names::METHOD => self.method,
                names::ROUTE => route.clone(),
            )
            .record(decision.as_secs_f64());
        }
        metrics::histogram!(
            names::OVERHEAD_SECONDS,
            names::METHOD => self.method,
            names::ROUTE => route,
        )
        .record(overhead.as_secs_f64());
    }

    #[cfg(not(feature = "metrics"))]
    fn emit(&self, _outcome: Outcome, _decision: Option<Duration>, _overhead: Duration) {}

    /// Counts what the layer would have done with a request in observe mode.
    pub(crate) fn would(&self, would: idem_core::policy::Would) {
        tracing::Span::current().record("idem.would", would.as_str());
        #[cfg(feature = "metrics")]
        metrics::counter!(
            names::OBSERVED,
            names::METHOD => self.method,
            names::ROUTE => self.route_label(),
            names::WOULD => would.as_str(),
        )
        .increment(1);
    }

    /// Records the size of a stored response.
    pub(crate) fn record_stored(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        metrics::histogram!(names::STORED_RESPONSE_BYTES, names::ROUTE => self.route_label())
            .record(bytes as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = bytes;
    }

    #[cfg(feature = "metrics")]
    fn route_label(&self) -> metrics::SharedString {
        match &self.route {
            Some(route) => metrics::SharedString::from(route.clone()),
            None => metrics::SharedString::const_str(names::UNMATCHED_ROUTE),
        }
    }
}

/// Reports a response's outcome (its [`Outcome`] extension) and passes it on.
pub(crate) fn report_result<E>(
    observed: &Observed,
    result: Result<Response<Body>, E>,
) -> Result<Response<Body>, E> {
    match result {
        Ok(response) => Ok(report(observed, response)),
        Err(e) => {
            observed.finish(Outcome::HandlerError, None);
            Err(e)
        }
    }
}

/// Reports an answer's outcome (its [`Outcome`] extension) and passes it on.
pub(crate) fn report(observed: &Observed, response: Response<Body>) -> Response<Body> {
    let outcome = response
        .extensions()
        .get::<Outcome>()
        .copied()
        .unwrap_or(Outcome::Executed);
    observed.finish(outcome, Some(response.status().as_u16()));
    response
}

/// The method as a label: the standard methods by name, any other as `OTHER` (a
/// client chooses the method, and labels must stay bounded).
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_fold_into_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        let custom = Method::from_bytes(b"PURGE").expect("method");
        assert_eq!(method_label(&custom), "OTHER");
    }
}
