//! Where a topology command runs: on this machine, through the embedded control plane
//! and the user's engine, or in a pool, through its API. Both answer with the same
//! outcomes and fail with the same errors, so each command is written once and shows
//! the same at every scale.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_api::ReplicaState;
use berth_api::client::ClientError;
use berth_api::topologies::{Deployed, ReplicaLogs, ReplicaView};
use berth_node_runtime::driver::ContainerListing;
use berth_node_runtime::{ContainerDriver, Progress, Step};
use berth_protocol::topology::Topology;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::local::{LOCAL_NODE, LOCAL_TENANT, LocalError, LocalPlane, data_dir};
use crate::remote::{Remote, RemoteError};

/// How long `up` and `scale` against a pool wait for every replica to run.
pub(crate) const RUNNING_WITHIN: Duration = Duration::from_secs(300);

/// How often a pool is asked again while `up` waits or `logs -f` follows.
pub(crate) const ASK_EVERY: Duration = Duration::from_millis(250);

/// How often `logs -f` against a pool asks for what was written since.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Where the commands run.
#[derive(Debug)]
pub(crate) enum Plane {
    /// This machine: the embedded control plane and the user's engine.
    Local(LocalPlane),
    /// A pool, through its API, for one tenant.
    Remote(Remote),
}

/// Why a command on a plane failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaneError {
    /// On this machine.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// In the pool.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl From<ClientError> for PlaneError {
    fn from(e: ClientError) -> Self {
        PlaneError::Remote(e.into())
    }
}

/// One replica as `up`, `scale` and `ps` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Replica {
    /// The service.
    pub(crate) service: String,
    /// The replica number.
    pub(crate) replica: u32,
    /// The node it runs on.
    pub(crate) node: String,
    /// What its engine says of it (`pending` before its node reported).
    pub(crate) state: ReplicaState,
    /// The engine's status sentence, or why it failed.
    pub(crate) detail: String,
    /// Its container, where this machine's engine runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container: Option<String>,
    /// The host addresses it publishes (`IP:PORT`), where this machine's engine runs it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) ports: Vec<String>,
    /// The CPU it used lately, thousandths of a core (services that autoscale).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu_millis: Option<u32>,
    /// The image it runs: in a pool, as its revision names it (a pushed image's id, a
    /// registry tag pinned to its digest); locally, the engine's id of its image.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) image: String,
}

impl From<ReplicaView> for Replica {
    fn from(r: ReplicaView) -> Self {
        Replica {
            service: r.service,
            replica: r.replica,
            node: r.node,
            state: r.state,
            detail: r.detail,
            container: None,
            ports: Vec::new(),
            cpu_millis: r.cpu_millis,
            image: r.image,
        }
    }
}

impl From<&ContainerListing> for Replica {
    fn from(c: &ContainerListing) -> Self {
        Replica {
            service: c.container.service.clone(),
            replica: c.container.replica,
            node: LOCAL_NODE.to_owned(),
            state: ReplicaState::parse(&c.state),
            detail: c.status.clone(),
            container: Some(c.container.name.clone()),
            ports: c
                .container
                .host_ports
                .iter()
                .map(|(ip, port)| format!("{ip}:{port}"))
                .collect(),
            cpu_millis: None,
            image: c.container.image_id.clone(),
        }
    }
}

/// A topology as `up`, `scale` and `ps` show it.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    /// The topology.
    pub(crate) topology: String,
    /// The tenant it belongs to.
    pub(crate) tenant: String,
    /// The revision in force; none when nothing of it is deployed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) revision: Option<u64>,
    /// Whether this command stored a new revision.
    pub(crate) changed: bool,
    /// What this command did to containers, where it ran them itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) containers: Option<Changes>,
    /// Every replica.
    pub(crate) replicas: Vec<Replica>,
}

/// What a command did to the containers of the engine it drove.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Changes {
    /// Containers created (new or replacing).
    pub(crate) created: usize,
    /// Containers left as they were.
    pub(crate) unchanged: usize,
    /// Containers removed.
    pub(crate) removed: usize,
}

impl From<berth_node_runtime::Outcome> for Changes {
    fn from(o: berth_node_runtime::Outcome) -> Self {
        Changes {
            created: o.created,
            unchanged: o.unchanged,
            removed: o.removed,
        }
    }
}

/// What `down` did.
#[derive(Debug, Serialize)]
pub(crate) struct Down {
    /// The topology.
    pub(crate) topology: String,
    /// The tenant it belonged to.
    pub(crate) tenant: String,
    /// The nodes that ran some of it.
    pub(crate) nodes: Vec<String>,
    /// Containers removed, where this command removed them itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) removed: Option<usize>,
}

/// One line a replica wrote, as `logs -f` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Line<'a> {
    /// The service.
    pub(crate) service: &'a str,
    /// The replica number.
    pub(crate) replica: u32,
    /// Its node.
    pub(crate) node: &'a str,
    /// When the engine stamped it, Unix nanoseconds (0 when it did not).
    pub(crate) at_ns: i64,
    /// The text.
    pub(crate) line: &'a str,
}

impl Plane {
    /// The pool named by `--endpoint`, else this machine.
    pub(crate) async fn open(remote: Option<Remote>) -> Result<Self, PlaneError> {
        Ok(match remote {
            Some(remote) => Plane::Remote(remote),
            None => Plane::Local(LocalPlane::open(&data_dir()).await?),
        })
    }

    /// The tenant the commands act for.
    pub(crate) fn tenant(&self) -> &str {
        match self {
            Plane::Local(_) => LOCAL_TENANT,
            Plane::Remote(remote) => remote.tenant(),
        }
    }

    /// Deploys `topology` and returns once every replica runs, or fails as soon as one
    /// cannot. Each replica's steps go to `events` as they happen.
    pub(crate) async fn up(
        &self,
        topology: &Topology,
        events: mpsc::UnboundedSender<Progress>,
    ) -> Result<Status, PlaneError> {
        match self {
            Plane::Local(local) => {
                let (applied, outcome) = local.up(topology, events).await?;
                self.finished(&topology.name, applied.revision, applied.changed, outcome)
                    .await
            }
            Plane::Remote(remote) => {
                let deployed = remote.deploy(topology).await?;
                watch(remote, &topology.name, deployed, &events).await
            }
        }
    }

    /// Sets the replicas of services of the deployed topology `name`, in one revision,
    /// and returns as `up` does.
    pub(crate) async fn scale(
        &self,
        name: &str,
        replicas: &BTreeMap<String, u32>,
        events: mpsc::UnboundedSender<Progress>,
    ) -> Result<Status, PlaneError> {
        match self {
            Plane::Local(local) => {
                let (applied, outcome) = local.scale(name, replicas, events).await?;
                self.finished(name, applied.revision, applied.changed, outcome)
                    .await
            }
            Plane::Remote(remote) => {
                let deployed = remote.scale(name, replicas).await?;
                watch(remote, name, deployed, &events).await
            }
        }
    }

    async fn finished(
        &self,
        name: &str,
        revision: u64,
        changed: bool,
        outcome: berth_node_runtime::Outcome,
    ) -> Result<Status, PlaneError> {
        let mut status = self.status(name).await?;
        status.revision = Some(revision);
        status.changed = changed;
        status.containers = Some(outcome.into());
        Ok(status)
    }

    /// Removes the topology `name` (and, on this machine with `volumes`, its named
    /// volumes).
    pub(crate) async fn down(
        &self,
        name: &str,
        volumes: bool,
        events: mpsc::UnboundedSender<Progress>,
    ) -> Result<Down, PlaneError> {
        let (nodes, removed) = match self {
            Plane::Local(local) => {
                let outcome = local.down(name, volumes, events).await?;
                let nodes = if outcome.removed > 0 {
                    vec![LOCAL_NODE.to_owned()]
                } else {
                    Vec::new()
                };
                (nodes, Some(outcome.removed))
            }
            Plane::Remote(remote) => (remote.remove(name).await?.nodes, None),
        };
        Ok(Down {
            topology: name.to_owned(),
            tenant: self.tenant().to_owned(),
            nodes,
            removed,
        })
    }

    /// The topology `name` and its replicas; none when it is not deployed.
    pub(crate) async fn status(&self, name: &str) -> Result<Status, PlaneError> {
        let (revision, replicas) = match self {
            Plane::Local(local) => {
                let replicas = local
                    .ps(Some(name))
                    .await?
                    .iter()
                    .map(Replica::from)
                    .collect();
                (local.revision(name).await?, replicas)
            }
            Plane::Remote(remote) => match remote.status(name).await {
                Ok(deployed) => (
                    Some(deployed.revision),
                    deployed.replicas.into_iter().map(Replica::from).collect(),
                ),
                Err(e) if e.status() == Some(404) => (None, Vec::new()),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Status {
            topology: name.to_owned(),
            tenant: self.tenant().to_owned(),
            revision,
            changed: false,
            containers: None,
            replicas,
        })
    }

    /// Every topology of the tenant, by name.
    pub(crate) async fn statuses(&self) -> Result<Vec<Status>, PlaneError> {
        match self {
            Plane::Local(local) => {
                // One listing of the engine, shared out by topology.
                let mut by_topology: BTreeMap<String, Vec<Replica>> = BTreeMap::new();
                for c in local.ps(None).await? {
                    by_topology
                        .entry(c.topology.topology.clone())
                        .or_default()
                        .push(Replica::from(&c));
                }
                let mut all = Vec::with_capacity(by_topology.len());
                for (name, replicas) in by_topology {
                    all.push(Status {
                        revision: local.revision(&name).await?,
                        topology: name,
                        tenant: LOCAL_TENANT.to_owned(),
                        changed: false,
                        containers: None,
                        replicas,
                    });
                }
                Ok(all)
            }
            Plane::Remote(remote) => {
                let mut all = Vec::new();
                for name in remote.topologies().await? {
                    all.push(self.status(&name).await?);
                }
                Ok(all)
            }
        }
    }

    /// The last `tail` lines of each replica of `name` (of `service`, or all).
    pub(crate) async fn logs(
        &self,
        name: &str,
        service: Option<&str>,
        tail: u64,
    ) -> Result<Vec<ReplicaLogs>, PlaneError> {
        match self {
            Plane::Remote(remote) => Ok(remote.logs(name, service, tail, None).await?),
            Plane::Local(local) => {
                let mut all = Vec::new();
                for c in local.ps(Some(name)).await? {
                    if service.is_some_and(|s| c.container.service != s) {
                        continue;
                    }
                    let mut logs = ReplicaLogs {
                        service: c.container.service.clone(),
                        replica: c.container.replica,
                        node: LOCAL_NODE.to_owned(),
                        lines: Vec::new(),
                        at_ns: Vec::new(),
                        error: None,
                    };
                    let mut lines = local
                        .driver()
                        .logs(&c.container.name, false, Some(tail), None);
                    while let Some(line) = lines.next().await {
                        match line {
                            Ok(line) => {
                                logs.lines.push(line.text);
                                logs.at_ns.push(line.at_ns.unwrap_or(0));
                            }
                            Err(e) => {
                                logs.error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    all.push(logs);
                }
                Ok(all)
            }
        }
    }

    /// Every line the replicas of `name` (of `service`, or all) write, starting with
    /// the last `tail` of each, until the future is dropped. A replica whose output
    /// cannot be read is told to `error` once per new reason.
    pub(crate) async fn follow(
        &self,
        name: &str,
        service: Option<&str>,
        tail: u64,
        mut line: impl FnMut(Line<'_>),
        mut error: impl FnMut(&str, &str),
    ) -> Result<(), PlaneError> {
        match self {
            Plane::Local(local) => {
                let containers: Vec<ContainerListing> = local
                    .ps(Some(name))
                    .await?
                    .into_iter()
                    .filter(|c| service.is_none_or(|s| c.container.service == s))
                    .collect();
                let replicas: HashMap<&str, &ContainerListing> = containers
                    .iter()
                    .map(|c| (c.container.name.as_str(), c))
                    .collect();
                let streams = containers.iter().map(|c| {
                    local
                        .driver()
                        .logs(&c.container.name, true, Some(tail), None)
                });
                let mut merged = futures_util::stream::select_all(streams);
                while let Some(next) = merged.next().await {
                    let next = next.map_err(LocalError::Docker)?;
                    let Some(c) = replicas.get(next.container.as_str()) else {
                        continue;
                    };
                    line(Line {
                        service: &c.container.service,
                        replica: c.container.replica,
                        node: LOCAL_NODE,
                        at_ns: next.at_ns.unwrap_or(0),
                        line: &next.text,
                    });
                }
                Ok(())
            }
            Plane::Remote(remote) => {
                // Per replica: the stamp of the last line shown, and the last error
                // told. Each replica's lines are kept apart by when its node's engine
                // stamped them, so a line is shown once.
                let mut shown: HashMap<(String, u32), i64> = HashMap::new();
                let mut told: HashMap<(String, u32), String> = HashMap::new();
                let mut since = None;
                let mut tail = tail;
                loop {
                    for r in remote.logs(name, service, tail, since).await? {
                        let key = (r.service.clone(), r.replica);
                        for (i, text) in r.lines.iter().enumerate() {
                            let at = r.at_ns.get(i).copied().unwrap_or(0);
                            if at != 0 && shown.get(&key).is_some_and(|last| at <= *last) {
                                continue;
                            }
                            if at != 0 {
                                shown.insert(key.clone(), at);
                            }
                            line(Line {
                                service: &r.service,
                                replica: r.replica,
                                node: &r.node,
                                at_ns: at,
                                line: text,
                            });
                        }
                        let why = r.error.as_deref().unwrap_or_default();
                        if told.get(&key).map(String::as_str).unwrap_or_default() != why {
                            if !why.is_empty() {
                                error(&format!("{}.{}", r.service, r.replica), why);
                            }
                            told.insert(key, why.to_owned());
                        }
                    }
                    // Next, what was written after the earliest last line of any
                    // replica (the others' lines up to their own last are skipped
                    // above). A replica that showed nothing yet sent all it had.
                    since = shown.values().min().copied();
                    tail = 10_000;
                    tokio::time::sleep(FOLLOW_EVERY).await;
                }
            }
        }
    }
}

/// Follows the nodes' reports of a deployed revision until every replica runs, one
/// fails, or [`RUNNING_WITHIN`] passes; each replica's state goes to `events` as it
/// changes. A token that may deploy but not read learns the deploy is placed.
async fn watch(
    remote: &Remote,
    name: &str,
    deployed: Deployed,
    events: &mpsc::UnboundedSender<Progress>,
) -> Result<Status, PlaneError> {
    let status = |replicas: Vec<ReplicaView>| Status {
        topology: name.to_owned(),
        tenant: remote.tenant().to_owned(),
        revision: Some(deployed.revision),
        changed: deployed.changed,
        containers: None,
        replicas: replicas.into_iter().map(Replica::from).collect(),
    };
    let deadline = tokio::time::Instant::now() + RUNNING_WITHIN;
    let mut seen: BTreeMap<(String, u32), ReplicaState> = BTreeMap::new();
    loop {
        let now = match remote.status(name).await {
            Ok(now) => now,
            Err(e) if e.status() == Some(403) => return Ok(status(deployed.replicas)),
            Err(e) => return Err(e.into()),
        };
        for r in &now.replicas {
            let key = (r.service.clone(), r.replica);
            if seen.get(&key) != Some(&r.state) {
                let _ = events.send(Progress::Replica {
                    service: r.service.clone(),
                    replica: r.replica,
                    step: step_of(r),
                });
                seen.insert(key, r.state);
            }
        }
        if let Some(failed) = now.replicas.iter().find(|r| r.state.has_failed()) {
            return Err(RemoteError::ReplicaFailed {
                service: failed.service.clone(),
                replica: failed.replica,
                node: failed.node.clone(),
                state: failed.state,
                detail: failed.detail.clone(),
            }
            .into());
        }
        if now.replicas.iter().all(|r| r.state.is_running()) {
            return Ok(status(now.replicas));
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting: Vec<String> = now
                .replicas
                .iter()
                .filter(|r| !r.state.is_running())
                .map(|r| format!("{}.{} ({})", r.service, r.replica, r.state))
                .collect();
            return Err(RemoteError::Timeout {
                revision: deployed.revision,
                waited: RUNNING_WITHIN,
                waiting: waiting.join(", "),
            }
            .into());
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

/// The step a node's report of a replica stands for.
fn step_of(r: &ReplicaView) -> Step {
    match r.state {
        ReplicaState::Pending => Step::Placed {
            node: r.node.clone(),
        },
        ReplicaState::Created | ReplicaState::Restarting => Step::Starting,
        ReplicaState::Running => Step::Running,
        ReplicaState::Removing => Step::Removing,
        ReplicaState::Failed | ReplicaState::Exited | ReplicaState::Dead => {
            Step::Failed(format!("{} on {}: {}", r.state, r.node, r.detail))
        }
        ReplicaState::Paused | ReplicaState::Missing | ReplicaState::Unknown => {
            Step::Reported(r.state.as_str().to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: ReplicaState) -> ReplicaView {
        ReplicaView {
            service: "web".into(),
            replica: 1,
            node: "n1".into(),
            generation: 1,
            state,
            detail: "exit 3".into(),
            cpu_millis: None,
            image: String::new(),
        }
    }

    #[test]
    fn a_pools_reports_read_as_the_steps_shown_locally() {
        assert_eq!(
            step_of(&view(ReplicaState::Pending)),
            Step::Placed { node: "n1".into() }
        );
        assert_eq!(step_of(&view(ReplicaState::Running)), Step::Running);
        assert_eq!(
            step_of(&view(ReplicaState::Exited)),
            Step::Failed("exited on n1: exit 3".into())
        );
        for state in ReplicaState::ALL {
            // Every state has a step; only those that will not run are failures.
            let failed = matches!(step_of(&view(state)), Step::Failed(_));
            assert_eq!(failed, state.has_failed(), "{state}");
        }
    }
}
