//! The tenant service's schema, one migration set for SQLite and PostgreSQL. It keeps
//! its own migration table so that services sharing a database migrate independently.

use sea_orm::Schema;
use sea_orm_migration::prelude::*;

use crate::entity::{login_attempt, revision, tenant, topology, user};

/// The tenant service's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(Users), Box::new(LoginAttempts)]
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
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(login_attempt::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}
