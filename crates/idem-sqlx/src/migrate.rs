//! The embedded migrations, kept in their own schema with their own history table.

use std::sync::LazyLock;

use sqlx::migrate::Migrator;

/// The schema that holds every object of idem.
pub const SCHEMA: &str = "idem";

/// The table in which the migrator records idem's applied migrations.
///
/// It is not the application's `_sqlx_migrations`, so the application's own migrator
/// never sees idem's versions (and never fails with `VersionMissing` because of them).
pub const MIGRATIONS_TABLE: &str = "idem._sqlx_migrations";

/// idem's migrations, embedded from the repository's `migrations/` folder.
///
/// Run it once at start-up (it takes an advisory lock, so concurrent replicas are
/// safe); it creates the `idem` schema if needed and keeps its history in
/// [`MIGRATIONS_TABLE`]:
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
/// idem_sqlx::MIGRATOR.run(&pool).await?;
/// // then the application's own, in the default `_sqlx_migrations` table:
/// // sqlx::migrate!().run(&pool).await?;
/// # Ok(())
/// # }
/// ```
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.create_schema(SCHEMA);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
});
