//! The layer's side of sealed bodies ([`BodySealing`], in `idem-core`): sealing a
//! response on its way to the store and opening a record on its way back.

use idem_core::seal::{BodySealing, Opened, is_sealed};
use idem_core::{IdempotencyKey, Record, RecordState, StoredResponse, TenantId};

/// The response as it is written to the store: sealed when the layer seals bodies.
/// `None` when it cannot be sealed (the key then keeps its status only).
pub(crate) fn for_store(
    sealing: Option<&BodySealing>,
    tenant: &TenantId,
    key: &IdempotencyKey,
    stored: StoredResponse,
) -> Option<StoredResponse> {
    let Some(sealing) = sealing else {
        return Some(stored);
    };
    match sealing.seal(tenant, key, &stored.body) {
        Some(body) => Some(StoredResponse { body, ..stored }),
        None => {
            tracing::error!("the response could not be sealed; storing its status only");
            None
        }
    }
}

/// A record as read from the store, its body opened. `None` when it is sealed and no
/// key of this layer opens it. `keys`: what the body may be bound to, in order: the key
/// as stored, then the client's key when the stored one is protected (bodies sealed
/// before key protection was turned on, whose rows the migration in docs/operations.md
/// rewrote).
pub(crate) fn from_store<'k>(
    sealing: Option<&BodySealing>,
    tenant: &TenantId,
    keys: impl IntoIterator<Item = &'k IdempotencyKey>,
    mut record: Record,
) -> Option<Record> {
    let RecordState::Completed(stored) = &mut record.state else {
        return Some(record);
    };
    let opened = match sealing {
        Some(sealing) => keys
            .into_iter()
            .map(|key| sealing.open(tenant, key, &stored.body))
            .find(|opened| *opened != Opened::Unreadable)
            .unwrap_or(Opened::Unreadable),
        None if is_sealed(&stored.body) => Opened::Unreadable,
        None => Opened::Plain,
    };
    match opened {
        Opened::Plain => {}
        Opened::Sealed(body) => stored.body = body,
        Opened::Unreadable => {
            tracing::error!("a stored response is sealed under a key this layer does not have");
            return None;
        }
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, IdempotencyKey) {
        (
            TenantId::new("acme").expect("tenant"),
            IdempotencyKey::parse("k").expect("key"),
        )
    }

    #[test]
    fn records_from_the_store_open_or_are_refused() {
        let (tenant, key) = ids();
        let sealing = BodySealing::new("a", &[1; 32]).expect("sealing");
        let stored = StoredResponse {
            status: 201,
            headers: vec![],
            body: b"{\"card\":\"4242\"}".to_vec(),
        };
        let written = for_store(Some(&sealing), &tenant, &key, stored.clone()).expect("sealed");
        let record = |body: Vec<u8>| Record {
            fingerprint: idem_core::Fingerprint::builder("POST", "/")
                .body(b"", idem_core::BodyMode::Raw)
                .finish(),
            state: RecordState::Completed(StoredResponse {
                body,
                ..stored.clone()
            }),
            expires_at: chrono::Utc::now(),
            tombstone: None,
        };
        let opened = from_store(
            Some(&sealing),
            &tenant,
            [&key],
            record(written.body.clone()),
        )
        .expect("opens");
        assert_eq!(opened.state, RecordState::Completed(stored.clone()));
        assert!(from_store(None, &tenant, [&key], record(written.body)).is_none());
        assert!(from_store(None, &tenant, [&key], record(stored.body.clone())).is_some());
    }
}
