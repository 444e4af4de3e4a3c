//! The deploy path, once, for every scale: the gateway's handlers, the autoscaler and
//! the local plane of `berth up` all change what runs through [`Deployments`].
//!
//! A deploy is a small saga over two stores. The topology is checked (its rules, then
//! the target's policy) before anything is written; it is then proposed to the tenant
//! service as the next revision and placed by the allocator. Only once placed does the
//! revision become current; a placement the allocator refuses (quota, room, a later
//! revision placed meanwhile) discards the proposal, so nothing is half-applied and no
//! reader ever saw it. Scaling is a deploy of the current revision with new replica
//! counts, for any number of services at once: one revision, one placement.

use std::collections::BTreeMap;

use berth_allocator::autoscale::Scaled;
use berth_allocator::{Allocator, AllocatorError, Deployment};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::time::now_ms;
use berth_protocol::topology::{Policy, Refusal, Topology};
use berth_tenant_service::{StoredRevision, TenantError, TenantService};

/// Why a change was not made. In every case nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The topology breaks a rule of the format.
    #[error("the topology breaks a rule: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The target's policy refuses settings of the topology.
    #[error("{} setting(s) refused by the {} policy", .0.len(), .0.first().map_or("pool", |r| r.policy.as_str()))]
    Refused(Vec<Refusal>),
    /// A service named for scaling is not in the topology.
    #[error("topology {topology:?} has no service {service:?} (it has {})", known.join(", "))]
    UnknownService {
        /// The topology.
        topology: String,
        /// The service asked for.
        service: String,
        /// The services it has.
        known: Vec<String>,
    },
    /// The topology is larger than the admin lets the tenant deploy.
    #[error(
        "{what} is {size}, more than the {limit} tenant {tenant:?} may deploy (the admin sets `{field}` with `berth limits set`)"
    )]
    TooLarge {
        /// The tenant.
        tenant: String,
        /// What is too large (`the topology's service count`, `service web's replicas`).
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u32,
        /// The limit's name in the tenant's limits.
        field: &'static str,
    },
    /// The tenant service failed or does not know the tenant or topology.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The allocator refused the placement (quota, room, a later revision) or failed.
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
}

/// Which policy a plane applies to the topologies it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The user's own engine: whatever Compose runs.
    Local,
    /// A pool: the default policy with the admin's allowances for the tenant.
    Pool,
}

/// A change that was made.
#[derive(Debug)]
pub struct Applied {
    /// The revision now in force.
    pub revision: u64,
    /// Whether this change stored a new revision (false: the spec was already current).
    pub changed: bool,
    /// Where the revision's replicas are, by node.
    pub deployment: Deployment,
    /// The policy the topology was checked against.
    pub policy: String,
}

/// What a dry run found: the change would be accepted by the checks that come before
/// placement (quota and room are decided by placing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admissible {
    /// The policy it was checked against.
    pub policy: String,
    /// The revision in force now, if the topology is deployed.
    pub current_revision: Option<u64>,
    /// Whether the deploy would store a new revision.
    pub changed: bool,
}

/// Refuses a topology with more services, or a service with more replicas, than
/// `limits` allow, naming the first.
fn within_limits(
    tenant: &str,
    topology: &Topology,
    limits: &berth_protocol::limits::Effective,
) -> Result<(), DeployError> {
    let too_large = |what: String, size: u64, limit: u32, field| DeployError::TooLarge {
        tenant: tenant.to_owned(),
        what,
        size,
        limit,
        field,
    };
    let services = topology.services.len() as u64;
    if services > u64::from(limits.services_per_topology) {
        return Err(too_large(
            "the topology's service count".to_owned(),
            services,
            limits.services_per_topology,
            "services_per_topology",
        ));
    }
    for (name, service) in &topology.services {
        let most = service.autoscale.as_ref().map_or(0, |a| a.max);
        let replicas = u64::from(service.replicas.max(most));
        if replicas > u64::from(limits.replicas_per_service) {
            return Err(too_large(
                format!("service {name}'s replica count"),
                replicas,
                limits.replicas_per_service,
                "replicas_per_service",
            ));
        }
    }
    Ok(())
}

/// The deploy path over one tenant service and one allocator.
#[derive(Clone, Debug)]
pub struct Deployments {
    tenants: TenantService,
    allocator: Allocator,
    target: Target,
}

impl Deployments {
    /// The deploy path of a plane of `target` over these stores.
    pub fn new(tenants: TenantService, allocator: Allocator, target: Target) -> Self {
        Self {
            tenants,
            allocator,
            target,
        }
    }

    /// The tenant service underneath.
    pub fn tenants(&self) -> &TenantService {
        &self.tenants
    }

    /// The allocator underneath.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// The policy the plane applies to `tenant`'s topologies.
    pub async fn policy(&self, tenant: &str) -> Result<Policy, DeployError> {
        Ok(match self.target {
            Target::Local => Policy::local(),
            Target::Pool => self.allocator.policy(tenant).await?,
        })
    }

    /// The checks a deploy makes before it writes anything, cheapest first: its size
    /// against the tenant's limits (in a pool), the format's rules, the policy, then
    /// whether the topology alone fits the quota.
    async fn check(&self, tenant: &str, topology: &Topology) -> Result<Policy, DeployError> {
        if self.target == Target::Pool {
            let limits = self.allocator.limits(tenant).await?.effective();
            within_limits(tenant, topology, &limits)?;
        }
        let problems = topology.problems();
        if !problems.is_empty() {
            return Err(DeployError::Invalid(problems));
        }
        let policy = self.policy(tenant).await?;
        let refusals = policy.refusals(topology);
        if !refusals.is_empty() {
            return Err(DeployError::Refused(refusals));
        }
        self.allocator.precheck_quota(tenant, topology).await?;
        Ok(policy)
    }

    /// What a deploy of `topology` would meet, changing nothing.
    pub async fn dry_run(
        &self,
        tenant: &str,
        topology: &Topology,
    ) -> Result<Admissible, DeployError> {
        self.tenants.ensure_known(tenant).await?;
        let policy = self.check(tenant, topology).await?;
        let current = self.current(tenant, &topology.name).await?;
        Ok(Admissible {
            policy: policy.name,
            current_revision: current.as_ref().map(|c| c.revision),
            changed: current.is_none_or(|c| &c.topology != topology),
        })
    }

    /// The revision in force, if the topology is deployed.
    async fn current(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<StoredRevision>, DeployError> {
        match self.tenants.current(tenant, name).await {
            Ok(current) => Ok(Some(current)),
            Err(TenantError::UnknownTopology { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks, stores and places `topology` as the tenant's next revision.
    pub async fn apply(&self, tenant: &str, topology: &Topology) -> Result<Applied, DeployError> {
        let policy = self.check(tenant, topology).await?;
        if let Some(deployment) = self.placed_as_is(tenant, topology).await? {
            return Ok(Applied {
                revision: deployment.0,
                changed: false,
                deployment: deployment.1,
                policy: policy.name,
            });
        }
        let stored = self
            .tenants
            .propose_revision(tenant, topology, now_ms())
            .await?;
        let deployment = match self
            .allocator
            .deploy(tenant, stored.revision, topology)
            .await
        {
            Ok(deployment) => deployment,
            Err(refused) => {
                if stored.is_new {
                    self.tenants
                        .discard_revision(tenant, &topology.name, stored.revision)
                        .await?;
                }
                return Err(refused.into());
            }
        };
        if stored.is_new {
            self.tenants
                .settle_revision(tenant, &topology.name, stored.revision, now_ms())
                .await?;
        }
        Ok(Applied {
            revision: stored.revision,
            changed: stored.is_new,
            deployment,
            policy: policy.name,
        })
    }

    /// When `topology` is the current revision, placed, and a deploy would keep every
    /// replica where it is: the revision and where its replicas are, read without a
    /// transaction. A deploy of an unchanged spec (a client retrying, a pipeline
    /// deploying on every push) then writes nothing and waits behind no other deploy of
    /// the tenant; one that would move a replica (off a draining or dead node) takes
    /// the deploy path as before.
    async fn placed_as_is(
        &self,
        tenant: &str,
        topology: &Topology,
    ) -> Result<Option<(u64, Deployment)>, DeployError> {
        let Some(current) = self.current(tenant, &topology.name).await? else {
            return Ok(None);
        };
        if &current.topology != topology {
            return Ok(None);
        }
        let id = TopologyRef {
            tenant: tenant.to_owned(),
            topology: topology.name.clone(),
        };
        let Some(placed) = self
            .allocator
            .placed_as_is(&id, current.revision, topology)
            .await?
        else {
            return Ok(None);
        };
        let deployment = Deployment::new(id, current.revision, topology, placed, []);
        Ok(Some((current.revision, deployment)))
    }

    /// Sets the replica counts of services of the deployed topology `name`, all in one
    /// revision. A service that is not in it is an error, and nothing changes.
    pub async fn scale(
        &self,
        tenant: &str,
        name: &str,
        replicas: &BTreeMap<String, u32>,
    ) -> Result<Applied, DeployError> {
        let topology = self.tenants.current(tenant, name).await?.topology;
        let scaled = with_replicas(topology, replicas)?;
        self.apply(tenant, &scaled).await
    }

    /// Removes the topology: its placement (nodes then remove its containers) and its
    /// record. Returns the nodes that ran some of it, or None if there was no such
    /// topology.
    pub async fn remove(&self, id: &TopologyRef) -> Result<Option<Vec<String>>, DeployError> {
        let nodes = self.allocator.remove(id).await?;
        let existed = self.tenants.delete(&id.tenant, &id.topology).await?;
        Ok((existed || !nodes.is_empty()).then_some(nodes))
    }
}

/// `topology` with the replica counts of `replicas`; every service named must exist.
pub fn with_replicas(
    mut topology: Topology,
    replicas: &BTreeMap<String, u32>,
) -> Result<Topology, DeployError> {
    for (service, n) in replicas {
        let Some(s) = topology.services.get_mut(service) else {
            return Err(DeployError::UnknownService {
                topology: topology.name.clone(),
                service: service.clone(),
                known: topology.services.keys().cloned().collect(),
            });
        };
        s.replicas = *n;
    }
    Ok(topology)
}

/// The autoscaler scales through the deploy path, as `berth scale` does.
impl berth_allocator::autoscale::Scaler for Deployments {
    type Error = DeployError;

    async fn set_replicas(
        &self,
        id: &TopologyRef,
        service: &str,
        replicas: u32,
    ) -> Result<Scaled, DeployError> {
        let wanted = BTreeMap::from([(service.to_owned(), replicas)]);
        match self.scale(&id.tenant, &id.topology, &wanted).await {
            Ok(_) => Ok(Scaled::Done),
            Err(DeployError::Allocator(AllocatorError::Quota(e))) => {
                Ok(Scaled::Refused(e.to_string()))
            }
            Err(DeployError::Allocator(AllocatorError::Placement(e))) => {
                Ok(Scaled::Refused(format!("no room: {e}")))
            }
            // Removed meanwhile.
            Err(
                DeployError::UnknownService { .. }
                | DeployError::Tenant(TenantError::UnknownTopology { .. }),
            ) => Ok(Scaled::Gone),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let text = "name: app\nservices:\n  a: {image: x}\n  b: {image: x}\n";
        let vars = berth_protocol::topology::Variables::from_pairs([("HOME", "/h")]);
        berth_protocol::topology::load(
            text,
            &berth_protocol::topology::LoadOptions {
                file_name: "compose.yaml",
                dir: std::path::Path::new("/p"),
                default_name: "app",
                vars: &vars,
                files: &berth_protocol::topology::LocalFiles,
            },
        )
        .expect("loads")
        .topology
    }

    fn limits(services: u32, replicas: u32) -> berth_protocol::limits::Effective {
        berth_protocol::limits::Effective {
            services_per_topology: services,
            replicas_per_service: replicas,
            ..berth_protocol::limits::TenantLimits::DEFAULT
        }
    }

    #[test]
    fn a_topology_within_the_tenants_limits_passes() {
        assert!(within_limits("acme", &topology(), &limits(2, 1)).is_ok());
    }

    #[test]
    fn too_many_services_is_refused_naming_the_limit_to_raise() {
        let refused = within_limits("acme", &topology(), &limits(1, 10)).expect_err("refused");
        assert!(
            matches!(
                refused,
                DeployError::TooLarge {
                    size: 2,
                    limit: 1,
                    field: "services_per_topology",
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("berth limits set"),
            "{refused}"
        );
    }

    #[test]
    fn an_autoscaled_service_is_judged_by_its_maximum_not_its_start() {
        let mut topology = topology();
        let a = topology.services.get_mut("a").expect("service a");
        a.autoscale = Some(berth_protocol::topology::Autoscale {
            min: 1,
            max: 50,
            cpu_percent: 60,
        });
        let refused = within_limits("acme", &topology, &limits(10, 20)).expect_err("refused");
        assert!(
            matches!(
                refused,
                DeployError::TooLarge {
                    size: 50,
                    field: "replicas_per_service",
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn scaling_sets_every_named_service_at_once() {
        let scaled = with_replicas(
            topology(),
            &BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 2)]),
        )
        .expect("scales");
        assert_eq!(scaled.services["a"].replicas, 3);
        assert_eq!(scaled.services["b"].replicas, 2);
    }

    #[test]
    fn scaling_an_unknown_service_names_the_ones_there_are() {
        let e = with_replicas(topology(), &BTreeMap::from([("c".to_owned(), 1)])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "topology \"app\" has no service \"c\" (it has a, b)"
        );
    }

    /// Both stores over a new SQLite database, with the tenant `acme`.
    async fn stores() -> (tempfile::TempDir, TenantService, Allocator) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let db = berth_allocator::database::connect(&url).await.unwrap();
        let tenants = TenantService::open(db.clone()).await.unwrap();
        let allocator = Allocator::open(db, berth_allocator::DefaultRequest::default())
            .await
            .unwrap();
        tenants.ensure_tenant("acme", 0).await.unwrap();
        (dir, tenants, allocator)
    }

    #[tokio::test]
    async fn a_topology_larger_than_the_quota_is_refused_before_it_is_placed_or_stored() {
        let (_dir, tenants, allocator) = stores().await;
        let four = berth_allocator::Limit {
            containers: Some(4),
            ..berth_allocator::Limit::default()
        };
        allocator.set_quota("acme", four).await.unwrap();
        let deployments = Deployments::new(tenants.clone(), allocator.clone(), Target::Pool);
        // A thousand services of ten thousand replicas each, and no node at all: only
        // the quota can answer, and it does without placing anything.
        let mut huge = topology();
        let template = huge.services["a"].clone();
        huge.services.clear();
        for i in 0..1000 {
            let mut s = template.clone();
            s.replicas = 10_000;
            huge.services.insert(format!("s{i}"), s);
        }
        // The default limits on a topology's shape answer first.
        let e = deployments.apply("acme", &huge).await.unwrap_err();
        assert!(
            matches!(
                &e,
                DeployError::TooLarge {
                    field: "services_per_topology",
                    size: 1000,
                    ..
                }
            ),
            "{e}"
        );
        // With the shape allowed, the quota answers, still before any placement.
        let roomy = berth_protocol::limits::TenantLimits {
            services_per_topology: Some(1000),
            replicas_per_service: Some(10_000),
            ..Default::default()
        };
        allocator.set_limits("acme", &roomy, 0).await.unwrap();
        let e = deployments.apply("acme", &huge).await.unwrap_err();
        assert!(
            matches!(e, DeployError::Allocator(AllocatorError::Quota(_))),
            "{e}"
        );
        assert!(
            e.to_string().contains("containers would be 10000000 of 4"),
            "{e}"
        );
        assert!(tenants.list("acme").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unchanged_spec_is_recognised_unless_a_replica_would_move() {
        let (_dir, tenants, allocator) = stores().await;
        allocator
            .set_quota("acme", berth_allocator::Limit::default())
            .await
            .unwrap();
        let room = berth_allocator::Limit {
            containers: Some(10),
            ..berth_allocator::Limit::default()
        };
        allocator
            .upsert_node("n1", room, &BTreeMap::new())
            .await
            .unwrap();
        let deployments = Deployments::new(tenants.clone(), allocator.clone(), Target::Pool);
        let first = deployments.apply("acme", &topology()).await.unwrap();
        assert!(first.changed);
        let again = deployments.apply("acme", &topology()).await.unwrap();
        assert!(!again.changed);
        assert_eq!(again.revision, first.revision);
        assert_eq!(again.deployment.by_node(), first.deployment.by_node());
        let id = TopologyRef {
            tenant: "acme".into(),
            topology: "app".into(),
        };
        assert!(
            allocator
                .placed_as_is(&id, first.revision, &topology())
                .await
                .unwrap()
                .is_some()
        );

        // n1 drains with nowhere to go: its replicas stay, stuck. Once n2 joins, the
        // same spec deployed again must move them: it takes the deploy path.
        allocator.drain("n1").await.unwrap();
        assert!(
            allocator
                .placed_as_is(&id, first.revision, &topology())
                .await
                .unwrap()
                .is_none()
        );
        allocator
            .upsert_node("n2", room, &BTreeMap::new())
            .await
            .unwrap();
        let moved = deployments.apply("acme", &topology()).await.unwrap();
        assert!(!moved.changed, "the spec did not change");
        let nodes: Vec<String> = moved
            .deployment
            .by_node()
            .into_iter()
            .filter(|(_, a)| !a.slots.is_empty())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(nodes, ["n2"], "{:?}", moved.deployment.by_node());
    }
}
