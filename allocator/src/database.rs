//! Opening the control plane's database from a URL: `sqlite://PATH?mode=rwc` (the
//! embedded default) or `postgres://...` (real pools), one code path for both.

use std::time::Duration;

pub use sea_orm::DatabaseConnection;
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{ConnectOptions, Database, DbErr};

/// How long a SQLite writer waits for another to finish before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the database at `url`. SQLite runs in WAL mode, so readers never block
/// the writer, with a busy timeout, so concurrent writers wait their turn instead of
/// failing.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).max_connections(32);
    options.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
    });
    Database::connect(options).await
}

/// Whether `url` names a PostgreSQL database (where several allocators may share it).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}
