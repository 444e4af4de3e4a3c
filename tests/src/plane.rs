//! Control planes and node agents as real processes: `berth server` on free ports with
//! its own state directory, and `berth-node` agents joined to it with one-time tokens.
//! Dropping them stops the processes and removes every Docker object the agents made.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{berth_bin, free_port, remove_node_objects};

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary built beside `berth` (for example `berth-node`).
pub fn sibling(name: &str) -> std::path::PathBuf {
    berth_bin().with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A running `berth server`: its API URL, node API port, admin token and state.
#[derive(Debug)]
pub struct Server {
    process: Process,
    /// Its data directory (admin token, root key, SQLite).
    pub state: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    /// The node API's port.
    pub node_port: u16,
    /// The admin token.
    pub admin: &'static str,
    /// A client for the API.
    pub http: reqwest::Client,
}

impl Server {
    /// Starts `berth server` with `envs` set and waits until it is ready.
    pub async fn start(envs: &[(&str, &str)]) -> Self {
        Self::start_bin(&berth_bin(), envs).await
    }

    /// Starts the `berth` at `bin` (a benchmark's own build) as [`Self::start`] does.
    pub async fn start_bin(bin: &std::path::Path, envs: &[(&str, &str)]) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let (api_port, node_port) = (free_port(), free_port());
        let admin = "bat_test_admin_token";
        let process = Process(
            Command::new(bin)
                .args([
                    "server",
                    "--listen",
                    &format!("127.0.0.1:{api_port}"),
                    "--node-listen",
                    &format!("127.0.0.1:{node_port}"),
                ])
                .env("BERTH_DATA_DIR", state.path())
                .env("BERTH_ADMIN_TOKEN", admin)
                .envs(envs.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("berth server starts"),
        );
        let api = format!("http://127.0.0.1:{api_port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if http
                .get(format!("{api}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "berth server never became ready");
        Self {
            process,
            state,
            api,
            node_port,
            admin,
            http,
        }
    }

    /// Deploys `topology` (the API's JSON form) into the default tenant as the admin;
    /// panics with the API's answer unless it is accepted.
    pub async fn deploy(&self, topology: &serde_json::Value) {
        let name = topology["name"].as_str().expect("a topology name");
        let deployed = self
            .http
            .put(format!("{}/v1/tenants/default/topologies/{name}", self.api))
            .bearer_auth(self.admin)
            .json(topology)
            .send()
            .await
            .expect("request");
        let status = deployed.status();
        assert!(status.is_success(), "{status}: {:?}", deployed.text().await);
    }

    /// The server's process id, to measure it.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// A one-time join token.
    pub async fn join_token(&self) -> String {
        let token: serde_json::Value = self
            .http
            .post(format!("{}/v1/join-tokens", self.api))
            .bearer_auth(self.admin)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        token["token"].as_str().expect("token").to_owned()
    }

    /// Joins a `berth-node` process under `name`, with `args` added to its command
    /// line (`--label k=v`, `--peer-listen ADDR`) and `envs` to its environment.
    pub async fn join(&self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Node {
        self.join_through(self.node_port, name, args, envs).await
    }

    /// Joins a `berth-node` process that reaches the allocator at `port` on loopback
    /// (a [`crate::proxy::Proxy`] in front of the node API, say).
    pub async fn join_through(
        &self,
        port: u16,
        name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Node {
        let token = self.join_token().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(sibling("berth-node"))
            .args([
                "join",
                "--allocator",
                &format!("http://127.0.0.1:{port}"),
                "--token",
                &token,
                "--name",
                name,
            ])
            .args(args)
            .env("BERTH_NODE_DIR", dir.path())
            .env("BERTH_LOG", "warn")
            .envs(envs.iter().copied())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth-node starts");
        Node {
            name: name.to_owned(),
            process: Some(Process(child)),
            dir,
        }
    }
}

/// A joined `berth-node` process; dropping it stops the agent and removes every Docker
/// object it made, whether the test passed or not.
#[derive(Debug)]
pub struct Node {
    /// Its name in the pool.
    pub name: String,
    process: Option<Process>,
    /// Its state directory (identity).
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Kills the agent (SIGKILL), leaving its containers running, as a crash would.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    /// Starts the agent again from its state directory (`berth-node run`).
    pub fn restart(&mut self) {
        let child = Command::new(sibling("berth-node"))
            .arg("run")
            .env("BERTH_NODE_DIR", self.dir.path())
            .env("BERTH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("berth-node starts");
        self.process = Some(Process(child));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.process.take());
        remove_node_objects(&self.name);
    }
}
