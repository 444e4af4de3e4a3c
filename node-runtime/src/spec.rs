//! What one container must be: everything the driver needs to create it, derived from
//! an assignment and one of its slots, with a hash that changes whenever any of it does.

use std::collections::BTreeMap;

use berth_protocol::assignment::{Scope, Slot, TopologyAssignment, TopologyRef, labels};
use berth_protocol::topology::{
    EngineSettings, FileSource, Healthcheck, Limits, MountKind, Network, PortMapping,
    RestartPolicy, Service,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A network a container joins: its Docker name and the names it answers to there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkAttachment {
    /// The Docker network's name.
    pub network: String,
    /// DNS aliases on that network: the service name first, then declared aliases.
    pub aliases: Vec<String>,
    /// Fixed addresses on that network (`ipv4_address`, `ipv6_address`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// A volume mount with the Docker volume resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// A volume, a host path or a tmpfs.
    pub kind: MountKind,
    /// The Docker volume's name (`None` for an anonymous volume), or the host path.
    pub volume: Option<String>,
    /// The path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to create one replica's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    /// The container's name, `tenant.topology.service.N`.
    pub name: String,
    /// The service.
    pub service: String,
    /// The replica number, from 1.
    pub replica: u32,
    /// The image reference.
    pub image: String,
    /// The id of the image the reference names on this engine now, when known: a
    /// container made from another image (the tag was built or loaded anew) is
    /// replaced, as Compose does. Not part of the config hash.
    #[serde(skip)]
    pub image_id: Option<String>,
    /// Command, if overridden.
    pub command: Option<Vec<String>>,
    /// Entrypoint, if overridden.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` pairs, sorted.
    pub env: Vec<String>,
    /// Every label, Berth's included (but for the config hash itself).
    pub labels: BTreeMap<String, String>,
    /// Ports declared by the container, `80/tcp`.
    pub exposed: Vec<String>,
    /// Ports published on the host.
    pub ports: Vec<PortMapping>,
    /// The healthcheck, if any.
    pub healthcheck: Option<Healthcheck>,
    /// Resource limits.
    pub limits: Limits,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Volume mounts.
    pub mounts: Vec<Mount>,
    /// Networks, the first being the one the container is created on.
    pub networks: Vec<NetworkAttachment>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Run an init as PID 1.
    pub init: bool,
    /// The stop signal, if not SIGTERM.
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL, if not the engine's default.
    pub stop_timeout_s: Option<u64>,
    /// `NAME:host-gateway` for each service reached through a tunnel from this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Settings that reach the host, already allowed by the target's policy.
    #[serde(default, skip_serializing_if = "EngineSettings::is_empty")]
    pub engine: EngineSettings,
    /// The hash of all of the above and of the specs of the networks joined.
    #[serde(skip)]
    pub config_hash: String,
}

impl ContainerSpec {
    /// The spec of `slot`'s container, named within `scope`. `None` if the assignment
    /// has no spec for its service.
    pub fn for_slot(assignment: &TopologyAssignment, slot: &Slot, scope: &Scope) -> Option<Self> {
        let service: &Service = assignment.services.get(&slot.service)?;
        let id: &TopologyRef = &assignment.id;
        let mut labels = service.labels.clone();
        labels.extend([
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::TENANT.to_owned(), id.tenant.clone()),
            (labels::TOPOLOGY.to_owned(), id.topology.clone()),
            (labels::SERVICE.to_owned(), slot.service.clone()),
            (labels::REPLICA.to_owned(), slot.replica.to_string()),
            (labels::GENERATION.to_owned(), slot.generation.to_string()),
        ]);
        labels.extend(
            scope
                .labels()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let mut exposed: Vec<String> = service
            .expose
            .iter()
            .map(|e| format!("{}/{}", e.port, e.protocol.as_str()))
            .chain(
                service
                    .ports
                    .iter()
                    .map(|p| format!("{}/{}", p.target, p.protocol.as_str())),
            )
            .collect();
        exposed.sort();
        exposed.dedup();
        let networks = service
            .networks
            .iter()
            .map(|(name, attachment)| NetworkAttachment {
                network: match assignment
                    .networks
                    .get(name)
                    .and_then(|n| n.external.clone())
                {
                    Some(external) => external,
                    None => scope.object_name(id, name),
                },
                aliases: std::iter::once(slot.service.clone())
                    .chain(attachment.aliases.iter().cloned())
                    // `links: [db:database]` names `db` `database` too, as in Compose.
                    .chain(service.engine.links.iter().filter_map(|l| {
                        let (target, alias) = l.split_once(':')?;
                        (target == slot.service).then(|| alias.to_owned())
                    }))
                    .collect(),
                addresses: service
                    .engine
                    .addresses
                    .get(name)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        let mounts = service
            .volumes
            .iter()
            .map(|m| Mount {
                kind: m.kind,
                volume: match m.kind {
                    MountKind::Volume => m.source.as_deref().map(|s| {
                        match assignment.volumes.get(s).and_then(|v| v.external.clone()) {
                            Some(external) => external,
                            None => scope.object_name(id, s),
                        }
                    }),
                    MountKind::Bind | MountKind::Tmpfs => m.source.clone(),
                },
                target: m.target.clone(),
                read_only: m.read_only,
            })
            // Secrets and configs from files are read-only bind mounts, as Compose
            // mounts them outside Swarm.
            .chain(service.files.iter().filter_map(|f| match &f.source {
                FileSource::File(path) => Some(Mount {
                    kind: MountKind::Bind,
                    volume: Some(path.clone()),
                    target: f.target.clone(),
                    read_only: true,
                }),
                FileSource::Content(_) => None,
            }))
            .collect();
        let mut spec = ContainerSpec {
            name: match &service.engine.container_name {
                Some(fixed) => fixed.clone(),
                None => scope.container_name(id, &slot.service, slot.replica),
            },
            service: slot.service.clone(),
            replica: slot.replica,
            // A pushed image runs by its id: the bits the revision names.
            image: service
                .digest
                .as_ref()
                .map_or_else(|| service.image.clone(), ToString::to_string),
            image_id: None,
            command: service.command.clone(),
            entrypoint: service.entrypoint.clone(),
            env: service
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            labels,
            exposed,
            ports: service.ports.clone(),
            healthcheck: service.healthcheck.clone(),
            limits: service.limits,
            restart: service.restart,
            mounts,
            networks,
            working_dir: service.working_dir.clone(),
            user: service.user.clone(),
            init: service.init,
            stop_signal: service.stop_signal.clone(),
            stop_timeout_s: service.stop_grace_period_ms.map(|ms| ms.div_ceil(1000)),
            extra_hosts: {
                // Services that run only on other nodes resolve to this host, where the
                // node's tunnel ends listen (tokens renew without touching containers).
                let mut hosts: Vec<String> = assignment
                    .links
                    .iter()
                    .map(|l| format!("{}:host-gateway", l.service))
                    .collect();
                hosts.sort();
                hosts.dedup();
                hosts
            },
            engine: service.engine.clone(),
            config_hash: String::new(),
        };
        let joined: BTreeMap<&String, Option<&Network>> = service
            .networks
            .keys()
            .map(|n| (n, assignment.networks.get(n)))
            .collect();
        spec.config_hash = hash_of(&(&spec, joined));
        spec.labels
            .insert(labels::CONFIG_HASH.to_owned(), spec.config_hash.clone());
        Some(spec)
    }
}

/// A short, stable hash of a value's JSON form.
impl ContainerSpec {
    /// Mounts files written on this host (secrets and configs given by content)
    /// read-only at their targets; `files` holds `(host path, target, content digest)`.
    /// The digests join the config hash, so a changed content replaces the container.
    pub fn with_written_files(mut self, files: &[(String, String, String)]) -> Self {
        if files.is_empty() {
            return self;
        }
        for (path, target, _) in files {
            self.mounts.push(Mount {
                kind: MountKind::Bind,
                volume: Some(path.clone()),
                target: target.clone(),
                read_only: true,
            });
        }
        let digests: Vec<&String> = files.iter().map(|(_, _, d)| d).collect();
        self.config_hash = hash_of(&(&self.config_hash, &self.mounts, digests));
        self.labels
            .insert(labels::CONFIG_HASH.to_owned(), self.config_hash.clone());
        self
    }
}

pub fn hash_of<T: Serialize>(value: &T) -> String {
    // Serialising plain data (strings, numbers, maps with string keys) cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}
