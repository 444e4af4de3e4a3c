//! Secrets, configs and builds: the keys that name files of the machine running
//! `berth`, made absolute against the project directory.

use std::collections::BTreeMap;

use super::super::model::*;
use super::super::node::{Node, Pos, Value};
use super::{Cx, ServiceSites, TopLevel, join};

/// The top-level `secrets` and `configs`, by kind and name.
#[derive(Default)]
pub(crate) struct Definitions {
    by_name: BTreeMap<(KindKey, String), (Option<FileSource>, Pos)>,
}

type KindKey = u8;

fn kind_key(kind: FileKind) -> KindKey {
    match kind {
        FileKind::Secret => 0,
        FileKind::Config => 1,
    }
}

fn kind_word(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Secret => "secret",
        FileKind::Config => "config",
    }
}

/// A service's use of a secret or config, resolved once every definition is read.
pub(crate) struct Reference {
    kind: FileKind,
    name: String,
    target: Option<String>,
    pos: Pos,
    path: String,
}

/// Reads the top-level `secrets` or `configs`.
pub(super) fn definitions_of(
    cx: &mut Cx<'_>,
    node: &Node,
    key: &str,
    kind: FileKind,
    out: &mut Definitions,
) {
    for (name, pos, body) in cx.named(node, key) {
        let p = join(key, name);
        let mut source = None;
        let mut external = false;
        let keys = [
            "name",
            "file",
            "environment",
            "content",
            "external",
            "labels",
            "driver",
            "driver_opts",
            "template_driver",
        ];
        for (k, value) in cx.fields(body, &p, &keys, true) {
            let kp = join(&p, k);
            match k {
                "file" => {
                    if let Some(file) = cx.non_empty_string(value, &kp) {
                        source = Some(FileSource::File(absolute(cx, &file)));
                    }
                }
                "environment" => {
                    if let Some(var) = cx.non_empty_string(value, &kp) {
                        match cx.vars.get(&var) {
                            Some(v) => source = Some(FileSource::Content(v.to_owned())),
                            None => cx.error(
                                value.pos,
                                &kp,
                                format!("the {} {name:?} comes from the variable {var}, which is not set", kind_word(kind)),
                            ),
                        }
                    }
                }
                "content" => {
                    if let Some(text) = cx.string(value, &kp) {
                        source = Some(FileSource::Content(text));
                    }
                }
                "external" => external = cx.bool(value, &kp).unwrap_or(false),
                _ => {}
            }
        }
        if external {
            cx.error(
                body.pos,
                &join(&p, "external"),
                format!("external {}s live in a Swarm cluster, which Berth is not: give the {} a `file` or an `environment` variable", kind_word(kind), kind_word(kind)),
            );
        } else if source.is_none() && cx.errors.iter().all(|d| !d.path.starts_with(&p)) {
            cx.error(
                body.pos,
                &p,
                format!(
                    "the {} {name:?} needs a `file`, an `environment` variable or `content`",
                    kind_word(kind)
                ),
            );
        }
        out.by_name
            .insert((kind_key(kind), name.to_owned()), (source, pos));
    }
}

/// Reads a service's `secrets` or `configs` list.
pub(super) fn references_of(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    kind: FileKind,
    sites: &mut ServiceSites,
) {
    for (i, item) in cx.seq(node, path).iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let (name, target) = match &item.value {
            Value::Map(_) => {
                let mut name = None;
                let mut target = None;
                for (key, value) in
                    cx.fields(item, &ip, &["source", "target", "uid", "gid", "mode"], true)
                {
                    let kp = join(&ip, key);
                    match key {
                        "source" => name = cx.non_empty_string(value, &kp),
                        "target" => target = cx.non_empty_string(value, &kp),
                        _ => {
                            cx.string(value, &kp);
                        }
                    }
                }
                if name.is_none() {
                    cx.error(
                        item.pos,
                        &join(&ip, "source"),
                        format!("a {} needs a `source`", kind_word(kind)),
                    );
                }
                (name, target)
            }
            _ => (cx.non_empty_string(item, &ip), None),
        };
        if let Some(name) = name {
            sites.files.push(Reference {
                kind,
                name,
                target,
                pos: item.pos,
                path: ip,
            });
        }
    }
}

/// Resolves every service's references against the definitions.
pub(super) fn resolve(cx: &mut Cx<'_>, top: &mut TopLevel) {
    for (service, sites) in top.services.values_mut() {
        for r in std::mem::take(&mut sites.files) {
            let Some((source, _)) = top.files.by_name.get(&(kind_key(r.kind), r.name.clone()))
            else {
                cx.error(
                    r.pos,
                    &r.path,
                    format!(
                        "{} {:?} is not declared under the top-level `{}s`",
                        kind_word(r.kind),
                        r.name,
                        kind_word(r.kind)
                    ),
                );
                continue;
            };
            let Some(source) = source.clone() else {
                continue;
            };
            let target = match (r.kind, r.target) {
                (_, Some(t)) if t.starts_with('/') => t,
                (FileKind::Secret, Some(t)) => format!("/run/secrets/{t}"),
                (FileKind::Secret, None) => format!("/run/secrets/{}", r.name),
                (FileKind::Config, Some(t)) => format!("/{t}"),
                (FileKind::Config, None) => format!("/{}", r.name),
            };
            service.files.push(FileMount {
                kind: r.kind,
                name: r.name,
                source,
                target,
            });
        }
        // Configs, then secrets, each in the order the service lists them.
        service.files.sort_by_key(|f| f.kind == FileKind::Secret);
    }
}

fn absolute(cx: &Cx<'_>, file: &str) -> String {
    super::volumes::normalise(&cx.dir.join(file))
}

/// Reads `build`: a context directory, or the long form.
pub(super) fn build_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Build> {
    let mut build = Build::default();
    let mut context = None;
    match &node.value {
        Value::Map(_) => {
            let keys = [
                "context",
                "dockerfile",
                "dockerfile_inline",
                "entitlements",
                "args",
                "ssh",
                "labels",
                "cache_from",
                "cache_to",
                "no_cache",
                "additional_contexts",
                "network",
                "provenance",
                "sbom",
                "pull",
                "target",
                "shm_size",
                "extra_hosts",
                "isolation",
                "privileged",
                "secrets",
                "tags",
                "ulimits",
                "platforms",
            ];
            for (key, value) in cx.fields(node, path, &keys, true) {
                let p = join(path, key);
                match key {
                    "context" => context = cx.non_empty_string(value, &p),
                    "dockerfile" => build.dockerfile = cx.non_empty_string(value, &p),
                    "dockerfile_inline" => build.dockerfile_inline = cx.string(value, &p),
                    "args" => build.args = cx.key_values(value, &p, true),
                    "labels" => build.labels = cx.key_values(value, &p, false),
                    "target" => build.target = cx.non_empty_string(value, &p),
                    "no_cache" => build.no_cache = cx.bool(value, &p).unwrap_or(false),
                    "pull" => build.pull = cx.bool(value, &p).unwrap_or(false),
                    "network" => build.network = cx.non_empty_string(value, &p),
                    "tags" => build.tags = super::engine::strings(cx, value, &p),
                    "platforms" => build.platforms = super::engine::strings(cx, value, &p),
                    "shm_size" => build.shm_size = super::engine::bytes(cx, value, &p),
                    "extra_hosts" => build.extra_hosts = super::engine::strings(cx, value, &p),
                    "cache_from" | "cache_to" | "ssh" | "secrets" | "additional_contexts"
                    | "entitlements" | "provenance" | "sbom" | "isolation" | "privileged"
                    | "ulimits" => cx.warn(
                        value.pos,
                        &p,
                        format!("`build.{key}` is read but has no effect: the engine's classic builder does not take it"),
                    ),
                    _ => unreachable!("fields() returns only known keys"),
                }
            }
        }
        _ => context = cx.non_empty_string(node, path),
    }
    let context = context.unwrap_or_else(|| ".".to_owned());
    if context.contains("://") || context.starts_with("git@") {
        cx.error(
            node.pos,
            path,
            format!("the build context {context:?} is remote: clone it and name the directory"),
        );
        return None;
    }
    build.context = absolute(cx, &context);
    Some(build)
}
