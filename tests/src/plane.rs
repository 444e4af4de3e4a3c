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
    process: Option<Process>,
    /// Its data directory (admin token, root key, SQLite), which servers of one
    /// control plane share.
    pub state: std::sync::Arc<tempfile::TempDir>,
    /// Where its output goes.
    pub output: std::path::PathBuf,
    /// `http://127.0.0.1:PORT` (`https://` when started with `--tls`).
    pub api: String,
    /// The certificate authority the server made, when started with `--tls`.
    pub ca: Option<std::path::PathBuf>,
    /// The node API's port.
    pub node_port: u16,
    /// The address the node API listens at.
    pub node_ip: String,
    /// The admin token.
    pub admin: &'static str,
    /// A client for the API.
    pub http: reqwest::Client,
}

/// The failure detector's thresholds of a test's server unless the test sets its own:
/// 5 s to suspicion, 10 s to a fence, 15 s to death. The pool's defaults are seconds
/// (the recovery bench measures them); tests assert where replicas run while sharing
/// two cores with several engines, and a node whose heartbeat that load delays by a
/// second and a half must not move their replicas. The tests of failure set theirs.
pub const PATIENT_DETECTOR: [(&str, &str); 3] = [
    ("BERTH_SUSPECT_AFTER", "5s"),
    ("BERTH_FENCE_AFTER", "10s"),
    ("BERTH_DEAD_AFTER", "15s"),
];

/// [`PATIENT_DETECTOR`], then `envs` (which win where they set the same).
pub fn patient<'a>(envs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    PATIENT_DETECTOR.iter().chain(envs).copied().collect()
}

impl Server {
    /// The control plane's first root key, as its data directory keeps it (`ID
    /// PRIVATE_HEX SUPERSEDED_AT` a line): what an attacker holding it could mint with.
    pub fn root_key(&self) -> biscuit_auth::KeyPair {
        let keys = std::fs::read_to_string(self.state.path().join("root-keys")).expect("root keys");
        let hex = keys
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("1 "))
            .and_then(|l| l.split_whitespace().next())
            .expect("root key 1");
        biscuit_auth::KeyPair::from(
            &biscuit_auth::PrivateKey::from_bytes_hex(hex.trim(), biscuit_auth::Algorithm::Ed25519)
                .expect("key"),
        )
    }

    /// Starts `berth server` with `envs` set and waits until it is ready, with the
    /// failure detector's [`PATIENT_DETECTOR`] thresholds unless `envs` sets others.
    pub async fn start(envs: &[(&str, &str)]) -> Self {
        Self::start_bin(&berth_bin(), &patient(envs)).await
    }

    /// Starts the `berth` at `bin` (a benchmark's own build) as [`Self::start`] does.
    pub async fn start_bin(bin: &std::path::Path, envs: &[(&str, &str)]) -> Self {
        Self::start_with(bin, None, &[], envs).await
    }

    /// Starts `berth server` from `bin` with `args` added, sharing `state` (the data
    /// directory of another server of the same control plane) if given, and waits
    /// until its REST API is ready.
    pub async fn start_with(
        bin: &std::path::Path,
        state: Option<std::sync::Arc<tempfile::TempDir>>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        Self::start_on("127.0.0.1", None, bin, state, args, envs).await
    }

    /// Starts `berth server` as [`Self::start_with`] does, its node API listening at
    /// `node_ip` (the bridge of a set of test hosts, say) rather than on loopback; in
    /// the network namespace `netns` (a test host), with its REST API at `node_ip`
    /// too, if given.
    pub async fn start_on(
        node_ip: &str,
        netns: Option<&str>,
        bin: &std::path::Path,
        state: Option<std::sync::Arc<tempfile::TempDir>>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let state =
            state.unwrap_or_else(|| std::sync::Arc::new(tempfile::tempdir().expect("tempdir")));
        let (api_port, node_port) = (free_port(), free_port());
        let admin = "bat_test_admin_token";
        let output = state.path().join(format!("server-{api_port}.log"));
        let log = std::fs::File::create(&output).expect("server log");
        let api_ip = match netns {
            Some(_) => node_ip,
            None => "127.0.0.1",
        };
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/var/run/netns/{netns}"))
                    .arg(bin);
                command
            }
            None => Command::new(bin),
        };
        let process = Process(
            command
                .args([
                    "server",
                    "--listen",
                    &format!("{api_ip}:{api_port}"),
                    "--node-listen",
                    &format!("{node_ip}:{node_port}"),
                ])
                .args(args)
                .env("BERTH_DATA_DIR", state.path())
                .env("BERTH_ADMIN_TOKEN", admin)
                .envs(envs.iter().copied())
                .stdout(log.try_clone().expect("server log"))
                .stderr(log)
                .spawn()
                .expect("berth server starts"),
        );
        // With `--tls` the server makes its authority in its data directory; clients
        // trust that and nothing else.
        let ca = args
            .contains(&"--tls")
            .then(|| state.path().join("tls").join("ca.pem"));
        let api = match ca {
            Some(_) => format!("https://{api_ip}:{api_port}"),
            None => format!("http://{api_ip}:{api_port}"),
        };
        let mut http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if let Some(ca) = ca.as_ref().filter(|_| !ready) {
                let Ok(pem) = std::fs::read(ca) else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                http = reqwest::Client::builder()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
                    .build()
                    .expect("client");
            }
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
        assert!(
            ready,
            "berth server never became ready: {}",
            std::fs::read_to_string(&output).unwrap_or_default()
        );
        Self {
            process: Some(process),
            state,
            output,
            api,
            ca,
            node_port,
            node_ip: node_ip.to_owned(),
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

    /// The value of one series of the server's metrics (`name` with its labels, as
    /// written, e.g. `berth_failure_detector{outcome="suspected"}`); None when the
    /// server does not answer or has no such series.
    pub async fn metric(&self, series: &str) -> Option<String> {
        let text = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    }

    /// Deploys `topology` into `tenant` as the admin, again and again while the pool
    /// cannot place it yet (nodes still joining), for up to 30 s; panics with the last
    /// answer if it never is.
    pub async fn deploy_when_placeable(&self, tenant: &str, topology: &serde_json::Value) {
        let name = topology["name"].as_str().expect("a topology name");
        let mut last = String::new();
        for _ in 0..150 {
            let response = self
                .http
                .put(format!(
                    "{}/v1/tenants/{tenant}/topologies/{name}",
                    self.api
                ))
                .bearer_auth(self.admin)
                .json(topology)
                .send()
                .await
                .expect("request");
            if response.status().is_success() {
                return;
            }
            last = response.text().await.unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the topology was never placed: {last}");
    }

    /// Waits until every node of `names` is in the pool and active (joined nodes take
    /// a moment to report their engine), so that a deploy made next may use each.
    pub async fn wait_active(&self, names: &[String]) {
        for _ in 0..300 {
            let nodes = self.api(reqwest::Method::GET, "/nodes").await;
            let active = |name: &String| {
                nodes.as_array().is_some_and(|listed| {
                    listed
                        .iter()
                        .any(|n| n["name"] == name.as_str() && n["state"] == "active")
                })
            };
            if names.iter().all(active) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not every node of {names:?} became active");
    }

    /// Calls `path` under `/v1` as the admin; panics with the API's answer unless it
    /// succeeds.
    pub async fn api(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        let response = self
            .http
            .request(method, format!("{}/v1{path}", self.api))
            .bearer_auth(self.admin)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let body = response.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status} {body}");
        serde_json::from_str(&body).expect("json")
    }

    /// `POST /v1{path}` with `body` as the admin: the status and the JSON answer.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/v1{path}", self.api))
            .bearer_auth(self.admin)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The status of `GET /v1{path}` with `token`, or 0 when the server does not answer
    /// within 5 s.
    pub async fn status_with(&self, path: &str, token: &str) -> u16 {
        self.http
            .get(format!("{}/v1{path}", self.api))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// The server's process id, to measure it.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, |p| p.0.id())
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    /// What the server has printed so far.
    pub fn printed(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The node API's URL.
    pub fn node_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.node_ip, self.node_port)
    }

    /// `http` or `https`, as the server was started.
    pub fn scheme(&self) -> &'static str {
        match self.ca {
            Some(_) => "https",
            None => "http",
        }
    }

    /// A client of this server with no pooled connection yet, trusting what
    /// [`Self::http`] trusts.
    fn fresh_client(&self) -> reqwest::Client {
        let Some(pem) = self.ca.as_ref().and_then(|ca| std::fs::read(ca).ok()) else {
            return reqwest::Client::new();
        };
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
            .build()
            .expect("client")
    }

    /// A one-time join token. A busy server (thousands of nodes joining in a bench)
    /// may drop pooled connections: asked again, up to three times, on a connection
    /// of its own.
    pub async fn join_token(&self) -> String {
        let mut last = None;
        for attempt in 0..3 {
            let http = match attempt {
                0 => self.http.clone(),
                _ => self.fresh_client(),
            };
            let sent = http
                .post(format!("{}/v1/join-tokens", self.api))
                .bearer_auth(self.admin)
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().is_success() => {
                    let token: serde_json::Value = answer.json().await.expect("json");
                    return token["token"].as_str().expect("token").to_owned();
                }
                Ok(answer) => panic!("join token: {}", answer.status()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no join token: {last:?}");
    }

    /// Joins a `berth-node` process under `name`, with `args` added to its command
    /// line (`--label k=v`, `--peer-listen ADDR`) and `envs` to its environment.
    pub async fn join(&self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Node {
        self.join_through(self.node_port, name, args, envs).await
    }

    /// Joins a `berth-node` process given `allocators` (URLs, comma-separated: the
    /// node API of every server of the control plane).
    pub async fn join_at(&self, allocators: &str, name: &str) -> Node {
        let token = self.join_token().await;
        spawn_node(allocators, &token, name, &[], &[])
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
        let ca = self.ca.as_ref().map(|ca| ca.display().to_string());
        let mut args = args.to_vec();
        if let Some(ca) = &ca {
            args.extend(["--ca", ca.as_str()]);
        }
        spawn_node(
            &format!("{}://127.0.0.1:{port}", self.scheme()),
            &token,
            name,
            &args,
            envs,
        )
    }
}

fn spawn_node(
    allocators: &str,
    token: &str,
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(sibling("berth-node"))
        .args([
            "join",
            "--allocator",
            allocators,
            "--token",
            token,
            "--name",
            name,
        ])
        .args(args)
        .env("BERTH_NODE_DIR", dir.path())
        .env("BERTH_LOG", "warn")
        // Nodes that share this machine's network keep no firewall of their own.
        .env("BERTH_FIREWALL", "off")
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
    /// What the names of the Docker objects the node makes begin with (`NODE.POOL`),
    /// once it has joined.
    pub fn prefix(&self) -> String {
        prefix_of(&self.name, self.dir.path())
    }

    /// Kills the agent (SIGKILL), leaving its containers running, as a crash would.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    /// Starts the agent again from its state directory (`berth-node run`).
    pub fn restart(&mut self) {
        let child = Command::new(sibling("berth-node"))
            .arg("run")
            .env("BERTH_NODE_DIR", self.dir.path())
            .env("BERTH_FIREWALL", "off")
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

/// What the names of the Docker objects node `name`, whose state directory is `dir`,
/// makes begin with (`NODE.POOL`), once it has joined (waits up to 30 s for that).
pub fn prefix_of(name: &str, dir: &std::path::Path) -> String {
    for _ in 0..300 {
        if let Some(pool) = pool_of(dir) {
            return format!("{name}.{pool}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node {name} never joined a pool")
}

/// The pool of the node whose state directory is `dir`, once it has joined.
fn pool_of(dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("identity.json")).ok()?;
    let identity: serde_json::Value = serde_json::from_str(&text).ok()?;
    identity["pool"].as_str().map(str::to_owned)
}

/// A running `berth dev`: the control plane and its node "local" on this machine's
/// engine, with a data directory of its own. Dropping it stops the server and removes
/// every Docker object its node made.
#[derive(Debug)]
pub struct Dev {
    process: Option<Process>,
    /// Its data directory.
    pub state: tempfile::TempDir,
    /// Its REST API, `http://127.0.0.1:PORT`.
    pub api: String,
    /// The admin's password it printed.
    pub password: String,
}

impl Dev {
    /// Starts `berth dev` on free ports and returns once it has printed its URL (and
    /// the join command, its last line).
    pub fn start() -> Self {
        use std::io::BufRead;
        let state = tempfile::tempdir().expect("tempdir");
        let (api_port, node_port) = (crate::free_port(), crate::free_port());
        let mut child = Command::new(crate::berth_bin())
            .args([
                "dev",
                "--listen",
                &format!("127.0.0.1:{api_port}"),
                "--node-listen",
                &format!("127.0.0.1:{node_port}"),
            ])
            .env("BERTH_DATA_DIR", state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth dev starts");
        let stdout = child.stdout.take().expect("stdout");
        let process = Process(child);
        let mut password = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("a line");
            if let Some(rest) = line.split("password ").nth(1) {
                password = Some(rest.trim().to_owned());
            }
            if line.contains("berth-node join") {
                break;
            }
        }
        Self {
            process: Some(process),
            state,
            api: format!("http://127.0.0.1:{api_port}"),
            password: password.expect("berth dev printed an admin password"),
        }
    }

    /// The names of the Docker objects its node makes begin with (`local.POOL`).
    pub fn prefix(&self) -> String {
        prefix_of("local", &self.state.path().join("dev/node"))
    }

    /// A project of `yaml` (its name `NAME` made unique) set to deploy to this server,
    /// logged in as the admin.
    pub fn project(&self, test: &str, yaml: &str) -> crate::Project {
        let mut project = crate::Project::new(test, yaml);
        project.set_env("BERTH_ENDPOINT", &self.api);
        project.set_env("BERTH_PASSWORD", &self.password);
        let login = project.berth(&["login", "--user", "admin"]).ok();
        project.set_env("BERTH_TOKEN", login.stdout.trim());
        project
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // The server first, so that its node makes nothing again.
        drop(self.process.take());
        if let Some(pool) = pool_of(&self.state.path().join("dev/node")) {
            crate::remove_labelled(&format!("berth.pool={pool}"));
        }
    }
}
