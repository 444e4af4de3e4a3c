//! What a deploy changes, decided from what was read and nothing else: where every
//! replica goes, what the tenant's quota and each node's capacity move by, and the
//! events people read. No I/O: `service.rs` loads the inputs and commits the result.

use std::collections::BTreeMap;

use crate::events::{Event, placement_events};
use crate::placement::{NodeView, Placed, Placement, PlacementError, Want, place};
use crate::resources::{Limit, QuotaExceeded, Resources, check_quota};

/// What a deploy decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inputs {
    /// The tenant.
    pub(crate) tenant: String,
    /// Every replica the topology wants.
    pub(crate) wants: Vec<Want>,
    /// Where the topology's replicas are now.
    pub(crate) placed: Vec<Placed>,
    /// The generation a replica placed anew gets.
    pub(crate) next_generation: u64,
    /// The tenant's quota.
    pub(crate) limit: Limit,
    /// What the tenant's placed replicas reserve now.
    pub(crate) used: Resources,
}

impl Inputs {
    /// Whether some replica is constrained to nodes with certain labels, so that only
    /// a look at every node can tell whether it fits.
    pub(crate) fn constrained(&self) -> bool {
        self.wants.iter().any(|w| !w.constraints.is_empty())
    }
}

/// What a deploy changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Where every replica goes.
    pub(crate) plan: Placement,
    /// What the topology reserves before and after.
    pub(crate) before: Resources,
    /// What the topology reserves after.
    pub(crate) after: Resources,
    /// Per node touched, what the topology reserves there before and after, in name
    /// order (the order capacity is reserved in, so concurrent deploys never
    /// deadlock).
    pub(crate) nodes: BTreeMap<String, (Resources, Resources)>,
    /// What people read of the change.
    pub(crate) events: Vec<Event>,
}

/// Why a deploy cannot be decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecideError {
    /// A replica fits no node looked at.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The topology does not fit the tenant's quota.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
}

/// Places `inputs`' replicas on `nodes` and checks the growth against the quota.
pub(crate) fn decide(inputs: &Inputs, nodes: &[NodeView]) -> Result<Decision, DecideError> {
    let plan = place(&inputs.wants, &inputs.placed, nodes, inputs.next_generation)?;
    let before = total(&inputs.placed);
    let after = total(&plan.slots);
    check_quota(
        &inputs.tenant,
        inputs.used,
        growth(before, after),
        &inputs.limit,
    )?;
    let mut per_node: BTreeMap<String, (Resources, Resources)> = BTreeMap::new();
    for p in &inputs.placed {
        let entry = per_node.entry(p.node.clone()).or_default();
        entry.0 = entry.0.plus(p.cost);
    }
    for p in &plan.slots {
        let entry = per_node.entry(p.node.clone()).or_default();
        entry.1 = entry.1.plus(p.cost);
    }
    let events = placement_events(&inputs.placed, &plan.slots);
    Ok(Decision {
        plan,
        before,
        after,
        nodes: per_node,
        events,
    })
}

/// What `slots` reserve together.
pub(crate) fn total(slots: &[Placed]) -> Resources {
    slots
        .iter()
        .fold(Resources::default(), |acc, s| acc.plus(s.cost))
}

/// The growth from `before` to `after`, per dimension (zero where it shrinks).
pub(crate) fn growth(before: Resources, after: Resources) -> Resources {
    Resources {
        cpu_millis: after.cpu_millis.saturating_sub(before.cpu_millis),
        memory_bytes: after.memory_bytes.saturating_sub(before.memory_bytes),
        containers: after.containers.saturating_sub(before.containers),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn want(replica: u32) -> Want {
        Want {
            service: "web".into(),
            replica,
            cost: Resources {
                cpu_millis: 100,
                memory_bytes: 1 << 20,
                containers: 1,
            },
            constraints: Default::default(),
        }
    }

    fn node(name: &str, containers: u64) -> NodeView {
        NodeView {
            name: name.into(),
            capacity: Limit {
                containers: Some(containers),
                ..Limit::default()
            },
            used: Resources::default(),
            schedulable: true,
            draining: false,
            labels: BTreeMap::new(),
        }
    }

    fn inputs(replicas: u32, quota_containers: Option<u64>) -> Inputs {
        Inputs {
            tenant: "acme".into(),
            wants: (1..=replicas).map(want).collect(),
            placed: Vec::new(),
            next_generation: 1,
            limit: Limit {
                containers: quota_containers,
                ..Limit::default()
            },
            used: Resources::default(),
        }
    }

    #[test]
    fn a_new_topology_reserves_its_replicas_on_the_nodes_it_lands_on() {
        let decision =
            decide(&inputs(3, None), &[node("n1", 10), node("n2", 10)]).expect("it fits");
        assert_eq!(decision.plan.slots.len(), 3);
        assert_eq!(decision.before, Resources::default());
        assert_eq!(decision.after.containers, 3);
        let reserved: u64 = decision
            .nodes
            .values()
            .map(|(_, after)| after.containers)
            .sum();
        assert_eq!(reserved, 3);
        assert_eq!(decision.events.len(), 3, "one placed event per replica");
    }

    #[test]
    fn over_the_quota_is_refused_before_anything_is_reserved() {
        let refused = decide(&inputs(3, Some(2)), &[node("n1", 10)]);
        assert!(matches!(refused, Err(DecideError::Quota(_))), "{refused:?}");
    }

    #[test]
    fn no_room_is_a_placement_refusal_so_a_wider_look_may_follow() {
        let refused = decide(&inputs(3, None), &[node("n1", 2)]);
        assert!(
            matches!(refused, Err(DecideError::Placement(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn an_unchanged_topology_moves_nothing() {
        let first = decide(&inputs(2, None), &[node("n1", 10)]).expect("fits");
        let again = Inputs {
            placed: first.plan.slots.clone(),
            ..inputs(2, None)
        };
        let decision = decide(&again, &[node("n1", 10)]).expect("fits");
        assert_eq!(decision.before, decision.after);
        assert!(decision.events.is_empty());
        assert!(
            decision
                .nodes
                .values()
                .all(|(before, after)| before == after)
        );
    }
}
