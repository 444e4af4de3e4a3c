//! End-to-end tests across processes, with real Docker and real databases.
//!
//! This library is the harness: it finds the `berth` binary cargo built, builds the
//! images the tests run (through `infra/build-images.sh`), and gives each test its own
//! project directory and state directory so tests run in parallel without sharing
//! anything. Every project is taken down (with its volumes) when the test ends,
//! whether it passed or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod browser;
pub mod hollow;
pub mod hosts;
pub mod images;
pub mod plane;
pub mod postgres;
pub mod proxy;
pub mod reports;

/// The `berth` binary built by this `cargo test` run (it sits next to `deps/`).
pub fn berth_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join(format!("berth{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Builds the images the tests use, once per test process.
pub fn ensure_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = workspace().join("infra/build-images.sh");
        let status = Command::new("bash")
            .arg(script)
            .status()
            .expect("bash runs");
        assert!(status.success(), "infra/build-images.sh failed");
    });
}

/// A port that was free a moment ago and that no other test of this process was given.
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), so the
/// outgoing connections other tests open meanwhile never take one before its server
/// binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    // Where this process starts: spread by its id, so test binaries running one after
    // another do not walk the same ports.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % u32::from(LAST - FIRST)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in FIRST..LAST {
        let port = NEXT
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                Some(if p + 1 >= LAST { FIRST } else { p + 1 })
            })
            .unwrap_or(FIRST);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {LAST}")
}

/// The result of one `berth` run.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the run succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "berth failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A project directory with a topology file, and its own Berth state.
#[derive(Debug)]
pub struct Project {
    /// The topology's name.
    pub name: String,
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Project {
    /// A project whose `compose.yaml` holds `yaml` with `NAME` replaced by a name unique
    /// to this test run.
    pub fn new(test: &str, yaml: &str) -> Self {
        let name = format!("t{}-{}", std::process::id(), test.replace('_', "-"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = tempfile::tempdir().expect("a temporary directory");
        let project = Project {
            name,
            dir,
            state,
            env: HashMap::new(),
        };
        project.write(yaml);
        project
    }

    /// Replaces the topology file.
    pub fn write(&self, yaml: &str) {
        std::fs::write(
            self.dir.path().join("compose.yaml"),
            yaml.replace("NAME", &self.name),
        )
        .expect("write compose.yaml");
    }

    /// The project directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets an environment variable for later runs.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    /// Runs `berth ARGS` in the project directory.
    pub fn berth(&self, args: &[&str]) -> Run {
        let output = Command::new(berth_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("BERTH_DATA_DIR", self.state.path())
            .envs(&self.env)
            .output()
            .expect("berth runs");
        Run::from(output)
    }

    /// `berth up --json` against a pool, again (after `down`) until its replicas land
    /// on `nodes` different nodes, for up to 20 s, since nodes may still be joining;
    /// the last placement `up` printed (`Null` if it never succeeded).
    pub async fn up_across(&self, nodes: usize) -> serde_json::Value {
        let mut placed = serde_json::Value::Null;
        for _ in 0..100 {
            let run = self.berth(&["up", "--json"]);
            if run.code == 0 {
                placed = serde_json::from_str(&run.stdout).expect("json");
                let on: std::collections::BTreeSet<&str> = placed["replicas"]
                    .as_array()
                    .expect("replicas")
                    .iter()
                    .filter_map(|r| r["node"].as_str())
                    .collect();
                if on.len() == nodes {
                    break;
                }
                self.berth(&["down"]).ok();
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        placed
    }

    /// `berth ps --json`, parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        let run = self.berth(&["ps", "--json"]).ok();
        let status: serde_json::Value =
            serde_json::from_str(&run.stdout).expect("ps --json prints JSON");
        status["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("ps --json has no replicas: {status}"))
    }

    /// Container name → container id, from the engine.
    pub fn container_ids(&self) -> HashMap<String, String> {
        docker_lines(&[
            "ps",
            "-a",
            "--filter",
            &self.label_filter(),
            "--format",
            "{{.Names}} {{.ID}}",
        ])
        .into_iter()
        .filter_map(|l| l.split_once(' ').map(|(n, i)| (n.to_owned(), i.to_owned())))
        .collect()
    }

    /// The names of this project's networks, from the engine.
    pub fn networks(&self) -> Vec<String> {
        docker_lines(&[
            "network",
            "ls",
            "--filter",
            &self.label_filter(),
            "--format",
            "{{.Name}}",
        ])
    }

    /// The names of this project's volumes, from the engine.
    pub fn volumes(&self) -> Vec<String> {
        docker_lines(&[
            "volume",
            "ls",
            "--filter",
            &self.label_filter(),
            "--format",
            "{{.Name}}",
        ])
    }

    fn label_filter(&self) -> String {
        format!("label=berth.topology={}", self.name)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Never panic here: a panic while a failed test unwinds aborts every test.
        if std::panic::catch_unwind(berth_bin).is_ok() {
            let _ = self.berth(&["down", "-v"]);
        }
    }
}

/// Removes every container and network a node agent named `node` made, whether the
/// test that ran it passed or not.
pub fn remove_node_objects(node: &str) {
    remove_labelled(&format!("berth.node={node}"));
}

/// Removes every container and network labelled `label` (`KEY=VALUE`).
pub fn remove_labelled(label: &str) {
    let ids = docker_lines(&["ps", "-aq", "--filter", &format!("label={label}")]);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
    for network in docker_lines(&["network", "ls", "-q", "--filter", &format!("label={label}")]) {
        let _ = Command::new("docker")
            .args(["network", "rm", &network])
            .output();
    }
}

/// Runs the docker CLI and returns its non-empty output lines.
pub fn docker_lines(args: &[&str]) -> Vec<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Fetches `http://127.0.0.1:PORT/PATH` with a plain HTTP/1.0 request, retrying for a
/// few seconds while the server comes up.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..50 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut stream) => {
                let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut body = String::new();
                let _ = stream.read_to_string(&mut body);
                if body.starts_with("HTTP/1.") && body.contains(" 200 ") {
                    return body
                        .split_once("\r\n\r\n")
                        .map_or(body.clone(), |(_, b)| b.to_owned());
                }
                last = body;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("GET {path} on port {port} never answered 200; last: {last}")
}
