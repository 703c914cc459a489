//! The key each request is sent with: the caller's, or a fresh UUIDv7.

use http::{HeaderName, HeaderValue};

/// A caller-chosen idempotency key for one logical operation, put in the request's
/// extensions (`RequestBuilder::with_extension`). Use it when the operation must keep
/// its key across process restarts (store the key with the operation first); without
/// it every request gets a fresh UUIDv7, reused by all of that request's attempts.
///
/// The key must be a valid header value: visible ASCII, spaces and tabs (no control
/// characters such as a newline, nothing outside ASCII). Like a header given to
/// reqwest's `RequestBuilder::header`, an `OperationKey` built directly from a string
/// is checked when the request is sent: a key that is no header value fails the
/// request with an [`OperationKeyError`] before anything goes out, never as a request
/// without a key. [`OperationKey::try_new`] makes the same check where the key is taken
/// in, say before it is stored with the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationKey(pub String);

impl OperationKey {
    /// The key, if it can be sent as a header value; the check the middleware makes
    /// when the request is sent.
    ///
    /// ```
    /// use idem_client::{OperationKey, OperationKeyError};
    ///
    /// assert_eq!(OperationKey::try_new("order-4711"), Ok(OperationKey("order-4711".into())));
    /// assert_eq!(
    ///     OperationKey::try_new("order\n4711"),
    ///     Err(OperationKeyError::NotAHeaderValue { character: '\n', position: 5 })
    /// );
    /// ```
    pub fn try_new(key: impl Into<String>) -> Result<Self, OperationKeyError> {
        let key = OperationKey(key.into());
        key.header_value()?;
        Ok(key)
    }

    /// The key as a header value, or why it is none. Text only: visible ASCII, space and
    /// tab, what `HeaderValue::to_str` reads back. `http` would also take bytes beyond
    /// ASCII as opaque `obs-text`, but an `Idempotency-Key` is a Structured-Field
    /// string, which is ASCII, and a key sent as bytes could not be reported back as the
    /// text the caller gave.
    fn header_value(&self) -> Result<HeaderValue, OperationKeyError> {
        let invalid = |(position, character)| OperationKeyError::NotAHeaderValue {
            character,
            position,
        };
        if let Some(bad) = self
            .0
            .char_indices()
            .find(|&(_, c)| !(c == '\t' || (' '..='~').contains(&c)))
        {
            return Err(invalid(bad));
        }
        HeaderValue::from_str(&self.0).map_err(|_| invalid((0, '\0')))
    }
}

/// Why a request with an [`OperationKey`] was refused before it was sent (or why
/// [`OperationKey::try_new`] refused a key). It comes as
/// `reqwest_middleware::Error::Middleware`; [`OperationKeyError::of`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperationKeyError {
    /// The key holds a character a header value cannot carry as text: a control
    /// character (such as a newline) or one outside ASCII. The request was not sent.
    #[error(
        "the operation key is not a valid header value: {character:?} at byte {position} \
         is neither visible ASCII, a space nor a tab"
    )]
    NotAHeaderValue {
        /// The first character that cannot be sent.
        character: char,
        /// Its byte offset in the key.
        position: usize,
    },
}

impl OperationKeyError {
    /// The [`OperationKeyError`] inside an error of the middleware stack, if there is
    /// one.
    pub fn of(error: &reqwest_middleware::Error) -> Option<&OperationKeyError> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<OperationKeyError>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// The key `request` is sent with: the one it already carries in `header`, else the
/// caller's [`OperationKey`], else a new UUIDv7, which is then set on the request.
/// `Ok(None)` only when the request's own header is not text (it is sent as it is,
/// still keyed); an [`OperationKey`] that is no header value is an error, and the
/// request must not be sent.
pub(crate) fn assign(
    request: &mut reqwest::Request,
    header: &HeaderName,
    operation: Option<&OperationKey>,
) -> Result<Option<String>, OperationKeyError> {
    if let Some(existing) = request.headers().get(header) {
        return Ok(existing.to_str().ok().map(str::to_owned));
    }
    let (key, value) = match operation {
        Some(operation) => (operation.0.clone(), operation.header_value()?),
        None => {
            let key = uuid::Uuid::now_v7().to_string();
            let value = HeaderValue::from_str(&key).expect("a UUID is a header value");
            (key, value)
        }
    };
    request.headers_mut().insert(header.clone(), value);
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> reqwest::Request {
        reqwest::Request::new(
            reqwest::Method::POST,
            "http://127.0.0.1/payments".parse().expect("url"),
        )
    }

    #[test]
    fn a_request_without_a_key_gets_a_fresh_uuid_v7() {
        let header = HeaderName::from_static("idempotency-key");
        let (mut a, mut b) = (request(), request());
        let key_a = assign(&mut a, &header, None).expect("valid").expect("key");
        let key_b = assign(&mut b, &header, None).expect("valid").expect("key");
        assert_ne!(key_a, key_b);
        let parsed = uuid::Uuid::parse_str(&key_a).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(a.headers()[&header], key_a.as_str());
    }

    #[test]
    fn the_request_s_own_key_wins_then_the_operation_s() {
        let header = HeaderName::from_static("idempotency-key");
        let mut own = request();
        own.headers_mut()
            .insert(header.clone(), HeaderValue::from_static("mine"));
        let operation = OperationKey("op-1".into());
        assert_eq!(
            assign(&mut own, &header, Some(&operation)),
            Ok(Some("mine".into()))
        );
        let mut from_operation = request();
        assert_eq!(
            assign(&mut from_operation, &header, Some(&operation)),
            Ok(Some("op-1".into()))
        );
    }

    #[test]
    fn an_operation_key_that_is_no_header_value_is_an_error_and_sets_no_header() {
        let header = HeaderName::from_static("idempotency-key");
        for (key, character, position) in [
            ("a\nb", '\n', 1),
            ("order\r\n4711", '\r', 5),
            ("caf\u{e9}", '\u{e9}', 3),
            ("del\u{7f}", '\u{7f}', 3),
        ] {
            let mut req = request();
            let expected = OperationKeyError::NotAHeaderValue {
                character,
                position,
            };
            assert_eq!(
                assign(&mut req, &header, Some(&OperationKey(key.into()))),
                Err(expected.clone()),
                "{key:?}"
            );
            assert!(req.headers().get(&header).is_none(), "{key:?}");
            assert_eq!(OperationKey::try_new(key), Err(expected), "{key:?}");
        }
    }

    #[test]
    fn keys_with_visible_ascii_spaces_and_tabs_are_accepted() {
        for key in ["order-4711", "a b\tc", "~!@#$%^&*()_+{}|:<>?"] {
            assert_eq!(OperationKey::try_new(key), Ok(OperationKey(key.into())));
        }
    }
}
