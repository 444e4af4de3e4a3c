//! The container engine as the node runtime sees it. The Docker driver implements it
//! with bollard; a simulated driver can stand in for it (hollow nodes) without the
//! reconcile logic knowing.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use berth_protocol::assignment::{RegistryCredential, Scope, TopologyRef};
use berth_protocol::topology::Network;
use futures_util::Stream;

use crate::plan::{ObservedContainer, ObservedObject};
use crate::spec::ContainerSpec;

/// A failure of the container engine, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The engine cannot be reached at all.
    #[error(
        "Docker is not running or not reachable ({detail}); start it (for example `systemctl start docker`) or point DOCKER_HOST at it"
    )]
    Unavailable {
        /// What the client said.
        detail: String,
    },
    /// A host port is taken by something else.
    #[error("host port {port} is already in use on this machine{}: stop what uses it or publish another port", owner.as_ref().map(|o| format!(" (by {o})")).unwrap_or_default())]
    PortInUse {
        /// The port.
        port: u16,
        /// Who holds it, when known.
        owner: Option<String>,
    },
    /// An image is not present on the node.
    #[error(
        "image {image:?} is not on this machine; build, pull or load it first (for the examples: `infra/build-images.sh`)"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// The engine refused or failed a request.
    #[error("{action}: {message}")]
    Engine {
        /// What was being done.
        action: String,
        /// What the engine said.
        message: String,
    },
}

/// What a container is doing, as far as readiness is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Running now.
    pub running: bool,
    /// The exit code, once it has exited.
    pub exit_code: Option<i64>,
    /// `starting`, `healthy` or `unhealthy` when it has a healthcheck.
    pub health: Option<String>,
}

/// One line of a container's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The container's name.
    pub container: String,
    /// The text, without its trailing newline.
    pub text: String,
    /// Whether it came from stderr.
    pub stderr: bool,
    /// When it was written, Unix nanoseconds, as the engine stamped it.
    pub at_ns: Option<i64>,
}

/// A boxed stream of log lines.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine, DriverError>> + Send>>;

/// A container of any topology, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerListing {
    /// Which topology it belongs to.
    pub topology: TopologyRef,
    /// Its state as observed.
    pub container: ObservedContainer,
    /// The engine's state word (`running`, `exited`, ...).
    pub state: String,
    /// The engine's status sentence (`Up 3 minutes (healthy)`).
    pub status: String,
}

/// The operations the node runtime needs from a container engine.
pub trait ContainerDriver: Send + Sync + 'static {
    /// How this driver names and labels objects, and which it counts as its own.
    fn scope(&self) -> &Scope;
    /// The containers of one topology.
    fn list_containers(
        &self,
        id: &TopologyRef,
    ) -> impl Future<Output = Result<Vec<ObservedContainer>, DriverError>> + Send;
    /// Every Berth container of a tenant (or of all tenants with `None`).
    fn list_all(
        &self,
        tenant: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ContainerListing>, DriverError>> + Send;
    /// The networks of one topology.
    fn list_networks(
        &self,
        id: &TopologyRef,
    ) -> impl Future<Output = Result<Vec<ObservedObject>, DriverError>> + Send;
    /// The volumes of one topology.
    fn list_volumes(
        &self,
        id: &TopologyRef,
    ) -> impl Future<Output = Result<Vec<ObservedObject>, DriverError>> + Send;
    /// Which of these images are absent.
    fn missing_images(
        &self,
        images: &[String],
    ) -> impl Future<Output = Result<Vec<String>, DriverError>> + Send;
    /// The id of each of these images that is present, by reference. An engine that
    /// cannot tell answers with none, and containers are then judged by spec alone.
    fn image_ids(
        &self,
        images: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, String>, DriverError>> + Send {
        let _ = images;
        async { Ok(BTreeMap::new()) }
    }
    /// Loads the images in `archive` (the format `docker save` writes). An engine
    /// that cannot load images refuses.
    fn load_image(
        &self,
        archive: &std::path::Path,
    ) -> impl Future<Output = Result<(), DriverError>> + Send {
        let shown = archive.display().to_string();
        async move {
            Err(DriverError::Engine {
                action: format!("loading {shown}"),
                message: "this engine cannot load images".into(),
            })
        }
    }
    /// Pulls `reference` from its registry, logging in with `credential` when given;
    /// `progress` hears of each layer as it moves (`layer`, what it is doing, done).
    /// An engine that cannot pull refuses.
    fn pull_image(
        &self,
        reference: &str,
        credential: Option<&RegistryCredential>,
        progress: &(dyn Fn(&str, &str, bool) + Send + Sync),
    ) -> impl Future<Output = Result<(), DriverError>> + Send {
        let _ = (credential, progress);
        let shown = reference.to_owned();
        async move {
            Err(DriverError::Engine {
                action: format!("pulling {shown}"),
                message: "this engine cannot pull images".into(),
            })
        }
    }
    /// Creates a network.
    fn create_network(
        &self,
        id: &TopologyRef,
        name: &str,
        spec: &Network,
        config_hash: &str,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Removes a network.
    fn remove_network(
        &self,
        docker_name: &str,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Creates a volume.
    fn create_volume(
        &self,
        id: &TopologyRef,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Removes a volume.
    fn remove_volume(
        &self,
        docker_name: &str,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Creates a container (attached to all its networks) and returns its id.
    fn create_container(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, DriverError>> + Send;
    /// Starts a container.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Stops a container (SIGTERM, then SIGKILL after a grace period) and removes it,
    /// with its anonymous volumes.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Kills a container at once (SIGKILL), leaving it stopped: how a node fences
    /// itself when it has lost its lease.
    fn kill_container(&self, id: &str) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// The CPU time a running container has used since it started, in nanoseconds, if
    /// the engine says (autoscaling compares two of these).
    fn cpu_time(&self, id: &str) -> impl Future<Output = Result<Option<u64>, DriverError>> + Send;
    /// What a container is doing.
    fn container_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerStatus, DriverError>> + Send;
    /// A container's output, only what it wrote after `since_ns` (Unix nanoseconds)
    /// when given; with `follow`, the stream goes on as it writes.
    fn logs(
        &self,
        container: &str,
        follow: bool,
        tail: Option<u64>,
        since_ns: Option<i64>,
    ) -> LogStream;
    /// The address a running container has on its networks (the first), for the
    /// node's own tunnels to reach it.
    fn container_address(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<Option<std::net::IpAddr>, DriverError>> + Send;
    /// The host's address on one of its networks (by engine name), as containers on
    /// that network reach it: where the node's link listeners for that topology
    /// listen, so that every topology (and every tenant) has addresses of its own.
    fn network_gateway(
        &self,
        network: &str,
    ) -> impl Future<Output = Result<Option<std::net::IpAddr>, DriverError>> + Send;
}
