//! What reading a file carries along: the problems found so far (each at its line
//! and field), the warnings, the variables, and the files a topology reads, with the
//! helpers every key's reader uses to report against a node.

use super::*;

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

    pub(crate) fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let found = match &node.value {
            Value::Seq(_) | Value::Map(_) | Value::Null => node.value.kind().to_owned(),
            scalar => scalar.to_string(),
        };
        self.error(node.pos, path, format!("expected {what}, found {found}"));
    }

    /// The entries of a mapping with string keys, refusing keys outside `known`.
    /// `x-` extension keys are allowed (and skipped) where `extensions` is true.
    pub(crate) fn fields<'n>(
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
    pub(crate) fn named<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Vec<(&'n str, Pos, &'n Node)> {
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

    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
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

    pub(crate) fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(node.pos, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(crate) fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
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

    pub(crate) fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
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

    pub(crate) fn seq<'n>(&mut self, node: &'n Node, path: &str) -> &'n [Node] {
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
    pub(crate) fn command(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
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
    pub(crate) fn key_values(
        &mut self,
        node: &Node,
        path: &str,
        inherit: bool,
    ) -> BTreeMap<String, String> {
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

pub(super) fn unknown_key_message(key: &str, known: &[&str]) -> String {
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

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
