//! The normalised topology: what a topology file means once parsed, interpolated and
//! validated. Every form the file allows (short and long port syntax, list and map
//! environment, ...) is reduced to one canonical form here. This is what the tenant
//! service stores as a revision and what `berth config` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::engine::*;

/// A whole application: services, and the networks and volumes they share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The topology's name, unique within a tenant (`name:` or the file's directory).
    pub name: String,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Networks by name. Always holds `default` when any service uses it.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Named volumes by name.
    #[serde(default)]
    pub volumes: BTreeMap<String, Volume>,
}

/// One service: an image run as one or more identical replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The image reference, for example `berth/busybox:latest`.
    pub image: String,
    /// The image's id, resolved when a pool deploys the topology from the tenant's
    /// pushed images: what every node runs, whatever the reference names later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<crate::image::Digest>,
    /// Overrides the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment of the containers, `env_file` entries already merged in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Container ports published on the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Container ports declared without publishing them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ExposedPort>,
    /// Services that must be up (or healthy) before this one starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    /// How to tell that a container is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// How many identical containers to run.
    pub replicas: u32,
    /// Resource limits of each replica.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// What to do when a container exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// User labels on each container (the `berth.` prefix is reserved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Volumes mounted into each container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Networks the service joins, with extra aliases per network.
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User (name or uid[:gid]) the container's process runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run a tiny init as PID 1 that forwards signals and reaps zombies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// The signal that asks the container to stop (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a container may take to stop before it is killed, in milliseconds
    /// (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_ms: Option<u64>,
    /// Which nodes may run the replicas (`deploy.placement.constraints`); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How the replica count follows CPU use (`x-berth.autoscale`); `replicas` is then
    /// where it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// How the image is built from source, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Secrets and configs made visible inside the containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileMount>,
    /// Settings that reach the host or the engine's shared names; a target's policy
    /// decides which of them run.
    #[serde(default, skip_serializing_if = "EngineSettings::is_empty")]
    pub engine: EngineSettings,
}

/// Replicas between `min` and `max`, as many as keep each one's average CPU near
/// `cpu_percent` of its CPU limit (of one core when it has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// The fewest replicas.
    pub min: u32,
    /// The most replicas.
    pub max: u32,
    /// The CPU each replica should use on average, in percent of its limit.
    pub cpu_percent: u32,
}

impl Autoscale {
    /// The CPU, in thousandths of a core, that `cpu_percent` means for a replica
    /// limited to `limit_millis` (one core when unlimited).
    pub fn target_millis(&self, limit_millis: Option<u64>) -> u64 {
        (limit_millis.unwrap_or(1000) * u64::from(self.cpu_percent) / 100).max(1)
    }

    /// What is wrong with these settings for a service that starts at `replicas`.
    pub fn problems(&self, replicas: u32) -> Vec<String> {
        let mut out = Vec::new();
        if self.min < 1 {
            out.push("autoscale.min must be at least 1".to_owned());
        }
        if self.max < self.min {
            out.push(format!(
                "autoscale.max ({}) must be at least autoscale.min ({})",
                self.max, self.min
            ));
        }
        if !(1..=100).contains(&self.cpu_percent) {
            out.push(format!(
                "autoscale.cpu must be between 1% and 100%, found {}%",
                self.cpu_percent
            ));
        }
        if self.min <= self.max && !(self.min..=self.max).contains(&replicas) {
            out.push(format!(
                "deploy.replicas ({replicas}) must lie between autoscale.min ({}) and autoscale.max ({})",
                self.min, self.max
            ));
        }
        out
    }
}

/// What a placement constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAttribute {
    /// The node's name (`node.hostname`, as Compose and Swarm spell it).
    Hostname,
    /// One of the labels the node joined with (`node.labels.KEY`).
    Label(String),
}

/// A placement constraint, `node.labels.zone == east` or `node.hostname != db-1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// What is compared.
    pub attribute: NodeAttribute,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

impl Constraint {
    /// Parses Compose's `ATTRIBUTE == VALUE` or `ATTRIBUTE != VALUE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (left, equal, right) = if let Some((l, r)) = text.split_once("==") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, false, r)
        } else {
            return Err(format!(
                "{text:?} is not a constraint: write `node.labels.KEY == VALUE`, `node.hostname != NAME`, ..."
            ));
        };
        let (left, value) = (left.trim(), right.trim());
        let attribute = match left {
            "node.hostname" => NodeAttribute::Hostname,
            _ => match left.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => NodeAttribute::Label(key.to_owned()),
                _ => {
                    return Err(format!(
                        "cannot constrain on {left:?}: Berth knows `node.hostname` and `node.labels.KEY`"
                    ));
                }
            },
        };
        if value.is_empty() {
            return Err(format!(
                "the constraint {text:?} has no value to compare with"
            ));
        }
        Ok(Self {
            attribute,
            equal,
            value: value.to_owned(),
        })
    }

    /// Whether a node named `node` with `labels` satisfies the constraint. A missing
    /// label equals nothing.
    pub fn allows(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        let actual = match &self.attribute {
            NodeAttribute::Hostname => Some(node),
            NodeAttribute::Label(key) => labels.get(key).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.attribute {
            NodeAttribute::Hostname => f.write_str("node.hostname")?,
            NodeAttribute::Label(key) => write!(f, "node.labels.{key}")?,
        }
        let op = if self.equal { "==" } else { "!=" };
        write!(f, " {op} {}", self.value)
    }
}

/// Transport protocol of a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, the default.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The name Docker uses (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A container port published on the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The port inside the container.
    pub target: u16,
    /// The host port; `None` lets the engine pick a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// The host address to bind; `None` means all addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A container port that is declared but not published.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposedPort {
    /// The port inside the container.
    pub port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// When a dependency counts as ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Its containers have started.
    #[default]
    ServiceStarted,
    /// Its containers report healthy (the dependency must have a healthcheck).
    ServiceHealthy,
    /// Its containers ran to completion with exit code 0.
    ServiceCompletedSuccessfully,
}

/// One entry of `depends_on`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// When the dependency counts as ready.
    pub condition: Condition,
    /// Whether the dependent fails when the dependency is not in the topology
    /// (`required: false` lets it start without).
    #[serde(default = "required_default", skip_serializing_if = "Clone::clone")]
    pub required: bool,
}

fn required_default() -> bool {
    true
}

impl Default for Dependency {
    fn default() -> Self {
        Self {
            condition: Condition::default(),
            required: true,
        }
    }
}

/// A container healthcheck, in the form the engine takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", arg...]`, `["CMD-SHELL", script]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Time between checks, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Time a check may take, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Consecutive failures before the container is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Grace period after start during which failures do not count, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
    /// Time between checks during the start period, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval_ms: Option<u64>,
}

impl Healthcheck {
    /// Whether this healthcheck turns the image's own healthcheck off.
    pub fn is_disabled(&self) -> bool {
        self.test.first().map(String::as_str) == Some("NONE")
    }
}

/// Per-replica resource limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU limit in thousandths of a core (`cpus: 0.5` is 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.cpu_millis.is_none() && self.memory_bytes.is_none()
    }
}

/// What the engine does when a container exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartPolicy {
    /// Never restart (`restart: "no"`), the default.
    #[default]
    No,
    /// Always restart.
    Always,
    /// Restart when the exit code is not zero, at most `max_retries` times if given.
    OnFailure {
        /// Give up after this many restarts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_retries: Option<u32>,
    },
    /// Always restart, unless the container was stopped by hand.
    UnlessStopped,
}

/// A volume mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// What is mounted: a named volume (the default), a host path or a tmpfs.
    #[serde(default, skip_serializing_if = "MountKind::is_volume")]
    pub kind: MountKind,
    /// The named volume (declared under top-level `volumes`); `None` for an anonymous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The path inside the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// How a service joins one network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    /// Extra names the service answers to on this network, besides its own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A network of the topology.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// No route out of the network.
    #[serde(default)]
    pub internal: bool,
    /// Labels on the network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// An existing network of the engine, used by name and never created or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// The driver (`bridge` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The driver's options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Address ranges, `SUBNET[ GATEWAY]` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<Subnet>,
    /// IPv6 on the network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_ipv6: bool,
}

/// One address range of a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// The range, `172.28.0.0/16`.
    pub subnet: String,
    /// The gateway's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The range containers are given addresses from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

/// A named volume of the topology.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Labels on the volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// An existing volume of the engine, used by name and never created or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// The driver (`local` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The driver's options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
}

/// What a [`VolumeMount`] mounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A named or anonymous volume of the topology.
    #[default]
    Volume,
    /// A path of the host, made absolute against the project directory; `source` holds it.
    Bind,
    /// A tmpfs in memory.
    Tmpfs,
}

impl MountKind {
    /// Whether this is the default kind.
    pub fn is_volume(&self) -> bool {
        *self == MountKind::Volume
    }
}
