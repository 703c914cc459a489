//! What each command does: a query or two, and a report as JSON.

mod inbox;
mod keys;
mod maintenance;
mod outbox;
mod probe;

pub(crate) use probe::print as print_probe;

use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgPoolOptions, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgPool, Postgres};

use crate::args::{Cli, Command};

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// What was asked for does not exist; the report says what was looked for.
    #[error("not found")]
    NotFound(Value),
    /// `probe` ran and a check failed; the report says which.
    #[error("a check failed")]
    Checks(Value),
    /// The command failed.
    #[error(transparent)]
    Error(#[from] Error),
}

/// The errors of a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No database to connect to.
    #[error("no database: pass --database-url or set DATABASE_URL")]
    NoDatabase,
    /// A statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] idem_sqlx::StoreError),
    /// The migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An argument is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A report could not be written as JSON.
    #[error("report: {0}")]
    Report(#[from] serde_json::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Error(Error::Database(e))
    }
}

impl From<idem_sqlx::StoreError> for Failure {
    fn from(e: idem_sqlx::StoreError) -> Self {
        Failure::Error(Error::Store(e))
    }
}

/// Runs the command and returns its report.
pub async fn run(cli: &Cli) -> Result<Value, Failure> {
    let pool = match &cli.command {
        // The probe speaks HTTP only.
        Command::Probe(args) => return probe::probe(args).await,
        _ => connect(cli).await?,
    };
    match &cli.command {
        Command::Keys(command) => keys::run(&pool, command).await,
        Command::Outbox(command) => outbox::run(&pool, command).await,
        Command::Inbox(command) => inbox::run(&pool, command).await,
        Command::Reconcile {
            consumer,
            since,
            topic,
        } => maintenance::reconcile(&pool, consumer, *since, topic.as_deref()).await,
        Command::Sweep { batch_size } => maintenance::sweep(&pool, *batch_size, cli.json).await,
        Command::Migrate => maintenance::migrate(&pool).await,
        Command::Probe(args) => probe::probe(args).await,
        Command::Distribute { colocate_with } => {
            maintenance::distribute(&pool, colocate_with.as_deref()).await
        }
    }
}

/// The rows `query` reads on `pool`, each a JSON object of its columns: the report of
/// a command that lists what a table holds.
async fn report<'q, T>(
    pool: &PgPool,
    query: QueryAs<'q, Postgres, T, PgArguments>,
) -> Result<Value, Failure>
where
    T: Serialize + Send + Unpin + for<'r> FromRow<'r, PgRow>,
{
    let rows = query.fetch_all(pool).await?;
    Ok(serde_json::to_value(rows).map_err(Error::Report)?)
}

async fn connect(cli: &Cli) -> Result<PgPool, Failure> {
    let url = cli.database_url.as_deref().ok_or(Error::NoDatabase)?;
    Ok(PgPoolOptions::new().max_connections(2).connect(url).await?)
}
