//! Which final responses stream rather than end: their effects commit as soon as the
//! status and headers are known, and only their status is stored.

/// Media types whose bodies are open-ended streams by nature.
pub const STREAMING_MEDIA_TYPES: &[&str] = &["text/event-stream", "multipart/x-mixed-replace"];

/// Whether a response with this `Content-Type` streams: it is never buffered, so the
/// client sees each event as it is produced and the key's transaction does not stay
/// open while the stream trickles. Bodies of other types are buffered up to a size and
/// a time bound, and treated as streams when they pass the time bound.
///
/// ```
/// use idem_core::streams_by_media_type;
///
/// assert!(streams_by_media_type(Some("text/event-stream")));
/// assert!(streams_by_media_type(Some("Text/Event-Stream; charset=utf-8")));
/// assert!(!streams_by_media_type(Some("application/json")));
/// assert!(!streams_by_media_type(None));
/// ```
pub fn streams_by_media_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    STREAMING_MEDIA_TYPES
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
}
