//! Leadership among several allocator processes sharing one PostgreSQL database.
//!
//! Every process serves the REST API: deploys, scaling and quotas are transactions
//! whose conditional updates already keep concurrent writers within quotas and node
//! capacity, from one process or many. What must run once is what acts on its own
//! judgement or holds the nodes' streams: the failure detector (it alone may declare
//! a node dead) and the node API. That is the leader's, and PostgreSQL chooses it: the
//! leader holds a session-level advisory lock on a connection of its own, and the
//! others try to take the lock every 250 ms. No consensus of our own: the database
//! the pool cannot work without already decides who holds a lock, and it frees the
//! lock the moment the leader's session ends (its process killed, its connection
//! cut, or a vanished host noticed through the TCP keepalives set here).
//!
//! A leader that loses its session (it can no longer prove it holds the lock) stops
//! leading at once by ending its process; a supervisor starts it again as a follower.
//! Nothing is lost by this: every placement is committed before it is sent to a node.
//!
//! On SQLite one process owns the file, and it leads from the start.

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
use sea_orm::{DatabaseBackend, DatabaseConnection};

/// The advisory lock's key: "berth ld" in ASCII.
pub const LOCK_KEY: i64 = 0x6265_7274_6820_6c64;

/// How often a follower tries to take the lead, and a leader checks it still holds it.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a check may take before the leader counts its session as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why leading failed or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The database could not be reached or refused.
    #[error("the leadership session failed")]
    Database(#[from] sea_orm::sqlx::Error),
    /// The session answers but no longer holds the lock (the database ended it).
    #[error("session {pid} no longer holds the leadership lock")]
    LockLost {
        /// The session's backend process.
        pid: i32,
    },
    /// The session did not answer a check in time.
    #[error("the leadership session did not answer within {0:?}")]
    Unresponsive(Duration),
}

/// The lead, held until this value is dropped or its session is lost.
#[derive(Debug)]
pub struct Lead {
    /// The session holding the lock, and its backend process id (None on SQLite).
    session: Option<(PgConnection, i32)>,
}

/// Waits until this process leads the allocators on `db` (reached at `url`), calling
/// `waiting` once if another process leads now.
pub async fn campaign(
    db: &DatabaseConnection,
    url: &str,
    waiting: impl FnOnce(),
) -> Result<Lead, LeaderError> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(Lead { session: None });
    }
    let options: PgConnectOptions = url.parse()?;
    let options = options
        .application_name("berth-allocator-leadership")
        .disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    // Let the server notice a vanished leader host within about ten seconds, and so
    // free the lock for another.
    for setting in [
        "SET tcp_keepalives_idle = 5",
        "SET tcp_keepalives_interval = 2",
        "SET tcp_keepalives_count = 3",
    ] {
        sea_orm::sqlx::query(setting).execute(&mut conn).await?;
    }
    let pid: i32 = sea_orm::sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    let mut waiting = Some(waiting);
    loop {
        let taken: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if taken {
            return Ok(Lead {
                session: Some((conn, pid)),
            });
        }
        if let Some(waiting) = waiting.take() {
            waiting();
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

impl Lead {
    /// Returns when the lead is lost: the session that holds the lock failed, timed
    /// out, or no longer holds it. Never returns on SQLite.
    pub async fn lost(&mut self) -> LeaderError {
        let Some((conn, pid)) = self.session.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let held = sea_orm::sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND objsubid = 1 AND pid = pg_backend_pid() AND granted \
                 AND ((classid::bigint << 32) | objid::bigint) = $1)",
            )
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn);
            match tokio::time::timeout(CHECK_TIMEOUT, held).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    return LeaderError::LockLost { pid: *pid };
                }
                Ok(Err(e)) => return LeaderError::Database(e),
                Err(_) => {
                    return LeaderError::Unresponsive(CHECK_TIMEOUT);
                }
            }
        }
    }

    /// Whether this lead is held through PostgreSQL (false: the sole process on SQLite).
    pub fn is_elected(&self) -> bool {
        self.session.is_some()
    }
}

impl crate::Allocator {
    /// Records that this process leads and serves its REST API at `api_url`, so the
    /// other servers can forward to it what only the leader can answer.
    pub async fn record_leader(
        &self,
        api_url: &str,
        now_ms: i64,
    ) -> Result<(), crate::AllocatorError> {
        use sea_orm::ActiveValue::Set;
        use sea_orm::EntityTrait;
        use sea_orm::sea_query::OnConflict;
        let row = crate::entity::leader::ActiveModel {
            id: Set(1),
            api_url: Set(api_url.to_owned()),
            since_ms: Set(now_ms),
        };
        crate::entity::leader::Entity::insert(row)
            .on_conflict(
                OnConflict::column(crate::entity::leader::Column::Id)
                    .update_columns([
                        crate::entity::leader::Column::ApiUrl,
                        crate::entity::leader::Column::SinceMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(self.connection())
            .await?;
        Ok(())
    }

    /// The REST API of the server that last took the lead, if any did.
    pub async fn leader_api(&self) -> Result<Option<String>, crate::AllocatorError> {
        use sea_orm::EntityTrait;
        Ok(crate::entity::leader::Entity::find_by_id(1)
            .one(self.connection())
            .await?
            .map(|row| row.api_url))
    }
}
