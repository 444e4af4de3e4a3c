//! The CLI against a remote control plane (`--endpoint URL`): the same commands as
//! locally, through the typed client of `berth-api`, acting for one tenant.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api::client::{Client, ClientError, http_trusting};
use berth_api::topologies::{
    Deployed, DryRun, LogsQuery, Removed, ReplicaLogs, ReplicaView, Scale,
};
use berth_api::users::{LoggedIn, Login};
use berth_protocol::topology::Topology;

/// Why a remote deploy did not end with every replica running.
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

    /// Deploys, then follows the nodes' reports until every replica runs, one fails,
    /// or `timeout` passes. Prints each replica's state as it changes unless `quiet`.
    pub(crate) async fn up(
        &self,
        topology: &Topology,
        timeout: Duration,
        quiet: bool,
    ) -> Result<Deployed, RemoteError> {
        let deployed = self.deploy(topology).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen: BTreeMap<(String, u32), berth_api::ReplicaState> = BTreeMap::new();
        loop {
            let status = match self.status(&topology.name).await {
                Ok(status) => status,
                // A deploy-only token cannot watch: the deploy is placed, and that is
                // what it learns.
                Err(e) if e.status() == Some(403) => return Ok(deployed),
                Err(e) => return Err(e.into()),
            };
            for r in &status.replicas {
                let key = (r.service.clone(), r.replica);
                if seen.get(&key) != Some(&r.state) {
                    if !quiet {
                        eprintln!(
                            "{:<24} {} on {}",
                            format!("{}.{}", r.service, r.replica),
                            r.state,
                            r.node
                        );
                    }
                    seen.insert(key, r.state);
                }
            }
            if let Some(failed) = status.replicas.iter().find(|r| r.state.has_failed()) {
                return Err(RemoteError::ReplicaFailed {
                    service: failed.service.clone(),
                    replica: failed.replica,
                    node: failed.node.clone(),
                    state: failed.state,
                    detail: failed.detail.clone(),
                });
            }
            if status.replicas.iter().all(|r| r.state.is_running()) {
                return Ok(Deployed {
                    revision: deployed.revision,
                    changed: deployed.changed,
                    replicas: status.replicas,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let waiting: Vec<String> = status
                    .replicas
                    .iter()
                    .filter(|r| !r.state.is_running())
                    .map(|r| format!("{}.{} ({})", r.service, r.replica, r.state))
                    .collect();
                return Err(RemoteError::Timeout {
                    revision: deployed.revision,
                    waited: timeout,
                    waiting: waiting.join(", "),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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

/// Prints replicas as a table.
pub(crate) fn print_replicas(replicas: &[ReplicaView]) {
    println!("{:<24} {:<20} {:<10} DETAIL", "REPLICA", "NODE", "STATE");
    for r in replicas {
        println!(
            "{:<24} {:<20} {:<10} {}",
            format!("{}.{}", r.service, r.replica),
            r.node,
            r.state.as_str(),
            r.detail
        );
    }
}
