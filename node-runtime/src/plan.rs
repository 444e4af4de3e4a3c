//! Reconcile planning: compare what a topology should be on this node with what the
//! engine has, and say what to do. Pure: no engine, no clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::spec::ContainerSpec;

/// A container of the topology as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    /// The engine's id.
    pub id: String,
    /// The container's name.
    pub name: String,
    /// The service, from its label.
    pub service: String,
    /// The replica, from its label.
    pub replica: u32,
    /// The placement generation, from its label.
    pub generation: u64,
    /// The config hash it was created with, from its label.
    pub config_hash: String,
    /// Whether it is running now.
    pub running: bool,
    /// The id of the image it was made from (empty when unknown).
    pub image_id: String,
    /// Host ports it publishes (`ip`, `port`), to tell own ports from foreign ones.
    pub host_ports: Vec<(String, u16)>,
}

/// A network or volume of the topology as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedObject {
    /// The engine's name for it.
    pub name: String,
    /// The config hash it was created with (networks), empty when it has none.
    pub config_hash: String,
}

/// What to do with one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotAction {
    /// The container matches: leave it (start it if it is stopped).
    Keep {
        /// The container's id.
        id: String,
        /// Whether it must be started.
        start: bool,
    },
    /// No container yet: create one.
    Create,
    /// The container differs: remove it and create a new one.
    Replace {
        /// The old container's id.
        old_id: String,
    },
}

/// The plan for one topology on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Every desired container and what to do with it.
    pub slots: Vec<(ContainerSpec, SlotAction)>,
    /// Containers that no slot wants any more.
    pub remove: Vec<ObservedContainer>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.remove.is_empty()
            && self
                .slots
                .iter()
                .all(|(_, a)| matches!(a, SlotAction::Keep { start: false, .. }))
    }
}

/// Matches desired containers to observed ones by name.
pub fn plan_containers(desired: Vec<ContainerSpec>, observed: Vec<ObservedContainer>) -> Plan {
    let mut by_name: BTreeMap<String, ObservedContainer> = BTreeMap::new();
    let mut remove = Vec::new();
    for container in observed {
        if let Some(duplicate) = by_name.insert(container.name.clone(), container) {
            remove.push(duplicate);
        }
    }
    let slots = desired
        .into_iter()
        .map(|spec| {
            let action = match by_name.remove(&spec.name) {
                Some(old)
                    if old.config_hash == spec.config_hash
                        && (old.image_id.is_empty()
                            || spec.image_id.as_ref().is_none_or(|id| *id == old.image_id)) =>
                {
                    SlotAction::Keep {
                        id: old.id,
                        start: !old.running,
                    }
                }
                Some(old) => SlotAction::Replace { old_id: old.id },
                None => SlotAction::Create,
            };
            (spec, action)
        })
        .collect();
    remove.extend(by_name.into_values());
    Plan { slots, remove }
}

/// What to do with the topology's networks (or volumes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectPlan {
    /// Names to create.
    pub create: Vec<String>,
    /// Names whose config changed: remove (after their containers) and create again.
    pub recreate: Vec<String>,
    /// Names no longer wanted.
    pub remove: Vec<String>,
}

/// Compares desired objects (name → config hash) with observed ones.
pub fn plan_objects(desired: &BTreeMap<String, String>, observed: &[ObservedObject]) -> ObjectPlan {
    let mut plan = ObjectPlan::default();
    let seen: BTreeSet<&str> = observed.iter().map(|o| o.name.as_str()).collect();
    for (name, hash) in desired {
        match observed.iter().find(|o| &o.name == name) {
            None => plan.create.push(name.clone()),
            Some(o) if !hash.is_empty() && &o.config_hash != hash => {
                plan.recreate.push(name.clone())
            }
            Some(_) => {}
        }
    }
    for name in seen {
        if !desired.contains_key(name) {
            plan.remove.push(name.to_owned());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_protocol::assignment::{Slot, TopologyAssignment, TopologyRef};
    use berth_protocol::topology::{Network, Service};

    fn service(image: &str) -> Service {
        let yaml = format!("services:\n  s:\n    image: {image}\n");
        let vars = berth_protocol::topology::Variables::default();
        let loaded = berth_protocol::topology::load(
            &yaml,
            &berth_protocol::topology::LoadOptions {
                file_name: "t.yaml",
                dir: std::path::Path::new("."),
                default_name: "t",
                vars: &vars,
                files: &berth_protocol::topology::LocalFiles,
            },
        )
        .unwrap();
        loaded.topology.services["s"].clone()
    }

    fn assignment(image: &str, replicas: u32) -> TopologyAssignment {
        TopologyAssignment {
            trace: None,
            links: Vec::new(),
            allow: Default::default(),
            image_sources: Vec::new(),
            registry_credentials: Vec::new(),
            id: TopologyRef {
                tenant: "t".into(),
                topology: "app".into(),
            },
            revision: 1,
            services: [("web".to_string(), service(image))].into(),
            networks: [("default".to_string(), Network::default())].into(),
            volumes: BTreeMap::new(),
            slots: (1..=replicas)
                .map(|r| Slot {
                    service: "web".into(),
                    replica: r,
                    generation: 1,
                })
                .collect(),
        }
    }

    fn specs(a: &TopologyAssignment) -> Vec<ContainerSpec> {
        a.slots
            .iter()
            .map(|s| {
                ContainerSpec::for_slot(a, s, &berth_protocol::assignment::Scope::unscoped())
                    .unwrap()
            })
            .collect()
    }

    fn observed(spec: &ContainerSpec, running: bool) -> ObservedContainer {
        ObservedContainer {
            id: format!("id-{}", spec.name),
            name: spec.name.clone(),
            service: spec.service.clone(),
            replica: spec.replica,
            generation: 1,
            config_hash: spec.config_hash.clone(),
            running,
            image_id: String::new(),
            host_ports: vec![],
        }
    }

    #[test]
    fn an_unchanged_topology_plans_nothing() {
        let a = assignment("busybox", 2);
        let now: Vec<_> = specs(&a).iter().map(|s| observed(s, true)).collect();
        let plan = plan_containers(specs(&a), now);
        assert!(plan.is_noop(), "{plan:?}");
    }

    #[test]
    fn a_container_of_an_older_image_under_the_same_reference_is_replaced() {
        let a = assignment("busybox", 1);
        let mut desired = specs(&a);
        let mut old = observed(&desired[0], true);
        old.image_id = "sha256:old".into();
        desired[0].image_id = Some("sha256:new".into());
        let plan = plan_containers(desired.clone(), vec![old.clone()]);
        assert!(
            matches!(plan.slots[0].1, SlotAction::Replace { .. }),
            "{plan:?}"
        );
        desired[0].image_id = Some("sha256:old".into());
        let plan = plan_containers(desired, vec![old]);
        assert!(plan.is_noop(), "{plan:?}");
    }

    #[test]
    fn a_stopped_container_is_started_not_replaced() {
        let a = assignment("busybox", 1);
        let now = vec![observed(&specs(&a)[0], false)];
        let plan = plan_containers(specs(&a), now);
        assert!(matches!(
            plan.slots[0].1,
            SlotAction::Keep { start: true, .. }
        ));
    }

    #[test]
    fn a_changed_spec_replaces_and_extra_replicas_go() {
        let old = assignment("busybox:1", 3);
        let now: Vec<_> = specs(&old).iter().map(|s| observed(s, true)).collect();
        let new = assignment("busybox:2", 2);
        let plan = plan_containers(specs(&new), now);
        assert!(
            plan.slots
                .iter()
                .all(|(_, a)| matches!(a, SlotAction::Replace { .. }))
        );
        assert_eq!(plan.remove.len(), 1);
        assert_eq!(plan.remove[0].name, "t.app.web.3");
    }

    #[test]
    fn the_hash_follows_the_network_spec_and_generation() {
        let a = assignment("busybox", 1);
        let mut b = a.clone();
        b.networks.get_mut("default").unwrap().internal = true;
        assert_ne!(specs(&a)[0].config_hash, specs(&b)[0].config_hash);
        let mut c = a.clone();
        c.slots[0].generation = 2;
        assert_ne!(specs(&a)[0].config_hash, specs(&c)[0].config_hash);
        assert_eq!(specs(&a)[0].config_hash, specs(&a.clone())[0].config_hash);
    }

    #[test]
    fn objects() {
        let desired: BTreeMap<String, String> = [
            ("n1".to_string(), "h1".to_string()),
            ("n2".to_string(), "h2".to_string()),
        ]
        .into();
        let observed = vec![
            ObservedObject {
                name: "n1".into(),
                config_hash: "old".into(),
            },
            ObservedObject {
                name: "n3".into(),
                config_hash: "h3".into(),
            },
        ];
        let plan = plan_objects(&desired, &observed);
        assert_eq!(plan.create, vec!["n2".to_string()]);
        assert_eq!(plan.recreate, vec!["n1".to_string()]);
        assert_eq!(plan.remove, vec!["n3".to_string()]);
    }
}
