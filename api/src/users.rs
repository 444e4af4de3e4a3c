//! Logins, sessions and users.

use berth_protocol::capability::Role;
use serde::{Deserialize, Serialize};

/// `POST /v1/login`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user's tenant.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub tenant: String,
    /// The user's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub user: String,
    /// The password.
    #[schema(max_length = 1024)]
    pub password: String,
}

/// The answer to a login.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoggedIn {
    /// The session token, to send as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// The user's role.
    pub role: Role,
}

/// Who a session token speaks for.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The tenant (`*` for the admin token).
    pub tenant: String,
    /// The user.
    pub user: String,
    /// The role.
    pub role: Role,
}

impl SessionView {
    /// Whether the session administers the pool.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the session may read the audit ledger.
    pub fn audits(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Auditor)
    }

    /// The tenant whose topologies are this user's own (`default` for the admin
    /// token, which speaks for every tenant).
    pub fn home_tenant(&self) -> &str {
        if self.tenant == "*" {
            "default"
        } else {
            &self.tenant
        }
    }
}

/// `POST /v1/tenants/{tenant}/users`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The user's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    /// The password (at least 12 characters); only its argon2id hash is stored.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
    /// The role.
    pub role: Role,
}

/// A user was created.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserCreated {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub name: String,
    /// The role.
    pub role: Role,
}
