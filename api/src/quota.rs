//! Resources, quotas, tenants and their policies as the API shows them.

use serde::{Deserialize, Serialize};

/// An amount of the three resources Berth accounts for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Containers.
    pub containers: u64,
}

impl Resources {
    /// The sum, saturating.
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            containers: self.containers.saturating_add(other.containers),
        }
    }

    /// The difference, saturating at zero in each dimension.
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            containers: self.containers.saturating_sub(other.containers),
        }
    }

    /// Whether `self` fits within `limit` in every dimension that has a limit.
    pub fn fits(self, limit: &Limit) -> bool {
        limit.cpu_millis.is_none_or(|l| self.cpu_millis <= l)
            && limit.memory_bytes.is_none_or(|l| self.memory_bytes <= l)
            && limit.containers.is_none_or(|l| self.containers <= l)
    }
}

/// Upper bounds per dimension; `None` is unlimited. Used for quotas and capacities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limit {
    /// CPU in thousandths of a core.
    #[schema(maximum = 9_007_199_254_740_992_u64)]
    pub cpu_millis: Option<u64>,
    /// Memory in bytes.
    #[schema(maximum = 9_007_199_254_740_992_u64)]
    pub memory_bytes: Option<u64>,
    /// Containers.
    #[schema(maximum = 9_007_199_254_740_992_u64)]
    pub containers: Option<u64>,
}

/// `POST /v1/tenants`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// The tenant's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    /// Its quota; unlimited when left out.
    #[serde(default)]
    pub quota: Option<Limit>,
}

/// A tenant was created.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantCreated {
    /// Its name.
    pub name: String,
}

/// A tenant with its quota and what is used of it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantView {
    /// The tenant.
    pub name: String,
    /// Its quota (unset dimensions: unlimited).
    pub limit: Limit,
    /// What its placed replicas reserve.
    pub used: Resources,
}

/// A tenant's quota and what it uses.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaView {
    /// The limits (unset: unlimited).
    pub limit: Limit,
    /// What the tenant's placed replicas reserve.
    pub used: Resources,
}

/// A tenant's policy: what its topologies may use beyond the pool's default.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Allowances, `KEY` (every value) or `KEY:VALUE`: `cap_add:NET_ADMIN`,
    /// `privileged`, `bind_mount:/srv/shared`. An empty list is the default policy.
    pub allow: Vec<String>,
}

/// A tenant's policy as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// The policy's name, as refusals print it.
    pub name: String,
    /// The allowances beyond the default, sorted.
    pub allow: Vec<String>,
    /// Every setting an allowance may name.
    pub governed: Vec<String>,
}
