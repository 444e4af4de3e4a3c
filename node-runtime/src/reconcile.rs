//! The reconcile executor: makes the engine match one topology's assignment on this
//! node, and takes topologies away.
//!
//! Reconcile is idempotent: a second run with the same assignment changes nothing. It
//! checks what can be checked before touching anything (images present, host ports
//! free), then brings services up in dependency order, in parallel where the graph
//! allows, with a bounded number of engine operations at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_protocol::assignment::{TopologyAssignment, TopologyRef};
use berth_protocol::image::registry_of;
use berth_protocol::topology::Condition;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::driver::{ContainerDriver, DriverError};
use crate::plan::{ObservedContainer, Plan, SlotAction, plan_containers, plan_objects};
use crate::spec::{ContainerSpec, hash_of};

/// What happens to one replica, or to a network or volume, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A replica's step.
    Replica {
        /// The service.
        service: String,
        /// The replica number.
        replica: u32,
        /// What it is doing.
        step: Step,
    },
    /// A service waits for a dependency.
    Waiting {
        /// The waiting service.
        service: String,
        /// What it waits for.
        dependency: String,
        /// The condition it waits for.
        condition: Condition,
    },
    /// A layer of an image being pulled moved.
    Pull {
        /// The image.
        image: String,
        /// The layer (its short id, as the engine names it).
        layer: String,
        /// What it is doing (`Downloading 1.2/5.0 MB`).
        text: String,
        /// Whether it is done.
        done: bool,
    },
    /// A network or volume was created or removed.
    Object {
        /// `network` or `volume`.
        kind: &'static str,
        /// Its Docker name.
        name: String,
        /// What happened.
        step: Step,
    },
}

/// One step of a replica's (or object's) life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Already as wanted.
    Unchanged,
    /// Being created.
    Creating,
    /// Being replaced, its spec having changed.
    Recreating,
    /// Being started.
    Starting,
    /// Started.
    Running,
    /// Its healthcheck passes.
    Healthy,
    /// It ran to completion successfully.
    Completed,
    /// Being removed.
    Removing,
    /// Removed.
    Removed,
    /// Failed, and why.
    Failed(String),
    /// Placed on a node of a pool, which has not reported it yet.
    Placed {
        /// The node.
        node: String,
    },
    /// Reported by its node in a state that is none of the above (`paused`, ...).
    Reported(String),
}

/// When a service's image is pulled (Compose's `pull_policy`; `build` counts as
/// `missing` here, the build having happened before, where there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PullPolicy {
    Never,
    Missing,
    Always,
}

impl PullPolicy {
    fn of(service: &berth_protocol::topology::Service) -> Self {
        if service.digest.is_some() {
            // A pushed image comes from the pool, never from a registry.
            return Self::Never;
        }
        match service.engine.pull_policy.as_deref() {
            Some("never") => Self::Never,
            Some("always") => Self::Always,
            _ => Self::Missing,
        }
    }
}

/// Why a reconcile did not converge.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Checked before any change: some images are absent and their pull policy is
    /// `never`.
    #[error("{} not on this machine and pull_policy is never: {}; build or load {} first (for the examples: `infra/build-images.sh`). Nothing was changed.",
        if images.len() == 1 { "an image is" } else { "images are" },
        images.join(", "),
        if images.len() == 1 { "it" } else { "them" })]
    MissingImages {
        /// The absent images.
        images: Vec<String>,
    },
    /// An image could not be pulled.
    #[error("image {image} could not be pulled: {reason}. {hint}Nothing was changed.")]
    Pull {
        /// The image.
        image: String,
        /// What the engine said.
        reason: String,
        /// With which credentials, or the lack of them.
        hint: String,
    },
    /// Checked before any change: host ports are taken by something else.
    #[error("host port{} {} already in use on this machine: stop what uses {} or publish other ports. Nothing was changed.",
        if ports.len() == 1 { "" } else { "s" },
        ports.iter().map(|(s, p)| format!("{p} (service {s})")).collect::<Vec<_>>().join(", "),
        if ports.len() == 1 { "it" } else { "them" })]
    PortsInUse {
        /// (service, port) pairs.
        ports: Vec<(String, u16)>,
    },
    /// Checked before any change: the node's policy forbids settings of the assignment.
    #[error("this node's policy refuses {}: {}. Nothing was changed.",
        if refusals.len() == 1 { "a setting" } else { "settings" },
        refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused {
        /// Each refused setting, with the policy that refuses it.
        refusals: Vec<berth_protocol::topology::Refusal>,
    },
    /// Checked before any change: secrets or configs given as content, which the node
    /// cannot place in a container yet.
    #[error("{} from an environment variable or `content` cannot be placed in a container yet: {}; give {} a `file`. Nothing was changed.",
        if names.len() == 1 { "a secret or config" } else { "secrets or configs" },
        names.join(", "),
        if names.len() == 1 { "it" } else { "them" })]
    ContentFiles {
        /// `service: name` for each.
        names: Vec<String>,
    },
    /// The engine failed before any change was made.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Some services failed; the others are up. The topology is partly applied.
    #[error("{} of {} service{} failed; the others are running, so the topology is partly applied. Fix the cause and run `up` again, or `down` to remove it:\n{}",
        failed.len(), total, if *total == 1 { "" } else { "s" },
        failed.iter().map(|(s, why)| format!("  {s}: {why}")).collect::<Vec<_>>().join("\n"))]
    Partial {
        /// (service, reason) for each failed service.
        failed: Vec<(String, String)>,
        /// How many services the assignment has.
        total: usize,
    },
}

/// Tunables of the executor.
#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    /// How many engine operations of each kind (creates and removals; starts) run at
    /// once.
    pub concurrency: usize,
    /// How long a dependency may take to become healthy or complete.
    pub readiness_timeout: Duration,
    /// How often readiness is polled.
    pub poll_interval: Duration,
    /// Whether to check host ports by binding them first (only when the engine runs on
    /// this machine).
    pub check_host_ports: bool,
    /// What this node lets a container do: checked before any container is created,
    /// whatever the assignment asks. A pool node's default refuses what reaches the host.
    pub policy: berth_protocol::topology::Policy,
    /// Where secrets and configs given by content (`environment:`, `content:`) are
    /// written for their containers to mount, readable by this host's owner alone.
    /// `None` refuses them: a pool node does not yet keep secrets encrypted at rest.
    pub files_dir: Option<std::path::PathBuf>,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            readiness_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(200),
            check_host_ports: true,
            policy: berth_protocol::topology::Policy::default(),
            files_dir: None,
        }
    }
}

/// What a reconcile did, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Containers created (new or replacing).
    pub created: usize,
    /// Containers left as they were.
    pub unchanged: usize,
    /// Containers removed.
    pub removed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Readiness {
    Pending,
    Started,
    Healthy,
    Completed,
    Failed(String),
}

/// Drives one node's engine towards its assignments.
#[derive(Debug)]
pub struct Reconciler<D> {
    driver: Arc<D>,
    options: ReconcileOptions,
}

/// Where a reconcile tells of its progress.
pub type Events = mpsc::UnboundedSender<Progress>;

impl<D: ContainerDriver> Reconciler<D> {
    /// A reconciler over `driver`.
    pub fn new(driver: Arc<D>, options: ReconcileOptions) -> Self {
        Self { driver, options }
    }

    /// The driver underneath.
    pub fn driver(&self) -> &Arc<D> {
        &self.driver
    }

    /// Makes the engine match `assignment`. Progress goes to `events` as it happens.
    pub async fn apply(
        &self,
        assignment: &TopologyAssignment,
        events: Events,
    ) -> Result<Outcome, ReconcileError> {
        self.permitted(assignment)?;
        let id = &assignment.id;
        let scope = self.driver.scope();
        let mut desired = self.desired(assignment, true)?;
        // A container made from an older image under the same reference is replaced.
        let mut images: Vec<String> = desired.iter().map(|s| s.image.clone()).collect();
        images.sort();
        images.dedup();
        let ids = self.driver.image_ids(&images).await?;
        for spec in &mut desired {
            spec.image_id = ids.get(&spec.image).cloned();
        }
        let observed = self.driver.list_containers(id).await?;
        let plan = plan_containers(desired, observed.clone());
        self.check(&plan, &observed, assignment, Some(&events))
            .await?;

        let mut outcome = Outcome::default();
        // Containers nobody wants any more go first, freeing their ports and names.
        outcome.removed += self.remove_all(&plan.remove, &events).await?;

        // Networks and volumes.
        let network_hashes: BTreeMap<String, String> = assignment
            .networks
            .iter()
            // An external network is the engine's: used by name, never made or removed.
            .filter(|(_, spec)| spec.external.is_none())
            .map(|(n, spec)| (scope.object_name(id, n), hash_of(spec)))
            .collect();
        let networks = plan_objects(&network_hashes, &self.driver.list_networks(id).await?);
        if !networks.recreate.is_empty() {
            // A changed network takes its containers with it; they are replaced below
            // since their config hash covers the network's spec.
            let on_changed: Vec<ObservedContainer> = plan
                .slots
                .iter()
                .filter(|(spec, action)| {
                    matches!(action, SlotAction::Replace { .. })
                        && spec
                            .networks
                            .iter()
                            .any(|n| networks.recreate.contains(&n.network))
                })
                .filter_map(|(spec, _)| observed.iter().find(|o| o.name == spec.name).cloned())
                .collect();
            self.remove_all(&on_changed, &events).await?;
        }
        for name in networks.recreate.iter() {
            self.driver.remove_network(name).await?;
        }
        for name in networks.create.iter().chain(&networks.recreate) {
            let (short, spec) = assignment
                .networks
                .iter()
                .find(|(n, _)| &scope.object_name(id, n) == name)
                .ok_or_else(|| DriverError::Engine {
                    action: "planning networks".into(),
                    message: format!("no spec for {name}"),
                })?;
            self.driver
                .create_network(id, short, spec, &network_hashes[name])
                .await?;
            let _ = events.send(Progress::Object {
                kind: "network",
                name: name.clone(),
                step: Step::Creating,
            });
        }
        let volume_names: BTreeMap<String, String> = assignment
            .volumes
            .iter()
            .filter(|(_, spec)| spec.external.is_none())
            .map(|(v, _)| (scope.object_name(id, v), String::new()))
            .collect();
        let volumes = plan_objects(&volume_names, &self.driver.list_volumes(id).await?);
        for name in &volumes.create {
            let (short, spec) = assignment
                .volumes
                .iter()
                .find(|(v, _)| &scope.object_name(id, v) == name)
                .ok_or_else(|| DriverError::Engine {
                    action: "planning volumes".into(),
                    message: format!("no spec for {name}"),
                })?;
            self.driver.create_volume(id, short, &spec.labels).await?;
            let _ = events.send(Progress::Object {
                kind: "volume",
                name: name.clone(),
                step: Step::Creating,
            });
        }

        let (created, unchanged) = self.bring_up(assignment, plan, &events).await?;
        outcome.created += created;
        outcome.unchanged += unchanged;

        // Networks the topology no longer declares, now that no container uses them.
        for name in &networks.remove {
            self.driver.remove_network(name).await?;
            let _ = events.send(Progress::Object {
                kind: "network",
                name: name.clone(),
                step: Step::Removed,
            });
        }
        Ok(outcome)
    }

    /// Removes every container and network of a topology, and its volumes if asked.
    pub async fn remove(
        &self,
        id: &TopologyRef,
        remove_volumes: bool,
        events: Events,
    ) -> Result<Outcome, ReconcileError> {
        let containers = self.driver.list_containers(id).await?;
        let removed = self.remove_all(&containers, &events).await?;
        for network in self.driver.list_networks(id).await? {
            self.driver.remove_network(&network.name).await?;
            let _ = events.send(Progress::Object {
                kind: "network",
                name: network.name,
                step: Step::Removed,
            });
        }
        if remove_volumes {
            for volume in self.driver.list_volumes(id).await? {
                self.driver.remove_volume(&volume.name).await?;
                let _ = events.send(Progress::Object {
                    kind: "volume",
                    name: volume.name,
                    step: Step::Removed,
                });
            }
        }
        // The files written for its containers go with them.
        if let Some(dir) = &self.options.files_dir {
            let written = dir.join(&id.tenant).join(&id.topology);
            match std::fs::remove_dir_all(&written) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DriverError::Engine {
                        action: "removing the topology's written files".into(),
                        message: format!("{}: {e}", written.display()),
                    }
                    .into());
                }
            }
        }
        Ok(Outcome {
            removed,
            ..Outcome::default()
        })
    }

    /// Checks, without changing any container, that `assignment` could be applied:
    /// every image it needs is present (with `pull`, pulled as the pull policies say,
    /// each layer told to `pull`; without, pullable counts as present) and every host
    /// port a new container will publish is free.
    pub async fn preflight(
        &self,
        assignment: &TopologyAssignment,
        pull: Option<&Events>,
    ) -> Result<(), ReconcileError> {
        self.permitted(assignment)?;
        let desired = self.desired(assignment, false)?;
        let observed = self.driver.list_containers(&assignment.id).await?;
        let plan = plan_containers(desired, observed.clone());
        self.check(&plan, &observed, assignment, pull).await
    }

    /// The node's own policy over every service the assignment runs here, decided
    /// before anything changes, whatever the allocator sent.
    fn permitted(&self, assignment: &TopologyAssignment) -> Result<(), ReconcileError> {
        let policy = self
            .options
            .policy
            .granting(&assignment.id.tenant, &assignment.allow);
        let refusals: Vec<_> = assignment
            .services
            .iter()
            .flat_map(|(name, service)| policy.service_refusals(name, service))
            .collect();
        if !refusals.is_empty() {
            return Err(ReconcileError::Refused { refusals });
        }
        let names: Vec<String> = assignment
            .services
            .iter()
            .flat_map(|(name, service)| {
                service
                    .files
                    .iter()
                    .filter(|f| {
                        matches!(f.source, berth_protocol::topology::FileSource::Content(_))
                    })
                    .map(move |f| format!("{name}: {}", f.name))
            })
            .collect();
        if !names.is_empty() && self.options.files_dir.is_none() {
            return Err(ReconcileError::ContentFiles { names });
        }
        Ok(())
    }

    /// The desired containers of `assignment`, with the files given by content written
    /// under [`ReconcileOptions::files_dir`] (when `write`) and mounted.
    fn desired(
        &self,
        assignment: &TopologyAssignment,
        write: bool,
    ) -> Result<Vec<ContainerSpec>, ReconcileError> {
        let mut written: BTreeMap<&str, Vec<(String, String, String)>> = BTreeMap::new();
        if let Some(dir) = &self.options.files_dir {
            let id = &assignment.id;
            for (name, service) in &assignment.services {
                for file in &service.files {
                    let berth_protocol::topology::FileSource::Content(text) = &file.source else {
                        continue;
                    };
                    let kind = match file.kind {
                        berth_protocol::topology::FileKind::Secret => "secrets",
                        berth_protocol::topology::FileKind::Config => "configs",
                    };
                    let path = dir
                        .join(&id.tenant)
                        .join(&id.topology)
                        .join(name)
                        .join(kind)
                        .join(&file.name);
                    if write {
                        write_private(&path, text.as_bytes()).map_err(|e| DriverError::Engine {
                            action: format!("writing {kind} {} of {name}", file.name),
                            message: format!("{}: {e}", path.display()),
                        })?;
                    }
                    written.entry(name).or_default().push((
                        path.display().to_string(),
                        file.target.clone(),
                        crate::spec::hash_of(text),
                    ));
                }
            }
        }
        Ok(assignment
            .slots
            .iter()
            .filter_map(|slot| ContainerSpec::for_slot(assignment, slot, self.driver.scope()))
            .map(|spec| {
                let files = written
                    .get(spec.service.as_str())
                    .map_or(&[][..], Vec::as_slice);
                spec.with_written_files(files)
            })
            .collect())
    }

    /// The checks of [`Self::preflight`] on a computed plan. Ports held by this
    /// topology's own containers, which the plan replaces or removes, count as free.
    /// With `events` (an apply, not a preflight), the images the pull policies say to
    /// pull are pulled, telling `events` of each layer.
    async fn check(
        &self,
        plan: &Plan,
        observed: &[ObservedContainer],
        assignment: &TopologyAssignment,
        events: Option<&Events>,
    ) -> Result<(), ReconcileError> {
        // Each image a container is made from, with the pull policy of its services
        // (`always` wins over `missing`, `missing` over `never`).
        let mut images: BTreeMap<String, PullPolicy> = BTreeMap::new();
        for (spec, _) in plan
            .slots
            .iter()
            .filter(|(_, a)| !matches!(a, SlotAction::Keep { .. }))
        {
            let policy = assignment
                .services
                .get(&spec.service)
                .map_or(PullPolicy::Missing, PullPolicy::of);
            let entry = images.entry(spec.image.clone()).or_insert(policy);
            *entry = (*entry).max(policy);
        }
        let mut missing = self
            .driver
            .missing_images(&images.keys().cloned().collect::<Vec<_>>())
            .await?;
        for (image, policy) in &images {
            let absent = missing.contains(image);
            let pull = match policy {
                PullPolicy::Never => false,
                PullPolicy::Missing => absent,
                PullPolicy::Always => true,
            };
            if !pull {
                continue;
            }
            // A preflight only asks whether the images can be had; the apply pulls.
            let Some(events) = events else {
                missing.retain(|m| m != image);
                continue;
            };
            let credential = registry_of(image).and_then(|registry| {
                assignment
                    .registry_credentials
                    .iter()
                    .find(|c| c.registry == registry)
            });
            let shown = image.clone();
            let tell = |layer: &str, text: &str, done: bool| {
                let _ = events.send(Progress::Pull {
                    image: shown.clone(),
                    layer: layer.to_owned(),
                    text: text.to_owned(),
                    done,
                });
            };
            self.driver
                .pull_image(image, credential, &tell)
                .await
                .map_err(|e| ReconcileError::Pull {
                    image: image.clone(),
                    reason: e.to_string(),
                    hint: match (registry_of(image), credential) {
                        (Some(registry), Some(_)) => {
                            format!("The login for {registry} was used; check it and the image's name. ")
                        }
                        (Some(registry), None) => {
                            format!("No login for {registry} was given (`berth registry login {registry}`, or `docker login` locally). ")
                        }
                        (None, _) => "Build or load it first (for the examples: `infra/build-images.sh`), or set pull_policy. ".to_owned(),
                    },
                })?;
            missing.retain(|m| m != image);
        }
        if !missing.is_empty() {
            return Err(ReconcileError::MissingImages { images: missing });
        }
        if !self.options.check_host_ports {
            return Ok(());
        }
        let ours: BTreeSet<u16> = observed
            .iter()
            .flat_map(|o| o.host_ports.iter().map(|(_, p)| *p))
            .collect();
        let mut taken = Vec::new();
        for (spec, action) in &plan.slots {
            if matches!(action, SlotAction::Keep { .. }) {
                continue;
            }
            for port in spec
                .ports
                .iter()
                .filter(|p| p.protocol == berth_protocol::topology::Protocol::Tcp)
            {
                let Some(published) = port.published else {
                    continue;
                };
                if ours.contains(&published) {
                    continue;
                }
                let ip = port.host_ip.clone().unwrap_or_else(|| "0.0.0.0".to_owned());
                if std::net::TcpListener::bind((ip.as_str(), published)).is_err() {
                    taken.push((spec.service.clone(), published));
                }
            }
        }
        if taken.is_empty() {
            Ok(())
        } else {
            Err(ReconcileError::PortsInUse { ports: taken })
        }
    }

    async fn remove_all(
        &self,
        containers: &[ObservedContainer],
        events: &Events,
    ) -> Result<usize, ReconcileError> {
        let semaphore = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for container in containers.iter().cloned() {
            let driver = Arc::clone(&self.driver);
            let events = events.clone();
            let semaphore = Arc::clone(&semaphore);
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let _ = events.send(Progress::Replica {
                    service: container.service.clone(),
                    replica: container.replica,
                    step: Step::Removing,
                });
                driver.remove_container(&container.id).await?;
                let _ = events.send(Progress::Replica {
                    service: container.service,
                    replica: container.replica,
                    step: Step::Removed,
                });
                Ok::<(), DriverError>(())
            });
        }
        let mut removed = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => removed += 1,
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => {
                    return Err(DriverError::Engine {
                        action: "removing containers".into(),
                        message: e.to_string(),
                    }
                    .into());
                }
            }
        }
        Ok(removed)
    }

    /// Starts every service once its dependencies are ready, all services at once as
    /// far as the graph and the semaphore allow.
    async fn bring_up(
        &self,
        assignment: &TopologyAssignment,
        plan: Plan,
        events: &Events,
    ) -> Result<(usize, usize), ReconcileError> {
        let mut per_service: BTreeMap<String, Vec<(ContainerSpec, SlotAction)>> = BTreeMap::new();
        for (spec, action) in plan.slots {
            per_service
                .entry(spec.service.clone())
                .or_default()
                .push((spec, action));
        }
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        for name in assignment.services.keys() {
            let (tx, rx) = watch::channel(Readiness::Pending);
            senders.insert(name.clone(), tx);
            receivers.insert(name.clone(), rx);
        }
        // Creates and starts each have their own permits: a service whose dependencies
        // are up starts at once rather than behind every other service's create.
        let semaphore = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let starting = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for (name, service) in &assignment.services {
            let slots = per_service.remove(name).unwrap_or_default();
            // Dependencies placed on other nodes are not waited for here.
            let deps: Vec<(String, Condition, watch::Receiver<Readiness>)> = service
                .depends_on
                .iter()
                .filter_map(|(dep, d)| {
                    receivers
                        .get(dep)
                        .map(|rx| (dep.clone(), d.condition, rx.clone()))
                })
                .collect();
            let wants_health = assignment.services.values().any(|s| {
                s.depends_on
                    .get(name)
                    .is_some_and(|d| d.condition == Condition::ServiceHealthy)
            });
            let wants_completion = assignment.services.values().any(|s| {
                s.depends_on
                    .get(name)
                    .is_some_and(|d| d.condition == Condition::ServiceCompletedSuccessfully)
            });
            let Some(tx) = senders.remove(name) else {
                continue;
            };
            let job = ServiceJob {
                name: name.clone(),
                slots,
                deps,
                wants_health,
                wants_completion,
                driver: Arc::clone(&self.driver),
                semaphore: Arc::clone(&semaphore),
                starting: Arc::clone(&starting),
                events: events.clone(),
                options: self.options.clone(),
            };
            let service_name = name.clone();
            tasks.spawn(async move {
                let result = job.run().await;
                let readiness = match &result {
                    Ok(r) => r.0.clone(),
                    Err(why) => Readiness::Failed(why.clone()),
                };
                let _ = tx.send(readiness);
                (service_name, result)
            });
        }
        let mut failed = Vec::new();
        let (mut created, mut unchanged) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok((_, c, u)))) => {
                    created += c;
                    unchanged += u;
                }
                Ok((name, Err(why))) => failed.push((name, why)),
                Err(e) => failed.push(("?".to_owned(), e.to_string())),
            }
        }
        if failed.is_empty() {
            Ok((created, unchanged))
        } else {
            failed.sort();
            Err(ReconcileError::Partial {
                failed,
                total: assignment.services.len(),
            })
        }
    }
}

/// A replica's container after the create phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prepared {
    /// Matches and runs: nothing to do.
    Running,
    /// Matches but is stopped: start it.
    Stopped,
    /// Just created: start it.
    New,
}

struct ServiceJob<D> {
    name: String,
    slots: Vec<(ContainerSpec, SlotAction)>,
    deps: Vec<(String, Condition, watch::Receiver<Readiness>)>,
    wants_health: bool,
    wants_completion: bool,
    driver: Arc<D>,
    /// Permits for creates and removals.
    semaphore: Arc<Semaphore>,
    /// Permits for starts.
    starting: Arc<Semaphore>,
    events: Events,
    options: ReconcileOptions,
}

impl<D: ContainerDriver> ServiceJob<D> {
    fn emit(&self, replica: u32, step: Step) {
        let _ = self.events.send(Progress::Replica {
            service: self.name.clone(),
            replica,
            step,
        });
    }

    /// Brings the service's replicas up; returns its readiness and (created, unchanged).
    ///
    /// Containers are created at once, while dependencies may still be coming up, and
    /// started only when every dependency is ready: creation overlaps the wait.
    async fn run(&self) -> Result<(Readiness, usize, usize), String> {
        let prepared = self.prepare().await?;
        for (dep, condition, rx) in &self.deps {
            let _ = self.events.send(Progress::Waiting {
                service: self.name.clone(),
                dependency: dep.clone(),
                condition: *condition,
            });
            wait_for(dep, *condition, rx.clone(), self.options.readiness_timeout).await?;
        }
        let mut starts = JoinSet::new();
        let mut ids = Vec::new();
        let (mut created, mut unchanged) = (0, 0);
        for (replica, id, state) in prepared {
            match state {
                Prepared::Running => {
                    unchanged += 1;
                    self.emit(replica, Step::Unchanged);
                    ids.push((replica, id));
                    continue;
                }
                Prepared::Stopped => unchanged += 1,
                Prepared::New => created += 1,
            }
            let driver = Arc::clone(&self.driver);
            let semaphore = Arc::clone(&self.starting);
            let events = self.events.clone();
            let service = self.name.clone();
            starts.spawn(async move {
                let emit = |step| {
                    let _ = events.send(Progress::Replica {
                        service: service.clone(),
                        replica,
                        step,
                    });
                };
                let _permit = semaphore.acquire_owned().await;
                emit(Step::Starting);
                match driver.start_container(&id).await {
                    Ok(()) => {
                        emit(Step::Running);
                        Ok((replica, id))
                    }
                    Err(e) => {
                        emit(Step::Failed(e.to_string()));
                        Err(e.to_string())
                    }
                }
            });
        }
        ids.extend(join_all(starts).await?);
        ids.sort();
        let readiness = if self.wants_completion {
            self.await_each(&ids, Condition::ServiceCompletedSuccessfully)
                .await?;
            Readiness::Completed
        } else if self.wants_health {
            self.await_each(&ids, Condition::ServiceHealthy).await?;
            Readiness::Healthy
        } else {
            Readiness::Started
        };
        Ok((readiness, created, unchanged))
    }

    /// Creates (or replaces) every replica's container that needs it, in parallel,
    /// without starting any. Returns each replica's container and what it needs.
    async fn prepare(&self) -> Result<Vec<(u32, String, Prepared)>, String> {
        let mut tasks = JoinSet::new();
        for (spec, action) in self.slots.clone() {
            let driver = Arc::clone(&self.driver);
            let semaphore = Arc::clone(&self.semaphore);
            let events = self.events.clone();
            let service = self.name.clone();
            tasks.spawn(async move {
                let emit = |step| {
                    let _ = events.send(Progress::Replica {
                        service: service.clone(),
                        replica: spec.replica,
                        step,
                    });
                };
                let result: Result<(String, Prepared), DriverError> = async {
                    match action {
                        SlotAction::Keep { id, start } => Ok((
                            id,
                            if start {
                                Prepared::Stopped
                            } else {
                                Prepared::Running
                            },
                        )),
                        SlotAction::Replace { old_id } => {
                            let _permit = semaphore.acquire_owned().await;
                            emit(Step::Recreating);
                            driver.remove_container(&old_id).await?;
                            Ok((driver.create_container(&spec).await?, Prepared::New))
                        }
                        SlotAction::Create => {
                            let _permit = semaphore.acquire_owned().await;
                            emit(Step::Creating);
                            Ok((driver.create_container(&spec).await?, Prepared::New))
                        }
                    }
                }
                .await;
                match result {
                    Ok((id, state)) => Ok((spec.replica, id, state)),
                    Err(e) => {
                        emit(Step::Failed(e.to_string()));
                        Err(e.to_string())
                    }
                }
            });
        }
        let mut prepared = join_all(tasks).await?;
        prepared.sort_by_key(|p| p.0);
        Ok(prepared)
    }

    async fn await_each(&self, ids: &[(u32, String)], condition: Condition) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.options.readiness_timeout;
        for (replica, id) in ids {
            loop {
                let status = self
                    .driver
                    .container_status(id)
                    .await
                    .map_err(|e| e.to_string())?;
                match condition {
                    Condition::ServiceHealthy => match status.health.as_deref() {
                        Some("healthy") => {
                            self.emit(*replica, Step::Healthy);
                            break;
                        }
                        Some("unhealthy") => return Err(format!("replica {replica} is unhealthy")),
                        None if status.health.is_none() && status.running => {
                            return Err("another service waits for it to be healthy, but it has no healthcheck (add `healthcheck:`)".into());
                        }
                        _ if !status.running => {
                            return Err(format!(
                                "replica {replica} exited with code {} before it was healthy",
                                status.exit_code.unwrap_or(-1)
                            ));
                        }
                        _ => {}
                    },
                    Condition::ServiceCompletedSuccessfully => match status.exit_code {
                        Some(0) if !status.running => {
                            self.emit(*replica, Step::Completed);
                            break;
                        }
                        Some(code) if !status.running => {
                            return Err(format!("replica {replica} exited with code {code}"));
                        }
                        _ => {}
                    },
                    Condition::ServiceStarted => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "replica {replica} was not ready within {:?}",
                        self.options.readiness_timeout
                    ));
                }
                tokio::time::sleep(self.options.poll_interval).await;
            }
        }
        Ok(())
    }
}

/// Writes `content` to `path` (its directories made, readable by this user alone) in
/// a way that a reader never sees half of it.
fn write_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o444)
            .open(&partial)?;
        file.write_all(content)?;
        file.sync_all()?;
    }
    std::fs::rename(&partial, path)
}

/// Waits for every task; all run to the end, and the first failure is returned.
async fn join_all<T: 'static>(mut tasks: JoinSet<Result<T, String>>) -> Result<Vec<T>, String> {
    let mut done = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(value) => done.push(value),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(done), Err)
}

async fn wait_for(
    dep: &str,
    condition: Condition,
    mut rx: watch::Receiver<Readiness>,
    timeout: Duration,
) -> Result<(), String> {
    let wait = rx.wait_for(|r| !matches!(r, Readiness::Pending));
    let ready = match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(r)) => r.clone(),
        Ok(Err(_)) => {
            return Err(format!(
                "not started: dependency {dep} stopped before it was ready"
            ));
        }
        Err(_) => {
            return Err(format!(
                "not started: dependency {dep} was not ready within {timeout:?}"
            ));
        }
    };
    match (ready, condition) {
        (Readiness::Failed(_), _) => Err(format!("not started: dependency {dep} failed")),
        (Readiness::Healthy, Condition::ServiceHealthy)
        | (Readiness::Completed, Condition::ServiceCompletedSuccessfully)
        | (_, Condition::ServiceStarted) => Ok(()),
        (other, _) => Err(format!(
            "not started: dependency {dep} reached {other:?}, not {condition:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use berth_protocol::assignment::{Scope, Slot, TopologyAssignment, TopologyRef};
    use berth_protocol::topology::{LoadOptions, LocalFiles, Variables, load};

    use super::*;
    use crate::simulated::SimulatedDriver;

    fn assignment(allow: &[&str]) -> TopologyAssignment {
        let vars = Variables::from_pairs([("HOME", "/root")]);
        let loaded = load(
            "services:\n  web:\n    image: busybox\n    cap_add: [NET_ADMIN]\n    privileged: true\n",
            &LoadOptions {
                file_name: "compose.yaml",
                dir: std::path::Path::new("/p"),
                default_name: "app",
                vars: &vars,
                files: &LocalFiles,
            },
        )
        .expect("loads");
        TopologyAssignment {
            id: TopologyRef {
                tenant: "acme".into(),
                topology: "app".into(),
            },
            revision: 1,
            services: loaded.topology.services,
            networks: loaded.topology.networks,
            volumes: BTreeMap::new(),
            slots: vec![Slot {
                service: "web".into(),
                replica: 1,
                generation: 1,
            }],
            trace: None,
            links: Vec::new(),
            allow: allow.iter().map(|a| (*a).to_owned()).collect(),
            image_sources: Vec::new(),
            registry_credentials: Vec::new(),
        }
    }

    async fn applied(allow: &[&str]) -> (Result<Outcome, ReconcileError>, usize) {
        let driver = Arc::new(SimulatedDriver::new(Scope::unscoped()));
        let reconciler = Reconciler::new(driver.clone(), ReconcileOptions::default());
        let (events, _rx) = mpsc::unbounded_channel();
        let a = assignment(allow);
        let result = reconciler.apply(&a, events).await;
        let created = driver.list_containers(&a.id).await.expect("list").len();
        (result, created)
    }

    #[tokio::test]
    async fn a_pool_node_creates_nothing_its_policy_refuses_and_honours_what_was_granted() {
        let (refused, created) = applied(&["cap_add:NET_ADMIN"]).await;
        match refused {
            Err(ReconcileError::Refused { refusals }) => {
                let keys: Vec<&str> = refusals.iter().map(|r| r.key.as_str()).collect();
                assert_eq!(keys, ["privileged"], "{refusals:?}");
                assert_eq!(refusals[0].policy, "pool (tenant acme)");
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(created, 0, "a refused assignment created a container");

        let (granted, created) = applied(&["cap_add:NET_ADMIN", "privileged"]).await;
        granted.expect("everything it uses was granted");
        assert_eq!(created, 1);
    }
}
