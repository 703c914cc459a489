//! What is stored of a response, and which responses are stored at all.

use std::collections::BTreeSet;

/// A response as stored beside its key and replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The replayable headers, names lower-case, in the order the handler sent them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// The bytes it holds: the body, and each header's name and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// Headers that describe a connection rather than a response; never stored.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The response headers [`HeaderAllowList::default`] stores and replays.
pub const DEFAULT_REPLAYED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "location",
    "etag",
    "link",
    "vary",
    "cache-control",
];

/// Which response headers are stored and replayed.
///
/// Defaults to [`DEFAULT_REPLAYED_HEADERS`]: `content-type`, `location`, `etag`, `link`
/// and the representation headers `content-encoding`, `content-language`, `vary` and
/// `cache-control`, so a body compressed before it is stored is replayed with the
/// `Content-Encoding` that says how to read it. Apps add their own. Hop-by-hop headers
/// (and `content-length`, which is recomputed) are never stored, whatever the list says.
///
/// ```
/// use idem_core::HeaderAllowList;
///
/// let list = HeaderAllowList::default().with("X-Request-Cost");
/// assert!(list.allows("Content-Type"));
/// assert!(list.allows("Content-Encoding"));
/// assert!(list.allows("x-request-cost"));
/// assert!(!list.allows("set-cookie"));
/// assert!(!HeaderAllowList::default().with("Transfer-Encoding").allows("transfer-encoding"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAllowList {
    names: BTreeSet<String>,
}

impl Default for HeaderAllowList {
    fn default() -> Self {
        HeaderAllowList {
            names: DEFAULT_REPLAYED_HEADERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
        }
    }
}

impl HeaderAllowList {
    /// An empty list: only the body and status are replayed.
    pub fn empty() -> Self {
        HeaderAllowList {
            names: BTreeSet::new(),
        }
    }

    /// Adds a header name (case-insensitive).
    pub fn with(mut self, name: &str) -> Self {
        self.names.insert(name.to_ascii_lowercase());
        self
    }

    /// Whether a header of this name is stored and replayed.
    pub fn allows(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        !HOP_BY_HOP.contains(&name.as_str()) && self.names.contains(&name)
    }
}

/// Which response statuses are final: stored with the handler's writes and replayed.
///
/// By default 2xx, 3xx and 4xx are final, except 408, 409, 425 and 429, which tell the
/// client to try again. A redirect is an outcome: a `303 See Other` answering a `POST`
/// commits the handler's writes and is replayed to a retry like a `201`. 1xx and 5xx
/// are not final (nothing is stored, the handler's writes roll back, and a retry runs
/// again).
///
/// ```
/// use idem_core::FinalStatuses;
///
/// let f = FinalStatuses::default();
/// assert!(f.is_final(201));
/// assert!(f.is_final(303));
/// assert!(f.is_final(400));
/// assert!(!f.is_final(429));
/// assert!(!f.is_final(503));
/// let f = FinalStatuses::default().with(503).without(404);
/// assert!(f.is_final(503));
/// assert!(!f.is_final(404));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalStatuses {
    extra: BTreeSet<u16>,
    excluded: BTreeSet<u16>,
}

impl Default for FinalStatuses {
    fn default() -> Self {
        FinalStatuses {
            extra: BTreeSet::new(),
            excluded: [408, 409, 425, 429].into_iter().collect(),
        }
    }
}

impl FinalStatuses {
    /// Marks a status final.
    pub fn with(mut self, status: u16) -> Self {
        self.excluded.remove(&status);
        self.extra.insert(status);
        self
    }

    /// Marks a status not final.
    pub fn without(mut self, status: u16) -> Self {
        self.extra.remove(&status);
        self.excluded.insert(status);
        self
    }

    /// Whether a response with this status is stored and its writes committed.
    pub fn is_final(&self, status: u16) -> bool {
        if self.excluded.contains(&status) {
            return false;
        }
        self.extra.contains(&status) || (200..500).contains(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_finality_matches_the_contract() {
        let f = FinalStatuses::default();
        for s in [
            200, 201, 204, 299, 300, 301, 302, 303, 304, 307, 308, 399, 400, 401, 403, 404, 410,
            413, 422, 499,
        ] {
            assert!(f.is_final(s), "{s} should be final");
        }
        for s in [
            0, 100, 101, 103, 199, 408, 409, 425, 429, 500, 502, 503, 504, 599, 600, 999,
        ] {
            assert!(!f.is_final(s), "{s} should not be final");
        }
    }

    #[test]
    fn a_redirect_can_be_made_not_final_alone() {
        let f = FinalStatuses::default().without(307);
        assert!(!f.is_final(307));
        assert!(f.is_final(303));
        assert!(f.with(307).is_final(307));
    }

    #[test]
    fn default_replays_the_representation_headers() {
        let list = HeaderAllowList::default();
        for h in [
            "content-type",
            "Content-Encoding",
            "content-language",
            "location",
            "etag",
            "link",
            "Vary",
            "cache-control",
        ] {
            assert!(list.allows(h), "{h} should be replayed");
        }
        for h in [
            "set-cookie",
            "date",
            "server",
            "x-request-id",
            "content-length",
        ] {
            assert!(!list.allows(h), "{h} should not be replayed");
        }
        assert!(!HeaderAllowList::empty().allows("content-encoding"));
    }

    #[test]
    fn hop_by_hop_headers_are_never_allowed() {
        let mut list = HeaderAllowList::default();
        for h in HOP_BY_HOP {
            list = list.with(h);
        }
        for h in HOP_BY_HOP {
            assert!(!list.allows(h));
        }
        assert!(list.allows("ETag"));
    }
}
