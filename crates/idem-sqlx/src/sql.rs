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
