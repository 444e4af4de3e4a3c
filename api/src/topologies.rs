//! Topologies: deploys, their replicas, scaling, events and output.

use std::collections::BTreeMap;

use berth_protocol::replica::ReplicaState;
use serde::{Deserialize, Serialize};

/// The answer to a deploy, a scale or a status read: the revision and where each
/// replica went.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployed {
    /// The revision now in force.
    pub revision: u64,
    /// Whether this deploy stored a new revision.
    pub changed: bool,
    /// Every replica and its node.
    pub replicas: Vec<ReplicaView>,
}

/// One replica as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// The service.
    pub service: String,
    /// The replica number.
    pub replica: u32,
    /// The node it is placed on.
    pub node: String,
    /// Its placement generation.
    pub generation: u64,
    /// What the node last reported (`pending` before any report).
    pub state: ReplicaState,
    /// The node's detail (status sentence or error).
    pub detail: String,
    /// The image its revision runs: a pushed image's id, or the reference as deployed
    /// (a registry tag pinned to its digest, `name:tag@sha256:…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The CPU it used lately, in thousandths of a core, as its node reported (only
    /// for services that autoscale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
}

/// The query of a deploy.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Check the topology against the rules and the tenant's policy and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a deploy with `dry_run`: it would be accepted.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DryRun {
    /// The policy it was checked against (`pool (tenant acme)`).
    pub policy: String,
    /// The revision in force now, if the topology is deployed.
    pub current_revision: Option<u64>,
    /// Whether the deploy would store a new revision.
    pub changed: bool,
}

/// `POST /v1/tenants/{tenant}/topologies/{name}/scale`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The replicas each named service should have; the services left out keep
    /// theirs. All change in one revision.
    pub replicas: BTreeMap<String, u32>,
}

/// A topology was removed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    /// The topology.
    pub removed: String,
    /// The nodes that ran some of it.
    pub nodes: Vec<String>,
}

/// How many events.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// At most this many, newest first (default 100, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

/// What happened to a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Placed on a node.
    Placed,
    /// Moved to another node.
    Rescheduled,
    /// No longer wanted.
    Removed,
    /// The autoscaler changed the service's replicas (replica 0, no node).
    Autoscaled,
    /// Its node reports it running.
    Started,
    /// Its node reports it stopped, dead or not made.
    Failed,
    /// Its node reports its container made, not started.
    Created,
    /// Its node reports it paused.
    Paused,
    /// Its node reports the engine restarting it.
    Restarting,
    /// Its node reports its container being removed.
    Removing,
    /// Its node reports no container for it.
    Missing,
    /// Its node reported a state this version does not know.
    Unknown,
}

impl EventKind {
    /// Every kind, in the order above.
    pub const ALL: [EventKind; 12] = [
        Self::Placed,
        Self::Rescheduled,
        Self::Removed,
        Self::Autoscaled,
        Self::Started,
        Self::Failed,
        Self::Created,
        Self::Paused,
        Self::Restarting,
        Self::Removing,
        Self::Missing,
        Self::Unknown,
    ];

    /// The event a reported state makes.
    pub fn of_state(state: ReplicaState) -> Self {
        match state {
            ReplicaState::Running => Self::Started,
            ReplicaState::Failed | ReplicaState::Exited | ReplicaState::Dead => Self::Failed,
            ReplicaState::Created => Self::Created,
            ReplicaState::Paused => Self::Paused,
            ReplicaState::Restarting => Self::Restarting,
            ReplicaState::Removing => Self::Removing,
            ReplicaState::Missing => Self::Missing,
            ReplicaState::Pending | ReplicaState::Unknown => Self::Unknown,
        }
    }

    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Rescheduled => "rescheduled",
            Self::Removed => "removed",
            Self::Autoscaled => "autoscaled",
            Self::Started => "started",
            Self::Failed => "failed",
            Self::Created => "created",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Missing => "missing",
            Self::Unknown => "unknown",
        }
    }

    /// The kind a stored word names; [`EventKind::Unknown`] for any other.
    pub fn parse(word: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == word)
            .unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// What happened.
    pub kind: EventKind,
    /// The service.
    pub service: String,
    /// The replica number.
    pub replica: u32,
    /// The generation it speaks of.
    pub generation: u64,
    /// The node concerned.
    pub node: String,
    /// More, in words.
    pub detail: String,
}

/// `GET /v1/tenants/{tenant}/topologies/{name}/logs`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How many lines from the end of each replica's output (default 100, at most
    /// 10000).
    #[param(minimum = 0, maximum = 10000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Only lines written after this time, Unix nanoseconds as `at_ns` gives them:
    /// what a client that follows the output asks for next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<i64>,
}

/// The output of one replica.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaLogs {
    /// The service.
    pub service: String,
    /// The replica number.
    pub replica: u32,
    /// The node that runs it.
    pub node: String,
    /// Its last lines, oldest first.
    pub lines: Vec<String>,
    /// When each line was written, Unix nanoseconds as the node's engine stamped it
    /// (0 where it did not).
    #[serde(default)]
    pub at_ns: Vec<i64>,
    /// Why its output could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_word_reads_back() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), kind);
        }
    }

    #[test]
    fn reported_states_make_the_events_people_read() {
        assert_eq!(
            EventKind::of_state(ReplicaState::Running),
            EventKind::Started
        );
        assert_eq!(EventKind::of_state(ReplicaState::Exited), EventKind::Failed);
        assert_eq!(EventKind::of_state(ReplicaState::Dead), EventKind::Failed);
        assert_eq!(
            EventKind::of_state(ReplicaState::Created),
            EventKind::Created
        );
    }
}
