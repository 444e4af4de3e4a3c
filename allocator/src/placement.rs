//! Placement: which node runs each replica of a topology. Pure; the allocator's
//! service loads the inputs and commits the result.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use berth_protocol::topology::Constraint;

use crate::resources::{Limit, Resources};

/// A node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// What it can hold.
    pub capacity: Limit,
    /// What is placed on it already (this topology's current slots included).
    pub used: Resources,
    /// Whether new replicas may go there (not cordoned, alive).
    pub schedulable: bool,
    /// Whether its replicas must move away (drained).
    pub draining: bool,
    /// The labels it joined with, for constraints.
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    fn allows(&self, want: &Want) -> bool {
        want.constraints
            .iter()
            .all(|c| c.allows(&self.name, &self.labels))
    }
}

/// A replica that should exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// The service.
    pub service: String,
    /// The replica number, from 1.
    pub replica: u32,
    /// What it reserves.
    pub cost: Resources,
    /// Which nodes may run it; all must hold.
    pub constraints: Vec<Constraint>,
}

impl Want {
    /// Whether `other` asks for the same nodes and room (another replica of the
    /// same service, as a rule): then both choose from the same candidates.
    fn asks_as(&self, other: &Want) -> bool {
        self.service == other.service
            && self.cost == other.cost
            && self.constraints == other.constraints
    }
}

/// A replica that is placed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The service.
    pub service: String,
    /// The replica number.
    pub replica: u32,
    /// Its node.
    pub node: String,
    /// The generation it was placed under.
    pub generation: u64,
    /// What it reserves.
    pub cost: Resources,
}

/// The outcome: every wanted replica with its node, and what to release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Every wanted replica, placed (kept where it was, or new with a new generation).
    pub slots: Vec<Placed>,
    /// Currently placed replicas that are no longer wanted.
    pub released: Vec<Placed>,
}

/// Why a replica could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No schedulable node has room for it.
    #[error("no node has room for {service} replica {replica} (it needs {cpu} CPU millis, {memory} bytes of memory and one container slot){}", if *schedulable_nodes == 0 { "; there is no schedulable node" } else { "" })]
    NoCapacity {
        /// The service.
        service: String,
        /// The replica.
        replica: u32,
        /// CPU asked for.
        cpu: u64,
        /// Memory asked for.
        memory: u64,
        /// How many nodes were eligible at all.
        schedulable_nodes: usize,
    },
    /// No schedulable node satisfies the service's constraints, whatever its room.
    #[error("no schedulable node satisfies the constraints of {service} ({constraints})")]
    NoMatch {
        /// The service.
        service: String,
        /// The constraints, as written.
        constraints: String,
    },
}

/// Places `wants` given what is `placed` now. A replica stays where it is when its node
/// is still schedulable and it still fits (its cost may have changed); otherwise it is
/// placed anew, on the node with the fewest replicas of the same service (spread), then
/// the most free capacity, then by name. New placements take generations from
/// `next_generation` upwards.
pub fn place(
    wants: &[Want],
    placed: &[Placed],
    nodes: &[NodeView],
    next_generation: u64,
) -> Result<Placement, PlacementError> {
    // The nodes in name order (a name given twice: the last), looked up by index: a
    // new replica's choice looks at every candidate, so it compares numbers, not names.
    let mut nodes: Vec<NodeView> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .cloned()
        .collect();
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let current: BTreeMap<(&str, u32), &Placed> = placed
        .iter()
        .map(|p| ((p.service.as_str(), p.replica), p))
        .collect();
    // Start from usage without this topology's current slots; add back what is kept.
    for p in placed {
        if let Some(&i) = index.get(&p.node) {
            nodes[i].used = nodes[i].used.minus(p.cost);
        }
    }
    let wanted: BTreeSet<(&str, u32)> = wants
        .iter()
        .map(|w| (w.service.as_str(), w.replica))
        .collect();
    let released: Vec<Placed> = placed
        .iter()
        .filter(|p| !wanted.contains(&(p.service.as_str(), p.replica)))
        .cloned()
        .collect();

    let mut slots = Vec::with_capacity(wants.len());
    // How many replicas of each service each node holds, by node index.
    let mut per_service: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut homeless = Vec::new();
    for want in wants {
        let kept = current
            .get(&(want.service.as_str(), want.replica))
            .and_then(|p| {
                let i = *index.get(&p.node)?;
                let node = &mut nodes[i];
                let after = node.used.plus(want.cost);
                let stays = !node.draining && node.allows(want) && after.fits(&node.capacity);
                stays.then(|| {
                    node.used = after;
                    (
                        i,
                        Placed {
                            cost: want.cost,
                            ..(*p).clone()
                        },
                    )
                })
            });
        match kept {
            Some((i, slot)) => {
                count(&mut per_service, &want.service, i, nodes.len());
                slots.push(slot);
            }
            None => homeless.push(want),
        }
    }
    let open = |n: &NodeView| n.schedulable && !n.draining;
    let schedulable_nodes = nodes.iter().filter(|n| open(n)).count();
    // Replicas that ask the same (a service's, one after another) choose from one heap
    // of the nodes with room for them, keyed by fewest replicas of the service, then the
    // least load, then the name (the index, since the nodes are in name order): only the
    // node just chosen changes its key, so each choice costs a logarithm, not a look at
    // every candidate.
    let mut choices = BinaryHeap::new();
    let mut asking: Option<&Want> = None;
    for (generation, want) in (next_generation..).zip(homeless) {
        if asking.is_none_or(|a| !a.asks_as(want)) {
            asking = Some(want);
            let spread = per_service.get(want.service.as_str());
            choices = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    open(n) && n.allows(want) && n.used.plus(want.cost).fits(&n.capacity)
                })
                .map(|(i, n)| Reverse(Choice::of(spread.map_or(0, |s| s[i]), n, i)))
                .collect();
        }
        let Some(Reverse(choice)) = choices.pop() else {
            if !nodes.iter().any(|n| open(n) && n.allows(want)) {
                let constraints: Vec<String> =
                    want.constraints.iter().map(ToString::to_string).collect();
                return Err(PlacementError::NoMatch {
                    service: want.service.clone(),
                    constraints: constraints.join(", "),
                });
            }
            return Err(PlacementError::NoCapacity {
                service: want.service.clone(),
                replica: want.replica,
                cpu: want.cost.cpu_millis,
                memory: want.cost.memory_bytes,
                schedulable_nodes,
            });
        };
        let i = choice.index;
        let node = &mut nodes[i];
        node.used = node.used.plus(want.cost);
        slots.push(Placed {
            service: want.service.clone(),
            replica: want.replica,
            node: node.name.clone(),
            generation,
            cost: want.cost,
        });
        if node.used.plus(want.cost).fits(&node.capacity) {
            choices.push(Reverse(Choice::of(choice.spread + 1, node, i)));
        }
        count(&mut per_service, &want.service, i, nodes.len());
    }
    Ok(Placement { slots, released })
}

/// A node as a new replica's choice: fewest replicas of its service first, then the
/// least load, then the first in name order.
#[derive(Clone, Copy, Debug)]
struct Choice {
    spread: u32,
    load: f64,
    index: usize,
}

impl Choice {
    fn of(spread: u32, node: &NodeView, index: usize) -> Self {
        Self {
            spread,
            load: load(node),
            index,
        }
    }
}

impl Ord for Choice {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.spread
            .cmp(&other.spread)
            .then_with(|| self.load.total_cmp(&other.load))
            .then_with(|| self.index.cmp(&other.index))
    }
}

impl PartialOrd for Choice {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Choice {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Choice {}

/// Counts one more replica of `service` on the node at index `i` of `len` nodes.
fn count<'a>(per_service: &mut HashMap<&'a str, Vec<u32>>, service: &'a str, i: usize, len: usize) {
    per_service.entry(service).or_insert_with(|| vec![0; len])[i] += 1;
}

/// The busiest dimension's fraction of capacity (0 where unlimited).
fn load(n: &NodeView) -> f64 {
    let frac = |used: u64, cap: Option<u64>| {
        cap.filter(|c| *c > 0)
            .map_or(0.0, |c| used as f64 / c as f64)
    };
    frac(n.used.cpu_millis, n.capacity.cpu_millis)
        .max(frac(n.used.memory_bytes, n.capacity.memory_bytes))
        .max(frac(n.used.containers, n.capacity.containers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, containers: u64) -> NodeView {
        NodeView {
            name: name.into(),
            capacity: Limit {
                cpu_millis: Some(4000),
                memory_bytes: None,
                containers: Some(containers),
            },
            used: Resources::default(),
            schedulable: true,
            draining: false,
            labels: BTreeMap::new(),
        }
    }

    fn want(service: &str, replica: u32, cpu: u64) -> Want {
        Want {
            service: service.into(),
            replica,
            cost: Resources {
                cpu_millis: cpu,
                memory_bytes: 0,
                containers: 1,
            },
            constraints: Vec::new(),
        }
    }

    #[test]
    fn replicas_spread_across_nodes() {
        let nodes = [node("a", 10), node("b", 10), node("c", 10)];
        let wants: Vec<_> = (1..=3).map(|r| want("web", r, 100)).collect();
        let p = place(&wants, &[], &nodes, 1).unwrap();
        let used: BTreeSet<_> = p.slots.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(used.len(), 3);
        assert_eq!(
            p.slots.iter().map(|s| s.generation).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn placed_replicas_stay_and_keep_their_generation() {
        let nodes = [node("a", 10), node("b", 10)];
        let first = place(&[want("web", 1, 100)], &[], &nodes, 1).unwrap();
        let again = place(
            &[want("web", 1, 100), want("web", 2, 100)],
            &first.slots,
            &nodes,
            2,
        )
        .unwrap();
        assert_eq!(again.slots[0], first.slots[0]);
        assert_eq!(again.slots[1].generation, 2);
        assert_ne!(again.slots[1].node, again.slots[0].node);
    }

    #[test]
    fn cordoned_nodes_keep_their_replicas_and_drained_ones_lose_them() {
        let mut nodes = vec![node("a", 10), node("b", 10)];
        let first = place(&[want("web", 1, 100)], &[], &nodes, 1).unwrap();
        let home = first.slots[0].node.clone();
        let at_home = nodes.iter().position(|n| n.name == home).unwrap();
        nodes[at_home].schedulable = false;
        let wants = [want("web", 1, 100), want("web", 2, 100)];
        let cordoned = place(&wants, &first.slots, &nodes, 5).unwrap();
        assert_eq!(cordoned.slots[0], first.slots[0]);
        assert_ne!(
            cordoned.slots[1].node, home,
            "a new replica went to a cordoned node"
        );
        nodes[at_home].draining = true;
        let drained = place(&wants, &cordoned.slots, &nodes, 7).unwrap();
        assert!(drained.slots.iter().all(|s| s.node != home));
        let moved = drained.slots.iter().find(|s| s.replica == 1).unwrap();
        assert_eq!(moved.generation, 7);
    }

    #[test]
    fn constraints_choose_the_nodes() {
        let mut nodes = vec![node("a", 10), node("b", 10), node("c", 10)];
        nodes[1].labels.insert("disk".into(), "ssd".into());
        let mut db = want("db", 1, 100);
        db.constraints = vec![Constraint::parse("node.labels.disk == ssd").unwrap()];
        let p = place(&[db.clone()], &[], &nodes, 1).unwrap();
        assert_eq!(p.slots[0].node, "b");
        // A replica whose node no longer satisfies the constraints moves.
        db.constraints = vec![Constraint::parse("node.hostname == c").unwrap()];
        let moved = place(&[db.clone()], &p.slots, &nodes, 2).unwrap();
        assert_eq!(moved.slots[0].node, "c");
        db.constraints = vec![Constraint::parse("node.labels.gpu == yes").unwrap()];
        let e = place(&[db], &[], &nodes, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no schedulable node satisfies the constraints of db (node.labels.gpu == yes)"
        );
    }

    #[test]
    fn no_room_is_an_error_naming_the_replica() {
        let nodes = [node("a", 1)];
        let e = place(&[want("web", 1, 100), want("web", 2, 100)], &[], &nodes, 1).unwrap_err();
        assert!(e.to_string().contains("web replica 2"), "{e}");
    }

    #[test]
    fn released_slots_are_those_no_longer_wanted() {
        let nodes = [node("a", 10)];
        let first = place(&[want("web", 1, 0), want("web", 2, 0)], &[], &nodes, 1).unwrap();
        let again = place(&[want("web", 1, 0)], &first.slots, &nodes, 3).unwrap();
        assert_eq!(again.released.len(), 1);
        assert_eq!(again.released[0].replica, 2);
    }

    proptest! {
        /// For random pools and demands: no node over capacity, and placement fails
        /// only when the total demand really cannot fit by containers count.
        #[test]
        fn never_over_capacity(
            caps in prop::collection::vec((1u64..8, 500u64..4000), 1..8),
            demands in prop::collection::vec((0usize..4, 0u64..1500), 0..40),
        ) {
            let nodes: Vec<NodeView> = caps.iter().enumerate().map(|(i, (n, cpu))| NodeView {
                name: format!("n{i}"),
                capacity: Limit { cpu_millis: Some(*cpu), memory_bytes: None, containers: Some(*n) },
                used: Resources::default(),
                schedulable: true,
                draining: false,
                labels: BTreeMap::new(),
            }).collect();
            let wants: Vec<Want> = demands.iter().enumerate().map(|(i, (s, cpu))| want(&format!("s{s}"), i as u32 + 1, *cpu)).collect();
            match place(&wants, &[], &nodes, 1) {
                Ok(p) => {
                    prop_assert_eq!(p.slots.len(), wants.len());
                    for n in &nodes {
                        let on: Vec<_> = p.slots.iter().filter(|s| s.node == n.name).collect();
                        prop_assert!(on.len() as u64 <= n.capacity.containers.unwrap());
                        prop_assert!(on.iter().map(|s| s.cost.cpu_millis).sum::<u64>() <= n.capacity.cpu_millis.unwrap());
                    }
                }
                Err(PlacementError::NoMatch { .. }) => prop_assert!(false, "no constraints were set"),
                Err(PlacementError::NoCapacity { service, replica, .. }) => {
                    // A refusal is never spurious: the replicas before the refused one
                    // place, and then no node has room left for it.
                    let i = wants.iter().position(|w| w.service == service && w.replica == replica).unwrap();
                    let before = place(&wants[..i], &[], &nodes, 1).unwrap();
                    for n in &nodes {
                        let used = before.slots.iter().filter(|s| s.node == n.name).fold(Resources::default(), |acc, s| acc.plus(s.cost));
                        prop_assert!(!used.plus(wants[i].cost).fits(&n.capacity), "{} had room for {service}.{replica}", n.name);
                    }
                }
            }
        }

        /// The heap of choices picks exactly what a look at every node for every new
        /// replica picks (the rule as written: fewest of the service, least load, name),
        /// for replicas that ask alike in runs and interleaved.
        #[test]
        fn choices_match_a_look_at_every_node(
            nodes in prop::collection::vec((1u64..6, 200u64..3000, 0u64..3, any::<bool>(), any::<bool>()), 1..10),
            demands in prop::collection::vec((0usize..3, 0u64..900), 0..30),
        ) {
            let nodes: Vec<NodeView> = nodes.iter().enumerate().map(|(i, (n, cpu, used, schedulable, draining))| NodeView {
                name: format!("n{i}"),
                capacity: Limit { cpu_millis: Some(*cpu), memory_bytes: None, containers: Some(*n) },
                used: Resources { cpu_millis: 0, memory_bytes: 0, containers: *used },
                schedulable: *schedulable,
                draining: *draining && !*schedulable,
                labels: BTreeMap::new(),
            }).collect();
            // Each service asks one cost, so a service's replicas ask alike.
            let wants: Vec<Want> = demands.iter().enumerate().map(|(i, (s, _))| want(&format!("s{s}"), i as u32 + 1, demands.iter().find(|d| d.0 == *s).map_or(0, |d| d.1))).collect();
            let scanned = place_by_scan(&wants, &nodes);
            prop_assert_eq!(place(&wants, &[], &nodes, 1).map(|p| p.slots).ok(), scanned);
        }
    }

    /// Placement of new replicas as a look at every open node for each: the reference
    /// the heap is checked against.
    fn place_by_scan(wants: &[Want], nodes: &[NodeView]) -> Option<Vec<Placed>> {
        let mut nodes = nodes.to_vec();
        let mut per_service: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut slots = Vec::new();
        for (generation, want) in (1..).zip(wants) {
            let spread = per_service.get(want.service.as_str());
            let i = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    n.schedulable && !n.draining && n.used.plus(want.cost).fits(&n.capacity)
                })
                .map(|(i, n)| (spread.map_or(0, |s| s[i]), load(n), i))
                .min_by(|a, b| {
                    a.0.cmp(&b.0)
                        .then_with(|| a.1.total_cmp(&b.1))
                        .then_with(|| a.2.cmp(&b.2))
                })
                .map(|(_, _, i)| i)?;
            nodes[i].used = nodes[i].used.plus(want.cost);
            slots.push(Placed {
                service: want.service.clone(),
                replica: want.replica,
                node: nodes[i].name.clone(),
                generation,
                cost: want.cost,
            });
            count(&mut per_service, &want.service, i, nodes.len());
        }
        Some(slots)
    }
}
