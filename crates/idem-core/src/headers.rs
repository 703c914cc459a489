//! The header names of idem's HTTP contract, lower-case (as HTTP/2 sends them; HTTP
//! header names are case-insensitive). The layer and the client both name them from
//! here.

/// The header that carries the key (the IETF Idempotency-Key draft's name), by default.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header that marks a replayed response: `Idempotent-Replayed: true`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
