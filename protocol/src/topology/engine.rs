//! Engine settings: the Compose keys that reach beyond a service's own containers, into
//! the host (its files, devices, namespaces, kernel) or the engine's shared name space.
//!
//! The format reads them the same everywhere; whether a target runs them is the
//! [`policy`](super::policy)'s decision, never the parser's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a service's containers are run by the engine, beyond the portable core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// A fixed container name (only one replica may then run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The container's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The container's domain name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// Every capability and device of the host.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Host devices, `HOST[:CONTAINER[:PERMISSIONS]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Device cgroup rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// `host`, `none`, `bridge`, `service:NAME` or `container:NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// PID namespace: `host`, `service:NAME` or `container:NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// IPC namespace: `host`, `shareable`, `private`, `service:NAME`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    /// UTS namespace (`host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
    /// User namespace mode (`host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<String>,
    /// Cgroup namespace: `host` or `private`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The parent cgroup on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    /// Kernel parameters.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Security options (`seccomp:unconfined`, `no-new-privileges:true`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// Extra `/etc/hosts` entries, `NAME:ADDRESS`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// DNS servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// DNS resolver options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
    /// Mount the root file system read-only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// tmpfs mounts, `PATH[:OPTIONS]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Size of `/dev/shm`, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// Keep standard input open.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    /// Allocate a terminal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Resource limits of the process, by name (`nofile`, `nproc`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// The most processes the container may hold (-1: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// Relative CPU weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<i64>,
    /// CPU time per period, microseconds (with `cpu_period`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    /// The CFS period, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<i64>,
    /// CPUs the container may run on (`0-3`, `0,1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// Soft memory limit, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<u64>,
    /// Memory plus swap limit, bytes (-1: unlimited swap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memswap_limit: Option<i64>,
    /// Swappiness, 0 to 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_swappiness: Option<i64>,
    /// Disable the OOM killer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oom_kill_disable: bool,
    /// OOM score adjustment, -1000 to 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    /// The image's platform (`linux/amd64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// When to pull the image: `always`, `missing`, `never`, `build`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    /// The log driver and its options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// Extra groups of the container's user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// OCI annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Other services (or containers) whose volumes are mounted too, `NAME[:ro|rw]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
    /// Links to other services, `SERVICE[:ALIAS]`: the alias names the service too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// Links to containers outside the topology, `CONTAINER[:ALIAS]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_links: Vec<String>,
    /// The OCI runtime (`runc`, `runsc`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Storage driver options.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_opt: BTreeMap<String, String>,
    /// The container's MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Fixed addresses per network (`ipv4_address`, `ipv6_address`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, Vec<String>>,
}

impl EngineSettings {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A soft and a hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ulimit {
    /// The soft limit.
    pub soft: i64,
    /// The hard limit.
    pub hard: i64,
}

/// Where a container's output goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// The engine's log driver (`json-file`, `local`, `syslog`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The driver's options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// How a service's image is built from source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The build context: a directory, made absolute against the project directory.
    pub context: String,
    /// The Dockerfile, relative to the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// An inline Dockerfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    /// Build arguments.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// The stage to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Labels of the built image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra tags of the built image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Build without the engine's cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// Always try to pull newer base images.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    /// The network the build's `RUN` steps use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Extra `/etc/hosts` entries during the build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Size of `/dev/shm` during the build, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// The build's target platforms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

/// A file made visible inside the container: a secret or a config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMount {
    /// `secret` or `config`, with its name in the topology.
    pub kind: FileKind,
    /// The secret's or config's name.
    pub name: String,
    /// Where the content comes from.
    pub source: FileSource,
    /// The path inside the container.
    pub target: String,
}

/// A secret or a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A secret (mounted under `/run/secrets` by default).
    Secret,
    /// A config (mounted at `/NAME` by default).
    Config,
}

/// Where a secret's or config's content comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileSource {
    /// A file on the machine that runs `berth`, made absolute.
    File(String),
    /// The content itself (from an environment variable or `content:`).
    Content(String),
}
