//! SQL rules written once and spliced into the statements that need them (`concat!`
//! takes only literals, hence macros).

/// When a row of `idem.keys` expires: its retention counts from its completion, and
/// `expires_at` (claim time + retention, never moved) keeps the sweeper's index
/// untouched when the response is stored. `expiry!()` names the columns unqualified;
/// `expiry!("idem.keys.")` qualifies them (where `EXCLUDED` is in scope too).
macro_rules! expiry {
    () => {
        expiry!("")
    };
    ($table:literal) => {
        concat!(
            "greatest(",
            $table,
            "expires_at, ",
            $table,
            "completed_at + ",
            $table,
            "retention)"
        )
    };
}
pub(crate) use expiry;

/// The end of a key's tombstone window: its expiry plus the window its route kept
/// (`NULL` for a route that keeps no tombstones). Columns unqualified.
macro_rules! tombstone_until {
    () => {
        concat!("(", expiry!(), " + tombstone_window)")
    };
}
pub(crate) use tombstone_until;

/// The `INSERT` that turns swept keys into tombstones: from `$rows` (a query with the
/// columns `tenant_id, key, fingerprint, completed_at, response_status, until`, the
/// last one [`tombstone_until!`]), each finished key whose window has not passed yet.
/// A key swept again (claimed anew after its window) replaces its old tombstone.
macro_rules! keep_tombstones {
    ($rows:literal) => {
        concat!(
            "INSERT INTO idem.tombstones (tenant_id, key, fingerprint, completed_at, \
               response_status, expires_at) \
             SELECT tenant_id, key, fingerprint, completed_at, response_status, until \
             FROM (",
            $rows,
            ") AS swept WHERE completed_at IS NOT NULL AND until > now() \
             ON CONFLICT (tenant_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
               completed_at = EXCLUDED.completed_at, \
               response_status = EXCLUDED.response_status, expires_at = EXCLUDED.expires_at"
        )
    };
}
pub(crate) use keep_tombstones;

/// What a key's row starts over with when a new request takes it after it expired:
/// its counters, its stored answer and a phased owner's state, as a `SET` list. One
/// list for every statement that reuses a row, so a column added to the row is reset
/// everywhere at once. `reset!()` clears all of it; `reset!(but answer)` leaves the
/// answer's columns to the statement (it stores one); `reset!(but lease)` leaves the
/// columns of a phased owner's lease and kept request to the statement (it claims the
/// key for a phased owner).
macro_rules! reset {
    () => {
        concat!(reset!(but answer), ", ", reset!(@answer))
    };
    (but answer) => {
        concat!(reset!(@progress), ", ", reset!(@lease))
    };
    (but lease) => {
        concat!(reset!(@progress), ", ", reset!(@answer))
    };
    (@progress) => {
        "replays = 0, mismatches = 0, recovery_point = NULL, binding = NULL"
    };
    (@answer) => {
        "completed_at = NULL, response_status = NULL, response_header_names = NULL, \
         response_header_values = NULL, response_body = NULL"
    };
    (@lease) => {
        "fence = NULL, owners = NULL, locked_until = NULL, phases = NULL, \
         request_body = NULL, request_content_type = NULL, request_query = NULL, \
         operation_id = NULL"
    };
}
pub(crate) use reset;
