//! Rebalancing: when nodes join, come back or the load skews, the leader moves
//! replicas from the open node with the most containers to the one with the fewest,
//! one slot at a time, until no two open nodes differ by more than one container (or
//! nothing more may move).
//!
//! A move starts before it stops. In one transaction the slot is given to the new
//! node under a new generation, capacity moves with it, and the old copy is recorded
//! as lingering: the old node keeps it in its assignment set, so it keeps running.
//! When the new node reports the new copy running, the lingering row goes and the old
//! node, told of the change, removes its copy. If the new copy never runs, the old one
//! goes after [`LINGER`] anyway, and a deploy of the topology ends its moves at once.
//!
//! The disruption budget: a service never has more than `budget` replicas that are
//! moving or not running, so a service with a replica down is left alone, and with
//! the default budget of one, its replicas move one after another.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use berth_protocol::assignment::TopologyRef;
use berth_protocol::node_api::ReplicaStatus;
use berth_protocol::topology::Topology;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};

use crate::control::{Controller, Next, Now};
use crate::entity::{assignment, lingering, placement, replica_status};
use crate::placement::NodeView;
use crate::resources::Resources;
use crate::store::{Delta, all_nodes, lock_tenant, shift_nodes, to_i64, used_of};
use crate::{Allocator, AllocatorError};

/// How long an old copy may outlive its move when the new copy does not run.
pub const LINGER: Duration = Duration::from_secs(120);

/// At most this many moves per round, so one round stays short.
const MOST_MOVES_PER_ROUND: usize = 32;

/// One replica moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Its topology.
    pub id: TopologyRef,
    /// Its service.
    pub service: String,
    /// Its number.
    pub replica: u32,
    /// The node it left (which runs the old copy until the new one runs).
    pub from: String,
    /// The node it went to.
    pub to: String,
}

/// The rebalancing loop: a round every `every`, with at most `budget` replicas of a
/// service moving or down at once.
#[derive(Debug)]
pub struct Rebalancer {
    allocator: Allocator,
    budget: u32,
    every: Duration,
}

impl Rebalancer {
    /// A loop over `allocator`'s pool.
    pub fn new(allocator: Allocator, every: Duration, budget: u32) -> Self {
        Self {
            allocator,
            budget,
            every,
        }
    }
}

impl Controller for Rebalancer {
    const NAME: &'static str = "rebalancer";

    async fn step(&mut self, now: Now) -> Next {
        match self.allocator.rebalance(self.budget, now.wall_ms).await {
            Ok(moved) => {
                for m in moved {
                    tracing::info!(topology = %m.id, service = %m.service, replica = m.replica, from = %m.from, to = %m.to, "moved to even the load");
                }
            }
            Err(e) => tracing::warn!(error = %e, "a rebalancing round failed"),
        }
        Next::After(self.every)
    }
}

/// The open node with the most containers and the one with the fewest, when they
/// differ by two or more (moving one replica then evens them out); ties go to the
/// name first in order, so a round is the same whatever order the nodes were read in.
pub(crate) fn uneven_pair(load: &BTreeMap<String, u64>) -> Option<(String, String)> {
    let (busiest, most) = load
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(*n)))?;
    let (idlest, fewest) = load.iter().min_by_key(|(n, c)| (**c, *n))?;
    (*most >= fewest + 2).then(|| (busiest.clone(), idlest.clone()))
}

/// Whether one more replica of a service may move, with `in_flight` of its replicas
/// moving already and `down` not running: the disruption budget counts both.
pub(crate) fn within_budget(in_flight: u32, down: u32, budget: u32) -> bool {
    in_flight.saturating_add(down) < budget
}

/// What one rebalancing round carries from move to move.
struct Round {
    /// The most replicas of a service moving or down at once.
    budget: u32,
    /// Moves in flight, by tenant, topology and service.
    moving: HashMap<(String, String, String), u32>,
    /// The placed specs read so far.
    specs: HashMap<TopologyRef, Topology>,
}

impl Allocator {
    /// One rebalancing round: old copies whose wait ran out go, then replicas move
    /// from the fullest open node to the emptiest while they differ by two or more.
    pub async fn rebalance(&self, budget: u32, now_ms: i64) -> Result<Vec<Moved>, AllocatorError> {
        let db = self.connection();
        self.end_expired_moves(now_ms).await?;

        let open: Vec<_> = all_nodes(db)
            .await?
            .into_iter()
            .filter(|n| n.schedulable && !n.draining)
            .collect();
        if open.len() < 2 {
            return Ok(Vec::new());
        }
        let mut load: BTreeMap<String, u64> = open
            .iter()
            .map(|n| (n.name.clone(), n.used.containers))
            .collect();
        let mut moving: HashMap<(String, String, String), u32> = HashMap::new();
        for l in lingering::Entity::find().all(db).await? {
            *moving.entry((l.tenant, l.topology, l.service)).or_default() += 1;
        }
        let mut round = Round {
            budget,
            moving,
            specs: HashMap::new(),
        };
        let mut moved = Vec::new();
        while moved.len() < MOST_MOVES_PER_ROUND {
            let Some((busiest, idlest)) = uneven_pair(&load) else {
                break;
            };
            let target = open
                .iter()
                .find(|n| n.name == idlest)
                .expect("the idlest node is open");
            let Some(one) = self.move_one(&busiest, target, &mut round, now_ms).await? else {
                break; // nothing on the fullest node may move now
            };
            *load.entry(busiest.clone()).or_default() -= 1;
            *load.entry(idlest.clone()).or_default() += 1;
            self.touch(&[busiest, idlest]);
            moved.push(one);
        }
        if !moved.is_empty() {
            self.loads.due();
        }
        Ok(moved)
    }

    /// Moves the first replica on `busiest` that may go to `target`: its service
    /// within the disruption budget (counting its moves in flight and its replicas
    /// not running) and its constraints allowing `target`. None when none may.
    async fn move_one(
        &self,
        busiest: &str,
        target: &NodeView,
        round: &mut Round,
        now_ms: i64,
    ) -> Result<Option<Moved>, AllocatorError> {
        let slots = assignment::Entity::find()
            .filter(assignment::Column::Node.eq(busiest))
            .order_by_asc(assignment::Column::Tenant)
            .order_by_asc(assignment::Column::Topology)
            .order_by_asc(assignment::Column::Service)
            .order_by_asc(assignment::Column::Replica)
            .all(self.connection())
            .await?;
        for slot in slots {
            let key = (
                slot.tenant.clone(),
                slot.topology.clone(),
                slot.service.clone(),
            );
            let in_flight = round.moving.get(&key).copied().unwrap_or(0);
            if !within_budget(in_flight, 0, round.budget) {
                continue;
            }
            let id = TopologyRef {
                tenant: slot.tenant.clone(),
                topology: slot.topology.clone(),
            };
            let down = self.not_running(&id, &slot.service).await?;
            if !within_budget(in_flight, down, round.budget) {
                continue;
            }
            if !round.specs.contains_key(&id) {
                let Some(spec) = self.placed_spec(&id).await? else {
                    continue;
                };
                round.specs.insert(id.clone(), spec);
            }
            let allowed = round.specs[&id]
                .services
                .get(&slot.service)
                .is_some_and(|s| {
                    s.constraints
                        .iter()
                        .all(|c| c.allows(&target.name, &target.labels))
                });
            if allowed && self.move_slot(&slot, &target.name, now_ms).await? {
                *round.moving.entry(key).or_default() += 1;
                return Ok(Some(Moved {
                    replica: u32::try_from(slot.replica).unwrap_or(0),
                    service: slot.service,
                    id,
                    from: busiest.to_owned(),
                    to: target.name.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Ends the moves whose old copies waited [`LINGER`] for their new ones: the old
    /// copies go, and their nodes are told.
    async fn end_expired_moves(&self, now_ms: i64) -> Result<(), AllocatorError> {
        let db = self.connection();
        let expired = lingering::Entity::find()
            .filter(lingering::Column::UntilMs.lte(now_ms))
            .all(db)
            .await?;
        if expired.is_empty() {
            return Ok(());
        }
        lingering::Entity::delete_many()
            .filter(lingering::Column::UntilMs.lte(now_ms))
            .exec(db)
            .await?;
        let nodes: BTreeSet<String> = expired.into_iter().map(|l| l.node).collect();
        self.touch(&nodes.into_iter().collect::<Vec<_>>());
        Ok(())
    }

    /// How many of `service`'s replicas in `id` are not reported running under the
    /// generation they are placed under, leaving out those moving (their old copies
    /// run; the budget counts them as moving).
    async fn not_running(&self, id: &TopologyRef, service: &str) -> Result<u32, AllocatorError> {
        let db = self.connection();
        let moving: BTreeSet<i64> = lingering::Entity::find()
            .filter(lingering::Column::Tenant.eq(&id.tenant))
            .filter(lingering::Column::Topology.eq(&id.topology))
            .filter(lingering::Column::Service.eq(service))
            .all(db)
            .await?
            .into_iter()
            .map(|l| l.replica)
            .collect();
        let slots = assignment::Entity::find()
            .filter(assignment::Column::Tenant.eq(&id.tenant))
            .filter(assignment::Column::Topology.eq(&id.topology))
            .filter(assignment::Column::Service.eq(service))
            .all(db)
            .await?;
        let statuses: HashMap<i64, (i64, String)> = replica_status::Entity::find()
            .filter(replica_status::Column::Tenant.eq(&id.tenant))
            .filter(replica_status::Column::Topology.eq(&id.topology))
            .filter(replica_status::Column::Service.eq(service))
            .all(db)
            .await?
            .into_iter()
            .map(|s| (s.replica, (s.generation, s.state)))
            .collect();
        let down = slots
            .iter()
            .filter(|a| !moving.contains(&a.replica))
            .filter(|a| {
                statuses.get(&a.replica).is_none_or(|(g, state)| {
                    *g != a.generation
                        || !berth_protocol::replica::ReplicaState::parse(state).is_running()
                })
            })
            .count();
        Ok(u32::try_from(down).unwrap_or(u32::MAX))
    }

    /// Gives `slot` to node `to` under a new generation, leaving its old copy
    /// lingering where it was; false if it changed meanwhile or `to` has no room.
    async fn move_slot(
        &self,
        slot: &assignment::Model,
        to: &str,
        now_ms: i64,
    ) -> Result<bool, AllocatorError> {
        let txn = self.connection().begin().await?;
        let result = async {
            // Serialise with the tenant's deploys, which rewrite its slots.
            lock_tenant(&txn, &slot.tenant).await?;
            let key = (
                slot.tenant.clone(),
                slot.topology.clone(),
                slot.service.clone(),
                slot.replica,
            );
            let Some(current) = assignment::Entity::find_by_id(key).one(&txn).await? else {
                return Ok(false);
            };
            if current.node != slot.node || current.generation != slot.generation {
                return Ok(false);
            }
            let cost = Resources {
                cpu_millis: used_of(current.cpu_millis),
                memory_bytes: used_of(current.memory_bytes),
                containers: 1,
            };
            if current.node == to {
                return Ok(false);
            }
            // Both nodes in one shift, which locks their rows in name order as a
            // deploy does: taken one after the other, the move could hold one node a
            // deploy of another tenant waits for while waiting for one that deploy
            // holds.
            let shifts = BTreeMap::from([
                (to.to_owned(), Delta::between(Resources::default(), cost)),
                (current.node.clone(), Delta::between(cost, Resources::default())),
            ]);
            if shift_nodes(&txn, &shifts, &BTreeSet::from([to.to_owned()]))
                .await?
                .is_some()
            {
                return Ok(false);
            }
            let Some(row) =
                placement::Entity::find_by_id((current.tenant.clone(), current.topology.clone()))
                    .one(&txn)
                    .await?
            else {
                return Ok(false);
            };
            let generation = Ord::max(row.next_generation, 1);
            placement::Entity::update_many()
                .col_expr(placement::Column::NextGeneration, (generation + 1).into())
                .filter(placement::Column::Tenant.eq(&current.tenant))
                .filter(placement::Column::Topology.eq(&current.topology))
                .exec(&txn)
                .await?;
            let mut moved: assignment::ActiveModel = current.clone().into();
            moved.node = Set(to.to_owned());
            moved.generation = Set(generation);
            assignment::Entity::update(moved).exec(&txn).await?;
            lingering::Entity::insert(lingering::ActiveModel {
                tenant: Set(current.tenant.clone()),
                topology: Set(current.topology.clone()),
                service: Set(current.service.clone()),
                replica: Set(current.replica),
                node: Set(current.node.clone()),
                generation: Set(current.generation),
                until_ms: Set(now_ms + to_i64(LINGER.as_millis() as u64)),
            })
            .exec_without_returning(&txn)
            .await?;
            let id = TopologyRef {
                tenant: current.tenant.clone(),
                topology: current.topology.clone(),
            };
            let event = crate::events::Event {
                at_ms: now_ms,
                kind: crate::events::EventKind::Rescheduled,
                service: current.service.clone(),
                replica: u32::try_from(current.replica).unwrap_or(0),
                generation: u64::try_from(generation).unwrap_or(0),
                node: to.to_owned(),
                detail: format!(
                    "moved from {} to {to} to even the load; the old copy runs until the new one does",
                    current.node
                ),
            };
            crate::events::record(&txn, &id, &[event], now_ms).await?;
            Ok::<_, AllocatorError>(true)
        }
        .await;
        match result {
            Ok(true) => {
                txn.commit().await?;
                Ok(true)
            }
            Ok(false) => {
                let _ = txn.rollback().await;
                Ok(false)
            }
            // Another writer got there first (a busy database, a serialisation
            // failure): leave it for the next round.
            Err(AllocatorError::Database(e)) => {
                tracing::debug!(error = %e, "a move gave way to another writer");
                let _ = txn.rollback().await;
                Ok(false)
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// The old copies lingering on `node` now, by topology: (service, replica,
    /// generation).
    pub(crate) async fn lingering_on(
        &self,
        node: &str,
        now_ms: i64,
    ) -> Result<BTreeMap<TopologyRef, Vec<(String, u32, u64)>>, AllocatorError> {
        let rows = lingering::Entity::find()
            .filter(lingering::Column::Node.eq(node))
            .filter(lingering::Column::UntilMs.gt(now_ms))
            .all(self.connection())
            .await?;
        let mut out: BTreeMap<TopologyRef, Vec<(String, u32, u64)>> = BTreeMap::new();
        for l in rows {
            out.entry(TopologyRef {
                tenant: l.tenant,
                topology: l.topology,
            })
            .or_default()
            .push((
                l.service,
                u32::try_from(l.replica).unwrap_or(0),
                u64::try_from(l.generation).unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// Splits a report from `node` into what it says of the slots it holds now and
    /// what it says of old copies lingering there (which are not the replica's status).
    /// Then ends every move whose new copy the report says runs: the old node is told,
    /// and removes its copy.
    pub async fn settle_moves(
        &self,
        node: &str,
        statuses: Vec<ReplicaStatus>,
        now_ms: i64,
    ) -> Result<Vec<ReplicaStatus>, AllocatorError> {
        let db = self.connection();
        let lingering_here = self.lingering_on(node, now_ms).await?;
        let (old, current): (Vec<_>, Vec<_>) = statuses.into_iter().partition(|s| {
            let id = TopologyRef {
                tenant: s.tenant.clone(),
                topology: s.topology.clone(),
            };
            lingering_here.get(&id).is_some_and(|l| {
                l.iter()
                    .any(|(svc, r, g)| *svc == s.service && *r == s.replica && *g == s.generation)
            })
        });
        drop(old);
        // The moves of the topologies this report speaks of (one query each, and
        // usually none), then the running new copies among them.
        let topologies: BTreeSet<(&str, &str)> = current
            .iter()
            .filter(|s| berth_protocol::replica::ReplicaState::parse(&s.state).is_running())
            .map(|s| (s.tenant.as_str(), s.topology.as_str()))
            .collect();
        let mut moves: HashMap<(String, String, String, i64), lingering::Model> = HashMap::new();
        for (tenant, topology) in topologies {
            for l in lingering::Entity::find()
                .filter(lingering::Column::Tenant.eq(tenant))
                .filter(lingering::Column::Topology.eq(topology))
                .all(db)
                .await?
            {
                let key = (
                    l.tenant.clone(),
                    l.topology.clone(),
                    l.service.clone(),
                    l.replica,
                );
                moves.insert(key, l);
            }
        }
        let mut told = BTreeSet::new();
        for s in current
            .iter()
            .filter(|s| berth_protocol::replica::ReplicaState::parse(&s.state).is_running())
        {
            let key = (
                s.tenant.clone(),
                s.topology.clone(),
                s.service.clone(),
                i64::from(s.replica),
            );
            let Some(moving) = moves.remove(&key) else {
                continue;
            };
            let placed = assignment::Entity::find_by_id(key.clone()).one(db).await?;
            let runs_new_copy =
                placed.is_some_and(|a| a.node == node && a.generation == to_i64(s.generation));
            if runs_new_copy && moving.node != node {
                lingering::Entity::delete_by_id(key).exec(db).await?;
                told.insert(moving.node);
            }
        }
        if !told.is_empty() {
            self.touch(&told.into_iter().collect::<Vec<_>>());
        }
        Ok(current)
    }
}

#[cfg(test)]
mod pure_tests {
    use super::*;

    fn load(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn the_fullest_gives_to_the_emptiest_only_when_they_differ_by_two() {
        assert_eq!(
            uneven_pair(&load(&[("a", 5), ("b", 1), ("c", 3)])),
            Some(("a".to_owned(), "b".to_owned()))
        );
        assert_eq!(uneven_pair(&load(&[("a", 2), ("b", 1)])), None);
        assert_eq!(uneven_pair(&load(&[("a", 4)])), None);
        assert_eq!(uneven_pair(&load(&[])), None);
    }

    #[test]
    fn ties_are_broken_by_name_whatever_the_order() {
        assert_eq!(
            uneven_pair(&load(&[("z", 4), ("a", 4), ("m", 0), ("b", 0)])),
            Some(("a".to_owned(), "b".to_owned()))
        );
    }

    #[test]
    fn the_budget_counts_moving_and_down_replicas_alike() {
        assert!(within_budget(0, 0, 1));
        assert!(!within_budget(1, 0, 1));
        assert!(!within_budget(0, 1, 1));
        assert!(within_budget(1, 0, 2));
        assert!(!within_budget(0, 0, 0), "a budget of zero moves nothing");
    }
}
