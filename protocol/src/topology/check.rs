//! Checks a normalised [`Topology`] that arrived as data (over the API) rather than
//! from a file: the same rules the file format enforces, so that a client cannot send
//! the server what a file could never say.

use super::model::{Condition, Constraint, MountKind, Topology};
use super::schema::{valid_name, valid_topology_name};

impl Topology {
    /// Every rule the topology breaks, as `path: problem`; empty when it is sound.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !valid_topology_name(&self.name) {
            out.push(format!("name: {:?} cannot name a topology", self.name));
        }
        if self.services.is_empty() {
            out.push("services: a topology needs at least one service".to_owned());
        }
        for name in self.networks.keys() {
            if !valid_name(name) {
                out.push(format!("networks.{name}: not a valid name"));
            }
        }
        for name in self.volumes.keys() {
            if !valid_name(name) {
                out.push(format!("volumes.{name}: not a valid name"));
            }
        }
        for (name, s) in &self.services {
            let p = format!("services.{name}");
            if !valid_name(name) {
                out.push(format!("{p}: not a valid service name"));
            }
            if s.image.trim().is_empty()
                || s.image.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                out.push(format!(
                    "{p}.image: {:?} is not an image reference",
                    s.image
                ));
            }
            for (i, c) in s.constraints.iter().enumerate() {
                if Constraint::parse(&c.to_string()).as_ref() != Ok(c) {
                    out.push(format!(
                        "{p}.constraints[{i}]: {c} is not a constraint Berth can check"
                    ));
                }
            }
            if s.replicas > 10_000 {
                out.push(format!("{p}.replicas: at most 10000"));
            }
            if let Some(autoscale) = &s.autoscale {
                out.extend(
                    autoscale
                        .problems(s.replicas)
                        .into_iter()
                        .map(|problem| format!("{p}.{problem}")),
                );
            }
            if s.labels.keys().any(|k| k.starts_with("berth.")) {
                out.push(format!(
                    "{p}.labels: labels starting with `berth.` are reserved"
                ));
            }
            // `network_mode` (host, none, another container's) stands instead.
            if s.networks.is_empty() && s.engine.network_mode.is_none() {
                out.push(format!(
                    "{p}.networks: a service joins at least one network"
                ));
            }
            for (network, attachment) in &s.networks {
                if !self.networks.contains_key(network) {
                    out.push(format!("{p}.networks.{network}: not declared"));
                }
                if attachment.aliases.iter().any(|a| !valid_name(a)) {
                    out.push(format!(
                        "{p}.networks.{network}.aliases: not valid host names"
                    ));
                }
            }
            for (i, mount) in s.volumes.iter().enumerate() {
                if !mount.target.starts_with('/') {
                    out.push(format!(
                        "{p}.volumes[{i}]: the target must be an absolute path"
                    ));
                }
                if let Some(source) = &mount.source
                    && mount.kind == MountKind::Volume
                    && !self.volumes.contains_key(source)
                {
                    out.push(format!(
                        "{p}.volumes[{i}]: volume {source:?} is not declared"
                    ));
                }
            }
            for (i, port) in s.ports.iter().enumerate() {
                if port.target == 0 || port.published == Some(0) {
                    out.push(format!("{p}.ports[{i}]: ports are 1 to 65535"));
                }
                if port.published.is_some() && s.replicas > 1 {
                    out.push(format!(
                        "{p}.ports[{i}]: a fixed host port cannot be published by {} replicas",
                        s.replicas
                    ));
                }
            }
            if s.working_dir.as_ref().is_some_and(|d| !d.starts_with('/')) {
                out.push(format!("{p}.working_dir: must be an absolute path"));
            }
            for (dep, d) in &s.depends_on {
                match self.services.get(dep) {
                    None => out.push(format!(
                        "{p}.depends_on.{dep}: not a service of this topology"
                    )),
                    Some(_) if dep == name => out.push(format!(
                        "{p}.depends_on.{dep}: a service cannot depend on itself"
                    )),
                    Some(target)
                        if d.condition == Condition::ServiceHealthy
                            && target.healthcheck.as_ref().is_some_and(|h| h.is_disabled()) =>
                    {
                        out.push(format!(
                            "{p}.depends_on.{dep}: waits for a healthcheck that is disabled"
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(cycle) = self.dependency_cycle() {
            out.push(format!(
                "depends_on: dependency cycle: {}",
                cycle.join(" -> ")
            ));
        }
        out
    }

    fn dependency_cycle(&self) -> Option<Vec<String>> {
        super::graph::dependency_cycles(self.services.keys().map(String::as_str), |name| {
            self.services
                .get(name)
                .map(|s| s.depends_on.keys().map(String::as_str).collect())
                .unwrap_or_default()
        })
        .into_iter()
        .next()
    }
}
