//! Opening the control plane's database from a URL: `sqlite://PATH?mode=rwc` (the
//! embedded default) or `postgres://...` (real pools), one code path for both.

use std::time::Duration;

pub use sea_orm::DatabaseConnection;
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{ConnectOptions, Database, DbErr};

/// How long a SQLite writer waits for another to finish before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many rows SQLite's connection thread hands over ahead of the task reading them.
/// Past this many the thread blocks and is woken for every further row, two context
/// switches a row: a deploy reads a few hundred candidate nodes, so the bound sits
/// above that (sqlx's default is 50).
const SQLITE_ROWS_AHEAD: usize = 1024;

/// Each SQLite connection's page cache, KiB (SQLite's default is 2 MiB). A pool's
/// database outgrows 2 MiB with its first few thousand replicas, after which every
/// deploy's inserts read their index pages back from the file, more of them as the
/// pool fills; the cache takes memory only as pages are read.
const SQLITE_CACHE_KIB: u32 = 64 * 1024;

/// How many pages SQLite's write-ahead log holds before a commit copies them into the
/// database (SQLite's default is 1,000, 4 MiB). A deploy rewrites the same pages over
/// and over (node rows, the leaves of the index of slots by node); a longer log copies
/// each of them once for many commits instead of once for every few.
const SQLITE_WAL_PAGES: u32 = 16 * 1024;

/// The cost PostgreSQL's planner gives a page read out of order, in the allocator's
/// own sessions (the server's default, 4, is for spinning disks). The control plane's
/// tables are small and read all the time, so their pages are in memory: at the
/// default the planner would rather scan all 10,000 node rows and sort them than
/// look up the hundred a deploy reserves on, through the index that already returns
/// them in the order their locks are taken (2 ms against 0.5 ms a deploy).
const POSTGRES_RANDOM_PAGE_COST: &str = "1.1";

/// Connects to the database at `url`. SQLite runs in WAL mode, so readers never block
/// the writer, with a busy timeout, so concurrent writers wait their turn instead of
/// failing.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).max_connections(32);
    options.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .row_buffer_size(SQLITE_ROWS_AHEAD)
            .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
            .pragma("wal_autocheckpoint", SQLITE_WAL_PAGES.to_string())
    });
    options
        .map_sqlx_postgres_opts(|o| o.options([("random_page_cost", POSTGRES_RANDOM_PAGE_COST)]));
    Database::connect(options).await
}

/// Whether `url` names a PostgreSQL database (where several allocators may share it).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}
