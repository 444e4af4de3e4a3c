//! The `berth` command's behaviour on bad input, where no Docker is needed: every
//! problem reported with file, line, column and field path, exit code 3, and no panic.

use std::path::Path;
use std::process::Command;

fn berth(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env("BERTH_DATA_DIR", dir.join(".state"))
        // Nothing here may reach Docker: point it nowhere so a stray call fails loudly.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .expect("berth runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn project(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("compose.yaml"), yaml).expect("write compose.yaml");
    dir
}

#[test]
fn malformed_yaml_is_exit_3_with_a_position() {
    let dir = project("services:\n  web:\n    image: [oops\n");
    for cmd in ["validate", "up"] {
        let (code, _, err) = berth(dir.path(), &[cmd]);
        assert_eq!(code, 3, "{cmd}: {err}");
        assert!(
            err.contains("compose.yaml:") && err.contains("not valid YAML"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn every_problem_is_listed_with_its_place() {
    let dir = project(
        "services:\n  web:\n    image: busybox\n    deploy:\n      replicas: three\n    portz: [80]\n  db:\n    image: busybox\n    depends_on: [cache]\n",
    );
    let (code, _, err) = berth(dir.path(), &["up", "-d"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("3 problems in the topology"), "{err}");
    assert!(
        err.contains(
            r#"compose.yaml:5:17: services.web.deploy.replicas: expected an integer, found "three""#
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "compose.yaml:6:5: services.web.portz: unknown key `portz` (did you mean `ports`?)"
        ),
        "{err}"
    );
    assert!(
        err.contains("services.db.depends_on.cache: depends on \"cache\", which is not a service"),
        "{err}"
    );
}

#[test]
fn a_dependency_cycle_is_named() {
    let dir =
        project("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n");
    let (code, _, err) = berth(dir.path(), &["validate"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
}

#[test]
fn validate_json_lists_the_diagnostics() {
    let dir = project("services:\n  a:\n    image: x\n    restart: sometimes\n");
    let (code, out, _) = berth(dir.path(), &["validate", "--json"]);
    assert_eq!(code, 3);
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed["valid"], false);
    assert_eq!(parsed["errors"][0]["line"], 4);
    assert_eq!(parsed["errors"][0]["path"], "services.a.restart");
}

#[test]
fn a_missing_file_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (code, _, err) = berth(dir.path(), &["up"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("compose.yaml") && err.contains("-f FILE"),
        "{err}"
    );
}

#[test]
fn config_prints_the_normalised_topology() {
    let dir = project(
        "name: shop\nservices:\n  web:\n    image: busybox\n    ports: [\"8080:80\"]\n    environment: [\"A=1\"]\n",
    );
    let (code, out, err) = berth(dir.path(), &["config", "--model"]);
    assert_eq!(code, 0, "{err}");
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed["name"], "shop");
    assert_eq!(parsed["services"]["web"]["ports"][0]["published"], 8080);
    assert_eq!(parsed["services"]["web"]["environment"]["A"], "1");
    // Without --model, the same in Compose's own keys.
    let (code, out, err) = berth(dir.path(), &["config", "--json"]);
    assert_eq!(code, 0, "{err}");
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed["services"]["web"]["ports"][0], "8080:80");
    assert_eq!(parsed["services"]["web"]["environment"]["A"], "1");
}

#[test]
fn the_example_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let (code, out, err) = berth(&example, &["validate"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("valid topology \"hello\" with 3 services"),
        "{out}"
    );
}
