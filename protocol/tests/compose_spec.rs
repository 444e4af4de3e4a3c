//! Every key the Compose specification defines is known to the parser: it is read into
//! the model, or accepted with a warning that says why it has no effect, and never
//! called unknown. The specification's JSON schema is the list checked against.

use std::path::Path;

use berth_protocol::topology::{LoadOptions, LocalFiles, Variables, load};

fn schema() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose-spec/compose-spec.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the Compose schema at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn keys(object: &serde_json::Value) -> Vec<String> {
    object["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

/// The diagnostics of `yaml` that call a key unknown.
fn unknown(yaml: &str) -> Vec<String> {
    let vars = Variables::from_pairs([("HOME", "/home/u")]);
    let result = load(
        yaml,
        &LoadOptions {
            file_name: "compose.yaml",
            dir: Path::new("/p"),
            default_name: "p",
            vars: &vars,
            files: &LocalFiles,
        },
    );
    match result {
        Ok(_) => Vec::new(),
        Err(e) => e
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .filter(|d| d.contains("unknown key"))
            .collect(),
    }
}

#[test]
fn no_key_of_the_specification_is_unknown() {
    let schema = schema();
    let d = &schema["definitions"];
    let mut failures = Vec::new();
    let mut check = |place: &str, yaml: String| {
        let found = unknown(&yaml);
        if !found.is_empty() {
            failures.push(format!("{place}: {found:?}"));
        }
    };
    // A value of some shape for each key: the point is that the key is known, so a
    // wrong-shape error is fine and an "unknown key" is not.
    for key in keys(&d["service"]) {
        check(
            &format!("services.s.{key}"),
            format!("services:\n  s:\n    image: x\n    {key}: ~\n"),
        );
    }
    for key in keys(&d["deployment"]) {
        check(
            &format!("deploy.{key}"),
            format!("services:\n  s:\n    image: x\n    deploy:\n      {key}: ~\n"),
        );
    }
    for key in keys(&d["healthcheck"]) {
        check(
            &format!("healthcheck.{key}"),
            format!("services:\n  s:\n    image: x\n    healthcheck:\n      {key}: ~\n"),
        );
    }
    let build = &d["service"]["properties"]["build"]["oneOf"][1];
    for key in keys(build) {
        check(
            &format!("build.{key}"),
            format!("services:\n  s:\n    build:\n      {key}: ~\n"),
        );
    }
    for (section, definition) in [("networks", "network"), ("volumes", "volume")] {
        for key in keys(&d[definition]) {
            check(
                &format!("{section}.n.{key}"),
                format!("services:\n  s: {{image: x}}\n{section}:\n  n:\n    {key}: ~\n"),
            );
        }
    }
    for key in keys(&schema) {
        check(&key, format!("services:\n  s: {{image: x}}\n{key}: ~\n"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
