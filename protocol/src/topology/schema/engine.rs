//! The service keys that reach the host or the engine's shared names, read into
//! [`EngineSettings`], and the keys Compose defines that change nothing Berth runs.
//!
//! Reading a key here never decides whether it may run: that is the target's policy.

use std::collections::BTreeMap;

use super::super::model::*;
use super::super::node::{Node, Value};
use super::super::units;
use super::{Cx, join};

/// Keys Compose defines that are read and have no effect on what Berth runs, with why.
/// They are accepted with a warning so that a file runs as it is.
pub(super) const INERT_KEYS: &[(&str, &str)] = &[
    (
        "develop",
        "Berth has no watch mode; `develop` is for `docker compose watch`",
    ),
    ("attach", "`berth logs` shows every service's output"),
    ("credential_spec", "it applies to Windows containers only"),
    ("isolation", "it applies to Windows containers only"),
    ("post_start", "lifecycle hooks are not run yet"),
    ("pre_stop", "lifecycle hooks are not run yet"),
    (
        "label_file",
        "labels from files are not read yet; use `labels`",
    ),
    ("models", "AI models and providers are not run by Berth"),
    ("provider", "AI models and providers are not run by Berth"),
    (
        "use_api_socket",
        "the engine's socket is not handed to containers",
    ),
    ("gpus", "no GPU is assigned to containers yet"),
    ("cpu_count", "it applies to Windows containers only"),
    ("cpu_percent", "it applies to Windows containers only"),
    ("cpu_rt_runtime", "real-time scheduling is not set yet"),
    ("cpu_rt_period", "real-time scheduling is not set yet"),
    ("blkio_config", "block I/O weights are not set yet"),
    ("pull_refresh_after", "images are not refreshed on a timer"),
];

/// Why an inert key has no effect; `None` if `key` is not one.
pub(super) fn inert_service_key(key: &str) -> Option<&'static str> {
    INERT_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, why)| *why)
}

/// All the engine keys of a service, for the schema's list of allowed keys.
pub(super) const ENGINE_KEYS: &[&str] = &[
    "container_name",
    "hostname",
    "domainname",
    "privileged",
    "cap_add",
    "cap_drop",
    "devices",
    "device_cgroup_rules",
    "network_mode",
    "pid",
    "ipc",
    "uts",
    "userns_mode",
    "cgroup",
    "cgroup_parent",
    "sysctls",
    "security_opt",
    "extra_hosts",
    "dns",
    "dns_search",
    "dns_opt",
    "read_only",
    "tmpfs",
    "shm_size",
    "stdin_open",
    "tty",
    "ulimits",
    "pids_limit",
    "cpus",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpuset",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "mem_swappiness",
    "oom_kill_disable",
    "oom_score_adj",
    "platform",
    "pull_policy",
    "logging",
    "group_add",
    "annotations",
    "volumes_from",
    "links",
    "external_links",
    "runtime",
    "storage_opt",
    "mac_address",
];

/// Reads one engine key of a service; `false` if `key` is not one.
pub(super) fn engine_key(
    cx: &mut Cx<'_>,
    key: &str,
    value: &Node,
    p: &str,
    service: &mut Service,
) -> bool {
    let e = &mut service.engine;
    match key {
        "container_name" => {
            e.container_name = cx.non_empty_string(value, p);
            if let Some(name) = &e.container_name
                && !valid_container_name(name)
            {
                cx.error(value.pos, p, format!("{name:?} cannot name a container: use letters, digits, '_', '.' and '-', starting with a letter or digit"));
            }
        }
        "hostname" => e.hostname = cx.non_empty_string(value, p),
        "domainname" => e.domainname = cx.non_empty_string(value, p),
        "privileged" => e.privileged = cx.bool(value, p).unwrap_or(false),
        "cap_add" => e.cap_add = strings(cx, value, p),
        "cap_drop" => e.cap_drop = strings(cx, value, p),
        "devices" => e.devices = devices(cx, value, p),
        "device_cgroup_rules" => e.device_cgroup_rules = strings(cx, value, p),
        "network_mode" => e.network_mode = cx.non_empty_string(value, p),
        "pid" => e.pid = cx.non_empty_string(value, p),
        "ipc" => e.ipc = cx.non_empty_string(value, p),
        "uts" => e.uts = cx.non_empty_string(value, p),
        "userns_mode" => e.userns_mode = cx.non_empty_string(value, p),
        "cgroup" => match cx.string(value, p).as_deref() {
            Some(mode @ ("host" | "private")) => e.cgroup = Some(mode.to_owned()),
            Some(other) => cx.error(
                value.pos,
                p,
                format!("unknown cgroup mode {other:?}: use host or private"),
            ),
            None => {}
        },
        "cgroup_parent" => e.cgroup_parent = cx.non_empty_string(value, p),
        "sysctls" => e.sysctls = cx.key_values(value, p, false),
        "security_opt" => e.security_opt = strings(cx, value, p),
        "extra_hosts" => e.extra_hosts = extra_hosts(cx, value, p),
        "dns" => e.dns = string_or_list(cx, value, p),
        "dns_search" => e.dns_search = string_or_list(cx, value, p),
        "dns_opt" => e.dns_opt = strings(cx, value, p),
        "read_only" => e.read_only = cx.bool(value, p).unwrap_or(false),
        "tmpfs" => e.tmpfs = string_or_list(cx, value, p),
        "shm_size" => e.shm_size = bytes(cx, value, p),
        "stdin_open" => e.stdin_open = cx.bool(value, p).unwrap_or(false),
        "tty" => e.tty = cx.bool(value, p).unwrap_or(false),
        "ulimits" => e.ulimits = ulimits(cx, value, p),
        "pids_limit" => e.pids_limit = cx.int(value, p, -1, i64::MAX),
        "cpu_shares" => e.cpu_shares = cx.int(value, p, 0, i64::MAX),
        "cpu_quota" => e.cpu_quota = cx.int(value, p, -1, i64::MAX),
        "cpu_period" => e.cpu_period = cx.int(value, p, 1000, 1_000_000),
        "cpuset" => e.cpuset = cx.non_empty_string(value, p),
        "cpus" => {
            let parsed = match &value.value {
                Value::Float(x) => units::cpus_to_millis(*x),
                Value::Int(i) => units::cpus_to_millis(*i as f64),
                _ => match cx.string(value, p) {
                    Some(s) => units::parse_cpu_millis(&s),
                    None => return true,
                },
            };
            match parsed {
                Ok(0) => {}
                Ok(m) => {
                    service.limits.cpu_millis.get_or_insert(m);
                }
                Err(err) => cx.error(value.pos, p, err),
            }
        }
        "mem_limit" => {
            if let Some(b) = bytes(cx, value, p) {
                service.limits.memory_bytes.get_or_insert(b);
            }
        }
        "mem_reservation" => e.mem_reservation = bytes(cx, value, p),
        "memswap_limit" => {
            e.memswap_limit = match &value.value {
                Value::Int(-1) => Some(-1),
                _ => bytes(cx, value, p).map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            }
        }
        "mem_swappiness" => e.mem_swappiness = cx.int(value, p, 0, 100),
        "oom_kill_disable" => e.oom_kill_disable = cx.bool(value, p).unwrap_or(false),
        "oom_score_adj" => e.oom_score_adj = cx.int(value, p, -1000, 1000),
        "platform" => e.platform = cx.non_empty_string(value, p),
        "pull_policy" => match cx.string(value, p) {
            Some(policy)
                if matches!(
                    policy.as_str(),
                    "always"
                        | "never"
                        | "missing"
                        | "if_not_present"
                        | "build"
                        | "daily"
                        | "weekly"
                ) || policy.starts_with("every_") =>
            {
                e.pull_policy = Some(policy)
            }
            Some(other) => cx.error(
                value.pos,
                p,
                format!("unknown pull_policy {other:?}: use always, missing, never or build"),
            ),
            None => {}
        },
        "logging" => e.logging = logging(cx, value, p),
        "group_add" => e.group_add = strings(cx, value, p),
        "annotations" => e.annotations = cx.key_values(value, p, false),
        "volumes_from" => e.volumes_from = strings(cx, value, p),
        "links" => e.links = strings(cx, value, p),
        "external_links" => e.external_links = strings(cx, value, p),
        "runtime" => e.runtime = cx.non_empty_string(value, p),
        "storage_opt" => e.storage_opt = cx.key_values(value, p, false),
        "mac_address" => e.mac_address = cx.non_empty_string(value, p),
        _ => return false,
    }
    true
}

fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A list of strings (numbers and booleans read as their text).
pub(super) fn strings(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<String> {
    cx.seq(node, path)
        .iter()
        .enumerate()
        .filter_map(|(i, item)| cx.string(item, &format!("{path}[{i}]")))
        .collect()
}

/// One string, or a list of them.
pub(super) fn string_or_list(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<String> {
    match &node.value {
        Value::Seq(_) => strings(cx, node, path),
        Value::Null => Vec::new(),
        _ => cx.string(node, path).into_iter().collect(),
    }
}

/// A size: a number of bytes, or a string such as `64m`.
pub(super) fn bytes(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<u64> {
    match &node.value {
        Value::Int(i) if *i >= 0 => Some(*i as u64),
        _ => {
            let text = cx.string(node, path)?;
            match units::parse_bytes(&text) {
                Ok(b) => Some(b),
                Err(e) => {
                    cx.error(node.pos, path, e);
                    None
                }
            }
        }
    }
}

fn devices(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, item) in cx.seq(node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        match &item.value {
            Value::Map(_) => {
                // The long syntax names a device by CDI name; keep the source path.
                let mut source = None;
                let mut target = None;
                let mut permissions = None;
                for (key, value) in cx.fields(item, &ip, &["source", "target", "permissions"], true)
                {
                    let kp = join(&ip, key);
                    match key {
                        "source" => source = cx.non_empty_string(value, &kp),
                        "target" => target = cx.non_empty_string(value, &kp),
                        "permissions" => permissions = cx.non_empty_string(value, &kp),
                        _ => unreachable!("fields() returns only known keys"),
                    }
                }
                match source {
                    Some(source) => {
                        let target = target.unwrap_or_else(|| source.clone());
                        let perms = permissions.unwrap_or_else(|| "rwm".to_owned());
                        out.push(format!("{source}:{target}:{perms}"));
                    }
                    None => cx.error(item.pos, &join(&ip, "source"), "a device needs a `source`"),
                }
            }
            _ => {
                if let Some(text) = cx.non_empty_string(item, &ip) {
                    out.push(text);
                }
            }
        }
    }
    out
}

fn extra_hosts(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<String> {
    match &node.value {
        Value::Map(_) => {
            let mut out = Vec::new();
            for (name, _, value) in cx.named(node, path) {
                let vp = join(path, name);
                for address in string_or_list(cx, value, &vp) {
                    out.push(format!("{name}:{address}"));
                }
            }
            out
        }
        _ => strings(cx, node, path)
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                // Compose takes `name=address` as well as `name:address`.
                Some((name, address)) if !name.contains(':') => format!("{name}:{address}"),
                _ => entry,
            })
            .collect(),
    }
}

fn ulimits(cx: &mut Cx<'_>, node: &Node, path: &str) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for (name, _, value) in cx.named(node, path) {
        let p = join(path, name);
        match &value.value {
            Value::Map(_) => {
                let mut soft = None;
                let mut hard = None;
                for (key, v) in cx.fields(value, &p, &["soft", "hard"], true) {
                    let kp = join(&p, key);
                    let n = cx.int(v, &kp, -1, i64::MAX);
                    if key == "soft" {
                        soft = n;
                    } else {
                        hard = n;
                    }
                }
                match (soft, hard) {
                    (Some(soft), Some(hard)) => {
                        out.insert(name.to_owned(), Ulimit { soft, hard });
                    }
                    _ => cx.error(value.pos, &p, "a ulimit needs both `soft` and `hard`"),
                }
            }
            _ => {
                if let Some(n) = cx.int(value, &p, -1, i64::MAX) {
                    out.insert(name.to_owned(), Ulimit { soft: n, hard: n });
                }
            }
        }
    }
    out
}

fn logging(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Logging> {
    let mut logging = Logging::default();
    for (key, value) in cx.fields(node, path, &["driver", "options"], true) {
        let p = join(path, key);
        match key {
            "driver" => logging.driver = cx.non_empty_string(value, &p),
            "options" => logging.options = cx.key_values(value, &p, false),
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    Some(logging)
}
