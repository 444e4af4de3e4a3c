//! The tenant service's tables.

/// A tenant: the unit of ownership, isolation and quota.
pub mod tenant {
    use sea_orm::entity::prelude::*;

    /// One tenant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        /// The tenant's name, unique.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// When it was created, in Unix milliseconds.
        pub created_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A topology of a tenant and its current revision.
pub mod topology {
    use sea_orm::entity::prelude::*;

    /// One topology.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "topologies")]
    pub struct Model {
        /// The owning tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The topology's name within the tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The revision now in force.
        pub current_revision: i64,
        /// When it was last changed, in Unix milliseconds.
        pub updated_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every revision ever stored of every topology.
pub mod revision {
    use sea_orm::entity::prelude::*;

    /// One revision: the normalised topology as JSON.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "topology_revisions")]
    pub struct Model {
        /// The owning tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The topology.
        #[sea_orm(primary_key, auto_increment = false)]
        pub topology: String,
        /// The revision number, from 1.
        #[sea_orm(primary_key, auto_increment = false)]
        pub revision: i64,
        /// The normalised topology, as JSON.
        #[sea_orm(column_type = "Text")]
        pub spec: String,
        /// When it was stored, in Unix milliseconds.
        pub created_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Users of a tenant, with their password hash and login throttling state.
pub mod user {
    use sea_orm::entity::prelude::*;

    /// One user.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        /// The tenant the user belongs to.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The user's name within the tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The argon2id hash, in PHC form; never the password.
        pub password_hash: String,
        /// `admin`, `developer` or `auditor`.
        pub role: String,
        /// Unused: failed logins are counted in `login_attempts`, for every name
        /// asked for, so that the throttle does not tell users from strangers.
        pub failed_logins: i32,
        /// Unused, as `failed_logins`.
        pub locked_until_ms: i64,
        /// When it was created, Unix milliseconds.
        pub created_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What the login throttle remembers: one row per key it counts by, the pair of a
/// name asked for and a source, a source across names, and a name across sources
/// (see [`crate::throttle`]). Names are counted whether or not such a user exists, so
/// that the throttle answers a stranger's name as it answers a user's.
pub mod login_throttle {
    use sea_orm::entity::prelude::*;

    /// What is counted for one key.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "login_throttles")]
    pub struct Model {
        /// What is counted: see [`crate::throttle::Key`].
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// Every attempt since the last success, refused ones too.
        pub attempts: i32,
        /// Failed password checks since the last success (pairs).
        pub failures: i32,
        /// Attempts are refused until then, Unix milliseconds (pairs).
        pub locked_until_ms: i64,
        /// Attempts left in the key's bucket (sources, names).
        pub tokens: f64,
        /// The last attempt, Unix milliseconds.
        pub last_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
