//! The embedded control plane: the tenant service, the allocator and one node runtime
//! in this process, over SQLite in the user's data directory. `berth up` goes through
//! exactly the services a pool runs; only the transport differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_allocator::placement::Placed;
use berth_allocator::service::assignment_of;
use berth_allocator::{Allocator, DefaultRequest, Limit, Resources};
use berth_deployments::{Applied, DeployError, Deployments, Target};
use berth_node_runtime::driver::ContainerListing;
use berth_node_runtime::{
    ContainerDriver, DockerDriver, DriverError, Outcome, Progress, ReconcileError,
    ReconcileOptions, Reconciler,
};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::time::now_ms;
use berth_protocol::topology::Topology;
use berth_tenant_service::{TenantError, TenantService};
use tokio::sync::mpsc;

/// The tenant every local topology belongs to.
pub(crate) const LOCAL_TENANT: &str = "local";
/// The one node of the local control plane.
pub(crate) const LOCAL_NODE: &str = "local";

/// The quota of the local tenant: room for a large application on one machine.
pub(crate) const LOCAL_QUOTA: Limit = Limit {
    cpu_millis: None,
    memory_bytes: None,
    containers: Some(1000),
};

/// Why a local operation failed; each maps to its own exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    /// The state database could not be opened, read or written.
    #[error("state database {}", path.display())]
    State {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: StateError,
    },
    /// The engine is not there, or failed.
    #[error(transparent)]
    Docker(DriverError),
    /// The deploy path refused the change (rules, policy, quota, capacity, an unknown
    /// topology or service); nothing was changed.
    #[error(transparent)]
    Deploy(DeployError),
    /// A check before any change failed (missing image, port in use).
    #[error(transparent)]
    Preflight(ReconcileError),
    /// Applying failed part way.
    #[error(transparent)]
    Apply(ReconcileError),
    /// Building a service's image failed; nothing was deployed.
    #[error(transparent)]
    Build(berth_node_runtime::build::BuildError),
}

/// What failed in the local state.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    /// Its directory.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The tenant service's tables.
    #[error(transparent)]
    Tenants(#[from] TenantError),
    /// The allocator's tables.
    #[error(transparent)]
    Allocator(#[from] berth_allocator::AllocatorError),
}

impl From<DeployError> for LocalError {
    fn from(e: DeployError) -> Self {
        LocalError::Deploy(e)
    }
}

/// Where Berth keeps its local state: `$BERTH_DATA_DIR`, else `$XDG_DATA_HOME/berth`,
/// else `~/.local/share/berth`.
pub(crate) fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("berth");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/berth")
}

/// The embedded control plane.
#[derive(Debug)]
pub(crate) struct LocalPlane {
    deployments: Deployments,
    node: Reconciler<DockerDriver>,
}

impl LocalPlane {
    /// Connects to Docker first (the commonest failure, reported before anything is
    /// written), then opens the state in `dir`.
    pub(crate) async fn open(dir: &Path) -> Result<Self, LocalError> {
        let driver = DockerDriver::connect().await.map_err(LocalError::Docker)?;
        let path = dir.join("berth.db");
        let state = |source: StateError| LocalError::State {
            path: path.clone(),
            source,
        };
        let (tenants, allocator) = Self::open_state(dir, &path).await.map_err(state)?;
        let node = Reconciler::new(
            Arc::new(driver),
            ReconcileOptions {
                // The user's own engine: whatever Compose runs.
                policy: berth_protocol::topology::Policy::local(),
                files_dir: Some(dir.join("files")),
                ..ReconcileOptions::default()
            },
        );
        Ok(Self {
            deployments: Deployments::new(tenants, allocator, Target::Local),
            node,
        })
    }

    /// Opens the tenant service and the allocator over the database at `path`, with
    /// the local tenant and its one node in place.
    async fn open_state(dir: &Path, path: &Path) -> Result<(TenantService, Allocator), StateError> {
        std::fs::create_dir_all(dir)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = berth_allocator::database::connect(&url)
            .await
            .map_err(berth_allocator::AllocatorError::from)?;
        let tenants = TenantService::open(db.clone()).await?;
        let allocator = Allocator::open(db, DefaultRequest::default()).await?;
        tenants.ensure_tenant(LOCAL_TENANT, now_ms()).await?;
        allocator.ensure_quota(LOCAL_TENANT, LOCAL_QUOTA).await?;
        allocator
            .upsert_node(LOCAL_NODE, local_capacity(), &Default::default())
            .await?;
        Ok((tenants, allocator))
    }

    /// Deploys `topology` on this machine. Checks images and ports before anything is
    /// stored, so that a failed check leaves no trace.
    pub(crate) async fn up(
        &self,
        topology: &Topology,
        events: mpsc::UnboundedSender<Progress>,
    ) -> Result<(Applied, Outcome), LocalError> {
        let id = TopologyRef {
            tenant: LOCAL_TENANT.to_owned(),
            topology: topology.name.clone(),
        };
        let provisional: Vec<Placed> = topology
            .services
            .iter()
            .flat_map(|(name, s)| (1..=s.replicas).map(move |r| (name, r)))
            .map(|(name, replica)| Placed {
                service: name.clone(),
                replica,
                node: LOCAL_NODE.to_owned(),
                generation: 0,
                cost: Resources::default(),
            })
            .collect();
        let refs: Vec<&Placed> = provisional.iter().collect();
        // Images are pulled here, before anything is stored, with the user's logins.
        self.node
            .preflight(
                &crate::docker_auth::with_user_credentials(assignment_of(&id, 0, topology, &refs)),
                Some(&events),
            )
            .await
            .map_err(LocalError::Preflight)?;

        let applied = self.deployments.apply(LOCAL_TENANT, topology).await?;
        let mut outcome = Outcome::default();
        if let Some(assignment) = applied.deployment.assignment(LOCAL_NODE) {
            outcome = self
                .node
                .apply(
                    &crate::docker_auth::with_user_credentials(assignment),
                    events.clone(),
                )
                .await
                .map_err(|e| match e {
                    ReconcileError::MissingImages { .. }
                    | ReconcileError::Pull { .. }
                    | ReconcileError::PortsInUse { .. } => LocalError::Preflight(e),
                    other => LocalError::Apply(other),
                })?;
        }
        Ok((applied, outcome))
    }

    /// Sets the replicas of services of the deployed topology `name`, in one revision,
    /// checked and applied as `up` does.
    pub(crate) async fn scale(
        &self,
        name: &str,
        replicas: &BTreeMap<String, u32>,
        events: mpsc::UnboundedSender<Progress>,
    ) -> Result<(Applied, Outcome), LocalError> {
        let current = self
            .deployments
            .tenants()
            .current(LOCAL_TENANT, name)
            .await
            .map_err(DeployError::Tenant)?
            .topology;
        let scaled = berth_deployments::with_replicas(current, replicas)?;
        self.up(&scaled, events).await
    }

    /// The revision of `name` in force here, if it is deployed.
    pub(crate) async fn revision(&self, name: &str) -> Result<Option<u64>, LocalError> {
        let id = TopologyRef {
            tenant: LOCAL_TENANT.to_owned(),
            topology: name.to_owned(),
        };
        self.deployments
            .allocator()
            .placed_revision(&id)
            .await
            .map_err(|e| LocalError::Deploy(e.into()))
    }

    /// Removes a topology: its placement, its record, and its containers and networks
    /// (and volumes with `remove_volumes`). Works from Docker's labels too, so it cleans
    /// up even what the state no longer knows.
    pub(crate) async fn down(
        &self,
        name: &str,
        remove_volumes: bool,
        events: mpsc::UnboundedSender<Progress>,
    ) -> Result<Outcome, LocalError> {
        let id = TopologyRef {
            tenant: LOCAL_TENANT.to_owned(),
            topology: name.to_owned(),
        };
        self.deployments.remove(&id).await?;
        self.node
            .remove(&id, remove_volumes, events)
            .await
            .map_err(LocalError::Apply)
    }

    /// The containers of one topology, or of every local topology.
    pub(crate) async fn ps(&self, name: Option<&str>) -> Result<Vec<ContainerListing>, LocalError> {
        let all = self
            .node
            .driver()
            .list_all(Some(LOCAL_TENANT))
            .await
            .map_err(LocalError::Docker)?;
        Ok(all
            .into_iter()
            .filter(|c| name.is_none_or(|n| c.topology.topology == n))
            .collect())
    }

    /// Builds the images of the services with a `build` section: those named in
    /// `only` (every one if empty), and of those only the ones whose image is absent
    /// unless `always`. Calls `output` with each line of each build. Returns the
    /// services built.
    pub(crate) async fn build(
        &self,
        topology: &Topology,
        only: &[String],
        always: bool,
        mut output: impl FnMut(&str, &str),
    ) -> Result<Vec<String>, LocalError> {
        let driver = self.node.driver();
        let mut built = Vec::new();
        for (name, service) in &topology.services {
            let Some(build) = &service.build else {
                continue;
            };
            if !only.is_empty() && !only.contains(name) {
                continue;
            }
            if !always
                && driver
                    .missing_images(std::slice::from_ref(&service.image))
                    .await
                    .map_err(LocalError::Docker)?
                    .is_empty()
            {
                continue;
            }
            driver
                .build(name, &service.image, build, |line| output(name, line))
                .await
                .map_err(LocalError::Build)?;
            built.push(name.clone());
        }
        Ok(built)
    }

    /// The Docker driver, for logs.
    pub(crate) fn driver(&self) -> &Arc<DockerDriver> {
        self.node.driver()
    }
}

/// This machine's capacity. Locally, CPU and memory limits are ceilings the engine
/// enforces, not reservations (as with Compose), so only the container count is bounded.
fn local_capacity() -> Limit {
    Limit {
        cpu_millis: None,
        memory_bytes: None,
        containers: Some(2000),
    }
}
