//! Checks across services, run after each service has been read on its own:
//! references to services, networks and volumes, dependency cycles, and host ports
//! that two containers would both bind.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Condition, MountKind, Protocol, Service};
use super::schema::{Cx, ServiceSites, TopLevel, join};

pub(crate) fn cross_check(cx: &mut Cx<'_>, top: &TopLevel) {
    for (name, (service, sites)) in &top.services {
        let path = join("services", name);
        references(cx, top, name, &path, service, sites);
    }
    cycles(cx, top);
    host_ports(cx, &top.services);
}

fn references(
    cx: &mut Cx<'_>,
    top: &TopLevel,
    name: &str,
    path: &str,
    service: &Service,
    sites: &ServiceSites,
) {
    for (dep, dependency) in &service.depends_on {
        let pos = sites.depends_on.get(dep).copied().unwrap_or_default();
        let p = join(&join(path, "depends_on"), dep);
        if dep == name {
            cx.error(pos, &p, "a service cannot depend on itself");
        } else if !top.declared_services.contains(dep) && dependency.required {
            cx.error(
                pos,
                &p,
                format!(
                    "depends on {dep:?}, which is not a service of this topology{}",
                    known(&top.declared_services)
                ),
            );
        } else if dependency.condition == Condition::ServiceHealthy
            && let Some((target, _)) = top.services.get(dep)
            && target.healthcheck.as_ref().is_some_and(|h| h.is_disabled())
        {
            cx.error(
                pos,
                &p,
                format!("waits for {dep:?} to be healthy, but {dep:?} disables its healthcheck"),
            );
        }
    }
    if let Some(mode) = &service.engine.network_mode {
        let p = join(path, "network_mode");
        if !service.networks.is_empty() {
            cx.error(
                sites.replicas,
                &p,
                "`network_mode` and `networks` cannot both be set: a container in another's network joins no network of its own",
            );
        }
        if let Some(other) = mode.strip_prefix("service:")
            && !top.declared_services.contains(other)
        {
            cx.error(
                sites.replicas,
                &p,
                format!("network_mode names service {other:?}, which is not a service of this topology{}", known(&top.declared_services)),
            );
        }
    }
    if service.engine.container_name.is_some() && service.replicas > 1 {
        cx.error(
            sites.replicas,
            &join(path, "container_name"),
            format!("a fixed container_name allows one replica, but the service asks for {}: leave container_name out to scale", service.replicas),
        );
    }
    for network in service.networks.keys() {
        if network != "default" && !top.networks.contains_key(network) {
            let pos = sites.networks.get(network).copied().unwrap_or_default();
            let declared: BTreeSet<String> = top.networks.keys().cloned().collect();
            cx.error(
                pos,
                &join(&join(path, "networks"), network),
                format!(
                    "network {network:?} is not declared under the top-level `networks`{}",
                    known(&declared)
                ),
            );
        }
    }
    for (i, mount) in service.volumes.iter().enumerate() {
        if mount.kind == MountKind::Volume
            && let Some(source) = &mount.source
            && !top.volumes.contains_key(source)
        {
            let pos = sites.volumes.get(i).copied().unwrap_or_default();
            cx.error(
                pos,
                &format!("{path}.volumes[{i}]"),
                format!("volume {source:?} is not declared under the top-level `volumes`"),
            );
        }
    }
}

fn known(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        String::new()
    } else {
        let list: Vec<&str> = names.iter().map(String::as_str).collect();
        format!(" (declared: {})", list.join(", "))
    }
}

/// Reports each dependency cycle once, as `a -> b -> a`, at the edge that closes it.
fn cycles(cx: &mut Cx<'_>, top: &TopLevel) {
    let found = super::graph::dependency_cycles(top.services.keys().map(String::as_str), |name| {
        top.services
            .get(name)
            .map(|(s, _)| s.depends_on.keys().map(String::as_str).collect())
            .unwrap_or_default()
    });
    for cycle in found {
        let first = &cycle[0];
        let last = &cycle[cycle.len() - 2];
        let pos = top
            .services
            .get(last)
            .and_then(|(_, sites)| sites.depends_on.get(first).copied())
            .unwrap_or_default();
        cx.error(
            pos,
            &format!("services.{last}.depends_on.{first}"),
            format!(
                "dependency cycle: {}; no service of the cycle could ever start",
                cycle.join(" -> ")
            ),
        );
    }
}

/// Two containers cannot publish the same host port: neither two services nor two
/// replicas of one service.
fn host_ports(cx: &mut Cx<'_>, services: &BTreeMap<String, (Service, ServiceSites)>) {
    let mut taken: BTreeMap<(Option<String>, u16, Protocol), String> = BTreeMap::new();
    for (name, (service, sites)) in services {
        for (i, port) in service.ports.iter().enumerate() {
            let Some(published) = port.published else {
                continue;
            };
            let pos = sites.ports.get(i).copied().unwrap_or_default();
            let path = join(&join("services", name), "ports");
            if service.replicas > 1 {
                cx.error(pos, &path, format!(
                    "host port {published} is published by a service with {} replicas, but only one container can bind it: leave out the host port to get one per replica, or run 1 replica",
                    service.replicas
                ));
            }
            let key = (port.host_ip.clone(), published, port.protocol);
            let wildcard = (None, published, port.protocol);
            let clash = taken
                .get(&key)
                .or_else(|| taken.get(&wildcard))
                .cloned()
                .or_else(|| {
                    if port.host_ip.is_none() {
                        taken
                            .iter()
                            .find(|((_, p, proto), _)| *p == published && *proto == port.protocol)
                            .map(|(_, owner)| owner.clone())
                    } else {
                        None
                    }
                });
            match clash {
                Some(owner) => cx.error(
                    pos,
                    &path,
                    format!(
                        "host port {published}/{} is already published by service {owner:?}",
                        port.protocol.as_str()
                    ),
                ),
                None => {
                    taken.insert(key, name.clone());
                }
            }
        }
    }
}
