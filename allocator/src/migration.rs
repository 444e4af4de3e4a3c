//! The allocator's schema, one migration set for SQLite and PostgreSQL, tracked in its
//! own migration table.

use sea_orm::{ColumnTrait, EntityTrait, Schema};
use sea_orm_migration::prelude::*;

use crate::entity::{
    assignment, audit_entry, image_blob, join_token, leader, lingering, node, node_identity,
    placement, pool_identity, pushed_image, quota, registry_credential, replica_event,
    replica_status, revocation, root_key, sealed_secret, tenant_limit, tenant_policy,
};

/// The allocator's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(NodeIdentities),
            Box::new(NodeLabelsAndStatuses),
            Box::new(PlacementTraces),
            Box::new(AuditLedger),
            Box::new(NodeLiveness),
            Box::new(ReplicaEvents),
            Box::new(NodeLoadIndex),
            Box::new(LingeringSlots),
            Box::new(TenantPolicies),
            Box::new(TenantLimits),
            Box::new(PoolIdentity),
            Box::new(NodeAddresses),
            Box::new(SealedSecrets),
            Box::new(ReplicaCpu),
            Box::new(LeaderAddress),
            Box::new(AutoscaledPlacements),
            Box::new(AuditDelegations),
            Box::new(PushedImages),
            Box::new(NodeLoadsInMemory),
        ]
    }

    fn migration_table_name() -> DynIden {
        "allocator_migrations".into_iden()
    }
}

#[derive(Debug)]
struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m20261123_000001_allocator_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(quota::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(node::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(placement::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(assignment::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for mut index in schema.create_index_from_entity(assignment::Entity) {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Join tokens and node identities, for node agents that join over the network.
#[derive(Debug)]
struct NodeIdentities;

impl MigrationName for NodeIdentities {
    fn name(&self) -> &str {
        "m20261123_000002_allocator_node_identities"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeIdentities {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(join_token::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(node_identity::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Node labels and draining, and reported replica statuses kept in the database so that
/// any gateway replica can show them.
#[derive(Debug)]
struct NodeLabelsAndStatuses;

impl MigrationName for NodeLabelsAndStatuses {
    fn name(&self) -> &str {
        "m20261123_000003_allocator_node_labels_and_statuses"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeLabelsAndStatuses {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The first migration creates `nodes` from the entity as it is now, so a new
        // database has these columns already; an older one gets them here.
        if !manager.has_column("nodes", "draining").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(node::Entity)
                        .add_column(
                            ColumnDef::new(node::Column::Draining)
                                .boolean()
                                .not_null()
                                .default(false),
                        )
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column("nodes", "labels").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(node::Entity)
                        .add_column(
                            ColumnDef::new(node::Column::Labels)
                                .text()
                                .not_null()
                                .default("{}"),
                        )
                        .to_owned(),
                )
                .await?;
        }
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(replica_status::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// The trace context of the deploy behind each placement, handed to nodes with it.
#[derive(Debug)]
struct PlacementTraces;

impl MigrationName for PlacementTraces {
    fn name(&self) -> &str {
        "m20261123_000004_allocator_placement_traces"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for PlacementTraces {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // As with the node columns: a new database has it from the first migration.
        if !manager.has_column("placements", "traceparent").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(placement::Entity)
                        .add_column(ColumnDef::new(placement::Column::Traceparent).text().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// The audit ledger and the revocation list.
#[derive(Debug)]
struct AuditLedger;

impl MigrationName for AuditLedger {
    fn name(&self) -> &str {
        "m20261123_000005_allocator_audit_ledger"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AuditLedger {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(audit_entry::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for mut index in schema.create_index_from_entity(audit_entry::Entity) {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        manager
            .create_table(
                schema
                    .create_table_from_entity(revocation::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// When the failure detector declared a node dead.
#[derive(Debug)]
struct NodeLiveness;

impl MigrationName for NodeLiveness {
    fn name(&self) -> &str {
        "m20261124_000006_allocator_node_liveness"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeLiveness {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A new database has the column from the entity already.
        if !manager.has_column("nodes", "down_since_ms").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(node::Entity)
                        .add_column(
                            ColumnDef::new(node::Column::DownSinceMs)
                                .big_integer()
                                .null(),
                        )
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// What happened to replicas, for the people who run them.
#[derive(Debug)]
struct ReplicaEvents;

impl MigrationName for ReplicaEvents {
    fn name(&self) -> &str {
        "m20261124_000007_allocator_replica_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ReplicaEvents {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(replica_event::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for mut index in schema.create_index_from_entity(replica_event::Entity) {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Indexes that keep a deploy's cost independent of the pool's size: placement reads
/// the least-loaded nodes through the first rather than every node, and a topology's
/// events are trimmed and read through the second rather than by scanning every
/// topology's.
#[derive(Debug)]
struct NodeLoadIndex;

impl MigrationName for NodeLoadIndex {
    fn name(&self) -> &str {
        "m20261124_000008_allocator_scale_indexes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeLoadIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_nodes_containers_used")
                    .table(node::Entity)
                    .col(node::Column::ContainersUsed)
                    .col(node::Column::Name)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_replica_events_topology")
                    .table(replica_event::Entity)
                    .col(replica_event::Column::Tenant)
                    .col(replica_event::Column::Topology)
                    .col(replica_event::Column::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// The old copies of replicas moved to even the load (see `rebalance.rs`).
#[derive(Debug)]
struct LingeringSlots;

impl MigrationName for LingeringSlots {
    fn name(&self) -> &str {
        "m20261124_000009_allocator_lingering_slots"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LingeringSlots {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(lingering::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for mut index in schema.create_index_from_entity(lingering::Entity) {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// What an admin allowed each tenant beyond the pool's default policy.
#[derive(Debug)]
struct TenantPolicies;

impl MigrationName for TenantPolicies {
    fn name(&self) -> &str {
        "m20261202_000010_allocator_tenant_policies"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for TenantPolicies {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(tenant_policy::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// How much of the control plane each tenant may use.
#[derive(Debug)]
struct TenantLimits;

impl MigrationName for TenantLimits {
    fn name(&self) -> &str {
        "m20261203_000011_allocator_tenant_limits"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for TenantLimits {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(tenant_limit::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// The pool's identity, that nodes label their objects with.
#[derive(Debug)]
struct PoolIdentity;

impl MigrationName for PoolIdentity {
    fn name(&self) -> &str {
        "m20261204_000012_allocator_pool_identity"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for PoolIdentity {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(pool_identity::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// Where each node serves its node API and whether it enforces its firewall, kept in
/// the database so every server of the control plane knows the pool's addresses.
#[derive(Debug)]
struct NodeAddresses;

impl MigrationName for NodeAddresses {
    fn name(&self) -> &str {
        "m20261204_000013_allocator_node_addresses"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeAddresses {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (column, name) in [
            (node::Column::Address, "address"),
            (node::Column::Firewall, "firewall"),
        ] {
            // A new database has the columns from the entity already.
            if manager.has_column("nodes", name).await? {
                continue;
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(node::Entity)
                        .add_column(ColumnDef::new(column).text().not_null().default(""))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Root keys and the admin token in the database, sealed, so servers that share only
/// the database form one control plane.
#[derive(Debug)]
struct SealedSecrets;

impl MigrationName for SealedSecrets {
    fn name(&self) -> &str {
        "m20261204_000014_allocator_sealed_secrets"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SealedSecrets {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(root_key::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(sealed_secret::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// The CPU each replica's node last reported, so every server shows it, not only the
/// leader that hears the reports.
#[derive(Debug)]
struct ReplicaCpu;

impl MigrationName for ReplicaCpu {
    fn name(&self) -> &str {
        "m20261207_000015_allocator_replica_cpu"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ReplicaCpu {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A new database has the column from the entity already.
        if manager.has_column("replica_statuses", "cpu_millis").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(replica_status::Entity)
                    .add_column(
                        ColumnDef::new(replica_status::Column::CpuMillis)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }
}

/// The leader's REST address, so a standby server can hand it what only the leader
/// can answer (the nodes' output, over their streams).
#[derive(Debug)]
struct LeaderAddress;

impl MigrationName for LeaderAddress {
    fn name(&self) -> &str {
        "m20261207_000016_allocator_leader_address"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LeaderAddress {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(leader::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// Which placements autoscale, as a column the autoscaler filters on, rather than a
/// search through every spec's text each round.
#[derive(Debug)]
struct AutoscaledPlacements;

impl MigrationName for AutoscaledPlacements {
    fn name(&self) -> &str {
        "m20261207_000017_allocator_autoscaled_placements"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AutoscaledPlacements {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Placements made before: their specs say, once, here.
        add_flag(
            manager,
            placement::Entity,
            placement::Column::Autoscaled,
            Expr::col(placement::Column::Spec).like("%\"autoscale\"%"),
        )
        .await
    }
}

/// Adds the boolean `column` to `table`, false but where `set` holds for the rows
/// already there. A new database has the column from its entity already.
async fn add_flag<E: EntityTrait, C: ColumnTrait>(
    manager: &SchemaManager<'_>,
    table: E,
    column: C,
    set: SimpleExpr,
) -> Result<(), DbErr> {
    if manager
        .has_column(table.table_name(), column.as_str())
        .await?
    {
        return Ok(());
    }
    manager
        .alter_table(
            Table::alter()
                .table(table)
                .add_column(ColumnDef::new(column).boolean().not_null().default(false))
                .to_owned(),
        )
        .await?;
    manager
        .exec_stmt(
            Query::update()
                .table(table)
                .value(column, true)
                .and_where(set)
                .to_owned(),
        )
        .await
}

#[derive(Debug)]
struct AuditDelegations;

impl MigrationName for AuditDelegations {
    fn name(&self) -> &str {
        "m20261207_000018_allocator_audit_delegations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AuditDelegations {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Delegations recorded before: their datalog says, once, here.
        add_flag(
            manager,
            audit_entry::Entity,
            audit_entry::Column::Delegation,
            Expr::col(audit_entry::Column::Kind)
                .is_in(["minted", "renewed"])
                .and(Expr::col(audit_entry::Column::Detail).like("%caller(%")),
        )
        .await
    }
}

/// Images tenants push, and the size of what each may keep.
#[derive(Debug)]
struct PushedImages;

impl MigrationName for PushedImages {
    fn name(&self) -> &str {
        "m20261207_000019_allocator_images"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for PushedImages {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        for mut table in [
            schema.create_table_from_entity(image_blob::Entity),
            schema.create_table_from_entity(pushed_image::Entity),
            schema.create_table_from_entity(registry_credential::Entity),
        ] {
            manager
                .create_table(table.if_not_exists().to_owned())
                .await?;
        }
        // As with the node columns: a new database has it from its first migration.
        if !manager
            .has_column("tenant_limits", "image_mebibytes")
            .await?
        {
            manager
                .alter_table(
                    Table::alter()
                        .table(tenant_limit::Entity)
                        .add_column(
                            ColumnDef::new(tenant_limit::Column::ImageMebibytes)
                                .big_integer()
                                .null(),
                        )
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// The nodes' load leaves the database's indexes (see `loads.rs`): every deploy changes
/// the load of a hundred nodes, and each change moved an index entry, one more page
/// written per node on SQLite and, on PostgreSQL, a new index entry and a dead one
/// where the row could otherwise be updated in place. On PostgreSQL node rows also get
/// room on their pages for those in-place (HOT) updates. And events lose their index
/// on the tenant alone, which the index on tenant, topology and id already serves: a
/// hundred entries fewer to write for a deploy of a hundred replicas.
#[derive(Debug)]
struct NodeLoadsInMemory;

impl MigrationName for NodeLoadsInMemory {
    fn name(&self) -> &str {
        "m20261207_000020_allocator_node_loads_in_memory"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NodeLoadsInMemory {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_nodes_containers_used")
                    .table(node::Entity)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx-replica_events-tenant")
                    .table(replica_event::Entity)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE nodes SET (fillfactor = 70)")
                .await?;
        }
        Ok(())
    }
}
