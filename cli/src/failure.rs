//! How a command fails: an exit code a script can branch on and a message a person
//! can act on, from every error the commands meet.

use berth_api::ErrorCode;
use berth_api::client::ClientError;

use crate::local::LocalError;
use crate::project::ProjectError;
use crate::remote::RemoteError;

/// Exit codes, as `berth --help`, the top of `main.rs` and the README list them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Exit {
    Failure = 1,
    Invalid = 3,
    DockerUnavailable = 4,
    Refused = 5,
    Preflight = 6,
    Unreachable = 7,
}

/// A command that failed: how the process exits, and what it says on stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl From<ProjectError> for Failure {
    fn from(e: ProjectError) -> Self {
        let exit = match e {
            ProjectError::Invalid(_) | ProjectError::DotEnv { .. } => Exit::Invalid,
            ProjectError::NotFound { .. } | ProjectError::Unreadable { .. } => Exit::Invalid,
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}

impl From<LocalError> for Failure {
    fn from(e: LocalError) -> Self {
        let exit = match &e {
            LocalError::Docker(berth_node_runtime::DriverError::Unavailable { .. }) => {
                Exit::DockerUnavailable
            }
            LocalError::Refused(_) => Exit::Refused,
            LocalError::Preflight(_) | LocalError::Build(_) => Exit::Preflight,
            LocalError::State { .. } | LocalError::Docker(_) | LocalError::Apply(_) => {
                Exit::Failure
            }
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let exit = match &e {
            ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Endpoint { .. } => Exit::Invalid,
            ClientError::Trust { .. } => Exit::Failure,
            ClientError::Api { code, .. } => match code {
                Some(
                    ErrorCode::InvalidTopology
                    | ErrorCode::BadRequest
                    | ErrorCode::RefusedByPolicy
                    | ErrorCode::TooLarge,
                ) => Exit::Invalid,
                Some(ErrorCode::QuotaExceeded | ErrorCode::NoCapacity) => Exit::Refused,
                Some(ErrorCode::Unauthenticated) => Exit::Unreachable,
                _ => Exit::Failure,
            },
        };
        Failure {
            exit,
            message: e.described(),
        }
    }
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Client(e) => e.into(),
            other => Failure {
                exit: Exit::Failure,
                message: other.to_string(),
            },
        }
    }
}
