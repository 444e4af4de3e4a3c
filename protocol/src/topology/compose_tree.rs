//! What Compose does to the file's tree before the schema reads it: `extends` merged in,
//! `include` brought in, and services of inactive `profiles` left out.

use super::node::{self, Node, Value};
use super::schema::{Cx, join};

/// The entry of `key` in a mapping node.
fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn get_mut<'n>(node: &'n mut Node, key: &str) -> Option<&'n mut Node> {
    match &mut node.value {
        Value::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn key_text(key: &Node) -> Option<&str> {
    match &key.value {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

/// Applies `include`, `extends` and `profiles` to the root of a file.
pub(crate) fn prepare(cx: &mut Cx<'_>, root: &mut Node, profiles: &[String]) {
    include(cx, root);
    extends(cx, root);
    drop_inactive(root, profiles);
}

/// Brings the services, networks, volumes, secrets and configs of each included file
/// into this one; a name defined twice is an error, as in Compose.
fn include(cx: &mut Cx<'_>, root: &mut Node) {
    let Some(list) = get(root, "include").cloned() else {
        return;
    };
    let items = match list.value {
        Value::Seq(items) => items,
        _ => {
            cx.error(list.pos, "include", "expected a list of files");
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("include[{i}]");
        let files: Vec<String> = match &item.value {
            Value::Str(s) => vec![s.clone()],
            Value::Map(_) => match get(item, "path").map(|p| &p.value) {
                Some(Value::Str(s)) => vec![s.clone()],
                Some(Value::Seq(ps)) => ps
                    .iter()
                    .filter_map(|p| match &p.value {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => {
                    cx.error(item.pos, &join(&path, "path"), "an include needs a `path`");
                    continue;
                }
            },
            _ => {
                cx.error(
                    item.pos,
                    &path,
                    "expected a file name or a mapping with `path`",
                );
                continue;
            }
        };
        for file in files {
            let Some(included) = read_tree(cx, item, &path, &file) else {
                continue;
            };
            for section in ["services", "networks", "volumes", "secrets", "configs"] {
                let Some(Value::Map(theirs)) = get(&included, section).map(|n| n.value.clone())
                else {
                    continue;
                };
                ensure_map(root, section);
                let Some(Node {
                    value: Value::Map(ours),
                    ..
                }) = get_mut(root, section)
                else {
                    continue;
                };
                for (k, v) in theirs {
                    let name = key_text(&k).unwrap_or_default().to_owned();
                    if ours.iter().any(|(o, _)| key_text(o) == Some(&name)) {
                        cx.error(
                            item.pos,
                            &path,
                            format!("{file} defines {section}.{name}, which this file defines too"),
                        );
                    } else {
                        ours.push((k, v));
                    }
                }
            }
        }
    }
}

fn ensure_map(root: &mut Node, key: &str) {
    if get(root, key).is_some_and(|n| matches!(n.value, Value::Map(_))) {
        return;
    }
    if let Value::Map(entries) = &mut root.value {
        entries.retain(|(k, _)| key_text(k) != Some(key));
        entries.push((
            Node {
                pos: root.pos,
                value: Value::Str(key.to_owned()),
            },
            Node {
                pos: root.pos,
                value: Value::Map(Vec::new()),
            },
        ));
    }
}

/// Reads and interpolates another file of the project.
fn read_tree(cx: &mut Cx<'_>, at: &Node, path: &str, file: &str) -> Option<Node> {
    let full = cx.dir.join(file);
    let text = match cx.files.read_to_string(&full) {
        Ok(text) => text,
        Err(e) => {
            cx.error(at.pos, path, format!("cannot read {}: {e}", full.display()));
            return None;
        }
    };
    match node::parse_yaml(&text) {
        Ok(mut tree) => {
            super::interpolate_tree(cx, &mut tree, "");
            Some(tree)
        }
        Err(e) => {
            cx.error(
                at.pos,
                path,
                format!(
                    "{}:{}: not valid YAML: {}",
                    full.display(),
                    e.pos.line,
                    e.message
                ),
            );
            None
        }
    }
}

/// Replaces each service that `extends` another with the other merged under it.
fn extends(cx: &mut Cx<'_>, root: &mut Node) {
    let Some(services) = get(root, "services").cloned() else {
        return;
    };
    let Value::Map(entries) = &services.value else {
        return;
    };
    let names: Vec<String> = entries
        .iter()
        .filter_map(|(k, _)| key_text(k).map(str::to_owned))
        .collect();
    let mut resolved = Vec::new();
    for name in &names {
        let mut chain = vec![name.clone()];
        if let Some(merged) = resolve(cx, &services, name, &mut chain, 0) {
            resolved.push((name.clone(), merged));
        }
    }
    if let Some(Node {
        value: Value::Map(entries),
        ..
    }) = get_mut(root, "services")
    {
        for (k, v) in entries.iter_mut() {
            if let Some(name) = key_text(k)
                && let Some((_, merged)) = resolved.iter().find(|(n, _)| n == name)
            {
                *v = merged.clone();
            }
        }
    }
}

/// The service `name` of `services` with its `extends` chain merged in.
fn resolve(
    cx: &mut Cx<'_>,
    services: &Node,
    name: &str,
    chain: &mut Vec<String>,
    depth: usize,
) -> Option<Node> {
    let service = get(services, name)?.clone();
    let Some(ext) = get(&service, "extends").cloned() else {
        return Some(service);
    };
    let path = format!("services.{name}.extends");
    let (base_name, file) = match &ext.value {
        Value::Str(s) => (s.clone(), None),
        Value::Map(_) => {
            let base = match get(&ext, "service").map(|n| &n.value) {
                Some(Value::Str(s)) => s.clone(),
                _ => {
                    cx.error(
                        ext.pos,
                        &join(&path, "service"),
                        "`extends` needs a `service`",
                    );
                    return None;
                }
            };
            let file = match get(&ext, "file").map(|n| &n.value) {
                Some(Value::Str(f)) => Some(f.clone()),
                _ => None,
            };
            (base, file)
        }
        _ => {
            cx.error(
                ext.pos,
                &path,
                "expected a service name or a mapping with `service`",
            );
            return None;
        }
    };
    if depth > 16 || (file.is_none() && chain.contains(&base_name)) {
        cx.error(
            ext.pos,
            &path,
            format!("`extends` loops: {} -> {base_name}", chain.join(" -> ")),
        );
        return None;
    }
    chain.push(base_name.clone());
    let base = match &file {
        None => {
            if get(services, &base_name).is_none() {
                cx.error(
                    ext.pos,
                    &join(&path, "service"),
                    format!("extends {base_name:?}, which is not a service of this file"),
                );
                return None;
            }
            resolve(cx, services, &base_name, chain, depth + 1)?
        }
        Some(file) => {
            let tree = read_tree(cx, &ext, &path, file)?;
            let Some(their_services) = get(&tree, "services") else {
                cx.error(ext.pos, &path, format!("{file} has no `services`"));
                return None;
            };
            if get(their_services, &base_name).is_none() {
                cx.error(
                    ext.pos,
                    &join(&path, "service"),
                    format!("{file} has no service {base_name:?}"),
                );
                return None;
            }
            resolve(cx, &their_services.clone(), &base_name, chain, depth + 1)?
        }
    };
    let mut merged = base;
    // What a service never inherits, as in Compose.
    if let Value::Map(entries) = &mut merged.value {
        entries.retain(|(k, _)| !matches!(key_text(k), Some("depends_on" | "extends")));
    }
    let mut own = service;
    if let Value::Map(entries) = &mut own.value {
        entries.retain(|(k, _)| key_text(k) != Some("extends"));
    }
    merge(&mut merged, own, "");
    Some(merged)
}

/// Keys whose value replaces the base's instead of merging with it.
const REPLACED: &[&str] = &["command", "entrypoint", "test", "image", "healthcheck.test"];

/// Keys whose lists are merged by entry name (`KEY=VALUE`) rather than appended.
const KEYED_LISTS: &[&str] = &[
    "environment",
    "labels",
    "annotations",
    "sysctls",
    "extra_hosts",
];

/// Merges `over` into `base` as Compose merges an extending service into its base.
fn merge(base: &mut Node, over: Node, key: &str) {
    if REPLACED.contains(&key) {
        *base = over;
        return;
    }
    if KEYED_LISTS.contains(&key) {
        let mut merged = as_pairs(base);
        for (k, v) in as_pairs(&over) {
            merged.retain(|(mk, _)| mk != &k);
            merged.push((k, v));
        }
        *base = Node {
            pos: over.pos,
            value: Value::Map(
                merged
                    .into_iter()
                    .map(|(k, v)| (str_node(over.pos, k), v))
                    .collect(),
            ),
        };
        return;
    }
    match (&mut base.value, over.value) {
        (Value::Map(ours), Value::Map(theirs)) => {
            for (k, v) in theirs {
                let name = key_text(&k).unwrap_or_default().to_owned();
                match ours.iter_mut().find(|(o, _)| key_text(o) == Some(&name)) {
                    Some((_, existing)) => merge(existing, v, &name),
                    None => ours.push((k, v)),
                }
            }
        }
        (Value::Seq(ours), Value::Seq(theirs)) => {
            for item in theirs {
                if !ours.iter().any(|o| o.value == item.value) {
                    ours.push(item);
                }
            }
        }
        (_, value) => {
            *base = Node {
                pos: over.pos,
                value,
            };
        }
    }
}

fn str_node(pos: node::Pos, s: String) -> Node {
    Node {
        pos,
        value: Value::Str(s),
    }
}

/// A list of `KEY=VALUE` (or a mapping) as pairs.
fn as_pairs(node: &Node) -> Vec<(String, Node)> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| key_text(k).map(|k| (k.to_owned(), v.clone())))
            .collect(),
        Value::Seq(items) => items
            .iter()
            .filter_map(|item| match &item.value {
                Value::Str(s) => Some(match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), str_node(item.pos, v.to_owned())),
                    None => (
                        s.clone(),
                        Node {
                            pos: item.pos,
                            value: Value::Null,
                        },
                    ),
                }),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Leaves out services whose `profiles` name none of the active ones.
fn drop_inactive(root: &mut Node, active: &[String]) {
    let Some(Node {
        value: Value::Map(entries),
        ..
    }) = get_mut(root, "services")
    else {
        return;
    };
    entries.retain(|(_, service)| {
        let Some(Node {
            value: Value::Seq(profiles),
            ..
        }) = get(service, "profiles")
        else {
            return true;
        };
        profiles.is_empty()
            || active.iter().any(|a| a == "*")
            || profiles
                .iter()
                .any(|p| matches!(&p.value, Value::Str(s) if active.contains(s)))
    });
}
