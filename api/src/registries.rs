//! A tenant's registry logins as the API takes and shows them: the password goes in,
//! never out.

use serde::{Deserialize, Serialize};

/// `PUT /v1/tenants/{tenant}/registries/{registry}`: the tenant's login to a registry.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    /// The user name.
    #[schema(min_length = 1, max_length = 255)]
    pub username: String,
    /// The password or access token; kept sealed, never shown again.
    #[schema(max_length = 4096)]
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One registry a tenant has a login for.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RegistryView {
    /// The registry, `host[:port]`.
    pub registry: String,
    /// The user name.
    pub username: String,
}
