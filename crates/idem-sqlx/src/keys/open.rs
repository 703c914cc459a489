//! A keyed request's transaction opened with its key claimed, in one round trip.

use idem_core::FailureKind;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, PgTransaction, Postgres, SqlSafeStr};

use super::{ClaimRequest, LOCK_NOT_AVAILABLE};
use crate::{Isolation, StoreError, literal};

/// SQLSTATE `idem.claim_key` raises when the key already has a row.
const KEY_TAKEN: &str = "IDEM1";

/// What [`open`] made of a request's first message.
#[derive(Debug)]
pub enum Opened {
    /// The transaction is open and the key is its own: run the handler, then
    /// [`complete`](super::complete) and commit.
    Claimed(PgTransaction<'static>),
    /// The key has a row already (a replay, a mismatch, an expired key, or a request
    /// that finished while this one waited): nothing was opened; [`claim`](super::claim)
    /// it in a new transaction, which reads that row.
    Taken,
    /// Another transaction holds the key and did not finish within the wait; nothing
    /// was opened.
    InFlight,
}

/// Begins a transaction at `isolation` on `conn` and claims a new key in it, in one
/// message: the first request for a key, most of the traffic, pays one round trip for
/// both, where a hand-written `BEGIN` then `INSERT` pays two.
///
/// The message is `SET TRANSACTION ISOLATION LEVEL ..; SELECT idem.claim_key(..);
/// BEGIN` in the simple-query protocol: the first two statements run in the message's
/// implicit transaction, which the closing `BEGIN` turns into the request's transaction
/// (Postgres keeps statements that ran before a `BEGIN` of the same message in the
/// transaction it opens). When the claim fails (the key is taken, the wait ran out, the
/// connection broke) the implicit transaction is rolled back and the connection goes
/// back to the pool idle, with nothing claimed. The claim's values are written into the
/// message as hex (see the crate's `literal` module): nothing of the request can change
/// the statement.
///
/// Plain Postgres only: on a Citus coordinator call [`claim_on`](super::claim_on) in a
/// transaction of your own.
pub async fn open(
    conn: PoolConnection<Postgres>,
    isolation: Isolation,
    req: &ClaimRequest<'_>,
) -> Result<Opened, StoreError> {
    let wait_ms = req.wait.as_millis().clamp(1, i32::MAX as u128);
    let message = format!(
        "SET TRANSACTION ISOLATION LEVEL {}; \
         SELECT idem.claim_key({}, {}, {}, {}, {}, {}, {}, {wait_ms}); \
         BEGIN",
        isolation.level(),
        literal::text(req.tenant.as_str()),
        literal::text(req.key.as_str()),
        literal::bytes(req.fingerprint.as_bytes()),
        literal::text(req.method),
        literal::text(req.path),
        literal::optional_text(req.route),
        literal::float(req.retention.as_secs_f64()),
    );
    let begun = PgTransaction::begin(conn, Some(AssertSqlSafe(message).into_sql_str())).await;
    match begun.map_err(StoreError::from) {
        Ok(tx) => Ok(Opened::Claimed(tx)),
        Err(e) => match e.sqlstate().as_deref() {
            Some(KEY_TAKEN) => Ok(Opened::Taken),
            Some(LOCK_NOT_AVAILABLE) => Ok(Opened::InFlight),
            // A stricter isolation level that cannot serialize the claim: the long way
            // starts over in a new transaction.
            _ if e.kind() == FailureKind::Serialization => Ok(Opened::Taken),
            _ => Err(e),
        },
    }
}
