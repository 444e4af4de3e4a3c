//! What a target lets a topology do: one decision, in one place, named in every refusal.
//!
//! The format reads every Compose key the same everywhere; a [`Policy`] then says which
//! of the settings that reach the host or another tenant may run. On the user's own
//! engine ([`Policy::local`]) everything Compose runs may run: whoever can run
//! `berth up` can already run `docker run --privileged -v /:/host`. In a pool the
//! default ([`Policy::pool`]) refuses what reaches the host or another tenant, and an
//! admin may allow listed settings for one tenant. The gateway applies the policy at
//! deploy; the node applies it again before it creates a container.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::model::*;

/// Which settings a target runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The policy's name, as refusals print it: `local`, or `pool (tenant acme)`.
    pub name: String,
    /// Whether every setting runs (the user's own engine).
    #[serde(default)]
    pub allow_all: bool,
    /// Settings an admin allowed beyond the default: `KEY` (every value) or
    /// `KEY:VALUE`, in the vocabulary of [`Use::key`].
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub allow: BTreeSet<String>,
}

impl Default for Policy {
    /// The pool's default: what a node applies when it is told no other.
    fn default() -> Self {
        Self::pool("", BTreeSet::new())
    }
}

impl Policy {
    /// The user's own engine: whatever Compose runs.
    pub fn local() -> Self {
        Self {
            name: "local".to_owned(),
            allow_all: true,
            allow: BTreeSet::new(),
        }
    }

    /// A pool's policy for `tenant`: the default, with `allow` on top.
    pub fn pool(tenant: &str, allow: BTreeSet<String>) -> Self {
        let name = if tenant.is_empty() {
            "pool".to_owned()
        } else {
            format!("pool (tenant {tenant})")
        };
        Self {
            name,
            allow_all: false,
            allow,
        }
    }

    /// This policy with `grants` (a tenant's allowances, as the control plane sent
    /// them with an assignment) on top, for `tenant`. The user's own engine stays as
    /// it is.
    pub fn granting(&self, tenant: &str, grants: &BTreeSet<String>) -> Self {
        if self.allow_all {
            return self.clone();
        }
        Self::pool(tenant, self.allow.union(grants).cloned().collect())
    }

    fn allows(&self, u: &Use) -> bool {
        self.allow_all
            || u.safe
            || self.allow.contains(u.key)
            || u.value
                .as_ref()
                .is_some_and(|v| self.allow.contains(&format!("{}:{v}", u.key)))
    }

    /// Every setting of `topology` this policy refuses, in file order of services.
    pub fn refusals(&self, topology: &Topology) -> Vec<Refusal> {
        let mut out = Vec::new();
        for (name, network) in &topology.networks {
            for u in network_uses(name, network) {
                self.judge(u, &mut out);
            }
        }
        for (name, volume) in &topology.volumes {
            if let Some(external) = &volume.external {
                self.judge(
                    Use::new(
                        format!("volumes.{name}.external"),
                        "external_volume",
                        Some(external.clone()),
                    ),
                    &mut out,
                );
            }
        }
        for (name, service) in &topology.services {
            out.extend(self.service_refusals(name, service));
        }
        out
    }

    /// Every setting of one service this policy refuses.
    pub fn service_refusals(&self, name: &str, service: &Service) -> Vec<Refusal> {
        let mut out = Vec::new();
        for u in service_uses(name, service) {
            self.judge(u, &mut out);
        }
        out
    }

    fn judge(&self, u: Use, out: &mut Vec<Refusal>) {
        if self.allows(&u) {
            return;
        }
        let (reason, instead) = explain(u.key);
        let allow = match &u.value {
            Some(v) => format!("{}:{v}", u.key),
            None => u.key.to_owned(),
        };
        out.push(Refusal {
            path: u.path,
            key: u.key.to_owned(),
            allow,
            policy: self.name.clone(),
            reason: reason.to_owned(),
            instead: instead.to_owned(),
        });
    }
}

/// One setting a policy refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Refusal {
    /// Where it stands, as a field path (`services.web.cap_add[0]`).
    pub path: String,
    /// The setting, in the policy's vocabulary (`cap_add`).
    pub key: String,
    /// What an admin would allow to let exactly this through (`cap_add:NET_ADMIN`).
    pub allow: String,
    /// The policy that refuses it.
    pub policy: String,
    /// Why.
    pub reason: String,
    /// What to do instead.
    pub instead: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: refused by the {} policy: {}; {} (an admin may allow `{}` for the tenant)",
            self.path, self.policy, self.reason, self.instead, self.allow
        )
    }
}

/// One use of a governed setting.
struct Use {
    path: String,
    key: &'static str,
    value: Option<String>,
    /// Allowed by every policy (for example a capability dropped, or `ipc: private`).
    safe: bool,
}

impl Use {
    fn new(path: String, key: &'static str, value: Option<String>) -> Self {
        Self {
            path,
            key,
            value,
            safe: false,
        }
    }

    fn safe_if(mut self, safe: bool) -> Self {
        self.safe = safe;
        self
    }
}

fn network_uses(name: &str, network: &Network) -> Vec<Use> {
    let p = |k: &str| format!("networks.{name}.{k}");
    let mut out = Vec::new();
    if let Some(external) = &network.external {
        out.push(Use::new(
            p("external"),
            "external_network",
            Some(external.clone()),
        ));
    }
    if let Some(driver) = &network.driver {
        out.push(
            Use::new(p("driver"), "network_driver", Some(driver.clone()))
                .safe_if(driver == "bridge"),
        );
    }
    if !network.subnets.is_empty() {
        out.push(Use::new(p("ipam"), "network_subnet", None));
    }
    out
}

fn service_uses(name: &str, s: &Service) -> Vec<Use> {
    let p = |k: &str| format!("services.{name}.{k}");
    let e = &s.engine;
    let mut out = Vec::new();
    let mut one = |key: &'static str, field: &str, value: Option<String>, safe: bool| {
        out.push(Use::new(p(field), key, value).safe_if(safe));
    };
    if let Some(v) = &e.container_name {
        one("container_name", "container_name", Some(v.clone()), false);
    }
    if e.privileged {
        one("privileged", "privileged", None, false);
    }
    for (i, cap) in e.cap_add.iter().enumerate() {
        one(
            "cap_add",
            &format!("cap_add[{i}]"),
            Some(cap.clone()),
            false,
        );
    }
    for (i, dev) in e.devices.iter().enumerate() {
        let host = dev.split(':').next().unwrap_or(dev).to_owned();
        one("devices", &format!("devices[{i}]"), Some(host), false);
    }
    if !e.device_cgroup_rules.is_empty() {
        one("device_cgroup_rules", "device_cgroup_rules", None, false);
    }
    if let Some(mode) = &e.network_mode {
        let safe = mode == "none" || mode == "bridge" || mode == "default";
        one("network_mode", "network_mode", Some(mode.clone()), safe);
    }
    for (key, field, value, safe_values) in [
        ("pid", "pid", &e.pid, &[][..]),
        ("ipc", "ipc", &e.ipc, &["private", "shareable", "none"][..]),
        ("uts", "uts", &e.uts, &[][..]),
        ("userns_mode", "userns_mode", &e.userns_mode, &[][..]),
        ("cgroup", "cgroup", &e.cgroup, &["private"][..]),
    ] {
        if let Some(v) = value {
            one(
                key,
                field,
                Some(v.clone()),
                safe_values.contains(&v.as_str()),
            );
        }
    }
    if e.cgroup_parent.is_some() {
        one("cgroup_parent", "cgroup_parent", None, false);
    }
    for key in e.sysctls.keys() {
        // Network sysctls are namespaced: they change the container's stack only.
        one(
            "sysctls",
            &format!("sysctls.{key}"),
            Some(key.clone()),
            key.starts_with("net."),
        );
    }
    for (i, opt) in e.security_opt.iter().enumerate() {
        let safe = opt.starts_with("no-new-privileges");
        one(
            "security_opt",
            &format!("security_opt[{i}]"),
            Some(opt.clone()),
            safe,
        );
    }
    if let Some(logging) = &e.logging
        && let Some(driver) = &logging.driver
    {
        let safe = matches!(driver.as_str(), "json-file" | "local" | "none");
        one("logging", "logging.driver", Some(driver.clone()), safe);
    }
    if let Some(rt) = &e.runtime {
        one("runtime", "runtime", Some(rt.clone()), false);
    }
    if !e.storage_opt.is_empty() {
        one("storage_opt", "storage_opt", None, false);
    }
    if e.oom_kill_disable {
        one("oom_kill_disable", "oom_kill_disable", None, false);
    }
    if e.cpuset.is_some() {
        one("cpuset", "cpuset", None, false);
    }
    if e.mac_address.is_some() {
        one("mac_address", "mac_address", None, false);
    }
    if !e.addresses.is_empty() {
        one("fixed_address", "networks", None, false);
    }
    for (i, from) in e.volumes_from.iter().enumerate() {
        one(
            "volumes_from",
            &format!("volumes_from[{i}]"),
            Some(from.clone()),
            false,
        );
    }
    for (i, link) in e.external_links.iter().enumerate() {
        one(
            "external_links",
            &format!("external_links[{i}]"),
            Some(link.clone()),
            false,
        );
    }
    for (i, mount) in s.volumes.iter().enumerate() {
        if mount.kind == MountKind::Bind {
            one(
                "bind_mount",
                &format!("volumes[{i}]"),
                mount.source.clone(),
                false,
            );
        }
    }
    for file in &s.files {
        // Its place in the service's own `secrets` or `configs` list.
        let i = s
            .files
            .iter()
            .filter(|f| f.kind == file.kind)
            .position(|f| std::ptr::eq(f, file))
            .unwrap_or(0);
        let field = match file.kind {
            FileKind::Secret => format!("secrets[{i}]"),
            FileKind::Config => format!("configs[{i}]"),
        };
        match (&file.source, file.kind) {
            (FileSource::File(path), _) => one("file", &field, Some(path.clone()), false),
            (FileSource::Content(_), FileKind::Secret) => {
                one("secret_content", &field, None, false)
            }
            (FileSource::Content(_), FileKind::Config) => {}
        }
    }
    if s.build.is_some() {
        one("build", "build", None, false);
    }
    out
}

/// Every setting a policy governs, in the vocabulary allowances are written in.
pub const GOVERNED: &[&str] = &[
    "bind_mount",
    "build",
    "cap_add",
    "cgroup",
    "cgroup_parent",
    "container_name",
    "cpuset",
    "device_cgroup_rules",
    "devices",
    "external_links",
    "external_network",
    "external_volume",
    "file",
    "fixed_address",
    "ipc",
    "logging",
    "mac_address",
    "network_driver",
    "network_mode",
    "network_subnet",
    "oom_kill_disable",
    "pid",
    "privileged",
    "runtime",
    "secret_content",
    "security_opt",
    "storage_opt",
    "sysctls",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// Reads one allowance as an admin writes it (`cap_add:NET_ADMIN`, `privileged`),
/// trimmed, or says what is wrong with it.
pub fn parse_allowance(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (key, value) = match text.split_once(':') {
        Some((k, v)) => (k.trim(), Some(v.trim())),
        None => (text, None),
    };
    if !GOVERNED.contains(&key) {
        return Err(format!(
            "`{key}` is not a setting a policy governs; the settings are: {}",
            GOVERNED.join(", ")
        ));
    }
    match value {
        Some("") => Err(format!(
            "`{text}` has an empty value: write `{key}` to allow every value, or `{key}:VALUE`"
        )),
        Some(v) => Ok(format!("{key}:{v}")),
        None => Ok(key.to_owned()),
    }
}

/// Why a pool refuses a setting by default, and what to use instead.
fn explain(key: &str) -> (&'static str, &'static str) {
    match key {
        "bind_mount" => (
            "a host path reaches the node's own files, and the path on your machine is not on the pool's nodes",
            "use a named volume",
        ),
        "file" => (
            "the pool's nodes cannot read files of your machine",
            "give the secret or config from an `environment` variable or `content`",
        ),
        "secret_content" => (
            "the pool does not yet keep secrets encrypted at rest",
            "give the service the value in its environment, or keep the service on your own engine",
        ),
        "build" => (
            "a pool runs images, it does not build them",
            "build with `berth build` and run the image from a registry the nodes reach",
        ),
        "container_name" => (
            "container names are shared by every tenant on a node, and a fixed one collides",
            "leave it out: other services reach this one by its service name",
        ),
        "privileged" => (
            "a privileged container holds every capability and device of the node",
            "add only the capabilities it needs with an admin's leave, or leave it out",
        ),
        "cap_add" => (
            "an added capability reaches beyond the container into the node's kernel",
            "leave it out, or ask an admin to allow exactly this capability",
        ),
        "devices" | "device_cgroup_rules" => (
            "a device is the node's own hardware",
            "leave it out, or ask an admin to allow exactly this device",
        ),
        "network_mode" => (
            "sharing the node's or another container's network reaches other tenants",
            "use `networks`; services reach each other by name",
        ),
        "pid" | "ipc" | "uts" | "userns_mode" | "cgroup" => (
            "sharing a namespace of the node or of another container reaches other tenants",
            "leave it out: each container keeps its own",
        ),
        "cgroup_parent" | "cpuset" | "oom_kill_disable" | "storage_opt" | "runtime" => (
            "it changes how the node itself shares its resources among tenants",
            "leave it out; set limits with `deploy.resources.limits`",
        ),
        "sysctls" => (
            "a kernel parameter outside `net.*` is the node's, shared by every tenant",
            "leave it out, or ask an admin to allow exactly this parameter",
        ),
        "security_opt" => (
            "it loosens the confinement that keeps a container from the node",
            "leave it out (`no-new-privileges` is always allowed)",
        ),
        "logging" => (
            "a log driver other than json-file, local or none sends output to the node's services",
            "leave it out: `berth logs` reads every replica's output",
        ),
        "volumes_from" | "external_links" => (
            "it reaches containers that may run on another node or belong to another tenant",
            "share a named volume, and reach services by name",
        ),
        "external_network" | "external_volume" => (
            "an existing network or volume of the engine may belong to another tenant",
            "declare it in the topology: Berth makes it for this topology alone",
        ),
        "network_driver" | "network_subnet" | "fixed_address" | "mac_address" => (
            "addresses and drivers are the pool's to choose, so tenants never collide",
            "leave it out: services reach each other by name",
        ),
        _ => ("the pool does not allow it", "leave it out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(yaml: &str) -> Topology {
        crate::topology::read_for_test(yaml, &[("HOME", "/home/u")])
    }

    const HOSTILE: &str = "services:
  web:
    image: busybox
    privileged: true
    cap_add: [NET_ADMIN, SYS_ADMIN]
    cap_drop: [ALL]
    container_name: web
    volumes: [\"./site:/srv:ro\", \"data:/data\"]
    network_mode: host
    security_opt: [\"no-new-privileges:true\"]
volumes:
  data: {}
";

    #[test]
    fn local_runs_everything_compose_runs() {
        assert!(Policy::local().refusals(&topology(HOSTILE)).is_empty());
    }

    #[test]
    fn what_a_file_says_passes_the_checks_of_the_api_so_only_the_policy_refuses_it() {
        assert_eq!(topology(HOSTILE).problems(), Vec::<String>::new());
    }

    #[test]
    fn the_pool_default_refuses_what_reaches_the_host_and_names_itself() {
        let refusals = Policy::pool("acme", BTreeSet::new()).refusals(&topology(HOSTILE));
        let paths: Vec<&str> = refusals.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "services.web.container_name",
                "services.web.privileged",
                "services.web.cap_add[0]",
                "services.web.cap_add[1]",
                "services.web.network_mode",
                "services.web.volumes[0]",
            ]
        );
        assert!(refusals.iter().all(|r| r.policy == "pool (tenant acme)"));
        assert_eq!(refusals[2].allow, "cap_add:NET_ADMIN");
        assert_eq!(refusals[5].allow, "bind_mount:/p/site");
        let text = refusals[1].to_string();
        assert!(
            text.contains("refused by the pool (tenant acme) policy"),
            "{text}"
        );
        assert!(text.contains("an admin may allow `privileged`"), "{text}");
    }

    #[test]
    fn an_allowed_value_passes_and_its_siblings_do_not() {
        let allow = BTreeSet::from(["cap_add:NET_ADMIN".to_owned()]);
        let refusals = Policy::pool("acme", allow).refusals(&topology(HOSTILE));
        let caps: Vec<&str> = refusals
            .iter()
            .filter(|r| r.key == "cap_add")
            .map(|r| r.allow.as_str())
            .collect();
        assert_eq!(caps, ["cap_add:SYS_ADMIN"]);
        let all = BTreeSet::from(["cap_add".to_owned()]);
        let refusals = Policy::pool("acme", all).refusals(&topology(HOSTILE));
        assert!(refusals.iter().all(|r| r.key != "cap_add"));
    }

    #[test]
    fn every_governed_setting_is_explained_and_allowances_are_checked() {
        for key in GOVERNED {
            assert_ne!(explain(key).0, "the pool does not allow it", "{key}");
        }
        assert_eq!(
            parse_allowance(" cap_add : NET_ADMIN ").as_deref(),
            Ok("cap_add:NET_ADMIN")
        );
        assert_eq!(parse_allowance("privileged").as_deref(), Ok("privileged"));
        let unknown = parse_allowance("cap_ad:NET_ADMIN").unwrap_err();
        assert!(unknown.contains("`cap_ad` is not a setting"), "{unknown}");
        assert!(
            parse_allowance("cap_add:")
                .unwrap_err()
                .contains("empty value")
        );
    }

    #[test]
    fn a_node_adds_the_grants_it_was_sent_to_its_own_policy() {
        let grants = BTreeSet::from(["privileged".to_owned()]);
        let node = Policy::default().granting("acme", &grants);
        let keys: Vec<String> = node
            .refusals(&topology(HOSTILE))
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert!(!keys.contains(&"privileged".to_owned()), "{keys:?}");
        assert!(keys.contains(&"cap_add".to_owned()), "{keys:?}");
        assert_eq!(node.name, "pool (tenant acme)");
        assert!(Policy::local().granting("acme", &grants).allow_all);
    }

    #[test]
    fn a_node_without_a_policy_applies_the_pool_default() {
        let policy: Policy = Policy::default();
        assert!(!policy.allow_all);
        assert!(!policy.refusals(&topology(HOSTILE)).is_empty());
    }
}
