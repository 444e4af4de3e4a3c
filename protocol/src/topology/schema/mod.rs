//! The Compose schema, applied by hand to a spanned node tree.
//!
//! Each `*_of` function reads one part of the format into the model and records every
//! problem it finds in the [`Cx`], carrying on where it can so that one run reports
//! them all. Keys that Compose defines but Berth does not run are refused with the
//! reason, never silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::diagnostic::Diagnostic;
use super::env_file::{EnvEntry, parse_env_file};
use super::interpolate::Variables;
use super::model::*;
use super::node::{Node, Pos, Value};
use super::units;

mod context;
mod deploy;
mod engine;
mod files;
mod ports;
mod volumes;

pub(crate) use context::{Cx, join};
use deploy::{autoscale_of, deploy_of, healthcheck_of, restart_of};
use engine::{ENGINE_KEYS, INERT_KEYS, engine_key, inert_service_key};
use ports::{parse_port_spec, port_of};
use volumes::{network_of, service_networks_of, volume_mount_of, volume_of};

/// Reads the files a topology refers to (`env_file`), so the schema stays free of I/O.
pub trait FileReader {
    /// The text of the file at `path`.
    fn read_to_string(&self, path: &Path) -> std::io::Result<String>;
}

/// Reads from the local file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFiles;

impl FileReader for LocalFiles {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Whether `name` may name a service, network or volume as Compose allows: letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit, at most 63 characters (a
/// DNS label).
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

const NAME_RULE: &str =
    "use letters, digits, '-', '_' and '.', starting with a letter or digit (at most 63)";

/// The top level of the file.
pub(crate) struct TopLevel {
    pub(crate) name: Option<(String, Pos)>,
    pub(crate) services: BTreeMap<String, (Service, ServiceSites)>,
    pub(crate) declared_services: BTreeSet<String>,
    pub(crate) networks: BTreeMap<String, Network>,
    pub(crate) volumes: BTreeMap<String, Volume>,
    pub(crate) files: files::Definitions,
}

/// Where the parts of a service stand, for the cross-checks that run after the schema.
#[derive(Default)]
pub(crate) struct ServiceSites {
    pub(crate) depends_on: BTreeMap<String, Pos>,
    pub(crate) networks: BTreeMap<String, Pos>,
    pub(crate) volumes: Vec<Pos>,
    pub(crate) ports: Vec<Pos>,
    pub(crate) replicas: Pos,
    /// The secrets and configs the service names, resolved once all are read.
    pub(crate) files: Vec<files::Reference>,
    /// Whether `image` was given (a service with `build` may leave it out).
    pub(crate) image_given: bool,
}

pub(crate) fn top_level(cx: &mut Cx<'_>, root: &Node) -> Option<TopLevel> {
    if root.value == Value::Null {
        cx.error(
            root.pos,
            "",
            "the file is empty: a topology needs at least `services`",
        );
        return None;
    }
    let fields = cx.fields(
        root,
        "",
        &[
            "name", "version", "services", "networks", "volumes", "secrets", "configs", "include",
            "models", "x-berth",
        ],
        true,
    );
    let mut top = TopLevel {
        name: None,
        services: BTreeMap::new(),
        declared_services: BTreeSet::new(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
        files: files::Definitions::default(),
    };
    let mut saw_services = false;
    for (key, value) in fields {
        match key {
            "name" => {
                if let Some(name) = cx.non_empty_string(value, "name") {
                    if valid_topology_name(&name) {
                        top.name = Some((name, value.pos));
                    } else {
                        cx.error(value.pos, "name", format!("{name:?} cannot name a topology: use lower-case letters, digits, '-' and '_', starting with a letter or digit (at most 63)"));
                    }
                }
            }
            "version" => cx.warn(
                value.pos,
                "version",
                "`version` is obsolete and has no effect",
            ),
            "services" => {
                saw_services = true;
                services_of(cx, value, &mut top);
            }
            "networks" => {
                for (name, pos, node) in cx.named(value, "networks") {
                    let path = join("networks", name);
                    if !valid_name(name) {
                        cx.error(
                            pos,
                            &path,
                            format!("{name:?} cannot name a network: {NAME_RULE}"),
                        );
                        continue;
                    }
                    top.networks
                        .insert(name.to_owned(), network_of(cx, node, &path, name));
                }
            }
            "volumes" => {
                for (name, pos, node) in cx.named(value, "volumes") {
                    let path = join("volumes", name);
                    if !valid_name(name) {
                        cx.error(
                            pos,
                            &path,
                            format!("{name:?} cannot name a volume: {NAME_RULE}"),
                        );
                        continue;
                    }
                    top.volumes
                        .insert(name.to_owned(), volume_of(cx, node, &path, name));
                }
            }
            "secrets" | "configs" => {
                let kind = if key == "secrets" {
                    FileKind::Secret
                } else {
                    FileKind::Config
                };
                files::definitions_of(cx, value, key, kind, &mut top.files);
            }
            // Merged into the tree before the schema reads it.
            "include" => {}
            "models" => cx.warn(
                value.pos,
                "models",
                "`models` is read but has no effect: Berth does not run AI models",
            ),
            "x-berth" => {
                cx.fields(value, "x-berth", &[], false);
            }
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    files::resolve(cx, &mut top);
    if !saw_services {
        cx.error(
            root.pos,
            "services",
            "a topology needs `services`, with at least one service",
        );
    }
    Some(top)
}

/// Whether `name` may name a topology: a Compose project name, in lower case, without `.`.
pub fn valid_topology_name(name: &str) -> bool {
    valid_name(name) && !name.contains('.') && !name.chars().any(|c| c.is_ascii_uppercase())
}

fn services_of(cx: &mut Cx<'_>, node: &Node, top: &mut TopLevel) {
    let entries = cx.named(node, "services");
    if entries.is_empty() && cx.errors.is_empty() {
        cx.error(
            node.pos,
            "services",
            "a topology needs at least one service",
        );
    }
    for (name, pos, body) in entries {
        let path = join("services", name);
        top.declared_services.insert(name.to_owned());
        if !valid_name(name) {
            cx.error(
                pos,
                &path,
                format!("{name:?} cannot name a service: {NAME_RULE}"),
            );
            continue;
        }
        // A service with problems is kept for the cross-checks, so that one run
        // reports its bad references too; the load fails on the problems anyway.
        if let Some(service) = service_of(cx, body, pos, &path) {
            top.services.insert(name.to_owned(), service);
        }
    }
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "deploy",
    "restart",
    "labels",
    "volumes",
    "networks",
    "working_dir",
    "user",
    "init",
    "stop_signal",
    "stop_grace_period",
    "build",
    "secrets",
    "configs",
    "profiles",
    "extends",
    "scale",
    "x-berth",
];

/// Every key a service may have: the portable core, the engine's, and the inert ones.
fn service_keys() -> Vec<&'static str> {
    SERVICE_KEYS
        .iter()
        .chain(ENGINE_KEYS)
        .copied()
        .chain(INERT_KEYS.iter().map(|(k, _)| *k))
        .collect()
}

fn service_of(
    cx: &mut Cx<'_>,
    node: &Node,
    key_pos: Pos,
    path: &str,
) -> Option<(Service, ServiceSites)> {
    let fields = cx.fields(node, path, &service_keys(), true);
    if !matches!(node.value, Value::Map(_)) {
        return None;
    }
    let mut sites = ServiceSites {
        replicas: node.pos,
        ..ServiceSites::default()
    };
    let mut image = None;
    let mut service = Service {
        image: String::new(),
        digest: None,
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        ports: Vec::new(),
        expose: Vec::new(),
        depends_on: BTreeMap::new(),
        healthcheck: None,
        replicas: 1,
        limits: Limits::default(),
        restart: RestartPolicy::No,
        labels: BTreeMap::new(),
        volumes: Vec::new(),
        networks: BTreeMap::new(),
        working_dir: None,
        user: None,
        init: false,
        stop_signal: None,
        stop_grace_period_ms: None,
        constraints: Vec::new(),
        autoscale: None,
        build: None,
        files: Vec::new(),
        engine: EngineSettings::default(),
    };
    let mut restart_given = false;
    let mut deploy_restart = None;
    let mut env_files = BTreeMap::new();
    let mut autoscale_at = None;
    let mut networks_given = false;
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "image" => {
                image = cx
                    .non_empty_string(value, &p)
                    .and_then(|i| image_ref(cx, value, &p, i))
            }
            "command" => service.command = cx.command(value, &p),
            "entrypoint" => service.entrypoint = cx.command(value, &p),
            "environment" => service.environment = cx.key_values(value, &p, true),
            "env_file" => env_files = env_files_of(cx, value, &p),
            "ports" => {
                for (i, item) in cx.seq(value, &p).iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    for mapping in port_of(cx, item, &ip) {
                        service.ports.push(mapping);
                        sites.ports.push(item.pos);
                    }
                }
            }
            "expose" => {
                for (i, item) in cx.seq(value, &p).iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if let Some(text) = cx.string(item, &ip) {
                        match parse_port_spec(&text) {
                            Ok((range, protocol)) => service
                                .expose
                                .extend(range.map(|port| ExposedPort { port, protocol })),
                            Err(e) => cx.error(item.pos, &ip, e),
                        }
                    }
                }
            }
            "depends_on" => service.depends_on = depends_on_of(cx, value, &p, &mut sites),
            "healthcheck" => service.healthcheck = healthcheck_of(cx, value, &p),
            "deploy" => deploy_restart = deploy_of(cx, value, &p, &mut service, &mut sites),
            "restart" => {
                restart_given = true;
                service.restart = restart_of(cx, value, &p).unwrap_or_default();
            }
            "build" => service.build = files::build_of(cx, value, &p),
            "secrets" => files::references_of(cx, value, &p, FileKind::Secret, &mut sites),
            "configs" => files::references_of(cx, value, &p, FileKind::Config, &mut sites),
            // Applied to the tree before the schema reads it; checked for form here.
            "profiles" => {
                engine::strings(cx, value, &p);
            }
            "extends" => {}
            "scale" => {
                if let Some(r) = cx.int(value, &p, 0, 10_000) {
                    service.replicas = r as u32;
                }
            }
            "labels" => {
                service.labels = cx.key_values(value, &p, false);
                for key in service.labels.keys() {
                    if key.starts_with("berth.") {
                        cx.error(
                            value.pos,
                            &join(&p, key),
                            "labels starting with `berth.` are reserved for Berth",
                        );
                    }
                }
            }
            "volumes" => {
                for (i, item) in cx.seq(value, &p).iter().enumerate() {
                    if let Some(mount) = volume_mount_of(cx, item, &format!("{p}[{i}]")) {
                        service.volumes.push(mount);
                        sites.volumes.push(item.pos);
                    }
                }
            }
            "networks" => {
                networks_given = true;
                service.networks =
                    service_networks_of(cx, value, &p, &mut sites, &mut service.engine);
            }
            "working_dir" => {
                service.working_dir = cx.non_empty_string(value, &p);
                if let Some(dir) = &service.working_dir
                    && !dir.starts_with('/')
                {
                    cx.error(
                        value.pos,
                        &p,
                        format!("must be an absolute path, found {dir:?}"),
                    );
                }
            }
            "user" => service.user = cx.non_empty_string(value, &p),
            "init" => service.init = cx.bool(value, &p).unwrap_or(false),
            "stop_signal" => {
                service.stop_signal = cx.non_empty_string(value, &p).and_then(|sig| {
                    let name = sig.trim_start_matches("SIG");
                    let known = sig.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
                        || (!name.is_empty()
                            && name.chars().all(|c| {
                                c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'
                            }));
                    if known {
                        Some(sig)
                    } else {
                        cx.error(
                            value.pos,
                            &p,
                            format!("{sig:?} is not a signal such as SIGTERM, SIGINT or 15"),
                        );
                        None
                    }
                });
            }
            "stop_grace_period" => {
                if let Some(text) = cx.string(value, &p) {
                    match units::parse_duration_ms(&text) {
                        Ok(ms) => service.stop_grace_period_ms = Some(ms),
                        Err(e) => cx.error(value.pos, &p, e),
                    }
                }
            }
            "x-berth" => {
                for (key, value) in cx.fields(value, &p, &["autoscale"], false) {
                    let ap = join(&p, key);
                    autoscale_at = Some((value.pos, ap.clone()));
                    service.autoscale = autoscale_of(cx, value, &ap);
                }
            }
            other => {
                if let Some(reason) = inert_service_key(other) {
                    cx.warn(
                        value.pos,
                        &p,
                        format!("`{other}` is read but has no effect: {reason}"),
                    );
                } else if !engine_key(cx, other, value, &p, &mut service) {
                    unreachable!("fields() returns only known keys")
                }
            }
        }
    }
    if !restart_given && let Some(restart) = deploy_restart {
        service.restart = restart;
    }
    if let (Some(autoscale), Some((pos, ap))) = (&service.autoscale, autoscale_at) {
        // The bounds themselves were checked as they were read.
        if autoscale.min <= autoscale.max
            && !(autoscale.min..=autoscale.max).contains(&service.replicas)
        {
            cx.error(
                pos,
                &ap,
                format!(
                    "deploy.replicas ({}) must lie between min ({}) and max ({})",
                    service.replicas, autoscale.min, autoscale.max
                ),
            );
        }
    }
    if !networks_given && service.engine.network_mode.is_none() {
        service
            .networks
            .insert("default".to_owned(), ServiceNetwork::default());
    }
    // `environment` wins over `env_file`, as in Compose.
    for (k, v) in env_files {
        service.environment.entry(k).or_insert(v);
    }
    match image {
        Some(image) => {
            sites.image_given = true;
            service.image = image;
        }
        // Named `PROJECT-SERVICE` once the project's name is known, as Compose does.
        None if service.build.is_some() => {}
        None => {
            if !cx.errors.iter().any(|d| d.path == join(path, "image")) {
                cx.error(
                    key_pos,
                    &join(path, "image"),
                    "every service needs an `image` or a `build`",
                );
            }
            return None;
        }
    }
    Some((service, sites))
}

fn image_ref(cx: &mut Cx<'_>, node: &Node, path: &str, image: String) -> Option<String> {
    if image.chars().any(|c| c.is_whitespace() || c.is_control())
        || image.starts_with(['-', ':', '/'])
    {
        cx.error(
            node.pos,
            path,
            format!("{image:?} is not an image reference such as \"busybox:latest\""),
        );
        return None;
    }
    Some(image)
}

fn env_files_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> BTreeMap<String, String> {
    let items: Vec<(String, Node)> = match &node.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{path}[{i}]"), n.clone()))
            .collect(),
        _ => vec![(path.to_owned(), node.clone())],
    };
    let mut out = BTreeMap::new();
    for (item_path, item) in items {
        let (file, required) = match &item.value {
            Value::Map(_) => {
                let mut file = None;
                let mut required = true;
                for (key, value) in cx.fields(&item, &item_path, &["path", "required"], false) {
                    let p = join(&item_path, key);
                    match key {
                        "path" => file = cx.non_empty_string(value, &p),
                        "required" => required = cx.bool(value, &p).unwrap_or(true),
                        _ => unreachable!("fields() returns only known keys"),
                    }
                }
                if file.is_none() {
                    cx.error(
                        item.pos,
                        &join(&item_path, "path"),
                        "an env_file entry needs a `path`",
                    );
                }
                (file, required)
            }
            _ => (cx.non_empty_string(&item, &item_path), true),
        };
        let Some(file) = file else { continue };
        let full: PathBuf = cx.dir.join(&file);
        match cx.files.read_to_string(&full) {
            Ok(text) => match parse_env_file(&text) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            EnvEntry::Value(k, v) => {
                                out.insert(k, v);
                            }
                            EnvEntry::Inherit(k) => {
                                if let Some(v) = cx.vars.get(&k) {
                                    out.insert(k, v.to_owned());
                                }
                            }
                        }
                    }
                }
                Err(problems) => {
                    for p in problems {
                        cx.error(
                            item.pos,
                            &item_path,
                            format!("{}:{}: {}", full.display(), p.line, p.message),
                        );
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => cx.error(
                item.pos,
                &item_path,
                format!("cannot read env file {}: {e}", full.display()),
            ),
        }
    }
    out
}

fn depends_on_of(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    sites: &mut ServiceSites,
) -> BTreeMap<String, Dependency> {
    let mut out = BTreeMap::new();
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = cx.non_empty_string(item, &format!("{path}[{i}]")) {
                    sites.depends_on.insert(name.clone(), item.pos);
                    out.insert(name, Dependency::default());
                }
            }
        }
        Value::Map(_) => {
            for (name, pos, body) in cx.named(node, path) {
                let p = join(path, name);
                let mut dependency = Dependency::default();
                if body.value != Value::Null {
                    for (key, value) in
                        cx.fields(body, &p, &["condition", "restart", "required"], true)
                    {
                        let cp = join(&p, key);
                        if key == "required" {
                            dependency.required = cx.bool(value, &cp).unwrap_or(true);
                            continue;
                        }
                        if key == "restart" {
                            // Restarting dependents is a `docker compose restart`
                            // concern; `berth up` replaces what changed.
                            if !matches!(value.value, Value::Bool(_)) {
                                cx.string(value, &cp);
                            }
                            continue;
                        }
                        match cx.string(value, &cp).as_deref() {
                            Some("service_started") => dependency.condition = Condition::ServiceStarted,
                            Some("service_healthy") => dependency.condition = Condition::ServiceHealthy,
                            Some("service_completed_successfully") => {
                                dependency.condition = Condition::ServiceCompletedSuccessfully;
                            }
                            Some(other) => cx.error(value.pos, &cp, format!("unknown condition {other:?}: use service_started, service_healthy or service_completed_successfully")),
                            None => {}
                        }
                    }
                }
                sites.depends_on.insert(name.to_owned(), pos);
                out.insert(name.to_owned(), dependency);
            }
        }
        _ => cx.expected(node, path, "a list of service names or a mapping"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::context::unknown_key_message;
    use super::ports::parse_short_port;
    use super::*;

    #[test]
    fn short_ports() {
        let p = parse_short_port("8080:80").unwrap();
        assert_eq!(
            p,
            vec![PortMapping {
                target: 80,
                published: Some(8080),
                host_ip: None,
                protocol: Protocol::Tcp
            }]
        );
        let p = parse_short_port("127.0.0.1:53:53/udp").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p[0].protocol, Protocol::Udp);
        let p = parse_short_port("[::1]:8080:80").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("::1"));
        assert_eq!(parse_short_port("80").unwrap()[0].published, None);
        assert_eq!(parse_short_port("9000-9002:8000-8002").unwrap().len(), 3);
        assert!(parse_short_port("9000-9001:8000-8002").is_err());
        assert!(parse_short_port("http").is_err());
        assert!(parse_short_port("0:80").is_err());
        assert!(parse_short_port("1:2:3:4").is_err());
        assert!(parse_short_port("80/sctp").is_err());
        assert!(parse_short_port("bad-ip:80:80").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("web"));
        assert!(valid_name("web-1.x_y"));
        // Compose allows upper case in service, network and volume names.
        assert!(valid_name("Web"));
        assert!(!valid_topology_name("Web"));
        assert!(!valid_name("-web"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn suggestions_for_typos() {
        let m = unknown_key_message("imgae", SERVICE_KEYS);
        assert!(m.contains("did you mean `image`"), "{m}");
        let m = unknown_key_message("priviledged", &service_keys());
        assert!(m.contains("did you mean `privileged`"), "{m}");
    }
}
