//! Shared harness of idem's integration tests: real Postgres (a container per test
//! binary, or the server at `DATABASE_URL`), a fresh database per test with the
//! migrations applied, and services served on real sockets.

pub mod app;
pub mod pg;
pub mod proxy;

pub use app::{TestApp, effects_router};
pub use pg::{TestDb, test_db};
pub use proxy::Proxy;
