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
