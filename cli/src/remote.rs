//! A remote control plane (`--endpoint URL`), through the typed client of `berth-api`,
//! acting for one tenant.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api::client::{Client, ClientError, http_trusting};
use berth_api::topologies::{Deployed, DryRun, LogsQuery, Removed, ReplicaLogs, Scale};
use berth_api::users::{LoggedIn, Login};
use berth_protocol::topology::Topology;

/// Why a remote command failed, or a deploy did not end with every replica running.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteError {
    /// The control plane refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A replica stopped or could not be made; the deploy is placed.
    #[error("{service}.{replica} on {node} {state}: {detail}")]
    ReplicaFailed {
        /// Its service.
        service: String,
        /// Its number.
        replica: u32,
        /// Its node.
        node: String,
        /// What its node reports.
        state: berth_api::ReplicaState,
        /// Why, as its node says.
        detail: String,
    },
    /// Not every replica runs yet, after the time given.
    #[error("deployed revision {revision}, but not every replica runs after {waited:?}: {waiting}")]
    Timeout {
        /// The revision placed.
        revision: u64,
        /// How long `up` waited.
        waited: Duration,
        /// The replicas not running, with their states.
        waiting: String,
    },
}

/// A client of one control plane, acting for one tenant.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    client: Client,
    tenant: String,
}

impl Remote {
    pub(crate) fn new(
        endpoint: &str,
        token: &str,
        tenant: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            client: Client::new(http_trusting(ca)?, endpoint, token)?,
            tenant: tenant.to_owned(),
        })
    }

    /// The tenant it acts for.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The tenant's deployed topologies, by name.
    pub(crate) async fn topologies(&self) -> Result<Vec<String>, ClientError> {
        self.client.topologies(&self.tenant).await
    }

    /// The typed client, for calls that are not the tenant's own topologies.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Deploys `topology` into the tenant.
    pub(crate) async fn deploy(&self, topology: &Topology) -> Result<Deployed, ClientError> {
        self.client.deploy(&self.tenant, topology).await
    }

    /// Asks whether the pool would accept `topology` for the tenant, changing nothing.
    pub(crate) async fn dry_run(&self, topology: &Topology) -> Result<DryRun, ClientError> {
        self.client.dry_run(&self.tenant, topology).await
    }

    /// The topology's replicas and their reported state.
    pub(crate) async fn status(&self, name: &str) -> Result<Deployed, ClientError> {
        self.client.status(&self.tenant, name).await
    }

    /// Sets the replicas of services of a deployed topology, in one revision.
    pub(crate) async fn scale(
        &self,
        name: &str,
        replicas: &BTreeMap<String, u32>,
    ) -> Result<Deployed, ClientError> {
        let asked = Scale {
            replicas: replicas.clone(),
        };
        self.client.scale(&self.tenant, name, &asked).await
    }

    /// The last `tail` lines of each replica (of `service`, or all).
    pub(crate) async fn logs(
        &self,
        name: &str,
        service: Option<&str>,
        tail: u64,
        since_ns: Option<i64>,
    ) -> Result<Vec<ReplicaLogs>, ClientError> {
        let asked = LogsQuery {
            service: service.map(str::to_owned),
            tail: Some(tail),
            since_ns,
        };
        self.client.logs(&self.tenant, name, &asked).await
    }

    /// Removes the topology.
    pub(crate) async fn remove(&self, name: &str) -> Result<Removed, ClientError> {
        self.client.remove(&self.tenant, name).await
    }
}

/// Logs in and returns the session.
pub(crate) async fn login(
    endpoint: &str,
    ca: Option<&std::path::Path>,
    tenant: &str,
    user: &str,
    password: &str,
) -> Result<LoggedIn, ClientError> {
    let anonymous = Client::new(http_trusting(ca)?, endpoint, "")?;
    let asked = Login {
        tenant: tenant.to_owned(),
        user: user.to_owned(),
        password: password.to_owned(),
    };
    anonymous.login(&asked, None).await
}
