//! The allocator's service: loads placement inputs, calls the pure core, and commits
//! the result in one transaction, reserving quota and node capacity with conditional
//! updates so that no interleaving of concurrent deploys exceeds either.

use std::collections::{BTreeMap, BTreeSet};

use berth_protocol::assignment::{Slot, TopologyAssignment, TopologyRef};
use berth_protocol::limits::TenantLimits;
use berth_protocol::topology::Topology;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::decision::{DecideError, Decision, Inputs, decide, growth};
use crate::entity::{
    assignment, node, placement, quota, replica_event, replica_status, tenant_limit, tenant_policy,
};
use crate::loads::Before;
use crate::placement::{Placed, PlacementError, Want};
use crate::resources::{Limit, QuotaExceeded, Resources, check_quota};
use crate::store::{
    Delta, Unreserved, all_nodes, candidates_for, limits_of, load_placed, lock_tenant,
    lock_tenant_for, nodes_named, placed_of, quota_parts, reserve, shift_nodes, shift_quota,
    to_i64,
};

/// Failures of the allocator.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// The deploy does not fit the tenant's quota; nothing was changed.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The deploy does not fit the pool; nothing was changed.
    #[error("{0}. Nothing was changed.")]
    Placement(#[from] PlacementError),
    /// The tenant has no quota row, so the allocator does not know it.
    #[error("tenant {0:?} is not known to the allocator (no quota is set)")]
    UnknownTenant(String),
    /// Another deploy took the capacity this one planned to use; retrying re-plans.
    #[error("node {0:?} filled up while this deploy was being placed; try again")]
    Contended(String),
    /// A later revision of the topology was placed while this one was on its way;
    /// placing this one would take the topology back, so it is refused.
    #[error(
        "revision {placed} of {topology} was placed while revision {offered} was on its way; nothing was changed"
    )]
    Stale {
        /// The topology.
        topology: TopologyRef,
        /// The revision placed now.
        placed: u64,
        /// The revision refused.
        offered: u64,
    },
    /// No node has this name.
    #[error("there is no node {0:?} in the pool")]
    UnknownNode(String),
    /// A stored spec could not be read back.
    #[error("stored placement of {0} is unreadable: {1}")]
    Corrupt(TopologyRef, serde_json::Error),
}

impl From<DecideError> for AllocatorError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::Placement(e) => Self::Placement(e),
            DecideError::Quota(e) => Self::Quota(e),
        }
    }
}

/// What a replica reserves when its service declares no limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultRequest {
    /// CPU, thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
}

/// The result of a deploy: where every replica of the topology is, and every node the
/// deploy involved (old and new). A node's assignment is built when asked for: a
/// pool's nodes pull theirs, so a deploy over a hundred nodes builds none.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    id: TopologyRef,
    revision: u64,
    topology: Topology,
    slots: Vec<Placed>,
    nodes: BTreeSet<String>,
}

impl Deployment {
    /// `topology` at `revision` with its replicas in `slots`, involving `nodes` (those
    /// the slots are on, and any the topology left).
    pub fn new(
        id: TopologyRef,
        revision: u64,
        topology: &Topology,
        slots: Vec<Placed>,
        nodes: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut nodes: BTreeSet<String> = nodes.into_iter().collect();
        nodes.extend(slots.iter().map(|s| s.node.clone()));
        Self {
            id,
            revision,
            topology: topology.clone(),
            slots,
            nodes,
        }
    }

    /// The nodes involved, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    /// `node`'s whole assignment for the topology (an empty one if the topology left
    /// it); None if the deploy did not involve `node`.
    pub fn assignment(&self, node: &str) -> Option<TopologyAssignment> {
        if !self.nodes.contains(node) {
            return None;
        }
        let slots: Vec<&Placed> = self.slots.iter().filter(|s| s.node == node).collect();
        Some(assignment_of(
            &self.id,
            self.revision,
            &self.topology,
            &slots,
        ))
    }

    /// Every involved node's assignment, by node name.
    pub fn by_node(&self) -> BTreeMap<String, TopologyAssignment> {
        let mut by_node: BTreeMap<&str, Vec<&Placed>> =
            self.nodes().map(|n| (n, Vec::new())).collect();
        for slot in &self.slots {
            by_node.entry(slot.node.as_str()).or_default().push(slot);
        }
        by_node
            .into_iter()
            .map(|(node, slots)| {
                let assignment = assignment_of(&self.id, self.revision, &self.topology, &slots);
                (node.to_owned(), assignment)
            })
            .collect()
    }
}

/// The allocator over one database.
#[derive(Clone, Debug)]
pub struct Allocator {
    pub(crate) db: DatabaseConnection,
    default_request: DefaultRequest,
    /// Bumped after every committed change of assignments; node streams wait on it.
    pub(crate) changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Which change concerns which node, so a node's stream does its work only for
    /// changes that concern it (a deploy touches a few nodes, not thousands).
    touched: std::sync::Arc<std::sync::Mutex<Touched>>,
    /// Which topologies' replica reports changed, so that answers built from them
    /// (a topology's status) know when they are out of date.
    reported: std::sync::Arc<std::sync::Mutex<Reported>>,
    /// This process among the allocators sharing the database, so that it can tell its
    /// own change notices from others'.
    origin: u64,
    /// The view of the nodes placement takes its candidates from (see `loads.rs`).
    pub(crate) loads: std::sync::Arc<crate::loads::Loads>,
}

/// What a topology's status was built from, as far as this process knows: the
/// version of the last change of assignments anywhere (placements, moves, removals)
/// and of the last report about this topology's replicas. An answer built after
/// reading [`Allocator::view_stamp`] is current while the stamp is unchanged: every
/// change bumps it after its commit (in this process at once, in the others when the
/// notice arrives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewStamp {
    assignments: u64,
    reports: u64,
}

/// The PostgreSQL channel on which allocators tell each other what changed.
const CHANGES_CHANNEL: &str = "berth_changes";
/// The PostgreSQL channel on which the leader tells the other servers which
/// topologies' replica reports changed.
const REPORTS_CHANNEL: &str = "berth_reports";
/// PostgreSQL refuses notice payloads of 8,000 bytes or more; a longer list of nodes
/// is sent as "every node".
const MOST_NOTICE: usize = 7_900;

/// The report version that last concerned every topology, and each topology's own
/// (by `tenant/topology`).
#[derive(Debug, Default)]
struct Reported {
    version: u64,
    everyone: u64,
    topologies: std::collections::HashMap<String, u64>,
}

/// The change version that last concerned every node, and each node's own.
#[derive(Debug, Default)]
struct Touched {
    version: u64,
    everyone: u64,
    nodes: std::collections::HashMap<String, u64>,
}

impl Allocator {
    /// Opens the allocator over `db`, migrating its tables.
    pub async fn open(
        db: DatabaseConnection,
        default_request: DefaultRequest,
    ) -> Result<Self, AllocatorError> {
        crate::migration::Migrator::up(&db, None).await?;
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            db,
            default_request,
            changes: std::sync::Arc::new(changes),
            touched: std::sync::Arc::default(),
            reported: std::sync::Arc::default(),
            loads: std::sync::Arc::default(),
            origin: {
                let mut bytes = [0u8; 8];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| DbErr::Custom("no randomness for the process id".into()))?;
                u64::from_le_bytes(bytes)
            },
        })
    }

    /// The pool's identity, chosen at random the first time it is asked for (by
    /// whichever server asks first; the others read it).
    pub async fn pool_id(&self) -> Result<String, AllocatorError> {
        use crate::entity::pool_identity;
        if let Some(row) = pool_identity::Entity::find_by_id(1).one(&self.db).await? {
            return Ok(row.pool);
        }
        let mut bytes = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| DbErr::Custom("no randomness for the pool's identity".into()))?;
        let chosen = pool_identity::ActiveModel {
            id: Set(1),
            pool: Set(berth_protocol::assignment::hex_encode(&bytes)),
        };
        pool_identity::Entity::insert(chosen)
            .on_conflict_do_nothing()
            .exec_without_returning(&self.db)
            .await?;
        pool_identity::Entity::find_by_id(1)
            .one(&self.db)
            .await?
            .map(|row| row.pool)
            .ok_or_else(|| DbErr::RecordNotFound("the pool's identity".into()).into())
    }

    /// Sets a tenant's quota (creating its row), keeping what it uses now.
    pub async fn set_quota(&self, tenant: &str, limit: Limit) -> Result<(), AllocatorError> {
        let row = quota::ActiveModel {
            tenant: Set(tenant.to_owned()),
            cpu_millis_limit: Set(limit.cpu_millis.map(to_i64)),
            memory_bytes_limit: Set(limit.memory_bytes.map(to_i64)),
            containers_limit: Set(limit.containers.map(to_i64)),
            cpu_millis_used: Set(0),
            memory_bytes_used: Set(0),
            containers_used: Set(0),
        };
        quota::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(quota::Column::Tenant)
                    .update_columns([
                        quota::Column::CpuMillisLimit,
                        quota::Column::MemoryBytesLimit,
                        quota::Column::ContainersLimit,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Sets a tenant's quota only if it has none yet.
    pub async fn ensure_quota(&self, tenant: &str, limit: Limit) -> Result<(), AllocatorError> {
        if quota::Entity::find_by_id(tenant.to_owned())
            .one(&self.db)
            .await?
            .is_none()
        {
            self.set_quota(tenant, limit).await?;
        }
        Ok(())
    }

    /// A tenant's quota and what it uses now.
    pub async fn quota(&self, tenant: &str) -> Result<(Limit, Resources), AllocatorError> {
        let row = quota::Entity::find_by_id(tenant.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| AllocatorError::UnknownTenant(tenant.to_owned()))?;
        Ok(quota_parts(&row))
    }

    /// Sets what `tenant` may use beyond the pool's default policy (allowances in the
    /// vocabulary of [`berth_protocol::topology::policy::GOVERNED`], already checked),
    /// and wakes every node stream, since running replicas are judged by it again.
    pub async fn set_allowances(
        &self,
        tenant: &str,
        allow: &BTreeSet<String>,
        now_ms: i64,
    ) -> Result<(), AllocatorError> {
        let row = tenant_policy::ActiveModel {
            tenant: Set(tenant.to_owned()),
            allow: Set(allow.iter().cloned().collect::<Vec<_>>().join("\n")),
            updated_at_ms: Set(now_ms),
        };
        tenant_policy::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(tenant_policy::Column::Tenant)
                    .update_columns([
                        tenant_policy::Column::Allow,
                        tenant_policy::Column::UpdatedAtMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        self.changed();
        Ok(())
    }

    /// What `tenant` may use beyond the pool's default policy.
    pub async fn allowances(&self, tenant: &str) -> Result<BTreeSet<String>, AllocatorError> {
        Ok(tenant_policy::Entity::find_by_id(tenant.to_owned())
            .one(&self.db)
            .await?
            .map(|row| {
                row.allow
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The pool's policy for `tenant`: the default with the admin's allowances.
    pub async fn policy(
        &self,
        tenant: &str,
    ) -> Result<berth_protocol::topology::Policy, AllocatorError> {
        Ok(berth_protocol::topology::Policy::pool(
            tenant,
            self.allowances(tenant).await?,
        ))
    }

    /// Sets how much of the control plane `tenant` may use (already checked to be in
    /// range); what is left out takes the default.
    pub async fn set_limits(
        &self,
        tenant: &str,
        limits: &TenantLimits,
        now_ms: i64,
    ) -> Result<(), AllocatorError> {
        let column = |v: Option<u32>| Set(v.map(i64::from));
        let row = tenant_limit::ActiveModel {
            tenant: Set(tenant.to_owned()),
            requests_per_second: column(limits.requests_per_second),
            deploys_per_minute: column(limits.deploys_per_minute),
            attenuations_per_hour: column(limits.attenuations_per_hour),
            services_per_topology: column(limits.services_per_topology),
            replicas_per_service: column(limits.replicas_per_service),
            image_mebibytes: column(limits.image_mebibytes),
            updated_at_ms: Set(now_ms),
        };
        use tenant_limit::Column as L;
        tenant_limit::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(L::Tenant)
                    .update_columns([
                        L::RequestsPerSecond,
                        L::DeploysPerMinute,
                        L::AttenuationsPerHour,
                        L::ServicesPerTopology,
                        L::ReplicasPerService,
                        L::ImageMebibytes,
                        L::UpdatedAtMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// What an admin set for `tenant` (nothing set: all defaults).
    pub async fn limits(&self, tenant: &str) -> Result<TenantLimits, AllocatorError> {
        Ok(tenant_limit::Entity::find_by_id(tenant.to_owned())
            .one(&self.db)
            .await?
            .map(|row| limits_of(&row))
            .unwrap_or_default())
    }

    /// Every tenant's limits an admin set.
    pub async fn all_limits(&self) -> Result<Vec<(String, TenantLimits)>, AllocatorError> {
        Ok(tenant_limit::Entity::find()
            .all(&self.db)
            .await?
            .iter()
            .map(|row| (row.tenant.clone(), limits_of(row)))
            .collect())
    }

    /// Registers a node (or updates its capacity and labels), keeping what is reserved
    /// on it and whether it is cordoned.
    pub async fn upsert_node(
        &self,
        name: &str,
        capacity: Limit,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), AllocatorError> {
        let labels = serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned());
        let row = node::ActiveModel {
            name: Set(name.to_owned()),
            cpu_millis_capacity: Set(capacity.cpu_millis.map(to_i64)),
            memory_bytes_capacity: Set(capacity.memory_bytes.map(to_i64)),
            containers_capacity: Set(capacity.containers.map(to_i64)),
            cpu_millis_used: Set(0),
            memory_bytes_used: Set(0),
            containers_used: Set(0),
            schedulable: Set(true),
            draining: Set(false),
            labels: Set(labels),
            down_since_ms: Set(None),
            address: Set(String::new()),
            firewall: Set(String::new()),
        };
        node::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(node::Column::Name)
                    .update_columns([
                        node::Column::CpuMillisCapacity,
                        node::Column::MemoryBytesCapacity,
                        node::Column::ContainersCapacity,
                        node::Column::Labels,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        self.loads.stale();
        Ok(())
    }

    fn cost(&self, topology: &Topology, service: &str) -> Resources {
        let limits = topology
            .services
            .get(service)
            .map(|s| s.limits)
            .unwrap_or_default();
        Resources {
            cpu_millis: limits.cpu_millis.unwrap_or(self.default_request.cpu_millis),
            memory_bytes: limits
                .memory_bytes
                .unwrap_or(self.default_request.memory_bytes),
            containers: 1,
        }
    }

    /// What every replica of `topology` requests, summed.
    pub fn requested(&self, topology: &Topology) -> Resources {
        topology
            .services
            .iter()
            .fold(Resources::default(), |total, (name, service)| {
                let one = self.cost(topology, name);
                let n = u64::from(service.replicas);
                total.plus(Resources {
                    cpu_millis: one.cpu_millis.saturating_mul(n),
                    memory_bytes: one.memory_bytes.saturating_mul(n),
                    containers: one.containers.saturating_mul(n),
                })
            })
    }

    /// Refuses, before any placement is computed, a topology that alone requests more
    /// than `tenant`'s quota: one row read and a sum, so that an oversized deploy costs
    /// the pool nothing. What others of the tenant's topologies use is decided when
    /// placing.
    pub async fn precheck_quota(
        &self,
        tenant: &str,
        topology: &Topology,
    ) -> Result<(), AllocatorError> {
        let (limit, _) = self.quota(tenant).await?;
        check_quota(
            tenant,
            Resources::default(),
            self.requested(topology),
            &limit,
        )?;
        Ok(())
    }

    /// Places `topology` (revision `revision`) for `tenant`: keeps replicas where they
    /// are when it can, places the rest, reserves quota and capacity, and records the
    /// assignments, all or nothing.
    #[tracing::instrument(name = "allocate", skip_all, fields(tenant = %tenant, topology = %topology.name, revision = revision))]
    pub async fn deploy(
        &self,
        tenant: &str,
        revision: u64,
        topology: &Topology,
    ) -> Result<Deployment, AllocatorError> {
        match self.deploy_once(tenant, revision, topology).await {
            // Placed from a view another process had changed meanwhile: once more, from
            // the nodes read anew.
            Err(AllocatorError::Contended(_)) => {
                self.loads.stale();
                self.deploy_once(tenant, revision, topology).await
            }
            done => done,
        }
    }

    /// One attempt at [`Self::deploy`].
    async fn deploy_once(
        &self,
        tenant: &str,
        revision: u64,
        topology: &Topology,
    ) -> Result<Deployment, AllocatorError> {
        let id = TopologyRef {
            tenant: tenant.to_owned(),
            topology: topology.name.clone(),
        };
        match self.loads.before_placing() {
            Before::Place => {}
            Before::Read => self.loads.read(&self.db).await?,
            Before::PlaceAndRead => {
                let (loads, db) = (self.loads.clone(), self.db.clone());
                tokio::spawn(async move {
                    if let Err(e) = loads.read(&db).await {
                        tracing::warn!(error = %e, "reading the nodes for placement failed");
                    }
                });
            }
        }
        let txn = self.db.begin().await?;
        // Roll back explicitly on failure: a dropped SQLite transaction would keep the
        // write lock until its pooled connection is next used.
        let (decision, nodes) = match self.deploy_in(&txn, tenant, revision, topology, &id).await {
            Ok(done) => done,
            Err(e) => {
                let _ = txn.rollback().await;
                return Err(e);
            }
        };
        txn.commit().await?;
        for (name, (before, after)) in &decision.nodes {
            self.loads.shift(name, *before, *after);
        }
        self.touch(&nodes);
        Ok(Deployment::new(
            id,
            revision,
            topology,
            decision.plan.slots,
            nodes,
        ))
    }

    /// The body of [`Self::deploy`], inside its transaction: the placement and every
    /// node it involves (old and new).
    async fn deploy_in(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        tenant: &str,
        revision: u64,
        topology: &Topology,
        id: &TopologyRef,
    ) -> Result<(Decision, Vec<String>), AllocatorError> {
        let inputs = self
            .load_deploy(txn, tenant, revision, topology, id)
            .await?;
        // Placement looks at the least-loaded nodes only (and those the topology is on),
        // so a deploy costs the same in a pool of ten nodes or ten thousand. Constraints
        // may rule those out, so a constrained topology looks at every node; and a
        // deploy is refused only after every node was looked at.
        let decision = match inputs.constrained() {
            true => decide(&inputs, &all_nodes(txn).await?)?,
            false => {
                let wanted = candidates_for(inputs.wants.len());
                // The topology's own nodes are read (whether they still keep its
                // replicas is theirs to say); the least loaded come from memory.
                let mut nodes = nodes_named(txn, inputs.placed.iter().map(|p| &p.node)).await?;
                self.loads.saw(&nodes);
                let read: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
                nodes.extend(
                    self.loads
                        .least_loaded(wanted)
                        .into_iter()
                        .filter(|n| !read.contains(&n.name)),
                );
                match decide(&inputs, &nodes) {
                    Err(DecideError::Placement(_)) => {
                        let every = all_nodes(txn).await?;
                        self.loads.saw(&every);
                        decide(&inputs, &every)?
                    }
                    decided => decided?,
                }
            }
        };
        let nodes = commit_deploy(txn, &inputs, &decision, revision, topology, id).await?;
        Ok((decision, nodes))
    }

    /// What a deploy of `topology` at `revision` decides from, read in `txn` after
    /// locking the tenant's quota row (which serialises the tenant's deploys).
    async fn load_deploy(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        tenant: &str,
        revision: u64,
        topology: &Topology,
        id: &TopologyRef,
    ) -> Result<Inputs, AllocatorError> {
        // Write to the tenant's quota row first: it serialises this tenant's deploys
        // (a row lock on PostgreSQL, the write lock on SQLite, taken before any read so
        // SQLite never has to upgrade a read lock and fail), and everything read below
        // is then current.
        let (quota_row, placing) = lock_tenant_for(txn, tenant, id)
            .await?
            .ok_or_else(|| AllocatorError::UnknownTenant(tenant.to_owned()))?;
        let placed_revision = placing.revision.map(|r| u64::try_from(r).unwrap_or(0));
        if let Some(placed) = placed_revision
            && placed > revision
        {
            return Err(AllocatorError::Stale {
                topology: id.clone(),
                placed,
                offered: revision,
            });
        }
        let (limit, used) = quota_parts(&quota_row);
        Ok(Inputs {
            tenant: tenant.to_owned(),
            wants: self.wants(topology),
            placed: placing.slots,
            next_generation: Ord::max(placing.next_generation, 1) as u64,
            limit,
            used,
        })
    }

    /// Every replica `topology` wants, with its cost and constraints.
    fn wants(&self, topology: &Topology) -> Vec<Want> {
        topology
            .services
            .iter()
            .flat_map(|(name, s)| (1..=s.replicas).map(move |r| (name, r)))
            .map(|(name, replica)| Want {
                service: name.clone(),
                replica,
                cost: self.cost(topology, name),
                constraints: topology.services[name].constraints.clone(),
            })
            .collect()
    }

    /// Where `topology`'s replicas are, when `revision` is the one placed and a deploy
    /// of it would keep every replica where it is (each node neither drains nor is
    /// down, and still allows and holds it): read without a transaction or a lock.
    /// None: a deploy must decide, in its transaction.
    pub async fn placed_as_is(
        &self,
        id: &TopologyRef,
        revision: u64,
        topology: &Topology,
    ) -> Result<Option<Vec<Placed>>, AllocatorError> {
        if self.placed_revision(id).await? != Some(revision) {
            return Ok(None);
        }
        let placed = load_placed(&self.db, id).await?;
        let nodes = nodes_named(&self.db, placed.iter().map(|p| &p.node)).await?;
        // The placement's own rule, over the nodes that hold the replicas only: a
        // replica it would move or place anew (under a generation no slot has), or a
        // cost that changed, needs the deploy path.
        let fresh = u64::MAX / 2;
        let kept = match crate::placement::place(&self.wants(topology), &placed, &nodes, fresh) {
            Ok(plan) => {
                plan.released.is_empty()
                    && plan.slots.len() == placed.len()
                    && plan.slots.iter().all(|slot| placed.contains(slot))
            }
            Err(_) => false,
        };
        Ok(kept.then_some(placed))
    }

    /// Removes a topology's placement, releasing its quota and capacity. Returns the
    /// nodes that ran some of it.
    pub async fn remove(&self, id: &TopologyRef) -> Result<Vec<String>, AllocatorError> {
        let txn = self.db.begin().await?;
        match self.remove_in(&txn, id).await {
            Ok(nodes) => {
                txn.commit().await?;
                self.loads.due();
                self.touch(&nodes);
                Ok(nodes)
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// The body of [`Self::remove`], inside its transaction.
    async fn remove_in(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        id: &TopologyRef,
    ) -> Result<Vec<String>, AllocatorError> {
        // Write first, as `deploy` does, so SQLite takes the write lock (waiting its
        // turn) before any read, and never has to fail a lock upgrade.
        lock_tenant(txn, &id.tenant).await?;
        let placed = load_placed(txn, id).await?;
        let total = crate::decision::total(&placed);
        let release = Delta::between(total, Resources::default());
        // Releasing never exceeds a limit, so this always applies.
        shift_quota(txn, &id.tenant, release).await?;
        let mut per_node: BTreeMap<String, Resources> = BTreeMap::new();
        for p in &placed {
            let e = per_node.entry(p.node.clone()).or_default();
            *e = e.plus(p.cost);
        }
        let releases: BTreeMap<String, Delta> = per_node
            .iter()
            .map(|(name, amount)| (name.clone(), Delta::between(*amount, Resources::default())))
            .collect();
        // Releasing never lacks room.
        shift_nodes(txn, &releases, &BTreeSet::new()).await?;
        assignment::Entity::delete_many()
            .filter(assignment::Column::Tenant.eq(&id.tenant))
            .filter(assignment::Column::Topology.eq(&id.topology))
            .exec(txn)
            .await?;
        let old_copies = crate::store::forget_moves(txn, id).await?;
        per_node.extend(old_copies.into_iter().map(|n| (n, Resources::default())));
        placement::Entity::delete_by_id((id.tenant.clone(), id.topology.clone()))
            .exec(txn)
            .await?;
        replica_status::Entity::delete_many()
            .filter(replica_status::Column::Tenant.eq(&id.tenant))
            .filter(replica_status::Column::Topology.eq(&id.topology))
            .exec(txn)
            .await?;
        replica_event::Entity::delete_many()
            .filter(replica_event::Column::Tenant.eq(&id.tenant))
            .filter(replica_event::Column::Topology.eq(&id.topology))
            .exec(txn)
            .await?;
        Ok(per_node.into_keys().collect())
    }

    /// Every placed slot of a topology, on every node.
    pub async fn placed(&self, id: &TopologyRef) -> Result<Vec<Placed>, AllocatorError> {
        Ok(load_placed(&self.db, id).await?)
    }

    /// The revision of a topology that is placed now, if it is.
    pub async fn placed_revision(&self, id: &TopologyRef) -> Result<Option<u64>, AllocatorError> {
        let row = placement::Entity::find_by_id((id.tenant.clone(), id.topology.clone()))
            .one(&self.db)
            .await?;
        Ok(row.map(|r| u64::try_from(r.revision).unwrap_or(0)))
    }

    /// The image each service of the placed revision runs, by service: the id of a
    /// pushed image, else the reference as deployed (a registry tag pinned to its
    /// digest then).
    pub async fn placed_images(
        &self,
        id: &TopologyRef,
    ) -> Result<BTreeMap<String, String>, AllocatorError> {
        let Some(row) = placement::Entity::find_by_id((id.tenant.clone(), id.topology.clone()))
            .one(&self.db)
            .await?
        else {
            return Ok(BTreeMap::new());
        };
        let topology: Topology =
            serde_json::from_str(&row.spec).map_err(|e| AllocatorError::Corrupt(id.clone(), e))?;
        Ok(topology
            .services
            .into_iter()
            .map(|(name, s)| {
                let image = s.digest.map_or(s.image, |d| d.to_string());
                (name, image)
            })
            .collect())
    }

    /// Wakes every subscriber, for a change of what nodes are sent that is not in
    /// the assignments (their trusted keys, their links' tokens).
    pub fn changed(&self) {
        self.changed_here();
        self.tell_others("*".to_owned());
    }

    fn changed_here(&self) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            touched.version += 1;
            touched.everyone = touched.version;
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records a change of what `nodes` run, and wakes the streams.
    pub(crate) fn touch(&self, nodes: &[String]) {
        self.touch_here(nodes);
        self.tell_others(nodes.join(","));
    }

    fn touch_here(&self, nodes: &[String]) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            touched.version += 1;
            let version = touched.version;
            for node in nodes {
                touched.nodes.insert(node.clone(), version);
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records that reports about `topologies`' replicas were committed, here and,
    /// by a notice, in the other servers on the same PostgreSQL database.
    pub(crate) fn reported(&self, topologies: &[TopologyRef]) {
        let keys: Vec<String> = topologies
            .iter()
            .map(|t| format!("{}/{}", t.tenant, t.topology))
            .collect();
        self.reported_here(&keys);
        self.notify(REPORTS_CHANNEL, keys.join(","));
    }

    fn reported_here(&self, keys: &[String]) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.version += 1;
        let version = reported.version;
        for key in keys {
            if key == "*" {
                reported.everyone = version;
            } else {
                reported.topologies.insert(key.clone(), version);
            }
        }
    }

    /// The stamp of what `id`'s status is built from now; read it before reading
    /// the database, and keep an answer only while it stays the same.
    pub fn view_stamp(&self, id: &TopologyRef) -> ViewStamp {
        let assignments = self
            .touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .version;
        let reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{}/{}", id.tenant, id.topology);
        let reports = std::cmp::Ord::max(
            reported.topologies.get(&key).copied().unwrap_or(0),
            reported.everyone,
        );
        ViewStamp {
            assignments,
            reports,
        }
    }

    /// Tells the other allocator processes on the same PostgreSQL database that
    /// `nodes` (comma-separated, or `*` for all) have something new, so that the
    /// leader's streams to those nodes look again at once. The notice is sent after
    /// the commit and may be lost with this process; the streams' periodic recheck
    /// covers that.
    fn tell_others(&self, nodes: String) {
        self.notify(CHANGES_CHANNEL, nodes);
    }

    /// Sends `what` (comma-separated, `*` for everything) on `channel` to the other
    /// processes on the same PostgreSQL database, after the commit.
    fn notify(&self, channel: &'static str, mut what: String) {
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return;
        }
        if what.len() > MOST_NOTICE {
            what = "*".to_owned();
        }
        let db = self.db.clone();
        let payload = format!("{:x}|{what}", self.origin);
        tokio::spawn(async move {
            let statement = sea_orm::Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [channel.into(), payload.into()],
            );
            if let Err(e) = sea_orm::ConnectionTrait::execute_raw(&db, statement).await {
                tracing::warn!(error = %e, "could not tell the other allocators of a change");
            }
        });
    }

    /// Listens, until the process ends, for what other allocator processes on the
    /// same PostgreSQL database (at `url`) changed, and wakes this process's streams
    /// to the nodes concerned. Does nothing on SQLite.
    pub async fn hear_others(&self, url: &str) -> Result<(), AllocatorError> {
        use sea_orm::sqlx::postgres::PgListener;
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(());
        }
        let listen = async {
            let mut listener = PgListener::connect(url).await?;
            listener
                .listen_all([CHANGES_CHANNEL, REPORTS_CHANNEL])
                .await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        };
        let mut listener = listen
            .await
            .map_err(|e| DbErr::Custom(format!("cannot listen for changes: {e}")))?;
        let own = format!("{:x}", self.origin);
        tokio::spawn({
            let allocator = self.clone();
            async move {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notice)) => {
                            let Some((origin, what)) = notice.payload().split_once('|') else {
                                continue;
                            };
                            if origin == own {
                                continue;
                            }
                            if notice.channel() == REPORTS_CHANNEL {
                                allocator.reported_here(
                                    &what.split(',').map(str::to_owned).collect::<Vec<_>>(),
                                );
                                continue;
                            }
                            match what {
                                "*" => allocator.changed_here(),
                                list => allocator.touch_here(
                                    &list.split(',').map(str::to_owned).collect::<Vec<_>>(),
                                ),
                            }
                        }
                        // The connection was lost and is made again: notices may have
                        // been missed meanwhile, so every stream looks again and every
                        // status is read anew.
                        Ok(None) => {
                            allocator.changed_here();
                            allocator.reported_here(&["*".to_owned()]);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for changes failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            allocator.changed_here();
                            allocator.reported_here(&["*".to_owned()]);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// The version of the last change that concerned `node` (0: none yet).
    pub(crate) fn version_for(&self, node: &str) -> u64 {
        let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        std::cmp::Ord::max(
            touched.nodes.get(node).copied().unwrap_or(0),
            touched.everyone,
        )
    }

    /// A receiver that wakes after every committed change of assignments.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The database the allocator writes to.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Everything `node` must run: one assignment per topology with a slot there, each
    /// holding only that node's slots and the specs they use.
    pub async fn assignments_for_node(
        &self,
        node_name: &str,
    ) -> Result<Vec<TopologyAssignment>, AllocatorError> {
        let rows = assignment::Entity::find()
            .filter(assignment::Column::Node.eq(node_name))
            .all(&self.db)
            .await?;
        let mut by_topology: BTreeMap<TopologyRef, Vec<Placed>> = BTreeMap::new();
        for a in rows {
            let id = TopologyRef {
                tenant: a.tenant.clone(),
                topology: a.topology.clone(),
            };
            by_topology.entry(id).or_default().push(placed_of(a));
        }
        // Old copies of replicas moved off this node run on until the new ones do.
        for (id, old) in self
            .lingering_on(node_name, crate::liveness::now_ms())
            .await?
        {
            let slots = by_topology.entry(id).or_default();
            for (service, replica, generation) in old {
                slots.push(Placed {
                    service,
                    replica,
                    node: node_name.to_owned(),
                    generation,
                    cost: Resources::default(),
                });
            }
        }
        let mut out = Vec::with_capacity(by_topology.len());
        for (id, placed) in by_topology {
            let Some(row) = placement::Entity::find_by_id((id.tenant.clone(), id.topology.clone()))
                .one(&self.db)
                .await?
            else {
                continue;
            };
            let topology: Topology = serde_json::from_str(&row.spec)
                .map_err(|e| AllocatorError::Corrupt(id.clone(), e))?;
            let refs: Vec<&Placed> = placed.iter().collect();
            let mut assignment = assignment_of(&id, row.revision as u64, &topology, &refs);
            assignment.trace = row.traceparent;
            assignment.allow = self.allowances(&id.tenant).await?;
            out.push(assignment);
        }
        Ok(out)
    }

    /// What `node` must run of one topology: only its own slots, and only the specs,
    /// networks and volumes those slots use.
    pub async fn assignment_for(
        &self,
        node_name: &str,
        id: &TopologyRef,
    ) -> Result<Option<TopologyAssignment>, AllocatorError> {
        let Some(row) = placement::Entity::find_by_id((id.tenant.clone(), id.topology.clone()))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let topology: Topology =
            serde_json::from_str(&row.spec).map_err(|e| AllocatorError::Corrupt(id.clone(), e))?;
        let placed: Vec<Placed> = load_placed(&self.db, id)
            .await?
            .into_iter()
            .filter(|p| p.node == node_name)
            .collect();
        let refs: Vec<&Placed> = placed.iter().collect();
        let mut assignment = assignment_of(id, row.revision as u64, &topology, &refs);
        assignment.allow = self.allowances(&id.tenant).await?;
        Ok(Some(assignment))
    }
}

/// Builds a node's assignment from its slots: only the services with a slot there,
/// and the networks and volumes they use.
pub fn assignment_of(
    id: &TopologyRef,
    revision: u64,
    topology: &Topology,
    slots: &[&Placed],
) -> TopologyAssignment {
    let services: BTreeMap<_, _> = topology
        .services
        .iter()
        .filter(|(name, _)| slots.iter().any(|s| &s.service == *name))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let networks = topology
        .networks
        .iter()
        .filter(|(n, _)| services.values().any(|s| s.networks.contains_key(*n)))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let volumes = topology
        .volumes
        .iter()
        .filter(|(n, _)| {
            services.values().any(|s| {
                s.volumes
                    .iter()
                    .any(|m| m.source.as_deref() == Some(n.as_str()))
            })
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut slots: Vec<Slot> = slots
        .iter()
        .map(|p| Slot {
            service: p.service.clone(),
            replica: p.replica,
            generation: p.generation,
        })
        .collect();
    slots.sort();
    TopologyAssignment {
        trace: None,
        links: Vec::new(),
        allow: BTreeSet::new(),
        image_sources: Vec::new(),
        registry_credentials: Vec::new(),
        id: id.clone(),
        revision,
        services,
        networks,
        volumes,
        slots,
    }
}

/// Commits `decision` in `txn`: reserves the quota and each node's capacity with
/// conditional updates (refused if another deploy took them meanwhile), records the
/// slots, the spec placed and the events, and ends the topology's moves. Returns the
/// nodes whose assignments changed.
async fn commit_deploy(
    txn: &sea_orm::DatabaseTransaction,
    inputs: &Inputs,
    decision: &Decision,
    revision: u64,
    topology: &Topology,
    id: &TopologyRef,
) -> Result<Vec<String>, AllocatorError> {
    let tenant = inputs.tenant.as_str();
    // Node capacity is reserved with the quota, all or nothing (node rows in name
    // order, so that concurrent deploys never deadlock).
    let shifts: BTreeMap<String, Delta> = decision
        .nodes
        .iter()
        .map(|(name, (before, after))| (name.clone(), Delta::between(*before, *after)))
        .collect();
    // A node that receives a new replica must still be open: placement may have
    // chosen it from a view older than this transaction.
    let key = |p: &Placed| (p.service.clone(), p.replica, p.node.clone(), p.generation);
    let kept: BTreeSet<_> = inputs.placed.iter().map(key).collect();
    let opening: BTreeSet<String> = decision
        .plan
        .slots
        .iter()
        .filter(|slot| !kept.contains(&key(slot)))
        .map(|slot| slot.node.clone())
        .collect();
    let quota = Delta::between(decision.before, decision.after);
    match reserve(txn, tenant, quota, &shifts, &opening).await? {
        None => {}
        Some(Unreserved::Quota) => {
            // Someone else reserved in between: report against what is used now.
            let row = quota::Entity::find_by_id(tenant.to_owned())
                .one(txn)
                .await?;
            let (limit, used) = row.as_ref().map(quota_parts).unwrap_or_default();
            check_quota(
                tenant,
                used,
                growth(decision.before, decision.after),
                &limit,
            )?;
            return Err(AllocatorError::Contended(format!("quota of {tenant}")));
        }
        Some(Unreserved::Node(full)) => return Err(AllocatorError::Contended(full)),
    }

    // What was placed was read in this transaction, under the tenant's lock: with
    // nothing placed there is nothing to delete.
    if !inputs.placed.is_empty() {
        assignment::Entity::delete_many()
            .filter(assignment::Column::Tenant.eq(tenant))
            .filter(assignment::Column::Topology.eq(&topology.name))
            .exec(txn)
            .await?;
    }
    let next_generation = decision
        .plan
        .slots
        .iter()
        .map(|s| s.generation + 1)
        .max()
        .unwrap_or(inputs.next_generation)
        .max(inputs.next_generation);
    let spec =
        serde_json::to_string(topology).map_err(|e| AllocatorError::Corrupt(id.clone(), e))?;
    let row = placement::Model {
        tenant: tenant.to_owned(),
        topology: topology.name.clone(),
        revision: to_i64(revision),
        spec,
        next_generation: to_i64(next_generation),
        traceparent: berth_telemetry::traceparent(&tracing::Span::current()),
        autoscaled: topology.services.values().any(|s| s.autoscale.is_some()),
    };
    let old_copies = crate::store::write_deploy(
        txn,
        row,
        &decision.plan.slots,
        &decision.events,
        crate::liveness::now_ms(),
    )
    .await?;
    let mut nodes: Vec<String> = decision.nodes.keys().cloned().collect();
    nodes.extend(old_copies);
    Ok(nodes)
}
