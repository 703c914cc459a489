//! Limits against key storms: a rate of new keys per tenant, and a quota of live keys
//! per tenant. Replays and other answers from storage are never limited: only a
//! request that would run a handler for a key not seen before.

mod quota;
mod rate;

pub(crate) use quota::KeyQuota;
pub(crate) use rate::NewKeyLimiter;
