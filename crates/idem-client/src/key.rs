//! The key each request is sent with: the caller's, or a fresh UUIDv7.

use http::{HeaderName, HeaderValue};

/// A caller-chosen idempotency key for one logical operation, put in the request's
/// extensions (`RequestBuilder::with_extension`). Use it when the operation must keep
/// its key across process restarts (store the key with the operation first); without
/// it every request gets a fresh UUIDv7, reused by all of that request's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationKey(pub String);

/// The key `request` is sent with: the one it already carries in `header`, else the
/// caller's [`OperationKey`], else a new UUIDv7, which is then set on the request.
/// `None` when the request's own header or the [`OperationKey`] is not a valid header
/// value (the request then goes out as it is).
pub(crate) fn assign(
    request: &mut reqwest::Request,
    header: &HeaderName,
    operation: Option<&OperationKey>,
) -> Option<String> {
    if let Some(existing) = request.headers().get(header) {
        return existing.to_str().ok().map(str::to_owned);
    }
    let key = match operation {
        Some(OperationKey(key)) => key.clone(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let value = HeaderValue::from_str(&key).ok()?;
    request.headers_mut().insert(header.clone(), value);
    Some(key)
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
        let key_a = assign(&mut a, &header, None).expect("key");
        let key_b = assign(&mut b, &header, None).expect("key");
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
            assign(&mut own, &header, Some(&operation)).as_deref(),
            Some("mine")
        );
        let mut from_operation = request();
        assert_eq!(
            assign(&mut from_operation, &header, Some(&operation)).as_deref(),
            Some("op-1")
        );
    }

    #[test]
    fn an_operation_key_that_is_no_header_value_is_not_sent() {
        let header = HeaderName::from_static("idempotency-key");
        let mut req = request();
        assert_eq!(
            assign(&mut req, &header, Some(&OperationKey("a\nb".into()))),
            None
        );
        assert!(req.headers().get(&header).is_none());
    }
}
