//! [`Observability`]: what the layer reads of a request to label and trace it.

use http::HeaderName;
use idem_core::ClientVersions;

/// The header that carries a request's correlation id, by default.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// How requests are labelled and traced; set with
/// [`IdempotencyLayer::observability`](crate::IdempotencyLayer::observability).
///
/// ```
/// use http::HeaderName;
/// use idem_axum::{ClientVersions, Observability};
///
/// let observability = Observability::default().client_versions(
///     HeaderName::from_static("x-app-version"),
///     ClientVersions::new(["4.2", "4.3"]),
/// );
/// # let _ = observability;
/// ```
#[derive(Debug, Clone)]
pub struct Observability {
    pub(crate) correlation_header: HeaderName,
    pub(crate) client_versions: Option<(HeaderName, ClientVersions)>,
}

impl Default for Observability {
    fn default() -> Self {
        Observability {
            correlation_header: HeaderName::from_static(CORRELATION_ID),
            client_versions: None,
        }
    }
}

impl Observability {
    /// The header whose value is the request's correlation id (`X-Correlation-Id` by
    /// default). With the W3C `traceparent` and `tracestate`, it is handed to the
    /// handler as a [`TraceContext`](idem_core::TraceContext) extension (when the
    /// request carried a valid one), for [`Message::trace`](idem_sqlx::Message::trace)
    /// to carry into the messages the handler enqueues.
    pub fn correlation_header(mut self, name: HeaderName) -> Self {
        self.correlation_header = name;
        self
    }

    /// Labels the layer's metrics by client version: the value of `header` when it is
    /// one of `versions`, `other` when it is another, `none` when the request sent
    /// none. The set bounds the label's values, whatever clients send. Unlabelled by
    /// default.
    pub fn client_versions(mut self, header: HeaderName, versions: ClientVersions) -> Self {
        self.client_versions = Some((header, versions));
        self
    }
}
