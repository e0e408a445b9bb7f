//! Connection to the SQL database (SQLite or PostgreSQL) and its migrations.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use crate::error::{Result, StoreError};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool on the stratus database, migrated to the current schema.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`), creating the
    /// SQLite file when missing, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "database URL must start with sqlite: or postgres:, got {:?}",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite
            && let Some(path) = sqlite_path(url)
        {
            // Created private before SQLite creates it with the umask's mode.
            crate::private_files::ensure_private_file(std::path::Path::new(&path))
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        let pool = match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') || url.contains(":memory:") {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                options
                    .max_connections(4)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL lets readers (watchers) run beside the one writer;
                            // the busy timeout makes writers queue instead of failing.
                            // FULL syncs the log at every commit: an order, a payment
                            // or an abuse report answered 202 survives a power cut,
                            // not only a crash of the process (NORMAL's promise).
                            conn.execute(sqlx::raw_sql(
                                "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=30000; PRAGMA synchronous=FULL;",
                            ))
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => options.max_connections(16).connect(url).await?,
        };
        match backend {
            Backend::Sqlite => {
                // sqlx takes no lock on SQLite: two processes opening a new
                // database at once would both create the tables. A file lock
                // next to the database serializes them.
                let _migrating = match sqlite_path(url) {
                    Some(path) => Some(lock_file(format!("{path}.migrate.lock")).await?),
                    None => None,
                };
                SQLITE_MIGRATIONS.run(&pool).await?
            }
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    /// Connects without migrating (administrative use, e.g. creating schemas).
    pub async fn connect_raw(url: &str) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await?;
        Ok(Self { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The file of a `sqlite://PATH[?options]` URL (none for in-memory databases).
fn sqlite_path(url: &str) -> Option<String> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.to_owned())
}

/// Holds an exclusive lock on `path` until dropped.
async fn lock_file(path: String) -> Result<std::fs::File> {
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("migration lock: {e}")))?;
    locked.map_err(|e| StoreError::Invalid(format!("cannot lock the database for migration: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/s.db?mode=rwc").as_deref(),
            Some("/var/lib/s.db")
        );
        assert_eq!(
            sqlite_path("sqlite:relative.db").as_deref(),
            Some("relative.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x"), None);
    }
}
