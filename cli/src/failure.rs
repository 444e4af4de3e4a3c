//! How a command fails: an exit code a script can branch on and a message a person
//! can act on, from every error the commands meet.

use berth_api::ErrorCode;
use berth_api::client::ClientError;
use berth_protocol::error_chain;

use berth_deployments::DeployError;

use crate::local::LocalError;
use crate::plane::PlaneError;
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
            LocalError::Deploy(e) => exit_of_refusal(e),
            LocalError::Preflight(_) | LocalError::Build(_) => Exit::Preflight,
            LocalError::State { .. } | LocalError::Docker(_) | LocalError::Apply(_) => {
                Exit::Failure
            }
        };
        Failure {
            exit,
            message: error_chain(&e),
        }
    }
}

/// A refused change: a broken rule or a name that is not there is the command's fault,
/// a lack of room the pool's (as a pool's answers say, in `From<ClientError>`).
fn exit_of_refusal(e: &DeployError) -> Exit {
    use berth_allocator::AllocatorError;
    match e {
        DeployError::Invalid(_)
        | DeployError::Refused(_)
        | DeployError::TooLarge { .. }
        | DeployError::UnknownService { .. }
        | DeployError::Tenant(berth_tenant_service::TenantError::UnknownTopology { .. }) => {
            Exit::Invalid
        }
        DeployError::Allocator(
            AllocatorError::Quota(_) | AllocatorError::Placement(_) | AllocatorError::Contended(_),
        ) => Exit::Refused,
        DeployError::Tenant(_) | DeployError::Allocator(_) => Exit::Failure,
    }
}

impl From<PlaneError> for Failure {
    fn from(e: PlaneError) -> Self {
        match e {
            PlaneError::Local(e) => e.into(),
            PlaneError::Remote(e) => e.into(),
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
                    | ErrorCode::TooLarge
                    | ErrorCode::NotFound,
                ) => Exit::Invalid,
                Some(ErrorCode::QuotaExceeded | ErrorCode::NoCapacity) => Exit::Refused,
                Some(ErrorCode::Unauthenticated) => Exit::Unreachable,
                _ => Exit::Failure,
            },
        };
        Failure {
            exit,
            message: error_chain(&e),
        }
    }
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Client(e) => e.into(),
            other => Failure {
                exit: Exit::Failure,
                message: error_chain(&other),
            },
        }
    }
}
