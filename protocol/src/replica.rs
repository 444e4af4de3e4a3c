//! The states a replica can be in, as a node reports them and the API shows them.
//!
//! A node reports what its engine says of a replica's container (Docker's own words:
//! `created`, `running`, `exited`, ...) or what it knows without one (`failed`,
//! `missing`); the control plane shows `pending` until the first report. The report
//! travels as text over gRPC, so a word this version does not know is kept as
//! [`ReplicaState::Unknown`] rather than refused: a newer engine must not make a
//! node's whole report fail.

use serde::{Deserialize, Serialize};

/// What a replica is doing, as its node last reported.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Placed, and no report of it has arrived yet.
    Pending,
    /// Its container exists and has not started.
    Created,
    /// Its container runs.
    Running,
    /// Its container is paused.
    Paused,
    /// Its container is being restarted by the engine.
    Restarting,
    /// Its container is being removed.
    Removing,
    /// Its container stopped.
    Exited,
    /// Its container could not be stopped or removed.
    Dead,
    /// The node could not make it (the report's detail says why).
    Failed,
    /// The node has no container for it and no failure to tell.
    Missing,
    /// A state this version of Berth does not know.
    Unknown,
}

impl ReplicaState {
    /// Every state, in the order above.
    pub const ALL: [ReplicaState; 11] = [
        Self::Pending,
        Self::Created,
        Self::Running,
        Self::Paused,
        Self::Restarting,
        Self::Removing,
        Self::Exited,
        Self::Dead,
        Self::Failed,
        Self::Missing,
        Self::Unknown,
    ];

    /// The word reports and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Failed => "failed",
            Self::Missing => "missing",
            Self::Unknown => "unknown",
        }
    }

    /// The state a reported word names; [`ReplicaState::Unknown`] for any other.
    pub fn parse(word: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .unwrap_or(Self::Unknown)
    }

    /// Whether the replica serves.
    pub fn is_running(self) -> bool {
        self == Self::Running
    }

    /// Whether the replica stopped or could not be made: waiting will not make it run.
    pub fn has_failed(self) -> bool {
        matches!(self, Self::Failed | Self::Exited | Self::Dead)
    }

    /// Whether the replica is on its way to running.
    pub fn is_starting(self) -> bool {
        matches!(self, Self::Pending | Self::Created | Self::Restarting)
    }
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_its_state() {
        for state in ReplicaState::ALL {
            assert_eq!(ReplicaState::parse(state.as_str()), state);
            let json = serde_json::to_string(&state).expect("a state serialises");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn a_word_from_a_newer_engine_is_unknown_not_an_error() {
        assert_eq!(ReplicaState::parse("hibernating"), ReplicaState::Unknown);
        assert_eq!(ReplicaState::parse(""), ReplicaState::Unknown);
    }

    #[test]
    fn failed_and_running_are_told_apart() {
        assert!(ReplicaState::Running.is_running());
        assert!(!ReplicaState::Running.has_failed());
        for failed in [
            ReplicaState::Failed,
            ReplicaState::Exited,
            ReplicaState::Dead,
        ] {
            assert!(failed.has_failed());
            assert!(!failed.is_running());
        }
    }
}
