//! The tenant service's schema, one migration set for SQLite and PostgreSQL. It keeps
//! its own migration table so that services sharing a database migrate independently.

use sea_orm::Schema;
use sea_orm_migration::prelude::*;

use crate::entity::{login_throttle, revision, tenant, topology, user};

/// The tenant service's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(Users),
            Box::new(LoginAttempts),
            Box::new(LoginThrottles),
        ]
    }

    fn migration_table_name() -> DynIden {
        "tenant_service_migrations".into_iden()
    }
}

#[derive(Debug)]
struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m20261123_000001_tenant_service_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(tenant::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(topology::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(revision::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Users with argon2id password hashes.
#[derive(Debug)]
struct Users;

impl MigrationName for Users {
    fn name(&self) -> &str {
        "m20261123_000002_tenant_service_users"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Users {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(user::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Failed logins by the name asked for, known or not.
#[derive(Debug)]
struct LoginAttempts;

impl MigrationName for LoginAttempts {
    fn name(&self) -> &str {
        "m20261202_000003_tenant_service_login_attempts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LoginAttempts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The table as it was then; [`LoginThrottles`] replaces it.
        manager
            .create_table(
                Table::create()
                    .table("login_attempts")
                    .if_not_exists()
                    .col(ColumnDef::new("tenant").string().not_null())
                    .col(ColumnDef::new("name").string().not_null())
                    .col(ColumnDef::new("attempts").integer().not_null())
                    .col(ColumnDef::new("locked_until_ms").big_integer().not_null())
                    .primary_key(Index::create().col("tenant").col("name"))
                    .to_owned(),
            )
            .await
    }
}

/// Logins counted by name and source, by source and by name, in place of by name
/// alone. What the old table counted is transient and is not carried over.
#[derive(Debug)]
struct LoginThrottles;

impl MigrationName for LoginThrottles {
    fn name(&self) -> &str {
        "m20261204_000004_tenant_service_login_throttles"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LoginThrottles {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("login_attempts").if_exists().to_owned())
            .await?;
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(login_throttle::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}
