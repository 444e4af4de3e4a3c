//! The allocator's tables.

/// Per-tenant quota and what the tenant's placed replicas reserve against it.
pub mod quota {
    use sea_orm::entity::prelude::*;

    /// One tenant's quota. A `None` limit is unlimited.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "quotas")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// CPU limit, thousandths of a core.
        pub cpu_millis_limit: Option<i64>,
        /// Memory limit, bytes.
        pub memory_bytes_limit: Option<i64>,
        /// Container limit.
        pub containers_limit: Option<i64>,
        /// CPU reserved now.
        pub cpu_millis_used: i64,
        /// Memory reserved now.
        pub memory_bytes_used: i64,
        /// Containers reserved now.
        pub containers_used: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What the admin allowed each tenant beyond the pool's default policy.
pub mod tenant_policy {
    use sea_orm::entity::prelude::*;

    /// One tenant's allowances.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_policies")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The allowances, `KEY` or `KEY:VALUE`, one a line, sorted.
        pub allow: String,
        /// When they were last set, Unix milliseconds.
        pub updated_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// How much of the control plane each tenant may use, where an admin set it; a
/// `None` column takes the default.
pub mod tenant_limit {
    use sea_orm::entity::prelude::*;

    /// One tenant's limits.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_limits")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// API requests per second.
        pub requests_per_second: Option<i64>,
        /// Deploys, scales and removals per minute.
        pub deploys_per_minute: Option<i64>,
        /// Attenuated tokens first seen per hour.
        pub attenuations_per_hour: Option<i64>,
        /// Services in one topology.
        pub services_per_topology: Option<i64>,
        /// Replicas of one service.
        pub replicas_per_service: Option<i64>,
        /// Pushed images kept, MiB.
        pub image_mebibytes: Option<i64>,
        /// When they were last set, Unix milliseconds.
        pub updated_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The pool's identity: one row, made when the pool's database is first migrated.
/// Nodes label what they create with it, so that two pools sharing one engine never
/// take each other's objects for their own.
pub mod pool_identity {
    use sea_orm::entity::prelude::*;

    /// The pool.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "pool_identity")]
    pub struct Model {
        /// Always 1: there is one row.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        /// Random, hex, chosen once.
        pub pool: String,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Which server leads, as the other servers reach its REST API.
pub mod leader {
    use sea_orm::entity::prelude::*;

    /// The leader.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "leader")]
    pub struct Model {
        /// Always 1: there is one row.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        /// Its REST API's URL.
        pub api_url: String,
        /// When it took the lead, Unix milliseconds.
        pub since_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The node pool, with capacity and what is reserved on each node.
pub mod node {
    use sea_orm::entity::prelude::*;

    /// One node.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "nodes")]
    pub struct Model {
        /// The node's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// CPU capacity, thousandths of a core.
        pub cpu_millis_capacity: Option<i64>,
        /// Memory capacity, bytes.
        pub memory_bytes_capacity: Option<i64>,
        /// Container capacity.
        pub containers_capacity: Option<i64>,
        /// CPU reserved now.
        pub cpu_millis_used: i64,
        /// Memory reserved now.
        pub memory_bytes_used: i64,
        /// Containers reserved now.
        pub containers_used: i64,
        /// Whether new replicas may be placed here (false once cordoned).
        pub schedulable: bool,
        /// Whether the replicas here are being moved away (drained).
        #[sea_orm(default_value = false)]
        pub draining: bool,
        /// The labels the node joined with, a JSON object of strings.
        #[sea_orm(default_value = "{}")]
        pub labels: String,
        /// When the failure detector declared the node dead (Unix ms); unset while
        /// it is alive. A dead node takes no replicas.
        pub down_since_ms: Option<i64>,
        /// Where the node serves its node API (`https://host:port`), as it last said
        /// when it opened its stream; empty when it serves none.
        #[sea_orm(default_value = "")]
        pub address: String,
        /// Whether it enforces its firewall: "enforced", "off", or empty (not said).
        #[sea_orm(default_value = "")]
        pub firewall: String,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What the allocator placed for each topology: the spec it placed and its counter.
pub mod placement {
    use sea_orm::entity::prelude::*;

    /// One placed topology.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "placements")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The topology.
        #[sea_orm(primary_key, auto_increment = false)]
        pub topology: String,
        /// The revision placed.
        pub revision: i64,
        /// The normalised topology placed, as JSON.
        #[sea_orm(column_type = "Text")]
        pub spec: String,
        /// The generation the next new slot gets.
        pub next_generation: i64,
        /// The trace context of the deploy that placed it (W3C `traceparent`).
        pub traceparent: Option<String>,
        /// Whether a service of the spec autoscales (the autoscaler reads these
        /// placements only).
        pub autoscaled: bool,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One replica's slot on one node.
pub mod assignment {
    use sea_orm::entity::prelude::*;

    /// One slot.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "assignments")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The topology.
        #[sea_orm(primary_key, auto_increment = false)]
        pub topology: String,
        /// The service.
        #[sea_orm(primary_key, auto_increment = false)]
        pub service: String,
        /// The replica number.
        #[sea_orm(primary_key, auto_increment = false)]
        pub replica: i64,
        /// The node it is placed on.
        #[sea_orm(indexed)]
        pub node: String,
        /// The generation it was placed under.
        pub generation: i64,
        /// CPU it reserves.
        pub cpu_millis: i64,
        /// Memory it reserves.
        pub memory_bytes: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One-time tokens that let a node join; only their hashes are stored.
pub mod join_token {
    use sea_orm::entity::prelude::*;

    /// One token.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "join_tokens")]
    pub struct Model {
        /// SHA-256 of the token, hex.
        #[sea_orm(primary_key, auto_increment = false)]
        pub hash: String,
        /// When it was created, Unix milliseconds.
        pub created_at_ms: i64,
        /// After this, Unix milliseconds, it is refused.
        pub expires_at_ms: i64,
        /// The node that used it; a used token is refused.
        pub used_by: Option<String>,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The identity of each joined node: its public key and the last sequence number it used.
pub mod node_identity {
    use sea_orm::entity::prelude::*;

    /// One node's identity.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "node_identities")]
    pub struct Model {
        /// The node's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// Its Ed25519 public key.
        pub public_key: Vec<u8>,
        /// The highest request sequence number accepted from it.
        pub last_sequence: i64,
        /// When it joined, Unix milliseconds.
        pub joined_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The latest status each node reported for each replica it runs.
pub mod replica_status {
    use sea_orm::entity::prelude::*;

    /// One replica's latest report.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "replica_statuses")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The topology.
        #[sea_orm(primary_key, auto_increment = false)]
        pub topology: String,
        /// The service.
        #[sea_orm(primary_key, auto_increment = false)]
        pub service: String,
        /// The replica number.
        #[sea_orm(primary_key, auto_increment = false)]
        pub replica: i64,
        /// The node that reported (and runs) it.
        pub node: String,
        /// The generation the report speaks of.
        pub generation: i64,
        /// `running`, `created`, `exited`, `failed`, ...
        pub state: String,
        /// The node's detail: a status sentence or an error.
        pub detail: String,
        /// When the report arrived, Unix milliseconds.
        pub reported_at_ms: i64,
        /// The CPU it used lately, in thousandths of a core, when its node measures
        /// it (services that autoscale).
        pub cpu_millis: Option<i64>,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The audit ledger: append-only, each entry chained to the one before by its hash.
pub mod audit_entry {
    use sea_orm::entity::prelude::*;

    /// One entry.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_entries")]
    pub struct Model {
        /// Its place in the chain, from 1, without gaps.
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        /// When it was written, Unix milliseconds.
        pub at_ms: i64,
        /// `minted`, `attenuated`, `renewed`, `revoked` or `decision`.
        #[sea_orm(indexed)]
        pub kind: String,
        /// Who acted: a user (`tenant/user`), a node, or `platform`.
        pub actor: String,
        /// The tenant concerned (`*` for the platform).
        #[sea_orm(indexed)]
        pub tenant: String,
        /// What it is about: a token's first revocation id, a node call, ...
        pub subject: String,
        /// The token's datalog (never the token itself) or the decision's reason.
        pub detail: String,
        /// The token's revocation ids, hex, comma-separated.
        pub revocation_ids: String,
        /// The hash of the entry before (empty for the first).
        pub prev_hash: String,
        /// SHA-256 over this entry's fields and `prev_hash`, hex.
        pub hash: String,
        /// Whether its token is a node-to-node delegation: an index for "who can call
        /// what", outside the hash (the detail it stands for is hashed, and read again
        /// by whoever uses it).
        pub delegation: bool,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Revoked revocation ids (of a token or of one of its blocks).
pub mod revocation {
    use sea_orm::entity::prelude::*;

    /// One revoked id.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "revocations")]
    pub struct Model {
        /// The revocation id, hex.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// When, Unix milliseconds.
        pub revoked_at_ms: i64,
        /// Who revoked it.
        pub actor: String,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What happened to replicas: placed, moved, started, failed.
pub mod replica_event {
    use sea_orm::entity::prelude::*;

    /// One event.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "replica_events")]
    pub struct Model {
        /// Its place among all events.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The tenant (events are found through the index on tenant, topology and
        /// id made by a migration).
        pub tenant: String,
        /// The topology.
        pub topology: String,
        /// The service.
        pub service: String,
        /// The replica number.
        pub replica: i64,
        /// The generation it speaks of.
        pub generation: i64,
        /// The node concerned.
        pub node: String,
        /// `placed`, `rescheduled`, `removed`, `started`, `failed`, or another state a
        /// node reported.
        pub kind: String,
        /// More, in words.
        pub detail: String,
        /// When, Unix milliseconds.
        pub at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Slots that moved to another node to even the load and still run on the node they
/// left, until the new copy runs (start before stop) or the wait runs out.
pub mod lingering {
    use sea_orm::entity::prelude::*;

    /// One old copy of a moved replica.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "lingering_slots")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The topology.
        #[sea_orm(primary_key, auto_increment = false)]
        pub topology: String,
        /// The service.
        #[sea_orm(primary_key, auto_increment = false)]
        pub service: String,
        /// The replica number.
        #[sea_orm(primary_key, auto_increment = false)]
        pub replica: i64,
        /// The node it left, which keeps running the old copy meanwhile.
        #[sea_orm(indexed)]
        pub node: String,
        /// The old copy's generation.
        pub generation: i64,
        /// After this (Unix milliseconds) the old copy goes whether or not the new one
        /// runs.
        pub until_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The root keys, when the control plane keeps them in its database: each private key
/// sealed under the servers' secrets key, so a dump of the database alone yields none.
pub mod root_key {
    use sea_orm::entity::prelude::*;

    /// One root key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "root_keys")]
    pub struct Model {
        /// The id tokens carry.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        /// The private key, sealed (hex: nonce, then ciphertext and tag).
        pub sealed: String,
        /// When a newer key took over signing (Unix ms); unset for the signing key.
        pub superseded_at_ms: Option<i64>,
        /// When it was made (Unix ms).
        pub introduced_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Other secrets the servers of one control plane share (the admin token), each sealed
/// under the servers' secrets key.
pub mod sealed_secret {
    use sea_orm::entity::prelude::*;

    /// One secret.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sealed_secrets")]
    pub struct Model {
        /// What it is (`admin-token`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The secret, sealed (hex: nonce, then ciphertext and tag).
        pub sealed: String,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The blobs (image configs and layers) each tenant pushed: a tenant may use a blob
/// only once it sent its bytes itself, whoever else sent the same.
pub mod image_blob {
    use sea_orm::entity::prelude::*;

    /// One blob of one tenant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "image_blobs")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// `sha256:…` of its bytes.
        #[sea_orm(primary_key, auto_increment = false)]
        pub digest: String,
        /// Its size, bytes.
        pub size: i64,
        /// When it was received, Unix milliseconds.
        pub stored_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The images each tenant pushed, by the reference its topologies name them by.
pub mod pushed_image {
    use sea_orm::entity::prelude::*;

    /// One image of one tenant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "pushed_images")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// `name:tag`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub reference: String,
        /// The config's digest: the image's id.
        pub config: String,
        /// The layers' digests, in order, one a line.
        pub layers: String,
        /// Config and layers, bytes.
        pub size: i64,
        /// When it was pushed, Unix milliseconds.
        pub pushed_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod registry_credential {
    use sea_orm::entity::prelude::*;

    /// One tenant's login to one registry, its password sealed.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_credentials")]
    pub struct Model {
        /// The tenant.
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant: String,
        /// The registry, `host[:port]`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub registry: String,
        /// The user name.
        pub username: String,
        /// The password, sealed under the secrets key (hex).
        pub sealed: String,
        /// When it was set, Unix milliseconds.
        pub updated_at_ms: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
