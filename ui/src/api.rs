//! The pages' view of the REST API: the typed client of `berth-api`, acting with the
//! signed-in user's own token, so a page can show or do nothing the API would not
//! allow its user. Only how a failed call is shown lives here.

pub(crate) use berth_api::audit::{
    Entry, EntryKind, Explained, Filter, Reach, Revoke, Verification, VerifyQuery,
};
pub(crate) use berth_api::client::{Client as Api, ClientError as Failure};
pub(crate) use berth_api::nodes::{NewJoinToken, NodeInfo as Node, NodeState};
pub(crate) use berth_api::quota::{Limit, TenantView as Tenant};
pub(crate) use berth_api::topologies::{
    Deployed, Event, LogsQuery, ReplicaLogs as Logs, ReplicaView as Replica, Scale,
};
pub(crate) use berth_api::users::{Login, SessionView as Session};
pub(crate) use berth_api::{ReplicaState, Role};

/// The status a page showing `failure` answers with: the API's own, or 502 when the
/// API could not be reached.
pub(crate) fn status_of(failure: &Failure) -> u16 {
    failure.status().unwrap_or(502)
}
