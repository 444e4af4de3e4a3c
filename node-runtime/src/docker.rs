//! The Docker driver: [`ContainerDriver`] over the engine's API, through bollard.

use std::collections::{BTreeMap, HashMap};

use berth_protocol::assignment::{RegistryCredential, Scope, TopologyRef, labels};
use berth_protocol::topology::{MountKind, Network, RestartPolicy};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointIpamConfig, EndpointSettings, HealthConfig,
    HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Ipam, IpamConfig, Mount,
    MountType as DockerMountType, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig,
    PortBinding, ResourcesUlimits, RestartPolicy as DockerRestart, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};
use futures_util::StreamExt;

use crate::driver::{
    ContainerDriver, ContainerListing, ContainerStatus, DriverError, LogLine, LogStream,
};
use crate::plan::{ObservedContainer, ObservedObject};
use crate::spec::{ContainerSpec, NetworkAttachment};

/// A Docker engine, reached through its local socket or `DOCKER_HOST`.
#[derive(Clone, Debug)]
pub struct DockerDriver {
    docker: Docker,
    scope: Scope,
}

impl DockerDriver {
    /// Connects to the engine and agrees on an API version with it, so that older
    /// engines work too. Fails with [`DriverError::Unavailable`] when there is none.
    pub async fn connect() -> Result<Self, DriverError> {
        Self::connect_scoped(Scope::unscoped()).await
    }

    /// Like [`Self::connect`], naming and labelling objects within `scope`.
    pub async fn connect_scoped(scope: Scope) -> Result<Self, DriverError> {
        let unavailable = |e: BollardError| DriverError::Unavailable {
            detail: e.to_string(),
        };
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        Ok(Self { docker, scope })
    }

    /// The bollard client, for callers that need the engine directly (tests, tools).
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

fn engine(action: impl Into<String>) -> impl FnOnce(BollardError) -> DriverError {
    let action = action.into();
    move |e| match e {
        BollardError::DockerResponseServerError { message, .. } => {
            port_in_use(&message).unwrap_or(DriverError::Engine { action, message })
        }
        BollardError::SocketNotFoundError(_) | BollardError::HyperResponseError { .. } => {
            DriverError::Unavailable {
                detail: e.to_string(),
            }
        }
        other => DriverError::Engine {
            action,
            message: other.to_string(),
        },
    }
}

/// Recognises the engine's ways of saying a host port is taken.
fn port_in_use(message: &str) -> Option<DriverError> {
    let taken =
        message.contains("port is already allocated") || message.contains("address already in use");
    if !taken {
        return None;
    }
    // "Bind for 0.0.0.0:8080 failed: port is already allocated"
    // "listen tcp4 0.0.0.0:8080: bind: address already in use"
    let port = message
        .split(':')
        .skip(1)
        .filter_map(|after| {
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok()
        })
        .find(|p| *p > 0)
        .unwrap_or(0);
    Some(DriverError::PortInUse { port, owner: None })
}

fn topology_filter(id: &TopologyRef, scope: &Scope) -> HashMap<String, Vec<String>> {
    let mut wanted = vec![
        format!("{}={}", labels::TENANT, id.tenant),
        format!("{}={}", labels::TOPOLOGY, id.topology),
    ];
    wanted.extend(scope.labels().iter().map(|(k, v)| format!("{k}={v}")));
    HashMap::from([("label".to_owned(), wanted)])
}

fn label<'a>(labels: &'a Option<HashMap<String, String>>, key: &str) -> &'a str {
    labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map_or("", String::as_str)
}

fn object_labels(
    scope: &Scope,
    id: &TopologyRef,
    name: &str,
    hash: &str,
    extra: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = extra.clone().into_iter().collect();
    out.insert(labels::MANAGED.into(), "true".into());
    out.insert(labels::TENANT.into(), id.tenant.clone());
    out.insert(labels::TOPOLOGY.into(), id.topology.clone());
    out.insert(labels::NAME.into(), name.into());
    out.extend(
        scope
            .labels()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    if !hash.is_empty() {
        out.insert(labels::CONFIG_HASH.into(), hash.into());
    }
    out
}

fn observed(
    summary: bollard::models::ContainerSummary,
) -> Option<(TopologyRef, ObservedContainer, String, String)> {
    let l = &summary.labels;
    let topology = TopologyRef {
        tenant: label(l, labels::TENANT).to_owned(),
        topology: label(l, labels::TOPOLOGY).to_owned(),
    };
    let container = ObservedContainer {
        id: summary.id.clone()?,
        name: summary
            .names
            .as_ref()?
            .first()?
            .trim_start_matches('/')
            .to_owned(),
        service: label(l, labels::SERVICE).to_owned(),
        replica: label(l, labels::REPLICA).parse().unwrap_or(0),
        generation: label(l, labels::GENERATION).parse().unwrap_or(0),
        config_hash: label(l, labels::CONFIG_HASH).to_owned(),
        running: summary.state.map(|s| s.to_string()) == Some("running".to_owned()),
        image_id: summary.image_id.clone().unwrap_or_default(),
        host_ports: summary
            .ports
            .unwrap_or_default()
            .iter()
            .filter_map(|p| Some((p.ip.clone().unwrap_or_default(), p.public_port?)))
            .collect(),
    };
    let state = summary.state.map(|s| s.to_string()).unwrap_or_default();
    Some((
        topology,
        container,
        state,
        summary.status.unwrap_or_default(),
    ))
}

fn ms_to_ns(ms: Option<u64>) -> Option<i64> {
    ms.map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
}

fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        port_bindings
            .entry(format!("{}/{}", p.target, p.protocol.as_str()))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.published.map(|x| x.to_string()).unwrap_or_default()),
            });
    }
    let restart = match spec.restart {
        RestartPolicy::No => DockerRestart {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        RestartPolicy::Always => DockerRestart {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        },
        RestartPolicy::UnlessStopped => DockerRestart {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        RestartPolicy::OnFailure { max_retries } => DockerRestart {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: max_retries.map(i64::from),
        },
    };
    // Host paths go in `Binds`, which makes a missing source directory as Compose's
    // short syntax does; the `Mounts` API would refuse it.
    let binds: Vec<String> = spec
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Bind)
        .filter_map(|m| {
            let source = m.volume.as_ref()?;
            let mode = if m.read_only { ":ro" } else { "" };
            Some(format!("{source}:{}{mode}", m.target))
        })
        .collect();
    let mounts = spec
        .mounts
        .iter()
        .filter(|m| m.kind != MountKind::Bind)
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: m.volume.clone(),
            typ: Some(match m.kind {
                MountKind::Volume => DockerMountType::VOLUME,
                MountKind::Bind => DockerMountType::BIND,
                MountKind::Tmpfs => DockerMountType::TMPFS,
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let e = &spec.engine;
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let some_map = |m: &std::collections::BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.clone().into_iter().collect::<HashMap<_, _>>())
    };
    let devices = (!e.devices.is_empty()).then(|| {
        e.devices
            .iter()
            .map(|d| {
                let mut parts = d.splitn(3, ':');
                let host = parts.next().unwrap_or_default().to_owned();
                let container = parts.next().map_or_else(|| host.clone(), str::to_owned);
                let permissions = parts.next().unwrap_or("rwm").to_owned();
                DeviceMapping {
                    path_on_host: Some(host),
                    path_in_container: Some(container),
                    cgroup_permissions: Some(permissions),
                }
            })
            .collect()
    });
    let tmpfs = (!e.tmpfs.is_empty()).then(|| {
        e.tmpfs
            .iter()
            .map(|t| match t.split_once(':') {
                Some((path, options)) => (path.to_owned(), options.to_owned()),
                None => (t.clone(), String::new()),
            })
            .collect::<HashMap<_, _>>()
    });
    let mut extra_hosts = spec.extra_hosts.clone();
    extra_hosts.extend(e.extra_hosts.iter().cloned());
    let network_mode = match e.network_mode.as_deref() {
        Some(mode) => Some(mode.to_owned()),
        None => spec.networks.first().map(|n| n.network.clone()),
    };
    let host_config = HostConfig {
        nano_cpus: spec.limits.cpu_millis.map(|m| {
            i64::try_from(m)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000)
        }),
        memory: spec
            .limits
            .memory_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        port_bindings: Some(port_bindings),
        restart_policy: Some(restart),
        mounts: Some(mounts),
        binds: (!binds.is_empty()).then_some(binds),
        network_mode,
        init: spec.init.then_some(true),
        extra_hosts: (!extra_hosts.is_empty()).then_some(extra_hosts),
        privileged: e.privileged.then_some(true),
        cap_add: some_vec(&e.cap_add),
        cap_drop: some_vec(&e.cap_drop),
        devices,
        device_cgroup_rules: some_vec(&e.device_cgroup_rules),
        pid_mode: e.pid.clone(),
        ipc_mode: e.ipc.clone(),
        uts_mode: e.uts.clone(),
        userns_mode: e.userns_mode.clone(),
        cgroupns_mode: e.cgroup.as_deref().map(|c| match c {
            "host" => HostConfigCgroupnsModeEnum::HOST,
            _ => HostConfigCgroupnsModeEnum::PRIVATE,
        }),
        cgroup_parent: e.cgroup_parent.clone(),
        sysctls: some_map(&e.sysctls),
        security_opt: some_vec(&e.security_opt),
        dns: some_vec(&e.dns),
        dns_search: some_vec(&e.dns_search),
        dns_options: some_vec(&e.dns_opt),
        readonly_rootfs: e.read_only.then_some(true),
        tmpfs,
        shm_size: e.shm_size.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        ulimits: (!e.ulimits.is_empty()).then(|| {
            e.ulimits
                .iter()
                .map(|(name, l)| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(l.soft),
                    hard: Some(l.hard),
                })
                .collect()
        }),
        pids_limit: e.pids_limit,
        cpu_shares: e.cpu_shares,
        cpu_quota: e.cpu_quota,
        cpu_period: e.cpu_period,
        cpuset_cpus: e.cpuset.clone(),
        memory_reservation: e
            .mem_reservation
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        memory_swap: e.memswap_limit,
        memory_swappiness: e.mem_swappiness,
        oom_kill_disable: e.oom_kill_disable.then_some(true),
        oom_score_adj: e.oom_score_adj,
        log_config: e.logging.as_ref().map(|l| HostConfigLogConfig {
            typ: l.driver.clone(),
            config: some_map(&l.options),
        }),
        group_add: some_vec(&e.group_add),
        annotations: some_map(&e.annotations),
        volumes_from: some_vec(&e.volumes_from),
        links: some_vec(&e.external_links),
        runtime: e.runtime.clone(),
        storage_opt: some_map(&e.storage_opt),
        ..Default::default()
    };
    // Engines before API 1.44 take one network at creation; the rest are connected
    // before the container starts.
    let networking_config = spec.networks.first().map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            n.network.clone(),
            endpoint(n, e.mac_address.as_deref()),
        )])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: Some(spec.exposed.clone()),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: ms_to_ns(h.interval_ms),
            timeout: ms_to_ns(h.timeout_ms),
            retries: h.retries.map(i64::from),
            start_period: ms_to_ns(h.start_period_ms),
            start_interval: ms_to_ns(h.start_interval_ms),
        }),
        working_dir: spec.working_dir.clone(),
        user: spec.user.clone(),
        hostname: e.hostname.clone(),
        domainname: e.domainname.clone(),
        open_stdin: e.stdin_open.then_some(true),
        tty: e.tty.then_some(true),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec
            .stop_timeout_s
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

fn endpoint(attachment: &NetworkAttachment, mac_address: Option<&str>) -> EndpointSettings {
    let v4 = attachment
        .addresses
        .iter()
        .find(|a| !a.contains(':'))
        .cloned();
    let v6 = attachment
        .addresses
        .iter()
        .find(|a| a.contains(':'))
        .cloned();
    EndpointSettings {
        aliases: Some(attachment.aliases.clone()),
        mac_address: mac_address.map(str::to_owned),
        ipam_config: (v4.is_some() || v6.is_some()).then(|| EndpointIpamConfig {
            ipv4_address: v4,
            ipv6_address: v6,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl DockerDriver {
    /// Whether an object labelled `labels` is this driver's scope's own (the engine
    /// filters by the scope's labels; the local plane also skips what node agents made).
    fn owns(&self, labels: &Option<HashMap<String, String>>) -> bool {
        self.scope
            .owns(|k| labels.as_ref().and_then(|l| l.get(k)).map(String::as_str))
    }
}

impl ContainerDriver for DockerDriver {
    fn scope(&self) -> &Scope {
        &self.scope
    }

    async fn list_containers(
        &self,
        id: &TopologyRef,
    ) -> Result<Vec<ObservedContainer>, DriverError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&topology_filter(id, &self.scope))
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine("listing containers"))?;
        Ok(list
            .into_iter()
            .filter(|c| self.owns(&c.labels))
            .filter_map(observed)
            .map(|(_, c, _, _)| c)
            .collect())
    }

    async fn list_all(&self, tenant: Option<&str>) -> Result<Vec<ContainerListing>, DriverError> {
        let mut wanted = vec![format!("{}=true", labels::MANAGED)];
        if let Some(t) = tenant {
            wanted.push(format!("{}={t}", labels::TENANT));
        }
        wanted.extend(self.scope.labels().iter().map(|(k, v)| format!("{k}={v}")));
        let filters = HashMap::from([("label".to_owned(), wanted)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine("listing containers"))?;
        let mut out: Vec<ContainerListing> = list
            .into_iter()
            .filter(|c| self.owns(&c.labels))
            .filter_map(observed)
            .map(|(topology, container, state, status)| ContainerListing {
                topology,
                container,
                state,
                status,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.topology, &a.container.service, a.container.replica).cmp(&(
                &b.topology,
                &b.container.service,
                b.container.replica,
            ))
        });
        Ok(out)
    }

    async fn list_networks(&self, id: &TopologyRef) -> Result<Vec<ObservedObject>, DriverError> {
        let options = ListNetworksOptionsBuilder::default()
            .filters(&topology_filter(id, &self.scope))
            .build();
        let list = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(engine("listing networks"))?;
        Ok(list
            .into_iter()
            .filter(|n| self.owns(&n.labels))
            .filter_map(|n| {
                Some(ObservedObject {
                    config_hash: label(&n.labels, labels::CONFIG_HASH).to_owned(),
                    name: n.name?,
                })
            })
            .collect())
    }

    async fn list_volumes(&self, id: &TopologyRef) -> Result<Vec<ObservedObject>, DriverError> {
        let options = ListVolumesOptionsBuilder::default()
            .filters(&topology_filter(id, &self.scope))
            .build();
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(engine("listing volumes"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| self.owns(&Some(v.labels.clone())))
            .map(|v| ObservedObject {
                config_hash: String::new(),
                name: v.name,
            })
            .collect())
    }

    async fn missing_images(&self, images: &[String]) -> Result<Vec<String>, DriverError> {
        let mut missing = Vec::new();
        for image in images {
            match self.docker.inspect_image(image).await {
                Ok(_) => {}
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => missing.push(image.clone()),
                Err(e) => return Err(engine(format!("inspecting image {image}"))(e)),
            }
        }
        Ok(missing)
    }

    async fn load_image(&self, archive: &std::path::Path) -> Result<(), DriverError> {
        let action = || format!("loading the image archive {}", archive.display());
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| DriverError::Engine {
                action: action(),
                message: e.to_string(),
            })?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1024 * 1024);
        let mut answers = self.docker.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            body,
            None,
        );
        while let Some(answer) = answers.next().await {
            let answer = answer.map_err(engine(action()))?;
            if let Some(error) = answer.error_detail.and_then(|d| d.message) {
                return Err(DriverError::Engine {
                    action: action(),
                    message: error,
                });
            }
        }
        Ok(())
    }

    async fn pull_image(
        &self,
        reference: &str,
        credential: Option<&RegistryCredential>,
        progress: &(dyn Fn(&str, &str, bool) + Send + Sync),
    ) -> Result<(), DriverError> {
        let action = || format!("pulling {reference}");
        let credentials = credential.map(|c| bollard::auth::DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(c.registry.clone()),
            ..Default::default()
        });
        let mut answers = self.docker.create_image(
            Some(bollard::query_parameters::CreateImageOptions {
                from_image: Some(reference.to_owned()),
                ..Default::default()
            }),
            None,
            credentials,
        );
        while let Some(answer) = answers.next().await {
            let answer = answer.map_err(engine(action()))?;
            if let Some(error) = answer.error_detail.and_then(|d| d.message) {
                return Err(DriverError::Engine {
                    action: action(),
                    message: error,
                });
            }
            let (Some(layer), Some(status)) = (answer.id, answer.status) else {
                continue;
            };
            let done = matches!(status.as_str(), "Pull complete" | "Already exists");
            let text = match answer
                .progress_detail
                .and_then(|d| Some((d.current?, d.total?)))
            {
                Some((current, total)) if total > 0 => {
                    format!(
                        "{status} {:.1}/{:.1} MB",
                        current as f64 / 1e6,
                        total as f64 / 1e6
                    )
                }
                _ => status,
            };
            progress(&layer, &text, done);
        }
        Ok(())
    }

    async fn image_ids(&self, images: &[String]) -> Result<BTreeMap<String, String>, DriverError> {
        let mut ids = BTreeMap::new();
        for image in images {
            match self.docker.inspect_image(image).await {
                Ok(inspect) => {
                    if let Some(id) = inspect.id {
                        ids.insert(image.clone(), id);
                    }
                }
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(engine(format!("inspecting image {image}"))(e)),
            }
        }
        Ok(ids)
    }

    async fn create_network(
        &self,
        id: &TopologyRef,
        name: &str,
        spec: &Network,
        config_hash: &str,
    ) -> Result<(), DriverError> {
        let docker_name = self.scope.object_name(id, name);
        let request = NetworkCreateRequest {
            name: docker_name.clone(),
            driver: Some(spec.driver.clone().unwrap_or_else(|| "bridge".into())),
            internal: Some(spec.internal),
            enable_ipv6: spec.enable_ipv6.then_some(true),
            options: (!spec.driver_opts.is_empty())
                .then(|| spec.driver_opts.clone().into_iter().collect()),
            ipam: (!spec.subnets.is_empty()).then(|| Ipam {
                config: Some(
                    spec.subnets
                        .iter()
                        .map(|s| IpamConfig {
                            subnet: Some(s.subnet.clone()),
                            gateway: s.gateway.clone(),
                            ip_range: s.ip_range.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            labels: Some(object_labels(
                &self.scope,
                id,
                name,
                config_hash,
                &spec.labels,
            )),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(engine(format!("creating network {docker_name}")))?;
        Ok(())
    }

    async fn remove_network(&self, docker_name: &str) -> Result<(), DriverError> {
        match self.docker.remove_network(docker_name).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(engine(format!("removing network {docker_name}"))(e)),
        }
    }

    async fn create_volume(
        &self,
        id: &TopologyRef,
        name: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<(), DriverError> {
        let docker_name = self.scope.object_name(id, name);
        let request = VolumeCreateRequest {
            name: Some(docker_name.clone()),
            driver: Some("local".into()),
            labels: Some(object_labels(&self.scope, id, name, "", extra)),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(engine(format!("creating volume {docker_name}")))?;
        Ok(())
    }

    async fn remove_volume(&self, docker_name: &str) -> Result<(), DriverError> {
        let options = RemoveVolumeOptionsBuilder::default().force(false).build();
        match self.docker.remove_volume(docker_name, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(engine(format!("removing volume {docker_name}"))(e)),
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DriverError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let mut body = container_body(spec);
        // Names of services on other nodes resolve to the host's address on this
        // container's own network, where the node listens for this topology's links.
        if let (Some(hosts), Some(first)) = (
            body.host_config
                .as_mut()
                .and_then(|h| h.extra_hosts.as_mut()),
            spec.networks.first(),
        ) && let Some(gateway) = self.network_gateway(&first.network).await?
        {
            for host in hosts.iter_mut() {
                if let Some(name) = host.strip_suffix(":host-gateway") {
                    *host = format!("{name}:{gateway}");
                }
            }
        }
        let created = match self.docker.create_container(Some(options), body).await {
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.contains("image") => {
                return Err(DriverError::ImageMissing {
                    image: spec.image.clone(),
                });
            }
            other => other.map_err(engine(format!("creating container {}", spec.name)))?,
        };
        for attachment in spec.networks.iter().skip(1) {
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint(attachment, None)),
            };
            self.docker
                .connect_network(&attachment.network, request)
                .await
                .map_err(engine(format!(
                    "connecting {} to network {}",
                    spec.name, attachment.network
                )))?;
        }
        Ok(created.id)
    }

    async fn start_container(&self, id: &str) -> Result<(), DriverError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(engine("starting container"))
    }

    async fn remove_container(&self, id: &str) -> Result<(), DriverError> {
        // Stop first, so the process gets its stop signal and grace period (the
        // container's own, set from `stop_signal` and `stop_grace_period`, else SIGTERM
        // and 10 s), as with Compose; a forced remove alone would SIGKILL it.
        match self.docker.stop_container(id, None).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => return Err(engine("stopping container")(e)),
        }
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Already being removed by an earlier call: it is going away either way.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(engine("removing container")(e)),
        }
    }

    async fn kill_container(&self, id: &str) -> Result<(), DriverError> {
        match self.docker.kill_container(id, None).await {
            // Gone, or not running (409): stopped either way.
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(engine("killing container")(e)),
        }
    }

    async fn cpu_time(&self, id: &str) -> Result<Option<u64>, DriverError> {
        use futures_util::StreamExt;
        // One sample, at once (not the two a second apart that `stream: false` alone
        // waits for): the agent keeps the previous one itself.
        let options = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        match self.docker.stats(id, Some(options)).next().await {
            Some(Ok(stats)) => Ok(stats
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)),
            Some(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }))
            | None => Ok(None),
            Some(Err(e)) => Err(engine("reading container stats")(e)),
        }
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, DriverError> {
        let inspect = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(engine("inspecting container"))?;
        let state = inspect.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        Ok(ContainerStatus {
            running,
            exit_code: if running { None } else { state.exit_code },
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
        })
    }

    async fn network_gateway(
        &self,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, DriverError> {
        let inspected = match self.docker.inspect_network(network, None).await {
            Ok(n) => n,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(engine(format!("inspecting network {network}"))(e)),
        };
        let configs: Vec<_> = inspected
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .collect();
        let gateway = configs
            .iter()
            .filter_map(|c| c.gateway.as_deref())
            .find_map(|g| g.parse().ok());
        // Engines that leave the gateway out give the bridge the subnet's first address.
        let first_of_subnet = || {
            configs
                .iter()
                .filter_map(|c| c.subnet.as_deref())
                .find_map(|subnet| {
                    let (network, _) = subnet.split_once('/')?;
                    let network: std::net::Ipv4Addr = network.parse().ok()?;
                    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                        u32::from(network).wrapping_add(1),
                    )))
                })
        };
        Ok(gateway.or_else(first_of_subnet))
    }

    async fn container_address(
        &self,
        container: &str,
    ) -> Result<Option<std::net::IpAddr>, DriverError> {
        let inspect = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(engine("inspecting container"))?;
        let address = inspect
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(|networks| networks.into_values())
            .filter_map(|endpoint| endpoint.ip_address)
            .find_map(|ip| ip.parse().ok());
        Ok(address)
    }

    fn logs(
        &self,
        container: &str,
        follow: bool,
        tail: Option<u64>,
        since_ns: Option<i64>,
    ) -> LogStream {
        // The engine takes `since` in whole seconds; lines of that second written
        // before `since_ns` are dropped below by their stamps.
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(
                since_ns
                    .map_or(0, |ns| ns.div_euclid(1_000_000_000))
                    .try_into()
                    .unwrap_or(0),
            )
            .tail(&tail.map_or_else(|| "all".to_owned(), |t| t.to_string()))
            .build();
        let name = container.to_owned();
        let stream = self
            .docker
            .logs(container, Some(options))
            .map(move |item| {
                let output = item.map_err(engine(format!("reading the logs of {name}")))?;
                let stderr = matches!(output, bollard::container::LogOutput::StdErr { .. });
                let stamped = String::from_utf8_lossy(&output.into_bytes()).into_owned();
                let (at_ns, text) = split_stamp(stamped.trim_end_matches(['\n', '\r']));
                Ok(LogLine {
                    container: name.clone(),
                    text: text.to_owned(),
                    stderr,
                    at_ns,
                })
            })
            .filter(move |line| {
                let keep = match (line, since_ns) {
                    (
                        Ok(LogLine {
                            at_ns: Some(at), ..
                        }),
                        Some(since),
                    ) => *at > since,
                    _ => true,
                };
                std::future::ready(keep)
            });
        Box::pin(stream)
    }
}

/// A line the engine stamped (`2024-05-01T10:00:00.123456789Z text`): when, in Unix
/// nanoseconds, and the text; a line without a stamp is all text.
fn split_stamp(line: &str) -> (Option<i64>, &str) {
    let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
    match time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339) {
        Ok(at) => (i64::try_from(at.unix_timestamp_nanos()).ok(), text),
        Err(_) => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_lines_are_split_into_when_and_what() {
        assert_eq!(
            split_stamp("2024-05-01T10:00:00.000000001Z hello world"),
            (Some(1_714_557_600_000_000_001), "hello world")
        );
        assert_eq!(
            split_stamp("2024-05-01T10:00:00Z"),
            (Some(1_714_557_600_000_000_000), "")
        );
        assert_eq!(split_stamp("no stamp here"), (None, "no stamp here"));
        assert_eq!(split_stamp(""), (None, ""));
    }

    #[test]
    fn port_messages_are_recognised() {
        let e = port_in_use(
            "driver failed programming external connectivity on endpoint x: Bind for 0.0.0.0:8080 failed: port is already allocated",
        );
        assert!(
            matches!(e, Some(DriverError::PortInUse { port: 8080, .. })),
            "{e:?}"
        );
        let e = port_in_use(
            "Error starting userland proxy: listen tcp4 0.0.0.0:9000: bind: address already in use",
        );
        assert!(
            matches!(e, Some(DriverError::PortInUse { port: 9000, .. })),
            "{e:?}"
        );
        assert!(port_in_use("no such image").is_none());
    }
}
