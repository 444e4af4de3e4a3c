//! The pool's nodes as admins see them, and the join tokens that add them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quota::{Limit, Resources};

/// Whether a node takes new replicas and keeps the ones it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new replicas.
    Active,
    /// Keeps its replicas, takes no new ones.
    Cordoned,
    /// Its replicas are moved elsewhere; takes no new ones.
    Draining,
    /// Declared dead by the failure detector: its replicas were placed elsewhere; it
    /// becomes active again when it heartbeats.
    Down,
}

impl NodeState {
    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Cordoned => "cordoned",
            Self::Draining => "draining",
            Self::Down => "down",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// What it can hold (unset: unlimited).
    pub capacity: Limit,
    /// What is reserved on it.
    pub used: Resources,
    /// The labels it joined with.
    pub labels: BTreeMap<String, String>,
    /// Active, cordoned or draining.
    pub state: NodeState,
    /// Where it serves its node API, as it last said (empty: it serves none).
    #[serde(default)]
    pub address: String,
    /// Whether it enforces its firewall on its host: "enforced", "off" (its admin runs
    /// their own), or empty (it has not said).
    #[serde(default)]
    pub firewall: String,
}

/// The outcome of a drain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Drained {
    /// Topologies whose replicas moved off the node, as `tenant/topology`.
    pub moved: Vec<String>,
    /// Topologies that could not move, with the reason; their replicas stay where they
    /// are until there is room elsewhere and the drain is run again.
    pub stuck: Vec<String>,
}

/// A node's new state.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStateChanged {
    /// The node.
    pub node: String,
    /// Its state now.
    pub state: NodeState,
}

/// `POST /v1/join-tokens`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// How long the token is valid, in seconds (default one hour, at most a week).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub ttl_seconds: Option<u32>,
}

/// A one-time join token.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinToken {
    /// The token; only its hash is stored.
    pub token: String,
    /// The command that joins a machine with it.
    pub join_command: String,
    /// How long it is valid.
    pub ttl_seconds: u32,
}
