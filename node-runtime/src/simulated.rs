//! A container engine in memory, for hollow nodes: the node runtime reconciles against
//! it exactly as against Docker, and containers "run" the moment they start. Every
//! running container answers at one address (by default loopback), so a node's
//! tunnels can reach a real server standing in for a service.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use berth_protocol::assignment::{Scope, TopologyRef, labels};
use berth_protocol::topology::Network;

use crate::driver::{
    ContainerDriver, ContainerListing, ContainerStatus, DriverError, LogLine, LogStream,
};
use crate::plan::{ObservedContainer, ObservedObject};
use crate::spec::ContainerSpec;

#[derive(Debug)]
struct Container {
    topology: TopologyRef,
    observed: ObservedContainer,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    containers: BTreeMap<String, Container>,
    networks: BTreeMap<String, (TopologyRef, String)>,
    volumes: BTreeMap<String, TopologyRef>,
}

/// The simulated engine of one node.
#[derive(Debug)]
pub struct SimulatedDriver {
    scope: Scope,
    address: IpAddr,
    state: Mutex<State>,
}

impl SimulatedDriver {
    /// An empty engine for `scope`, its containers answering on loopback.
    pub fn new(scope: Scope) -> Self {
        Self::answering_at(scope, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// An empty engine for `scope`, its containers answering at `address`.
    pub fn answering_at(scope: Scope, address: IpAddr) -> Self {
        Self {
            scope,
            address,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many containers run now.
    pub fn running(&self) -> usize {
        self.state()
            .containers
            .values()
            .filter(|c| c.observed.running)
            .count()
    }

    /// A running container of `service` in topology `id`, as if placed and started
    /// (benchmarks and tests that need a service to answer at the engine's address).
    pub fn add_running(&self, id: &TopologyRef, service: &str, replica: u32) -> String {
        let mut state = self.state();
        state.next_id += 1;
        let container_id = format!("sim{:012}", state.next_id);
        let name = self.scope.container_name(id, service, replica);
        state.containers.insert(
            container_id.clone(),
            Container {
                topology: id.clone(),
                observed: ObservedContainer {
                    id: container_id.clone(),
                    name,
                    service: service.to_owned(),
                    replica,
                    generation: 1,
                    config_hash: String::new(),
                    running: true,
                    image_id: String::new(),
                    host_ports: Vec::new(),
                },
            },
        );
        container_id
    }

    /// Stops a container as if its process had exited.
    pub fn exit(&self, name: &str) {
        for c in self.state().containers.values_mut() {
            if c.observed.name == name {
                c.observed.running = false;
            }
        }
    }

    fn find<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Container, DriverError> {
        state
            .containers
            .get_mut(id)
            .ok_or_else(|| DriverError::Engine {
                action: format!("container {id}"),
                message: "no such container".to_owned(),
            })
    }
}

fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    labels.get(key).map_or("", String::as_str)
}

impl ContainerDriver for SimulatedDriver {
    fn scope(&self) -> &Scope {
        &self.scope
    }

    async fn list_containers(
        &self,
        id: &TopologyRef,
    ) -> Result<Vec<ObservedContainer>, DriverError> {
        Ok(self
            .state()
            .containers
            .values()
            .filter(|c| &c.topology == id)
            .map(|c| c.observed.clone())
            .collect())
    }

    async fn list_all(&self, tenant: Option<&str>) -> Result<Vec<ContainerListing>, DriverError> {
        Ok(self
            .state()
            .containers
            .values()
            .filter(|c| tenant.is_none_or(|t| t == c.topology.tenant))
            .map(|c| ContainerListing {
                topology: c.topology.clone(),
                container: c.observed.clone(),
                state: if c.observed.running {
                    "running"
                } else {
                    "exited"
                }
                .to_owned(),
                status: String::new(),
            })
            .collect())
    }

    async fn list_networks(&self, id: &TopologyRef) -> Result<Vec<ObservedObject>, DriverError> {
        Ok(self
            .state()
            .networks
            .iter()
            .filter(|(_, (t, _))| t == id)
            .map(|(name, (_, hash))| ObservedObject {
                name: name.clone(),
                config_hash: hash.clone(),
            })
            .collect())
    }

    async fn list_volumes(&self, id: &TopologyRef) -> Result<Vec<ObservedObject>, DriverError> {
        Ok(self
            .state()
            .volumes
            .iter()
            .filter(|(_, t)| *t == id)
            .map(|(name, _)| ObservedObject {
                name: name.clone(),
                config_hash: String::new(),
            })
            .collect())
    }

    async fn missing_images(&self, _images: &[String]) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new()) // every image is "present": nothing is pulled or run
    }

    async fn create_network(
        &self,
        id: &TopologyRef,
        name: &str,
        _spec: &Network,
        config_hash: &str,
    ) -> Result<(), DriverError> {
        let docker_name = self.scope.object_name(id, name);
        self.state()
            .networks
            .insert(docker_name, (id.clone(), config_hash.to_owned()));
        Ok(())
    }

    async fn remove_network(&self, docker_name: &str) -> Result<(), DriverError> {
        self.state().networks.remove(docker_name);
        Ok(())
    }

    async fn create_volume(
        &self,
        id: &TopologyRef,
        name: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<(), DriverError> {
        let docker_name = self.scope.object_name(id, name);
        self.state().volumes.insert(docker_name, id.clone());
        Ok(())
    }

    async fn remove_volume(&self, docker_name: &str) -> Result<(), DriverError> {
        self.state().volumes.remove(docker_name);
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DriverError> {
        let mut state = self.state();
        if state
            .containers
            .values()
            .any(|c| c.observed.name == spec.name)
        {
            return Err(DriverError::Engine {
                action: format!("create container {}", spec.name),
                message: "the name is in use".to_owned(),
            });
        }
        state.next_id += 1;
        let id = format!("sim{:012}", state.next_id);
        let l = &spec.labels;
        let container = Container {
            topology: TopologyRef {
                tenant: label(l, labels::TENANT).to_owned(),
                topology: label(l, labels::TOPOLOGY).to_owned(),
            },
            observed: ObservedContainer {
                id: id.clone(),
                name: spec.name.clone(),
                service: label(l, labels::SERVICE).to_owned(),
                replica: label(l, labels::REPLICA).parse().unwrap_or(spec.replica),
                generation: label(l, labels::GENERATION).parse().unwrap_or(0),
                config_hash: label(l, labels::CONFIG_HASH).to_owned(),
                running: false,
                image_id: String::new(),
                host_ports: Vec::new(),
            },
        };
        state.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), DriverError> {
        Self::find(&mut self.state(), id)?.observed.running = true;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), DriverError> {
        self.state().containers.remove(id);
        Ok(())
    }

    async fn cpu_time(&self, _id: &str) -> Result<Option<u64>, DriverError> {
        // Simulated containers run nothing, so there is no CPU to measure.
        Ok(None)
    }

    async fn kill_container(&self, id: &str) -> Result<(), DriverError> {
        if let Some(c) = self.state().containers.get_mut(id) {
            c.observed.running = false;
        }
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, DriverError> {
        let mut state = self.state();
        let running = Self::find(&mut state, id)?.observed.running;
        Ok(ContainerStatus {
            running,
            exit_code: (!running).then_some(0),
            health: None,
        })
    }

    fn logs(
        &self,
        container: &str,
        _follow: bool,
        _tail: Option<u64>,
        _since_ns: Option<i64>,
    ) -> LogStream {
        let line = LogLine {
            container: container.to_owned(),
            text: "simulated container: no output".to_owned(),
            stderr: false,
            at_ns: None,
        };
        Box::pin(futures_util::stream::iter([Ok(line)]))
    }

    async fn container_address(&self, container: &str) -> Result<Option<IpAddr>, DriverError> {
        let state = self.state();
        Ok(state
            .containers
            .values()
            .find(|c| c.observed.name == container || c.observed.id == container)
            .filter(|c| c.observed.running)
            .map(|_| self.address))
    }

    async fn network_gateway(&self, _network: &str) -> Result<Option<IpAddr>, DriverError> {
        Ok(Some(self.address))
    }
}
