//! The atomic path: the key's claim, the handler's writes and the stored answer in one
//! transaction. `run` takes a keyed (or unkeyed) request through its steps: `store`
//! opens the transaction and claims the key, `handler` runs the wrapped service with
//! it as [`Tx`], `buffer` reads the final answer's body, `settle` stores it and commits
//! (or rolls back). Phased routes reuse `store`, `handler` and `settle` for each phase.

pub(crate) mod buffer;
pub(crate) mod handler;
pub(crate) mod run;
pub(crate) mod settle;
pub(crate) mod store;
pub(crate) mod tx;

pub use tx::Tx;
