//! Tenants and the topologies they own, with every revision kept.
//!
//! Owns the `tenants`, `topologies` and `topology_revisions` tables. It stores what
//! tenants asked for; it never places anything (the allocator does) and never talks to
//! a node.

pub mod entity;
pub mod hashing;
pub mod migration;
pub mod throttle;

use berth_protocol::topology::Topology;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use entity::{login_throttle, revision, tenant, topology, user};

/// Failures of the tenant service.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// No such tenant.
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    /// No such topology.
    #[error("topology {topology:?} does not exist in tenant {tenant:?}")]
    UnknownTopology {
        /// The tenant.
        tenant: String,
        /// The topology.
        topology: String,
    },
    /// A stored revision could not be read back.
    #[error("stored revision {revision} of {topology:?} is unreadable: {source}")]
    Corrupt {
        /// The topology.
        topology: String,
        /// The revision.
        revision: i64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Why a login or a user change failed. Messages never say whether a user exists.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// Unknown user or wrong password (deliberately not told apart).
    #[error("the user name or password is wrong")]
    BadCredentials,
    /// Too many failures in a row from this source, or too many attempts from it or
    /// at this name.
    #[error("too many failed logins; try again in {} s", (retry_after_ms + 999) / 1000)]
    Throttled {
        /// Milliseconds until logins are allowed again.
        retry_after_ms: i64,
    },
    /// Every password hasher is busy and the queue for them is full.
    #[error("too many logins at once; try again in a second")]
    Busy,
    /// The password is too weak to store.
    #[error("a password needs at least 12 characters")]
    WeakPassword,
    /// The user exists.
    #[error("user {0:?} exists already")]
    Exists(String),
    /// Hashing failed.
    #[error("password hashing failed")]
    Hashing,
}

/// A stored revision of a topology.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRevision {
    /// The revision number, from 1.
    pub revision: u64,
    /// Whether this call stored it (false when the topology was already at this spec).
    pub is_new: bool,
    /// The topology.
    pub topology: Topology,
}

/// The tenant service over one database.
#[derive(Clone, Debug)]
pub struct TenantService {
    db: DatabaseConnection,
    hashing: std::sync::Arc<hashing::Hashing>,
    /// When idle login counts were last pruned, Unix milliseconds.
    pruned_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// What a login's counts are stored after.
#[derive(Clone, Copy, Debug)]
enum Counted {
    /// An attempt, before its password is checked.
    Attempt,
    /// The password was right.
    Success,
}

/// Logins queued for each password hasher before the next is answered "busy".
const LOGINS_WAITING_PER_HASHER: usize = 64;
/// Login counts idle this long are forgotten.
const LOGIN_COUNTS_KEPT_MS: i64 = 24 * 3_600_000;

impl TenantService {
    /// Opens the service over `db`, migrating its tables.
    pub async fn open(db: DatabaseConnection) -> Result<Self, TenantError> {
        migration::Migrator::up(&db, None).await?;
        Ok(Self {
            db,
            hashing: hashing::Hashing::for_this_machine(LOGINS_WAITING_PER_HASHER),
            pruned_ms: std::sync::Arc::default(),
        })
    }

    /// Creates a tenant if it does not exist yet.
    pub async fn ensure_tenant(&self, name: &str, now_ms: i64) -> Result<(), TenantError> {
        let row = tenant::ActiveModel {
            name: Set(name.to_owned()),
            created_at_ms: Set(now_ms),
        };
        tenant::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Proposes `spec` as the topology's next revision, unless it equals the current
    /// one (then the current revision is returned, so `up` twice stores nothing new).
    ///
    /// A proposed revision is stored under its own number but is not current: nothing
    /// that reads the topology sees it until [`Self::settle_revision`] says it was
    /// placed, and [`Self::discard_revision`] forgets it if the placement was refused.
    /// So a deploy the allocator refuses is never visible, not even for a moment, and
    /// a change made from the current revision (a scale, an autoscaling round) never
    /// builds on one that is about to be refused.
    pub async fn propose_revision(
        &self,
        tenant_name: &str,
        spec: &Topology,
        now_ms: i64,
    ) -> Result<StoredRevision, TenantError> {
        let json = serde_json::to_string(spec).map_err(|source| TenantError::Corrupt {
            topology: spec.name.clone(),
            revision: 0,
            source,
        })?;
        let txn = self.db.begin().await?;
        match self
            .propose_revision_in(&txn, tenant_name, spec, &json, now_ms)
            .await
        {
            Ok(stored) => {
                txn.commit().await?;
                Ok(stored)
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// The body of [`Self::propose_revision`], inside its transaction.
    async fn propose_revision_in(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        tenant_name: &str,
        spec: &Topology,
        json: &str,
        now_ms: i64,
    ) -> Result<StoredRevision, TenantError> {
        lock_tenant(txn, tenant_name).await?;
        let current = topology::Entity::find_by_id((tenant_name.to_owned(), spec.name.clone()))
            .one(txn)
            .await?;
        if let Some(current) = &current {
            let stored = revision::Entity::find_by_id((
                tenant_name.to_owned(),
                spec.name.clone(),
                current.current_revision,
            ))
            .one(txn)
            .await?;
            if stored.is_some_and(|r| r.spec == json) {
                return Ok(StoredRevision {
                    revision: current.current_revision as u64,
                    is_new: false,
                    topology: spec.clone(),
                });
            }
        }
        // Revision numbers never repeat, even across a delete and a new deploy.
        let last = revision::Entity::find()
            .filter(revision::Column::Tenant.eq(tenant_name))
            .filter(revision::Column::Topology.eq(&spec.name))
            .order_by_desc(revision::Column::Revision)
            .one(txn)
            .await?
            .map_or(0, |r| r.revision);
        let next = last + 1;
        revision::Entity::insert(revision::ActiveModel {
            tenant: Set(tenant_name.to_owned()),
            topology: Set(spec.name.clone()),
            revision: Set(next),
            spec: Set(json.to_owned()),
            created_at_ms: Set(now_ms),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(StoredRevision {
            revision: next as u64,
            is_new: true,
            topology: spec.clone(),
        })
    }

    /// Makes `revision`, proposed by [`Self::propose_revision`], the topology's current
    /// one now that it is placed. A later revision that is current already stays (the
    /// allocator refuses to place an older revision over a newer one, so the two agree).
    pub async fn settle_revision(
        &self,
        tenant_name: &str,
        name: &str,
        revision: u64,
        now_ms: i64,
    ) -> Result<(), TenantError> {
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        let txn = self.db.begin().await?;
        let result = async {
            lock_tenant(&txn, tenant_name).await?;
            let current = topology::Entity::find_by_id((tenant_name.to_owned(), name.to_owned()))
                .one(&txn)
                .await?;
            match current {
                Some(c) if c.current_revision >= revision => {}
                Some(_) => {
                    topology::Entity::update_many()
                        .col_expr(topology::Column::CurrentRevision, revision.into())
                        .col_expr(topology::Column::UpdatedAtMs, now_ms.into())
                        .filter(topology::Column::Tenant.eq(tenant_name))
                        .filter(topology::Column::Name.eq(name))
                        .exec(&txn)
                        .await?;
                }
                None => {
                    topology::Entity::insert(topology::ActiveModel {
                        tenant: Set(tenant_name.to_owned()),
                        name: Set(name.to_owned()),
                        current_revision: Set(revision),
                        updated_at_ms: Set(now_ms),
                    })
                    .exec_without_returning(&txn)
                    .await?;
                }
            }
            Ok::<_, TenantError>(())
        }
        .await;
        match result {
            Ok(()) => {
                txn.commit().await?;
                Ok(())
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// Forgets `revision`, proposed by [`Self::propose_revision`], when the deploy it
    /// was for was refused. It was never current, so nothing that read the topology
    /// saw it; a revision that is current (settled meanwhile) is left alone.
    pub async fn discard_revision(
        &self,
        tenant_name: &str,
        name: &str,
        revision: u64,
    ) -> Result<(), TenantError> {
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        let current = topology::Entity::find_by_id((tenant_name.to_owned(), name.to_owned()))
            .one(&self.db)
            .await?;
        if current.is_some_and(|c| c.current_revision == revision) {
            return Ok(());
        }
        revision::Entity::delete_by_id((tenant_name.to_owned(), name.to_owned(), revision))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The topology's current revision.
    pub async fn current(
        &self,
        tenant_name: &str,
        name: &str,
    ) -> Result<StoredRevision, TenantError> {
        let unknown = || TenantError::UnknownTopology {
            tenant: tenant_name.to_owned(),
            topology: name.to_owned(),
        };
        let current = topology::Entity::find_by_id((tenant_name.to_owned(), name.to_owned()))
            .one(&self.db)
            .await?
            .ok_or_else(unknown)?;
        let row = revision::Entity::find_by_id((
            tenant_name.to_owned(),
            name.to_owned(),
            current.current_revision,
        ))
        .one(&self.db)
        .await?
        .ok_or_else(unknown)?;
        let topology = serde_json::from_str(&row.spec).map_err(|source| TenantError::Corrupt {
            topology: name.to_owned(),
            revision: row.revision,
            source,
        })?;
        Ok(StoredRevision {
            revision: row.revision as u64,
            is_new: false,
            topology,
        })
    }

    /// Fails with [`TenantError::UnknownTenant`] unless the tenant exists.
    pub async fn ensure_known(&self, name: &str) -> Result<(), TenantError> {
        match tenant::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(TenantError::UnknownTenant(name.to_owned())),
        }
    }

    /// Every tenant's name, in order.
    pub async fn tenants(&self) -> Result<Vec<String>, TenantError> {
        let rows = tenant::Entity::find()
            .order_by_asc(tenant::Column::Name)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    /// The names of a tenant's topologies.
    pub async fn list(&self, tenant_name: &str) -> Result<Vec<String>, TenantError> {
        let rows = topology::Entity::find()
            .filter(topology::Column::Tenant.eq(tenant_name))
            .order_by_asc(topology::Column::Name)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    /// Deletes a topology; its revisions stay as history. Returns whether it existed.
    pub async fn delete(&self, tenant_name: &str, name: &str) -> Result<bool, TenantError> {
        let result = topology::Entity::delete_by_id((tenant_name.to_owned(), name.to_owned()))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// The database this service writes to.
    pub fn connection(&self) -> &impl ConnectionTrait {
        &self.db
    }
}

/// Writes to the tenant's row first, inside `txn`: SQLite then takes the write lock
/// (waiting its turn) before any read, so concurrent changes never fail a lock
/// upgrade, and PostgreSQL holds the row until the end, serialising the tenant's
/// changes. Fails if there is no such tenant.
async fn lock_tenant(
    txn: &sea_orm::DatabaseTransaction,
    tenant_name: &str,
) -> Result<(), TenantError> {
    let touched = tenant::Entity::update_many()
        .col_expr(
            tenant::Column::CreatedAtMs,
            sea_orm::sea_query::Expr::col(tenant::Column::CreatedAtMs),
        )
        .filter(tenant::Column::Name.eq(tenant_name))
        .exec(txn)
        .await?;
    if touched.rows_affected == 0 {
        return Err(TenantError::UnknownTenant(tenant_name.to_owned()));
    }
    Ok(())
}

/// The hash checked when a user does not exist, so that a login for an unknown user
/// costs as much as one for a known user and timing does not tell them apart.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never a user's").unwrap_or_default())
}

fn hash_password(password: &str) -> Result<String, LoginError> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| LoginError::Hashing)
}

fn password_matches(password: &str, stored: &str) -> bool {
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
    PasswordHash::new(stored).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

impl TenantService {
    /// Creates a user of `tenant_name` with an argon2id hash of `password`.
    pub async fn create_user(
        &self,
        tenant_name: &str,
        name: &str,
        password: &str,
        role: berth_protocol::capability::Role,
        now_ms: i64,
    ) -> Result<(), LoginError> {
        if password.chars().count() < 12 {
            return Err(LoginError::WeakPassword);
        }
        let password = password.to_owned();
        let hash = self
            .hashing
            .run(move || hash_password(&password))
            .await
            .ok_or(LoginError::Hashing)??;
        let row = user::ActiveModel {
            tenant: Set(tenant_name.to_owned()),
            name: Set(name.to_owned()),
            password_hash: Set(hash),
            role: Set(role.as_str().to_owned()),
            failed_logins: Set(0),
            locked_until_ms: Set(0),
            created_at_ms: Set(now_ms),
        };
        match user::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec(&self.db)
            .await?
        {
            sea_orm::TryInsertResult::Inserted(_) => Ok(()),
            _ => Err(LoginError::Exists(name.to_owned())),
        }
    }

    /// Checks a user's password, from `source` (see [`throttle::source_of`]),
    /// throttling failures by name and source, by source and by name (see
    /// [`throttle`]). Returns the user's role.
    pub async fn login(
        &self,
        tenant_name: &str,
        name: &str,
        password: &str,
        source: &str,
        now_ms: i64,
    ) -> Result<berth_protocol::capability::Role, LoginError> {
        // A place among the hashers first: a flood is answered before it costs a query.
        let admitted = self.hashing.admit().ok_or(LoginError::Busy)?;
        self.prune_login_counts(now_ms).await?;
        let keys = [
            throttle::Key::Source(source).stored(),
            throttle::Key::Pair {
                tenant: tenant_name,
                name,
                source,
            }
            .stored(),
            throttle::Key::Name {
                tenant: tenant_name,
                name,
            }
            .stored(),
        ];
        // The attempt is charged before the password is checked, in a transaction
        // that writes its rows first (SQLite then serialises it, PostgreSQL holds the
        // rows, always taken in the same order): concurrent attempts each see the
        // ones before, so N guesses count N, and the one that locks the pair does so
        // before any later one is checked. A stranger's name is counted as a user's.
        let txn = self.db.begin().await?;
        let mut counts = self.login_counts(&txn, &keys, now_ms).await?;
        let gate = counts.attempt(now_ms);
        self.store_login_counts(&txn, &keys, &counts, Counted::Attempt, now_ms)
            .await?;
        txn.commit().await?;
        if let throttle::Gate::Locked { retry_after_ms } = gate {
            admitted.not_hashed();
            return Err(LoginError::Throttled { retry_after_ms });
        }
        let user = user::Entity::find_by_id((tenant_name.to_owned(), name.to_owned()))
            .one(&self.db)
            .await?;
        // A name without a user costs the same hash as one with a wrong password.
        let (stored, offered) = (
            user.as_ref()
                .map_or(decoy_hash(), |u| u.password_hash.as_str())
                .to_owned(),
            password.to_owned(),
        );
        let ok = self
            .hashing
            .run(move || password_matches(&offered, &stored))
            .await
            .ok_or(LoginError::Hashing)?;
        let Some(row) = user.filter(|_| ok) else {
            tracing::info!(tenant = tenant_name, user = name, source, "failed login");
            return Err(LoginError::BadCredentials);
        };
        let txn = self.db.begin().await?;
        let mut counts = self.login_counts(&txn, &keys, now_ms).await?;
        counts.succeeded();
        self.store_login_counts(&txn, &keys, &counts, Counted::Success, now_ms)
            .await?;
        txn.commit().await?;
        berth_protocol::capability::Role::parse(&row.role).ok_or(LoginError::BadCredentials)
    }

    /// The counts stored for `keys` (source, pair, name), each row written first so
    /// that the transaction holds it; a key not seen before starts afresh.
    async fn login_counts(
        &self,
        txn: &impl ConnectionTrait,
        keys: &[String; 3],
        now_ms: i64,
    ) -> Result<throttle::Counts, DbErr> {
        use login_throttle::Column as C;
        let fresh = throttle::Counts::fresh(now_ms);
        let mut ordered: Vec<&String> = keys.iter().collect();
        ordered.sort();
        for key in ordered {
            let tokens = if key == &keys[1] {
                0.0
            } else if key == &keys[0] {
                fresh.source.tokens()
            } else {
                fresh.name.tokens()
            };
            login_throttle::Entity::insert(login_throttle::ActiveModel {
                key: Set(key.clone()),
                attempts: Set(0),
                failures: Set(0),
                locked_until_ms: Set(0),
                tokens: Set(tokens),
                last_ms: Set(now_ms),
            })
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(C::Key)
                    // A write of the row as it is, so that the transaction holds it.
                    // Qualified: in PostgreSQL's upsert a bare name is ambiguous.
                    .value(
                        C::Attempts,
                        sea_orm::sea_query::Expr::col((login_throttle::Entity, C::Attempts)),
                    )
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        }
        let rows = login_throttle::Entity::find()
            .filter(C::Key.is_in(keys.iter().cloned()))
            .all(txn)
            .await?;
        let row = |key: &String| {
            rows.iter()
                .find(|r| &r.key == key)
                .ok_or_else(|| DbErr::RecordNotFound(format!("login count {key}")))
        };
        let (source, pair, name) = (row(&keys[0])?, row(&keys[1])?, row(&keys[2])?);
        Ok(throttle::Counts {
            source: berth_protocol::limits::Bucket::at(source.tokens, source.last_ms),
            pair: throttle::LoginState {
                failures: u32::try_from(pair.failures).unwrap_or(0),
                locked_until_ms: pair.locked_until_ms,
            },
            name: berth_protocol::limits::Bucket::at(name.tokens, name.last_ms),
        })
    }

    /// Stores `counts` for `keys`, with one more attempt each or, after a success,
    /// none.
    async fn store_login_counts(
        &self,
        txn: &impl ConnectionTrait,
        keys: &[String; 3],
        counts: &throttle::Counts,
        counted: Counted,
        now_ms: i64,
    ) -> Result<(), DbErr> {
        use login_throttle::Column as C;
        use sea_orm::sea_query::{Expr, ExprTrait};
        let rows = [
            (
                &keys[0],
                0,
                0,
                counts.source.tokens(),
                counts.source.last_ms(),
            ),
            (
                &keys[1],
                i32::try_from(counts.pair.failures).unwrap_or(i32::MAX),
                counts.pair.locked_until_ms,
                0.0,
                now_ms,
            ),
            (&keys[2], 0, 0, counts.name.tokens(), counts.name.last_ms()),
        ];
        for (key, failures, locked_until_ms, tokens, last_ms) in rows {
            login_throttle::Entity::update_many()
                .col_expr(
                    C::Attempts,
                    match counted {
                        Counted::Attempt => Expr::col(C::Attempts).add(1),
                        Counted::Success => Expr::value(0),
                    },
                )
                .col_expr(C::Failures, Expr::value(failures))
                .col_expr(C::LockedUntilMs, Expr::value(locked_until_ms))
                .col_expr(C::Tokens, Expr::value(tokens))
                .col_expr(C::LastMs, Expr::value(std::cmp::max(last_ms, now_ms)))
                .filter(C::Key.eq(key.as_str()))
                .exec(txn)
                .await?;
        }
        Ok(())
    }

    /// Forgets login counts idle for a day and not locked, at most once a minute.
    async fn prune_login_counts(&self, now_ms: i64) -> Result<(), DbErr> {
        use login_throttle::Column as C;
        use std::sync::atomic::Ordering;
        let last = self.pruned_ms.load(Ordering::Acquire);
        if now_ms - last < 60_000
            || self
                .pruned_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(());
        }
        login_throttle::Entity::delete_many()
            .filter(C::LastMs.lt(now_ms - LOGIN_COUNTS_KEPT_MS))
            .filter(C::LockedUntilMs.lt(now_ms))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
