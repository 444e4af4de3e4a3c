//! The topology format: the Compose file format, with Berth's own settings under `x-berth`.
//!
//! [`load`] turns the text of a file into a validated, normalised [`Topology`], or into
//! every problem found in it, each with file, line, column and field path.

mod check;
mod compose_out;
mod compose_tree;
mod diagnostic;
mod engine;
mod env_file;
mod graph;
mod interpolate;
mod model;
pub mod node;
pub mod policy;
mod schema;
pub mod units;
mod validate;

use std::path::Path;

pub use compose_out::to_compose;
pub use diagnostic::{Diagnostic, TopologyError};
pub use env_file::{EnvEntry, EnvFileProblem, parse_env_file};
pub use interpolate::{Interpolated, Variables, interpolate};
pub use model::*;
pub use policy::{Policy, Refusal};
pub use schema::{FileReader, LocalFiles, valid_topology_name};

use node::{Node, Value};
use schema::{Cx, join};

/// Where a topology comes from and what it may read.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The file's name as the user gave it, for messages.
    pub file_name: &'a str,
    /// The directory relative paths (`env_file`) are read from.
    pub dir: &'a Path,
    /// The name to use when the file has no `name:` (Compose uses the directory's).
    pub default_name: &'a str,
    /// The variables interpolation reads.
    pub vars: &'a Variables,
    /// How to read the files the topology names.
    pub files: &'a dyn FileReader,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("file_name", &self.file_name)
            .field("dir", &self.dir)
            .field("default_name", &self.default_name)
            .finish_non_exhaustive()
    }
}

/// A topology that passed every check, and what is worth saying about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The normalised topology.
    pub topology: Topology,
    /// Things that work but deserve a word (an unset variable, an obsolete key).
    pub warnings: Vec<Diagnostic>,
    /// Where each field path stands in the file, so that a refusal from elsewhere (a
    /// pool's policy) can be shown at its line.
    pub sites: std::collections::BTreeMap<String, node::Pos>,
}

impl Loaded {
    /// The diagnostic of a policy's refusal, at the line of the field it names (or of
    /// the nearest enclosing field).
    pub fn locate(&self, file: &str, refusal: &Refusal) -> Diagnostic {
        let mut path = refusal.path.as_str();
        let pos = loop {
            if let Some(pos) = self.sites.get(path) {
                break *pos;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => break node::Pos::default(),
            }
        };
        Diagnostic::new(
            file,
            pos,
            &refusal.path,
            refusal
                .to_string()
                .split_once(": ")
                .map_or(refusal.to_string(), |(_, rest)| rest.to_owned()),
        )
    }

    /// Every refusal of `policy` for this topology, at its line.
    pub fn refusals(&self, file: &str, policy: &Policy) -> Vec<Diagnostic> {
        let mut located: Vec<Diagnostic> = policy
            .refusals(&self.topology)
            .iter()
            .map(|r| self.locate(file, r))
            .collect();
        located.sort_by_key(|d| (d.line, d.column));
        located
    }
}

/// Parses, interpolates, checks and normalises a topology file.
pub fn load(text: &str, options: &LoadOptions<'_>) -> Result<Loaded, TopologyError> {
    let mut cx = Cx {
        file: options.file_name,
        dir: options.dir,
        vars: options.vars,
        files: options.files,
        errors: Vec::new(),
        warnings: Vec::new(),
        sites: std::collections::BTreeMap::new(),
    };
    let mut root = match node::parse_yaml(text) {
        Ok(root) => root,
        Err(e) => {
            cx.error(e.pos, "", format!("not valid YAML: {}", e.message));
            return Err(TopologyError {
                diagnostics: cx.errors,
            });
        }
    };
    interpolate_tree(&mut cx, &mut root, "");
    let profiles: Vec<String> = options
        .vars
        .get("COMPOSE_PROFILES")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    compose_tree::prepare(&mut cx, &mut root, &profiles);
    let top = schema::top_level(&mut cx, &root);
    if let Some(top) = &top {
        validate::cross_check(&mut cx, top);
    }
    let sort = |d: &mut Vec<Diagnostic>| {
        d.sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
        d.dedup();
    };
    sort(&mut cx.errors);
    sort(&mut cx.warnings);
    let top = match top {
        Some(top) if cx.errors.is_empty() => top,
        _ => {
            return Err(TopologyError {
                diagnostics: cx.errors,
            });
        }
    };
    let name = match top.name {
        Some((name, _)) => name,
        None => {
            let name = normalize_name(options.default_name);
            if name.is_empty() {
                cx.error(
                    root.pos,
                    "name",
                    format!(
                        "cannot derive a topology name from {:?}: add `name:` to the file",
                        options.default_name
                    ),
                );
                return Err(TopologyError {
                    diagnostics: cx.errors,
                });
            }
            name
        }
    };
    let mut networks = top.networks;
    let mut services: std::collections::BTreeMap<String, Service> =
        top.services.into_iter().map(|(k, (s, _))| (k, s)).collect();
    let present: std::collections::BTreeSet<String> = services.keys().cloned().collect();
    for (service_name, service) in services.iter_mut() {
        // A service that is built and names no image gets Compose's name for it.
        if service.image.is_empty() {
            service.image = format!("{name}-{}", service_name.to_lowercase());
        }
        // `required: false` lets a service start without a dependency that is absent.
        service
            .depends_on
            .retain(|dep, d| d.required || present.contains(dep));
    }
    if services
        .values()
        .any(|s| s.networks.contains_key("default"))
    {
        networks.entry("default".to_owned()).or_default();
    }
    Ok(Loaded {
        topology: Topology {
            name,
            services,
            networks,
            volumes: top.volumes,
        },
        warnings: cx.warnings,
        sites: cx.sites,
    })
}

/// Makes a topology name out of a directory name as Compose does: lower case, with
/// only letters, digits, `-` and `_`, starting with a letter or digit.
pub fn normalize_name(raw: &str) -> String {
    let lowered: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        .collect();
    let trimmed = lowered.trim_start_matches(['-', '_']);
    trimmed.chars().take(63).collect()
}

/// Interpolates every string value (not keys), reporting errors where they stand and
/// each unset variable once.
pub(crate) fn interpolate_tree(cx: &mut Cx<'_>, node: &mut Node, path: &str) {
    match &mut node.value {
        Value::Str(s) if s.contains('$') => match interpolate(s, cx.vars) {
            Ok(done) => {
                for var in done.unset {
                    if !cx
                        .warnings
                        .iter()
                        .any(|w| w.message.starts_with(&format!("variable {var} ")))
                    {
                        cx.warn(
                            node.pos,
                            path,
                            format!("variable {var} is not set; using an empty string"),
                        );
                    }
                }
                *s = done.value;
            }
            Err(e) => cx.error(node.pos, path, e),
        },
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(cx, item, &format!("{path}[{i}]"));
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries.iter_mut() {
                let key_text = match &key.value {
                    Value::Str(k) => k.clone(),
                    other => other.to_string(),
                };
                interpolate_tree(cx, value, &join(path, &key_text));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;

/// Reads `text` as `/p/compose.yaml` with `vars`, for the unit tests of the modules
/// that work on a loaded topology; panics with the problems if it does not load.
#[cfg(test)]
pub(crate) fn read_for_test(text: &str, vars: &[(&str, &str)]) -> Topology {
    let vars = Variables::from_pairs(vars.iter().copied());
    match load(
        text,
        &LoadOptions {
            file_name: "compose.yaml",
            dir: Path::new("/p"),
            default_name: "p",
            vars: &vars,
            files: &LocalFiles,
        },
    ) {
        Ok(loaded) => loaded.topology,
        Err(e) => panic!("{e}\n{text}"),
    }
}
