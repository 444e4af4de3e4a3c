//! The allocator's schema, one migration set for SQLite and PostgreSQL, tracked in its
//! own migration table.

use sea_orm::Schema;
use sea_orm_migration::prelude::*;

use crate::entity::{assignment, join_token, node, node_identity, placement, quota};

/// The allocator's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(NodeIdentities)]
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
