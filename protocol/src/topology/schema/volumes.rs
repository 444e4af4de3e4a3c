//! Mounts, networks and volumes: a service's `volumes` and `networks`, and the
//! top-level `networks` and `volumes`.

use std::collections::BTreeMap;
use std::path::Path;

use super::super::model::*;
use super::super::node::{Node, Value};
use super::{Cx, NAME_RULE, ServiceSites, join, valid_name};

/// Whether the source of a short-syntax volume is a host path rather than a volume name.
fn is_host_path(source: &str) -> bool {
    source.starts_with(['/', '.', '~']) || source.contains('/')
}

/// A host path made absolute as Compose does: `~` from `HOME`, relative paths against
/// the project directory.
fn host_path(cx: &Cx<'_>, source: &str) -> String {
    let expanded = match source.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match cx.vars.get("HOME") {
            Some(home) => format!("{home}{rest}"),
            None => source.to_owned(),
        },
        _ => source.to_owned(),
    };
    let path = Path::new(&expanded);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cx.dir.join(path)
    };
    normalise(&joined)
}

/// `a/./b/../c` as `a/c`, without touching the file system.
pub(super) fn normalise(path: &Path) -> String {
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}

const MODES: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "cached",
    "delegated",
    "consistent",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
];

pub(super) fn volume_mount_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<VolumeMount> {
    match &node.value {
        Value::Str(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [target] => (None, *target, None),
                [source, target] => (Some(*source), *target, None),
                [source, target, mode] => (Some(*source), *target, Some(*mode)),
                _ => {
                    cx.error(node.pos, path, format!("{text:?} is not a volume such as \"data:/var/lib/data\" or \"./site:/srv:ro\""));
                    return None;
                }
            };
            let mut read_only = false;
            for m in mode.unwrap_or("").split(',').filter(|m| !m.is_empty()) {
                if !MODES.contains(&m) {
                    cx.error(
                        node.pos,
                        path,
                        format!("unknown volume mode {m:?}: use ro, rw, z, Z, nocopy or a propagation such as rshared"),
                    );
                    return None;
                }
                read_only |= m == "ro";
            }
            if !target.starts_with('/') {
                cx.error(
                    node.pos,
                    path,
                    format!("the target {target:?} must be an absolute path inside the container"),
                );
                return None;
            }
            let (kind, source) = match source {
                Some("") => {
                    cx.error(
                        node.pos,
                        path,
                        format!("{text:?} has an empty source before ':'"),
                    );
                    return None;
                }
                Some(s) if is_host_path(s) => (MountKind::Bind, Some(host_path(cx, s))),
                other => (MountKind::Volume, other.map(str::to_owned)),
            };
            Some(VolumeMount {
                kind,
                source,
                target: target.to_owned(),
                read_only,
            })
        }
        Value::Map(_) => long_mount_of(cx, node, path),
        _ => {
            cx.expected(
                node,
                path,
                "a volume such as \"data:/var/lib/data\" or a mapping",
            );
            None
        }
    }
}

fn long_mount_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<VolumeMount> {
    let mut mount = VolumeMount {
        kind: MountKind::Volume,
        source: None,
        target: String::new(),
        read_only: false,
    };
    let mut ok = true;
    let keys = [
        "type",
        "source",
        "target",
        "read_only",
        "consistency",
        "bind",
        "volume",
        "tmpfs",
        "image",
    ];
    for (key, value) in cx.fields(node, path, &keys, true) {
        let p = join(path, key);
        match key {
            "type" => match cx.string(value, &p).as_deref() {
                Some("volume") => mount.kind = MountKind::Volume,
                Some("bind") => mount.kind = MountKind::Bind,
                Some("tmpfs") => mount.kind = MountKind::Tmpfs,
                Some(other @ ("npipe" | "cluster" | "image")) => {
                    cx.error(
                        value.pos,
                        &p,
                        format!("volume type {other:?} is not supported: {}", match other {
                            "npipe" => "named pipes exist on Windows hosts only",
                            "cluster" => "cluster volumes are a Swarm feature",
                            _ => "mounting an image's files is not supported yet; copy them into a volume",
                        }),
                    );
                    ok = false;
                }
                Some(other) => {
                    cx.error(
                        value.pos,
                        &p,
                        format!("unknown volume type {other:?}: use volume, bind or tmpfs"),
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "source" => mount.source = cx.non_empty_string(value, &p),
            "target" => mount.target = cx.non_empty_string(value, &p).unwrap_or_default(),
            "read_only" => mount.read_only = cx.bool(value, &p).unwrap_or(false),
            // Options of one kind of mount: checked for form, applied by the engine's
            // defaults (no SELinux relabelling, no propagation change, no size cap).
            "bind" => {
                cx.fields(
                    value,
                    &p,
                    &["propagation", "create_host_path", "selinux"],
                    true,
                );
            }
            "volume" => {
                cx.fields(value, &p, &["nocopy", "subpath"], true);
            }
            "tmpfs" => {
                cx.fields(value, &p, &["size", "mode"], true);
            }
            "consistency" | "image" => {}
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if mount.kind == MountKind::Bind {
        match &mount.source {
            Some(source) => mount.source = Some(host_path(cx, source)),
            None => {
                cx.error(
                    node.pos,
                    &join(path, "source"),
                    "a bind mount needs a `source` (a path on the host)",
                );
                ok = false;
            }
        }
    }
    if mount.target.is_empty() {
        cx.error(
            node.pos,
            &join(path, "target"),
            "a volume needs a `target` (an absolute path inside the container)",
        );
        ok = false;
    } else if !mount.target.starts_with('/') {
        cx.error(
            node.pos,
            &join(path, "target"),
            format!("the target {:?} must be an absolute path", mount.target),
        );
        ok = false;
    }
    ok.then_some(mount)
}

pub(super) fn service_networks_of(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    sites: &mut ServiceSites,
    engine: &mut EngineSettings,
) -> BTreeMap<String, ServiceNetwork> {
    let mut out = BTreeMap::new();
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = cx.non_empty_string(item, &format!("{path}[{i}]")) {
                    sites.networks.insert(name.clone(), item.pos);
                    out.insert(name, ServiceNetwork::default());
                }
            }
        }
        Value::Map(_) => {
            for (name, pos, body) in cx.named(node, path) {
                let p = join(path, name);
                let mut network = ServiceNetwork::default();
                if body.value != Value::Null {
                    let keys = [
                        "aliases",
                        "ipv4_address",
                        "ipv6_address",
                        "link_local_ips",
                        "mac_address",
                        "driver_opts",
                        "priority",
                        "gw_priority",
                        "interface_name",
                    ];
                    for (key, value) in cx.fields(body, &p, &keys, true) {
                        let ap = join(&p, key);
                        match key {
                            "aliases" => {
                                for (i, alias) in cx.seq(value, &ap).iter().enumerate() {
                                    let item_path = format!("{ap}[{i}]");
                                    match cx.non_empty_string(alias, &item_path) {
                                        Some(a) if valid_name(&a) => network.aliases.push(a),
                                        Some(a) => cx.error(
                                            alias.pos,
                                            &item_path,
                                            format!("{a:?} cannot be a host name: {NAME_RULE}"),
                                        ),
                                        None => {}
                                    }
                                }
                            }
                            "ipv4_address" | "ipv6_address" => {
                                if let Some(address) = cx.non_empty_string(value, &ap) {
                                    if address.parse::<std::net::IpAddr>().is_err() {
                                        cx.error(
                                            value.pos,
                                            &ap,
                                            format!("{address:?} is not an IP address"),
                                        );
                                    } else {
                                        engine
                                            .addresses
                                            .entry(name.to_owned())
                                            .or_default()
                                            .push(address);
                                    }
                                }
                            }
                            _ => cx.warn(
                                value.pos,
                                &ap,
                                format!("`{key}` is read but has no effect: the engine picks it"),
                            ),
                        }
                    }
                }
                sites.networks.insert(name.to_owned(), pos);
                out.insert(name.to_owned(), network);
            }
        }
        _ => cx.expected(node, path, "a list of network names or a mapping"),
    }
    if out.is_empty() && cx.errors.is_empty() {
        cx.error(
            node.pos,
            path,
            "a service must join at least one network (leave `networks` out to join `default`)",
        );
    }
    out
}

/// `external: true`, or the legacy `external: {name: N}`, as the engine's name of the
/// object; `None` when not external.
fn external_of(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    key_name: &str,
    name: Option<&str>,
) -> Option<String> {
    match &node.value {
        Value::Map(_) => {
            let mut external = key_name.to_owned();
            for (key, value) in cx.fields(node, path, &["name"], true) {
                if let Some(n) = cx.non_empty_string(value, &join(path, key)) {
                    external = n;
                }
            }
            Some(external)
        }
        _ => (cx.bool(node, path) == Some(true)).then(|| name.unwrap_or(key_name).to_owned()),
    }
}

/// The `name:` among an object's fields, read first because `external` defaults to it.
fn name_field(cx: &mut Cx<'_>, fields: &[(&str, &Node)], path: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| *k == "name")
        .and_then(|(_, v)| cx.non_empty_string(v, &join(path, "name")))
}

pub(super) fn network_of(cx: &mut Cx<'_>, node: &Node, path: &str, key_name: &str) -> Network {
    let mut network = Network::default();
    if node.value == Value::Null {
        return network;
    }
    let keys = [
        "name",
        "driver",
        "driver_opts",
        "ipam",
        "external",
        "internal",
        "enable_ipv4",
        "enable_ipv6",
        "attachable",
        "labels",
    ];
    let fields = cx.fields(node, path, &keys, true);
    let name = name_field(cx, &fields, path);
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "name" => {}
            "driver" => network.driver = cx.non_empty_string(value, &p),
            "driver_opts" => network.driver_opts = cx.key_values(value, &p, false),
            "ipam" => network.subnets = ipam_of(cx, value, &p),
            "internal" => network.internal = cx.bool(value, &p).unwrap_or(false),
            "enable_ipv6" => network.enable_ipv6 = cx.bool(value, &p).unwrap_or(false),
            "enable_ipv4" | "attachable" => {
                cx.bool(value, &p);
            }
            "labels" => network.labels = cx.key_values(value, &p, false),
            "external" => network.external = external_of(cx, value, &p, key_name, name.as_deref()),
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    network
}

fn ipam_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<Subnet> {
    let mut subnets = Vec::new();
    for (key, value) in cx.fields(node, path, &["driver", "config", "options"], true) {
        let p = join(path, key);
        if key != "config" {
            continue;
        }
        for (i, item) in cx.seq(value, &p).iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let mut subnet = Subnet::default();
            for (key, value) in cx.fields(
                item,
                &ip,
                &["subnet", "ip_range", "gateway", "aux_addresses"],
                true,
            ) {
                let kp = join(&ip, key);
                match key {
                    "subnet" => subnet.subnet = cx.non_empty_string(value, &kp).unwrap_or_default(),
                    "ip_range" => subnet.ip_range = cx.non_empty_string(value, &kp),
                    "gateway" => subnet.gateway = cx.non_empty_string(value, &kp),
                    _ => {}
                }
            }
            if !subnet.subnet.is_empty() {
                subnets.push(subnet);
            }
        }
    }
    subnets
}

pub(super) fn volume_of(cx: &mut Cx<'_>, node: &Node, path: &str, key_name: &str) -> Volume {
    let mut volume = Volume::default();
    if node.value == Value::Null {
        return volume;
    }
    let fields = cx.fields(
        node,
        path,
        &["name", "driver", "driver_opts", "external", "labels"],
        true,
    );
    let name = name_field(cx, &fields, path);
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "name" => {}
            "driver" => volume.driver = cx.non_empty_string(value, &p),
            "driver_opts" => volume.driver_opts = cx.key_values(value, &p, false),
            "labels" => volume.labels = cx.key_values(value, &p, false),
            "external" => volume.external = external_of(cx, value, &p, key_name, name.as_deref()),
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    volume
}
