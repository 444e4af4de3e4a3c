//! Tenants' registry logins, sealed at rest under the control plane's secrets key
//! (bound to tenant and registry, so a sealed value moved to another row does not
//! open), opened only to hand a node the logins its assignment's images need.

use std::sync::Arc;

use berth_protocol::assignment::{RegistryCredential, TopologyAssignment};
use berth_protocol::image::registry_of;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};

use crate::entity::registry_credential;
use crate::sealing::SealingKey;

/// Why a login could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database failed.
    #[error("registry logins: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A login did not open under this server's secrets key.
    #[error(
        "the login of tenant {tenant:?} to {registry} does not open under this server's secrets key (every server of one control plane needs the same key)"
    )]
    Sealed {
        /// The tenant.
        tenant: String,
        /// The registry.
        registry: String,
    },
}

/// The tenants' registry logins.
#[derive(Clone)]
pub struct RegistryLogins {
    db: DatabaseConnection,
    seal: Arc<SealingKey>,
}

impl std::fmt::Debug for RegistryLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryLogins(..)")
    }
}

fn sealed_as(tenant: &str, registry: &str) -> String {
    format!("registry login {tenant} {registry}")
}

impl RegistryLogins {
    /// The logins kept in `db`, sealed under `seal`.
    pub fn new(db: DatabaseConnection, seal: SealingKey) -> Self {
        Self {
            db,
            seal: Arc::new(seal),
        }
    }

    /// Keeps `credential` as `tenant`'s login to its registry, replacing any.
    pub async fn set(
        &self,
        tenant: &str,
        credential: &RegistryCredential,
        now_ms: i64,
    ) -> Result<(), RegistryError> {
        let row = registry_credential::ActiveModel {
            tenant: Set(tenant.to_owned()),
            registry: Set(credential.registry.clone()),
            username: Set(credential.username.clone()),
            sealed: Set(self.seal.seal(
                &sealed_as(tenant, &credential.registry),
                credential.password.as_bytes(),
            )),
            updated_at_ms: Set(now_ms),
        };
        registry_credential::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    registry_credential::Column::Tenant,
                    registry_credential::Column::Registry,
                ])
                .update_columns([
                    registry_credential::Column::Username,
                    registry_credential::Column::Sealed,
                    registry_credential::Column::UpdatedAtMs,
                ])
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets `tenant`'s login to `registry`; whether there was one.
    pub async fn remove(&self, tenant: &str, registry: &str) -> Result<bool, RegistryError> {
        let done = registry_credential::Entity::delete_many()
            .filter(registry_credential::Column::Tenant.eq(tenant))
            .filter(registry_credential::Column::Registry.eq(registry))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// `tenant`'s registries and user names (never the passwords).
    pub async fn list(&self, tenant: &str) -> Result<Vec<(String, String)>, RegistryError> {
        Ok(registry_credential::Entity::find()
            .filter(registry_credential::Column::Tenant.eq(tenant))
            .order_by_asc(registry_credential::Column::Registry)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| (row.registry, row.username))
            .collect())
    }

    /// `tenant`'s login to `registry`, opened.
    pub async fn get(
        &self,
        tenant: &str,
        registry: &str,
    ) -> Result<Option<RegistryCredential>, RegistryError> {
        let Some(row) =
            registry_credential::Entity::find_by_id((tenant.to_owned(), registry.to_owned()))
                .one(&self.db)
                .await?
        else {
            return Ok(None);
        };
        let password = self
            .seal
            .open(&sealed_as(tenant, registry), &row.sealed)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| RegistryError::Sealed {
                tenant: tenant.to_owned(),
                registry: registry.to_owned(),
            })?;
        Ok(Some(RegistryCredential {
            registry: row.registry,
            username: row.username,
            password,
        }))
    }

    /// Gives each assignment its tenant's logins to the registries its images name,
    /// and no others.
    pub async fn add_to(&self, set: &mut [TopologyAssignment]) {
        for assignment in set {
            let mut registries: Vec<String> = assignment
                .services
                .values()
                .filter(|s| s.digest.is_none())
                .filter_map(|s| registry_of(&s.image).map(str::to_owned))
                .collect();
            registries.sort();
            registries.dedup();
            let mut found = Vec::new();
            for registry in registries {
                match self.get(&assignment.id.tenant, &registry).await {
                    Ok(Some(credential)) => found.push(credential),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "a registry login could not be opened"),
                }
            }
            assignment.registry_credentials = found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn logins() -> RegistryLogins {
        let db = crate::database::connect("sqlite::memory:")
            .await
            .expect("database");
        <crate::migration::Migrator as sea_orm_migration::MigratorTrait>::up(&db, None)
            .await
            .expect("migrated");
        RegistryLogins::new(
            db,
            SealingKey::from_hex(&SealingKey::generate_hex()).expect("key"),
        )
    }

    #[tokio::test]
    async fn a_login_is_sealed_at_rest_and_opens_only_for_its_tenant_and_registry() {
        let logins = logins().await;
        let ann = RegistryCredential {
            registry: "reg.example:5000".into(),
            username: "ann".into(),
            password: "s3cret-pass".into(),
        };
        logins.set("a", &ann, 1).await.expect("kept");
        let row = registry_credential::Entity::find()
            .one(&logins.db)
            .await
            .expect("read")
            .expect("a row");
        assert!(!row.sealed.contains("s3cret"), "the password is sealed");
        assert_eq!(
            logins.get("a", "reg.example:5000").await.expect("get"),
            Some(ann.clone())
        );
        assert_eq!(
            logins.get("b", "reg.example:5000").await.expect("get"),
            None
        );
        assert_eq!(
            logins.list("a").await.expect("list"),
            [("reg.example:5000".to_owned(), "ann".to_owned())]
        );
        // The sealed value of one tenant, copied to another's row, does not open.
        registry_credential::Entity::insert(registry_credential::ActiveModel {
            tenant: Set("b".into()),
            registry: Set("reg.example:5000".into()),
            username: Set("ann".into()),
            sealed: Set(row.sealed.clone()),
            updated_at_ms: Set(2),
        })
        .exec_without_returning(&logins.db)
        .await
        .expect("copied");
        assert!(matches!(
            logins.get("b", "reg.example:5000").await,
            Err(RegistryError::Sealed { .. })
        ));
        assert!(
            logins
                .remove("a", "reg.example:5000")
                .await
                .expect("removed")
        );
        assert_eq!(
            logins.get("a", "reg.example:5000").await.expect("get"),
            None
        );
    }
}
