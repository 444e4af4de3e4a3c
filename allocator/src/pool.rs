//! The node pool as an admin sees it: each node's capacity, use, labels and state;
//! cordoning and draining; and the statuses nodes report for their replicas, kept in
//! the database so that every gateway replica shows the same.

use std::collections::{BTreeMap, BTreeSet};

use berth_protocol::assignment::TopologyRef;
use berth_protocol::node_api::ReplicaStatus;
use berth_protocol::topology::Topology;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, TransactionTrait,
};

use crate::entity::{assignment, node, placement, replica_status};
use crate::store::to_i64;
use crate::{Allocator, AllocatorError};

pub use berth_api::nodes::{Drained, NodeInfo, NodeState};

/// The latest status a node reported for one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedReplica {
    /// The node that reported it (and runs it).
    pub node: String,
    /// What it said.
    pub status: ReplicaStatus,
}

impl Allocator {
    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, AllocatorError> {
        let rows = node::Entity::find().all(&self.db).await?;
        let mut out: Vec<NodeInfo> = rows
            .into_iter()
            .map(|n| NodeInfo {
                capacity: crate::store::capacity_of(&n),
                used: crate::store::used_on(&n),
                labels: serde_json::from_str(&n.labels).unwrap_or_default(),
                state: match (n.schedulable, n.draining) {
                    _ if n.down_since_ms.is_some() => NodeState::Down,
                    (_, true) => NodeState::Draining,
                    (false, false) => NodeState::Cordoned,
                    (true, false) => NodeState::Active,
                },
                name: n.name,
                address: n.address,
                firewall: n.firewall,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Records what `name` said when it opened its stream: where it serves its node
    /// API and whether it enforces its firewall.
    pub async fn record_announcement(
        &self,
        name: &str,
        address: &str,
        firewall: &str,
    ) -> Result<(), AllocatorError> {
        node::Entity::update_many()
            .col_expr(node::Column::Address, address.into())
            .col_expr(node::Column::Firewall, firewall.into())
            .filter(node::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Every node that serves a node API, with the IP address it serves it at.
    pub async fn node_addresses(&self) -> Result<Vec<(String, String)>, AllocatorError> {
        let rows = node::Entity::find()
            .filter(node::Column::Address.ne(""))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|n| Some((n.name, host_of(&n.address)?)))
            .collect())
    }

    async fn set_node_state(
        &self,
        name: &str,
        schedulable: bool,
        draining: bool,
    ) -> Result<(), AllocatorError> {
        let result = node::Entity::update_many()
            .col_expr(node::Column::Schedulable, schedulable.into())
            .col_expr(node::Column::Draining, draining.into())
            .filter(node::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            return Err(AllocatorError::UnknownNode(name.to_owned()));
        }
        self.loads.stale();
        Ok(())
    }

    /// Cordons a node (no new replicas go there; its own stay) or, with `false`, makes
    /// it active again (which also ends a drain).
    pub async fn cordon(&self, name: &str, cordoned: bool) -> Result<(), AllocatorError> {
        self.set_node_state(name, !cordoned, false).await
    }

    /// Drains a node: cordons it and re-places every topology with a replica there, so
    /// that those replicas start elsewhere under new generations. A topology that does
    /// not fit elsewhere stays as it is and is named in [`Drained::stuck`].
    pub async fn drain(&self, name: &str) -> Result<Drained, AllocatorError> {
        self.set_node_state(name, false, true).await?;
        self.replace_from(name).await
    }

    /// Declares `name` dead at `now_ms`: it takes no replicas and keeps none, so every
    /// topology with a replica there is placed again (under new generations, within
    /// quotas). Returns what moved and what could not. A node already dead is left as
    /// it is (and nothing moves).
    pub async fn declare_dead(&self, name: &str, now_ms: i64) -> Result<Drained, AllocatorError> {
        let result = node::Entity::update_many()
            .col_expr(node::Column::DownSinceMs, Some(now_ms).into())
            .filter(node::Column::Name.eq(name))
            .filter(node::Column::DownSinceMs.is_null())
            .exec(&self.db)
            .await?;
        if result.rows_affected == 0 {
            // Dead already: what could not move then may fit now.
            return self.replace_from(name).await;
        }
        self.loads.stale();
        self.replace_from(name).await
    }

    /// Tries again to place elsewhere what is still on dead or draining nodes (it could
    /// not move when they went, and room may have freed since). Returns what moved and
    /// what is still stuck, node by node.
    pub async fn retry_stuck(&self) -> Result<Vec<(String, Drained)>, AllocatorError> {
        let leaving: Vec<String> = node::Entity::find()
            .filter(
                Condition::any()
                    .add(node::Column::DownSinceMs.is_not_null())
                    .add(node::Column::Draining.eq(true)),
            )
            .all(&self.db)
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect();
        let mut out = Vec::new();
        for name in leaving {
            let drained = self.replace_from(&name).await?;
            if !drained.moved.is_empty() || !drained.stuck.is_empty() {
                out.push((name, drained));
            }
        }
        Ok(out)
    }

    /// Declares a dead node alive again; returns whether it was dead.
    pub async fn declare_alive(&self, name: &str) -> Result<bool, AllocatorError> {
        let result = node::Entity::update_many()
            .col_expr(node::Column::DownSinceMs, Option::<i64>::None.into())
            .filter(node::Column::Name.eq(name))
            .filter(node::Column::DownSinceMs.is_not_null())
            .exec(&self.db)
            .await?;
        if result.rows_affected > 0 {
            self.loads.stale();
        }
        Ok(result.rows_affected > 0)
    }

    /// Places again every topology with a replica on `name`, which placement no longer
    /// lets keep any (draining or dead).
    async fn replace_from(&self, name: &str) -> Result<Drained, AllocatorError> {
        let on_node: BTreeSet<(String, String)> = assignment::Entity::find()
            .filter(assignment::Column::Node.eq(name))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|a| (a.tenant, a.topology))
            .collect();
        let mut drained = Drained::default();
        for (tenant, topology) in on_node {
            let id = TopologyRef { tenant, topology };
            let Some(row) = placement::Entity::find_by_id((id.tenant.clone(), id.topology.clone()))
                .one(&self.db)
                .await?
            else {
                continue; // removed meanwhile
            };
            let spec: Topology = serde_json::from_str(&row.spec)
                .map_err(|e| AllocatorError::Corrupt(id.clone(), e))?;
            let revision = u64::try_from(row.revision).unwrap_or(0);
            match self.deploy(&id.tenant, revision, &spec).await {
                Ok(_) => drained.moved.push(id.to_string()),
                // A newer revision was placed meanwhile, and placed away from here.
                Err(AllocatorError::Stale { .. }) => drained.moved.push(id.to_string()),
                Err(
                    e @ (AllocatorError::Placement(_)
                    | AllocatorError::Quota(_)
                    | AllocatorError::Contended(_)),
                ) => drained.stuck.push(format!("{id}: {e}")),
                Err(e) => return Err(e),
            }
        }
        Ok(drained)
    }

    /// The topology placed under `id`, as it was placed.
    pub async fn placed_spec(&self, id: &TopologyRef) -> Result<Option<Topology>, AllocatorError> {
        let Some(row) = placement::Entity::find_by_id((id.tenant.clone(), id.topology.clone()))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_str(&row.spec)
            .map(Some)
            .map_err(|e| AllocatorError::Corrupt(id.clone(), e))
    }

    /// Records what `node` reported, replica by replica (the caller has checked that
    /// every replica is assigned to it), with an event for each change of state.
    pub async fn record_statuses(
        &self,
        node_name: &str,
        statuses: &[ReplicaStatus],
        now_ms: i64,
    ) -> Result<(), AllocatorError> {
        if statuses.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        match record_in(&txn, node_name, statuses, now_ms).await {
            Ok(()) => {
                txn.commit().await?;
                let topologies: BTreeSet<TopologyRef> = statuses
                    .iter()
                    .map(|s| TopologyRef {
                        tenant: s.tenant.clone(),
                        topology: s.topology.clone(),
                    })
                    .collect();
                self.reported(&topologies.into_iter().collect::<Vec<_>>());
                Ok(())
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// The latest report for each replica of a topology that nodes have reported on.
    pub async fn statuses(&self, id: &TopologyRef) -> Result<Vec<ReportedReplica>, AllocatorError> {
        let rows = replica_status::Entity::find()
            .filter(replica_status::Column::Tenant.eq(&id.tenant))
            .filter(replica_status::Column::Topology.eq(&id.topology))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReportedReplica {
                node: r.node,
                status: ReplicaStatus {
                    cpu_millis: r.cpu_millis.and_then(|c| u32::try_from(c).ok()),
                    tenant: r.tenant,
                    topology: r.topology,
                    service: r.service,
                    replica: u32::try_from(r.replica).unwrap_or(0),
                    generation: u64::try_from(r.generation).unwrap_or(0),
                    state: r.state,
                    detail: r.detail,
                },
            })
            .collect())
    }
}

/// Records `statuses` in `txn`: what changed since the last report becomes events,
/// and each replica's row is written anew.
async fn record_in(
    txn: &sea_orm::DatabaseTransaction,
    node_name: &str,
    statuses: &[ReplicaStatus],
    now_ms: i64,
) -> Result<(), AllocatorError> {
    let topologies: BTreeSet<(&str, &str)> = statuses
        .iter()
        .map(|s| (s.tenant.as_str(), s.topology.as_str()))
        .collect();
    if let Some(first) = topologies.first() {
        write_first(txn, *first).await?;
    }
    let previous = previous_states(txn, &topologies).await?;
    let mut changes: BTreeMap<(String, String), (TopologyRef, Vec<crate::events::Event>)> =
        BTreeMap::new();
    for (id, event) in crate::events::state_events(node_name, &previous, statuses) {
        changes
            .entry((id.tenant.clone(), id.topology.clone()))
            .or_insert_with(|| (id, Vec::new()))
            .1
            .push(event);
    }
    for (id, events) in changes.values() {
        crate::events::record(txn, id, events, now_ms).await?;
    }
    upsert_statuses(txn, node_name, statuses, now_ms).await
}

/// On SQLite, writes before reading: a transaction that reads and then writes fails
/// at once there, busy timeout or not, when another writer committed in between; one
/// that starts with a write (this one changes nothing) waits its turn for the
/// database's one write lock.
async fn write_first(
    txn: &sea_orm::DatabaseTransaction,
    (tenant, topology): (&str, &str),
) -> Result<(), AllocatorError> {
    if txn.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
        return Ok(());
    }
    replica_status::Entity::update_many()
        .col_expr(
            replica_status::Column::State,
            Expr::col(replica_status::Column::State),
        )
        .filter(replica_status::Column::Tenant.eq(tenant))
        .filter(replica_status::Column::Topology.eq(topology))
        .exec(txn)
        .await?;
    Ok(())
}

/// What was last reported of each replica of `topologies`: its generation and state.
async fn previous_states(
    txn: &sea_orm::DatabaseTransaction,
    topologies: &BTreeSet<(&str, &str)>,
) -> Result<std::collections::HashMap<(String, String, String, u32), (u64, String)>, AllocatorError>
{
    let mut previous = std::collections::HashMap::new();
    for (tenant, topology) in topologies {
        let rows = replica_status::Entity::find()
            .filter(replica_status::Column::Tenant.eq(*tenant))
            .filter(replica_status::Column::Topology.eq(*topology))
            .all(txn)
            .await?;
        for r in rows {
            let replica = u32::try_from(r.replica).unwrap_or(0);
            let generation = u64::try_from(r.generation).unwrap_or(0);
            previous.insert(
                (r.tenant, r.topology, r.service, replica),
                (generation, r.state),
            );
        }
    }
    Ok(previous)
}

/// Writes each replica's latest report, replacing the one before.
async fn upsert_statuses(
    txn: &sea_orm::DatabaseTransaction,
    node_name: &str,
    statuses: &[ReplicaStatus],
    now_ms: i64,
) -> Result<(), AllocatorError> {
    for chunk in statuses.chunks(500) {
        let rows = chunk.iter().map(|r| replica_status::ActiveModel {
            tenant: Set(r.tenant.clone()),
            topology: Set(r.topology.clone()),
            service: Set(r.service.clone()),
            replica: Set(i64::from(r.replica)),
            node: Set(node_name.to_owned()),
            generation: Set(to_i64(r.generation)),
            state: Set(r.state.clone()),
            detail: Set(r.detail.clone()),
            reported_at_ms: Set(now_ms),
            cpu_millis: Set(r.cpu_millis.map(i64::from)),
        });
        replica_status::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::columns([
                    replica_status::Column::Tenant,
                    replica_status::Column::Topology,
                    replica_status::Column::Service,
                    replica_status::Column::Replica,
                ])
                .update_columns([
                    replica_status::Column::Node,
                    replica_status::Column::Generation,
                    replica_status::Column::State,
                    replica_status::Column::Detail,
                    replica_status::Column::ReportedAtMs,
                    replica_status::Column::CpuMillis,
                ])
                .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// The IP address in a node API URL (`https://10.0.0.2:7443` → `10.0.0.2`); None for a
/// name rather than an address, or no URL.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod address_tests {
    use super::host_of;

    #[test]
    fn the_address_of_a_node_api_url_is_its_ip() {
        assert_eq!(
            host_of("https://10.0.0.2:7443").as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            host_of("http://[fd00::2]:7443/").as_deref(),
            Some("fd00::2")
        );
        assert_eq!(host_of("10.0.0.3:1").as_deref(), Some("10.0.0.3"));
        assert_eq!(host_of("https://node-2.example:7443"), None);
        assert_eq!(host_of(""), None);
    }
}
