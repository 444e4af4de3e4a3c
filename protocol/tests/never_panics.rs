//! The topology loader must never panic, whatever it is given: arbitrary bytes,
//! arbitrary YAML shaped like a Compose file, and random edits of a real example.
//! Whatever it accepts must survive a JSON round trip unchanged.

use std::path::Path;

use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};
use proptest::prelude::*;

fn try_load(text: &str) {
    let vars = Variables::from_pairs([("SET", "1"), ("EMPTY", "")]);
    let options = LoadOptions {
        file_name: "fuzz.yaml",
        dir: Path::new("/nonexistent"),
        default_name: "fuzz",
        vars: &vars,
        files: &LocalFiles,
    };
    if let Ok(loaded) = load(text, &options) {
        let json = serde_json::to_string(&loaded.topology).expect("a loaded topology serialises");
        let back: Topology = serde_json::from_str(&json).expect("and reads back");
        assert_eq!(back, loaded.topology);
    }
}

const KEYS: &[&str] = &[
    "name",
    "services",
    "networks",
    "volumes",
    "version",
    "x-berth",
    "x-any",
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
    "replicas",
    "resources",
    "limits",
    "cpus",
    "memory",
    "restart",
    "labels",
    "working_dir",
    "user",
    "condition",
    "test",
    "interval",
    "retries",
    "target",
    "published",
    "host_ip",
    "protocol",
    "mode",
    "source",
    "read_only",
    "type",
    "aliases",
    "internal",
    "driver",
    "external",
    "web",
    "db",
    "a",
    "b",
    "default",
    "<<",
];

const SCALARS: &[&str] = &[
    "busybox",
    "3",
    "-1",
    "0.5",
    "true",
    "no",
    "~",
    "\"\"",
    "8080:80",
    "127.0.0.1:53:53/udp",
    "[::1]:1:2",
    "99999",
    "1m30s",
    "512m",
    "on-failure:3",
    "service_healthy",
    "${SET}",
    "${MISSING:?boom}",
    "${",
    "$$x",
    "$",
    "/data",
    "data:/d:ro",
    "./bind:/x",
    "CMD-SHELL",
    "\"a b\"",
    "'unterminated",
    "9000-9002:8000-8002",
    "1e400",
    "*alias",
    "&anchor x",
    "!!str 5",
];

#[derive(Clone, Debug)]
enum Tree {
    Scalar(usize),
    Seq(Vec<Tree>),
    Map(Vec<(usize, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = (0..SCALARS.len()).prop_map(Tree::Scalar);
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::Seq),
            prop::collection::vec((0..KEYS.len(), inner), 0..6).prop_map(Tree::Map),
        ]
    })
}

fn render(tree: &Tree, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Scalar(i) => {
            out.push(' ');
            out.push_str(SCALARS[*i]);
            out.push('\n');
        }
        Tree::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Tree::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Tree::Seq(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&pad);
                out.push('-');
                render(item, indent + 2, out);
            }
        }
        Tree::Map(entries) => {
            out.push('\n');
            for (key, value) in entries {
                out.push_str(&pad);
                out.push_str(KEYS[*key]);
                out.push(':');
                render(value, indent + 2, out);
            }
        }
    }
}

const EXAMPLE: &str = include_str!("../../examples/hello/compose.yaml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        try_load(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn compose_shaped_yaml(services in prop::collection::vec((0..KEYS.len(), tree()), 0..6), top in tree()) {
        let mut text = String::from("services:\n");
        for (name, body) in &services {
            text.push_str("  ");
            text.push_str(KEYS[*name]);
            text.push(':');
            render(body, 4, &mut text);
        }
        text.push_str("x-extra:");
        render(&top, 2, &mut text);
        try_load(&text);
    }

    #[test]
    fn edits_of_the_example(edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..8)) {
        let mut text: Vec<char> = EXAMPLE.chars().collect();
        for (at, kind, c) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            match kind {
                0 => { text.remove(i); }
                1 => text.insert(i, c),
                _ => text[i] = c,
            }
        }
        try_load(&text.into_iter().collect::<String>());
    }
}

#[test]
fn the_example_itself_loads() {
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "compose.yaml",
        dir: Path::new("."),
        default_name: "x",
        vars: &vars,
        files: &LocalFiles,
    };
    let loaded = load(EXAMPLE, &options).expect("the example is valid");
    assert_eq!(loaded.topology.services.len(), 3);
}

#[test]
fn alias_bombs_are_refused_not_expanded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
    }
    text.push_str("services: {}\n");
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "bomb.yaml",
        dir: Path::new("."),
        default_name: "x",
        vars: &vars,
        files: &LocalFiles,
    };
    let err = load(&text, &options).expect_err("an alias bomb is refused");
    let message = err.to_string();
    assert!(message.contains("not valid YAML"), "{message}");
}
