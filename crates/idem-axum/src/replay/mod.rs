//! How a duplicate is answered without running anything: from the request of this
//! process that holds its key (`flight`), from the finished records kept in memory
//! (`cache`), or from the store's record, opened when its body is sealed (`seal`);
//! `answer` makes every response the layer builds from a record or a store failure,
//! each with its outcome.

pub(crate) mod answer;
pub(crate) mod cache;
pub(crate) mod flight;
pub(crate) mod seal;
