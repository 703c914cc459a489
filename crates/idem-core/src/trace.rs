//! The trace context of a request (W3C `traceparent`, `tracestate`) and its
//! correlation id, carried from the request into the messages it enqueues, so a
//! consumer's span joins the request's trace.

/// The most bytes of a `tracestate` or correlation id that are carried on; a longer
/// one is dropped (W3C allows vendors to drop an oversized `tracestate`).
pub const MAX_TRACE_VALUE_LEN: usize = 512;

/// The trace context and correlation id of one request, validated.
///
/// ```
/// use idem_core::TraceContext;
///
/// let ctx = TraceContext::from_headers(
///     Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
///     Some("vendor=abc"),
///     Some("order-flow-17"),
/// )
/// .expect("a context");
/// assert_eq!(ctx.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
/// // A malformed traceparent is ignored (as the W3C spec asks); the correlation id stays.
/// let ctx = TraceContext::from_headers(Some("garbage"), Some("x=1"), Some("c-1")).expect("ctx");
/// assert_eq!(ctx.traceparent(), None);
/// assert_eq!(ctx.tracestate(), None);
/// assert_eq!(ctx.correlation_id(), Some("c-1"));
/// assert!(TraceContext::from_headers(None, None, None).is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: Option<String>,
    tracestate: Option<String>,
    correlation_id: Option<String>,
}

impl TraceContext {
    /// Builds the context from the values of a request's `traceparent`, `tracestate`
    /// and correlation-id headers. A `traceparent` that is not valid W3C (version 00
    /// layout, lower-case hex, non-zero ids) is dropped with its `tracestate`; values
    /// over [`MAX_TRACE_VALUE_LEN`] or with characters outside visible ASCII are
    /// dropped. `None` when nothing is left.
    pub fn from_headers(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        correlation_id: Option<&str>,
    ) -> Option<Self> {
        let traceparent = traceparent.filter(|v| valid_traceparent(v));
        let tracestate = tracestate.filter(|v| traceparent.is_some() && carried(v));
        let correlation_id = correlation_id.filter(|v| carried(v));
        if traceparent.is_none() && correlation_id.is_none() {
            return None;
        }
        Some(TraceContext {
            traceparent: traceparent.map(str::to_owned),
            tracestate: tracestate.map(str::to_owned),
            correlation_id: correlation_id.map(str::to_owned),
        })
    }

    /// The W3C `traceparent`, when the request carried a valid one.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The W3C `tracestate` that came with a valid `traceparent`.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The request's correlation id.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The trace id (32 hex digits) of the `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.get(3..35))
    }
}

/// Whether `value` is a `traceparent` of W3C version 00 (or a later version with the
/// same first four fields, which a version-00 reader accepts).
fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace, parent, flags, rest @ ..] => {
            hex(version, 2)
                && *version != "ff"
                && (rest.is_empty() || *version != "00")
                && hex(trace, 32)
                && nonzero(trace)
                && hex(parent, 16)
                && nonzero(parent)
                && hex(flags, 2)
        }
        _ => false,
    }
}

/// Whether a header value is carried on: not empty, not too long, visible ASCII and
/// spaces only (so it is a valid header on every sink).
fn carried(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_TRACE_VALUE_LEN
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_tracestate() {
        let ctx = TraceContext::from_headers(Some(VALID), Some("a=1,b=2"), None).expect("ctx");
        assert_eq!(ctx.traceparent(), Some(VALID));
        assert_eq!(ctx.tracestate(), Some("a=1,b=2"));
        assert_eq!(ctx.correlation_id(), None);
    }

    #[test]
    fn malformed_traceparents_are_dropped() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(
                TraceContext::from_headers(Some(bad), Some("a=1"), None).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_later_version_with_more_fields_is_accepted() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(TraceContext::from_headers(Some(v), None, None).is_some());
    }

    #[test]
    fn oversized_or_unprintable_values_are_not_carried() {
        let long = "c".repeat(MAX_TRACE_VALUE_LEN + 1);
        assert!(TraceContext::from_headers(None, None, Some(&long)).is_none());
        assert!(TraceContext::from_headers(None, None, Some("a\u{7f}b")).is_none());
        let ctx = TraceContext::from_headers(Some(VALID), Some(&long), Some("ok")).expect("ctx");
        assert_eq!(ctx.tracestate(), None);
        assert_eq!(ctx.correlation_id(), Some("ok"));
    }
}
