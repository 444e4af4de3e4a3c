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

mod engine;
mod files;
mod volumes;

use engine::{ENGINE_KEYS, INERT_KEYS, engine_key, inert_service_key};
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

/// The conversion's context: where problems go and what the schema may read.
pub(crate) struct Cx<'a> {
    pub(crate) file: &'a str,
    pub(crate) dir: &'a Path,
    pub(crate) vars: &'a Variables,
    pub(crate) files: &'a dyn FileReader,
    pub(crate) errors: Vec<Diagnostic>,
    pub(crate) warnings: Vec<Diagnostic>,
    /// Where each field read stands, by path.
    pub(crate) sites: BTreeMap<String, Pos>,
}

impl Cx<'_> {
    pub(crate) fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(self.file, pos, path, message));
    }

    pub(crate) fn warn(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::new(self.file, pos, path, message));
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let found = match &node.value {
            Value::Seq(_) | Value::Map(_) | Value::Null => node.value.kind().to_owned(),
            scalar => scalar.to_string(),
        };
        self.error(node.pos, path, format!("expected {what}, found {found}"));
    }

    /// The entries of a mapping with string keys, refusing keys outside `known`.
    /// `x-` extension keys are allowed (and skipped) where `extensions` is true.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
        extensions: bool,
    ) -> Vec<(&'n str, &'n Node)> {
        let Value::Map(entries) = &node.value else {
            self.expected(node, path, "a mapping");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.error(
                    key.pos,
                    path,
                    format!("keys must be strings, found {}", key.value),
                );
                continue;
            };
            if known.contains(&name.as_str()) {
                self.sites.insert(join(path, name), key.pos);
                out.push((name.as_str(), value));
            } else if extensions && name.starts_with("x-") && name != "x-berth" {
                // Extension fields hold anchors for reuse; Compose ignores them too.
            } else {
                let message = unknown_key_message(name, known);
                self.error(key.pos, &join(path, name), message);
            }
        }
        out
    }

    /// A mapping with arbitrary string keys (service names, label keys, ...).
    fn named<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(&'n str, Pos, &'n Node)> {
        match &node.value {
            Value::Null => Vec::new(),
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| match &k.value {
                    Value::Str(s) => Some((s.as_str(), k.pos, v)),
                    Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                        self.error(
                            k.pos,
                            path,
                            format!("key {} must be a string: quote it", k.value),
                        );
                        None
                    }
                    _ => {
                        self.error(k.pos, path, "keys must be strings");
                        None
                    }
                })
                .collect(),
            _ => {
                self.expected(node, path, "a mapping");
                Vec::new()
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(x) => Some(x.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.expected(node, path, "a string");
                None
            }
        }
    }

    fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(node.pos, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let value = match &node.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                self.error(
                    node.pos,
                    path,
                    format!("must be between {min} and {max}, found {v}"),
                );
                None
            }
            None => {
                self.expected(node, path, "an integer");
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" => Some(true),
            Value::Str(s) if s == "false" => Some(false),
            _ => {
                self.expected(node, path, "true or false");
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.sites.insert(format!("{path}[{i}]"), item.pos);
                }
                items
            }
            _ => {
                self.expected(node, path, "a list");
                &[]
            }
        }
    }

    /// A command line: a list of strings, or one string split as a shell would.
    fn command(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Null => None,
            Value::Str(s) => match shell_words::split(s) {
                Ok(words) => Some(words),
                Err(e) => {
                    self.error(
                        node.pos,
                        path,
                        format!("cannot split {s:?} into words: {e}"),
                    );
                    None
                }
            },
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
                .collect(),
            _ => {
                self.expected(node, path, "a string or a list of strings");
                None
            }
        }
    }

    /// `KEY: value` pairs, from a mapping or a list of `KEY=value` strings. A missing
    /// value takes the variable from the environment (or leaves it out when unset).
    fn key_values(&mut self, node: &Node, path: &str, inherit: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Null => {}
            Value::Map(_) => {
                for (key, _, value) in self.named(node, path) {
                    let item_path = join(path, key);
                    match &value.value {
                        Value::Null if inherit => {
                            if let Some(v) = self.vars.get(key) {
                                out.insert(key.to_owned(), v.to_owned());
                            }
                        }
                        Value::Null => {
                            out.insert(key.to_owned(), String::new());
                        }
                        _ => {
                            if let Some(v) = self.string(value, &item_path) {
                                out.insert(key.to_owned(), v);
                            }
                        }
                    }
                }
            }
            Value::Seq(items) => {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let Some(text) = self.string(item, &item_path) else {
                        continue;
                    };
                    if !seen.insert(text.clone()) {
                        self.error(
                            item.pos,
                            &item_path,
                            format!("{text:?} is listed twice: list items must be unique"),
                        );
                        continue;
                    }
                    match text.split_once('=') {
                        Some((k, v)) if !k.is_empty() => {
                            out.insert(k.to_owned(), v.to_owned());
                        }
                        Some(_) => {
                            self.error(item.pos, &item_path, "expected KEY=VALUE, the key is empty")
                        }
                        None if inherit => {
                            if let Some(v) = self.vars.get(&text) {
                                out.insert(text.clone(), v.to_owned());
                            }
                        }
                        None => {
                            out.insert(text, String::new());
                        }
                    }
                }
            }
            _ => self.expected(node, path, "a mapping or a list of KEY=VALUE strings"),
        }
        out
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let close = known
        .iter()
        .filter(|k| edit_distance(k, key) <= 2)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .next()
        .unwrap_or_default();
    let mut listed: Vec<&str> = known.to_vec();
    listed.sort_unstable();
    format!(
        "unknown key `{key}`{close}; allowed here: {}",
        listed.join(", ")
    )
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
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

/// Parses `PORT`, `START-END`, with an optional `/tcp` or `/udp`.
fn parse_port_spec(text: &str) -> Result<(std::ops::RangeInclusive<u16>, Protocol), String> {
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}: use tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    Ok((parse_port_range(ports)?, protocol))
}

fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let port = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{text:?} is not a port (1 to 65535)")),
            Ok(p) => Ok(p),
        }
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("port range {text:?} ends before it starts"));
            }
            Ok(a..=b)
        }
        None => {
            let p = port(text)?;
            Ok(p..=p)
        }
    }
}

fn port_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<PortMapping> {
    match &node.value {
        Value::Map(_) => long_port_of(cx, node, path).into_iter().collect(),
        Value::Int(_) | Value::Str(_) => {
            let text = cx.string(node, path).unwrap_or_default();
            match parse_short_port(&text) {
                Ok(ports) => ports,
                Err(e) => {
                    cx.error(node.pos, path, e);
                    Vec::new()
                }
            }
        }
        _ => {
            cx.expected(
                node,
                path,
                "a port such as \"8080:80\" or a mapping with `target`",
            );
            Vec::new()
        }
    }
}

/// `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, each port possibly a range.
fn parse_short_port(text: &str) -> Result<Vec<PortMapping>, String> {
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((r, "tcp")) => (r, Protocol::Tcp),
        Some((r, "udp")) => (r, Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}: use tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (host_ip, rest) = if let Some(after) = rest.strip_prefix('[') {
        let end = after
            .find(']')
            .ok_or_else(|| format!("unclosed '[' in {text:?}"))?;
        let rest = after[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| format!("expected ':' after the address in {text:?}"))?;
        (Some(after[..end].to_owned()), rest)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (ip, [target]) => (ip, None, *target),
        (ip, [published, target]) => (ip, Some(*published), *target),
        (None, [ip, published, target]) => (Some((*ip).to_owned()), Some(*published), *target),
        _ => {
            return Err(format!(
                "{text:?} is not a port mapping such as \"8080:80\" or \"127.0.0.1:8080:80/udp\""
            ));
        }
    };
    if let Some(ip) = &host_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(format!("{ip:?} in {text:?} is not an IP address"));
    }
    let targets = parse_port_range(target)?;
    if published == Some("") && host_ip.is_none() {
        return Err(format!(
            "{text:?} has an empty host port before ':' (an unset variable?): write \"{target}\" to publish on any port"
        ));
    }
    let published = match published {
        None | Some("") => None,
        Some(p) => Some(parse_port_range(p)?),
    };
    match published {
        None => Ok(targets
            .map(|t| PortMapping {
                target: t,
                published: None,
                host_ip: host_ip.clone(),
                protocol,
            })
            .collect()),
        Some(hosts) => {
            if hosts.clone().count() != targets.clone().count() {
                return Err(format!(
                    "{text:?} maps a host range onto a container range of another length"
                ));
            }
            Ok(hosts
                .zip(targets)
                .map(|(h, t)| PortMapping {
                    target: t,
                    published: Some(h),
                    host_ip: host_ip.clone(),
                    protocol,
                })
                .collect())
        }
    }
}

fn long_port_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<PortMapping> {
    let fields = cx.fields(
        node,
        path,
        &["target", "published", "host_ip", "protocol", "mode"],
        false,
    );
    let mut mapping = PortMapping {
        target: 0,
        published: None,
        host_ip: None,
        protocol: Protocol::Tcp,
    };
    let mut ok = true;
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "target" => match cx.int(value, &p, 1, 65535) {
                Some(t) => mapping.target = t as u16,
                None => ok = false,
            },
            "published" => match cx.string(value, &p).map(|s| parse_port_range(&s)) {
                Some(Ok(range)) if range.start() == range.end() => {
                    mapping.published = Some(*range.start())
                }
                Some(Ok(_)) => {
                    cx.error(value.pos, &p, "a range is not supported in the long syntax: use the short syntax \"8000-8010:8000-8010\"");
                    ok = false;
                }
                Some(Err(e)) => {
                    cx.error(value.pos, &p, e);
                    ok = false;
                }
                None => ok = false,
            },
            "host_ip" => match cx.string(value, &p) {
                Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => mapping.host_ip = Some(ip),
                Some(ip) => {
                    cx.error(value.pos, &p, format!("{ip:?} is not an IP address"));
                    ok = false;
                }
                None => ok = false,
            },
            "protocol" => match cx.string(value, &p).as_deref() {
                Some("tcp") => mapping.protocol = Protocol::Tcp,
                Some("udp") => mapping.protocol = Protocol::Udp,
                Some(other) => {
                    cx.error(
                        value.pos,
                        &p,
                        format!("unknown protocol {other:?}: use tcp or udp"),
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "mode" => match cx.string(value, &p).as_deref() {
                Some("host") => {}
                Some("ingress") => {
                    cx.error(value.pos, &p, "`ingress` is Swarm's routing mesh, which Berth does not have: use `mode: host` (the port is published on the machine that runs the replica)");
                    ok = false;
                }
                Some(other) => {
                    cx.error(value.pos, &p, format!("unknown mode {other:?}: use host"));
                    ok = false;
                }
                None => ok = false,
            },
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if mapping.target == 0 && ok && matches!(node.value, Value::Map(_)) {
        cx.error(
            node.pos,
            &join(path, "target"),
            "a port needs a `target` (the port inside the container)",
        );
        ok = false;
    }
    ok.then_some(mapping)
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

fn healthcheck_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Healthcheck> {
    let fields = cx.fields(
        node,
        path,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
        true,
    );
    let mut check = Healthcheck {
        test: Vec::new(),
        interval_ms: None,
        timeout_ms: None,
        retries: None,
        start_period_ms: None,
        start_interval_ms: None,
    };
    let mut disable = false;
    for (key, value) in fields {
        let p = join(path, key);
        let duration = |cx: &mut Cx<'_>| -> Option<u64> {
            let text = cx.string(value, &p)?;
            units::parse_duration_ms(&text)
                .map_err(|e| cx.error(value.pos, &p, e))
                .ok()
        };
        match key {
            "test" => match &value.value {
                Value::Str(s) => check.test = vec!["CMD-SHELL".to_owned(), s.clone()],
                Value::Seq(_) => {
                    let words = cx.command(value, &p).unwrap_or_default();
                    match words.first().map(String::as_str) {
                        Some("CMD" | "CMD-SHELL") if words.len() >= 2 => check.test = words,
                        Some("NONE") if words.len() == 1 => check.test = words,
                        _ => cx.error(value.pos, &p, "a list test starts with \"CMD\" (then the command), \"CMD-SHELL\" (then a script) or is [\"NONE\"]"),
                    }
                }
                _ => cx.expected(value, &p, "a string or a list"),
            },
            "interval" => check.interval_ms = duration(cx),
            "timeout" => check.timeout_ms = duration(cx),
            "start_period" => check.start_period_ms = duration(cx),
            "start_interval" => check.start_interval_ms = duration(cx),
            "retries" => {
                check.retries = cx.int(value, &p, 0, i64::from(u32::MAX)).map(|r| r as u32)
            }
            "disable" => disable = cx.bool(value, &p).unwrap_or(false),
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if disable {
        check.test = vec!["NONE".to_owned()];
    } else if check.test.is_empty() && matches!(node.value, Value::Map(_)) {
        cx.error(
            node.pos,
            &join(path, "test"),
            "a healthcheck needs a `test` (or `disable: true`)",
        );
        return None;
    }
    Some(check)
}

/// `x-berth.autoscale`: `min` (default 1), `max` and `cpu` (a percentage of the
/// replica's CPU limit, `60%` or `60`), all checked here.
fn autoscale_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Autoscale> {
    let (mut min, mut max, mut cpu) = (Some(1), None, None);
    let mut max_pos = node.pos;
    let fields = cx.fields(node, path, &["min", "max", "cpu"], false);
    let read = !fields.is_empty() || matches!(node.value, Value::Map(_));
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "min" => min = cx.int(value, &p, 1, 10_000),
            "max" => {
                max_pos = value.pos;
                max = cx.int(value, &p, 1, 10_000);
            }
            "cpu" => {
                let text = match &value.value {
                    Value::Int(i) => Some(i.to_string()),
                    _ => cx.string(value, &p),
                };
                let Some(text) = text else { continue };
                match text.trim().trim_end_matches('%').trim().parse::<u32>() {
                    Ok(v) if (1..=100).contains(&v) => cpu = Some(v),
                    _ => cx.error(
                        value.pos,
                        &p,
                        format!("expected a percentage between 1% and 100%, found {text:?}"),
                    ),
                }
            }
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if !read {
        return None;
    }
    if max.is_none() && !cx.errors.iter().any(|d| d.path == join(path, "max")) {
        cx.error(
            node.pos,
            &join(path, "max"),
            "autoscale needs `max`, the most replicas",
        );
    }
    if cpu.is_none() && !cx.errors.iter().any(|d| d.path == join(path, "cpu")) {
        cx.error(
            node.pos,
            &join(path, "cpu"),
            "autoscale needs `cpu`, the average CPU to keep each replica at, as a percentage of its limit",
        );
    }
    let (min, max, cpu_percent) = (min?, max?, cpu?);
    let (min, max) = (u32::try_from(min).ok()?, u32::try_from(max).ok()?);
    if max < min {
        cx.error(
            max_pos,
            &join(path, "max"),
            format!("must be at least min ({min}), found {max}"),
        );
        return None;
    }
    Some(Autoscale {
        min,
        max,
        cpu_percent,
    })
}

fn deploy_of(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    service: &mut Service,
    sites: &mut ServiceSites,
) -> Option<RestartPolicy> {
    let mut restart = None;
    let keys = [
        "mode",
        "endpoint_mode",
        "replicas",
        "labels",
        "rollback_config",
        "update_config",
        "resources",
        "restart_policy",
        "placement",
    ];
    for (key, value) in cx.fields(node, path, &keys, true) {
        let p = join(path, key);
        match key {
            "mode" => match cx.string(value, &p).as_deref() {
                Some("replicated") | None => {}
                Some("global") => cx.error(
                    value.pos,
                    &p,
                    "`mode: global` (one replica on every node) is not supported yet: set `deploy.replicas`",
                ),
                Some(other) => cx.error(
                    value.pos,
                    &p,
                    format!("unknown mode {other:?}: use replicated"),
                ),
            },
            "endpoint_mode" | "rollback_config" | "update_config" => cx.warn(
                value.pos,
                &p,
                format!("`deploy.{key}` is read but has no effect: Berth replaces replicas one service at a time, starting each new copy before stopping the old"),
            ),
            "labels" => {
                // Swarm puts these on the service object, which Berth does not have;
                // they are kept on each container with the service's own labels.
                for (k, v) in cx.key_values(value, &p, false) {
                    service.labels.entry(k).or_insert(v);
                }
            }
            "restart_policy" => restart = deploy_restart_of(cx, value, &p),
            "replicas" => {
                sites.replicas = value.pos;
                if let Some(r) = cx.int(value, &p, 0, 10_000) {
                    service.replicas = r as u32;
                }
            }
            "resources" => {
                for (key, value) in cx.fields(value, &p, &["limits", "reservations"], true) {
                    let lp = join(&p, key);
                    let reservation = key == "reservations";
                    let keys: &[&str] = if reservation {
                        &["cpus", "memory", "generic_resources", "devices"]
                    } else {
                        &["cpus", "memory", "pids"]
                    };
                    for (key, value) in cx.fields(value, &lp, keys, true) {
                        let vp = join(&lp, key);
                        if reservation {
                            // The engine has no CPU reservation; memory is a soft limit.
                            match key {
                                "memory" => {
                                    service.engine.mem_reservation = engine::bytes(cx, value, &vp)
                                }
                                _ => cx.warn(
                                    value.pos,
                                    &vp,
                                    format!("`{key}` reservations are read but not reserved: placement counts limits"),
                                ),
                            }
                            continue;
                        }
                        match key {
                            "pids" => service.engine.pids_limit = cx.int(value, &vp, -1, i64::MAX),
                            "cpus" => {
                                let parsed = match &value.value {
                                    Value::Float(x) => units::cpus_to_millis(*x),
                                    Value::Int(i) => units::cpus_to_millis(*i as f64),
                                    _ => match cx.string(value, &vp) {
                                        Some(s) => units::parse_cpu_millis(&s),
                                        None => continue,
                                    },
                                };
                                match parsed {
                                    Ok(m) => service.limits.cpu_millis = Some(m),
                                    Err(e) => cx.error(value.pos, &vp, e),
                                }
                            }
                            "memory" => {
                                let Some(text) = cx.string(value, &vp) else {
                                    continue;
                                };
                                match units::parse_bytes(&text) {
                                    Ok(b) if b >= 6 * 1024 * 1024 => {
                                        service.limits.memory_bytes = Some(b)
                                    }
                                    Ok(_) => cx.error(
                                        value.pos,
                                        &vp,
                                        "the engine refuses a memory limit under 6m",
                                    ),
                                    Err(e) => cx.error(value.pos, &vp, e),
                                }
                            }
                            _ => unreachable!("fields() returns only known keys"),
                        }
                    }
                }
            }
            "placement" => {
                for (key, value) in cx.fields(
                    value,
                    &p,
                    &["constraints", "preferences", "max_replicas_per_node"],
                    true,
                ) {
                    let cp = join(&p, key);
                    if key != "constraints" {
                        cx.warn(
                            value.pos,
                            &cp,
                            format!("`{key}` is read but has no effect: the allocator spreads replicas across nodes by load"),
                        );
                        continue;
                    }
                    let Value::Seq(items) = &value.value else {
                        cx.expected(value, &cp, "a list of constraints");
                        continue;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{cp}[{i}]");
                        let Some(text) = cx.string(item, &ip) else {
                            continue;
                        };
                        match Constraint::parse(&text) {
                            Ok(c) => service.constraints.push(c),
                            Err(e) => cx.error(item.pos, &ip, e),
                        }
                    }
                }
            }
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    restart
}

/// `deploy.restart_policy`, which Compose applies when `restart` is not given.
fn deploy_restart_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<RestartPolicy> {
    let mut condition = "any".to_owned();
    let mut max_retries = None;
    for (key, value) in cx.fields(
        node,
        path,
        &["condition", "delay", "max_attempts", "window"],
        true,
    ) {
        let p = join(path, key);
        match key {
            "condition" => condition = cx.string(value, &p).unwrap_or(condition),
            "max_attempts" => {
                max_retries = cx.int(value, &p, 0, i64::from(u32::MAX)).map(|n| n as u32)
            }
            _ => cx.warn(
                value.pos,
                &p,
                format!("`{key}` is read but has no effect: the engine restarts at once"),
            ),
        }
    }
    match condition.as_str() {
        "none" => Some(RestartPolicy::No),
        "on-failure" => Some(RestartPolicy::OnFailure { max_retries }),
        "any" => Some(RestartPolicy::Always),
        other => {
            cx.error(
                node.pos,
                &join(path, "condition"),
                format!("unknown condition {other:?}: use none, on-failure or any"),
            );
            None
        }
    }
}

fn restart_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<RestartPolicy> {
    if let Value::Bool(b) = node.value {
        cx.error(
            node.pos,
            path,
            format!("expected a string, found the boolean {b}: write restart: \"no\" (quoted), always, on-failure or unless-stopped"),
        );
        return None;
    }
    let text = cx.string(node, path)?;
    Some(match text.as_str() {
        "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure { max_retries: None },
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => RestartPolicy::OnFailure {
                max_retries: Some(n),
            },
            _ => {
                cx.error(node.pos, path, format!("unknown restart policy {other:?}: use \"no\", always, on-failure[:N] or unless-stopped"));
                return None;
            }
        },
    })
}

#[cfg(test)]
mod tests {
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
