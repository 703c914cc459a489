//! The database the example (and the benchmark) run against: `DATABASE_URL` when set,
//! otherwise a throwaway Postgres container.

use std::error::Error;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

/// A Postgres server to run against, and the container behind it if one was started.
pub struct DevDatabase {
    /// The connection URL.
    pub url: String,
    container: Option<ContainerAsync<Postgres>>,
}

impl DevDatabase {
    /// `DATABASE_URL` when set; otherwise starts a container from the image named by
    /// `IDEM_PG_IMAGE` (`name:tag`, default `postgres:17`) and says so in the log. The
    /// container runs with `fsync=off`, as throwaway databases do.
    pub async fn from_env() -> Result<Self, Box<dyn Error + Send + Sync>> {
        Self::from_env_with(false).await
    }

    /// Like [`from_env`](Self::from_env); a container started here is `durable` (fsync on,
    /// as in production) when asked, which is what measurements want.
    pub async fn from_env_with(durable: bool) -> Result<Self, Box<dyn Error + Send + Sync>> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            tracing::info!("using the database at DATABASE_URL");
            return Ok(DevDatabase {
                url,
                container: None,
            });
        }
        let image = std::env::var("IDEM_PG_IMAGE").unwrap_or_else(|_| "postgres:17".to_owned());
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        tracing::info!(%image, "DATABASE_URL not set: starting a throwaway Postgres container");
        let image_config = if durable {
            Postgres::default().with_fsync_enabled()
        } else {
            Postgres::default()
        };
        let container = image_config.with_name(name).with_tag(tag).start().await?;
        let host = container.get_host().await?;
        let port = container.get_host_port_ipv4(5432).await?;
        tracing::info!(%host, %port, "throwaway Postgres container ready (removed on shutdown)");
        Ok(DevDatabase {
            url: format!("postgres://postgres:postgres@{host}:{port}/postgres"),
            container: Some(container),
        })
    }

    /// Removes the container, if one was started.
    pub async fn shutdown(self) -> Result<(), Box<dyn Error + Send + Sync>> {
        if let Some(container) = self.container {
            container.rm().await?;
            tracing::info!("throwaway Postgres container removed");
        }
        Ok(())
    }
}
