//! Test hosts: a set of network namespaces on this machine, each with its own address
//! on a bridge, its own Docker engine and its own `berth-node`, made and removed by
//! `infra/hosts.sh`. The set is removed when dropped, whether the test passed or not;
//! a set whose test process was killed is swept by the next one made.

use std::process::{Command, Output, Stdio};

use crate::plane::{Process, Server, sibling};
use crate::{ensure_images, workspace};

/// The port every test host's node serves its node API on.
pub const NODE_API_PORT: u16 = 7443;

/// One host of a set.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its network namespace (`bhK-I`).
    pub name: String,
    /// Its address on the set's bridge.
    pub address: String,
    /// Its engine's socket, as `DOCKER_HOST`.
    pub docker_host: String,
}

/// A set of test hosts.
#[derive(Debug)]
pub struct Hosts {
    /// The set's name (`bhK`), its bridge's too.
    pub set: String,
    /// Its hosts, in order.
    pub hosts: Vec<Host>,
}

fn script() -> std::path::PathBuf {
    workspace().join("infra/hosts.sh")
}

impl Hosts {
    /// Makes `count` hosts, each with the test images loaded into its engine.
    pub fn up(count: usize) -> Self {
        ensure_images();
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &count.to_string()])
            .env("BERTH_HOSTS_OWNER", std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("infra/hosts.sh runs");
        assert!(out.status.success(), "infra/hosts.sh up {count} failed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let set = lines.next().expect("the set's name").trim().to_owned();
        let hosts = lines
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some(Host {
                    name: parts.next()?.to_owned(),
                    address: parts.next()?.to_owned(),
                    docker_host: parts.next()?.to_owned(),
                })
            })
            .collect::<Vec<_>>();
        let made = Self { set, hosts };
        assert_eq!(made.hosts.len(), count, "{text}");
        let loaded = Command::new("bash")
            .arg(script())
            .args(["images", &made.set, "berth/busybox:latest"])
            .status()
            .expect("infra/hosts.sh runs");
        assert!(loaded.success(), "the test images did not reach the hosts");
        made
    }

    /// The set's bridge address on this machine, where a control plane listens.
    pub fn gateway(&self) -> String {
        let k = self.set.trim_start_matches("bh");
        format!("10.77.{k}.1")
    }

    /// Starts `berth server` with its node API on the set's bridge.
    pub async fn server(&self, envs: &[(&str, &str)]) -> Server {
        let envs = crate::plane::patient(envs);
        Server::start_on(&self.gateway(), None, &crate::berth_bin(), None, &[], &envs).await
    }

    /// Starts `berth server` on host `i` (its REST and node APIs at the host's
    /// address), with a data directory of its own, and `args` and `envs` added.
    pub async fn server_on(&self, i: usize, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let host = &self.hosts[i];
        let bin = crate::berth_bin();
        let envs = crate::plane::patient(envs);
        Server::start_on(&host.address, Some(&host.name), &bin, None, args, &envs).await
    }

    /// Starts PostgreSQL on host `i`, listening at the host's address and trusting the
    /// set's addresses; its URL (database `postgres`). It stops when the set is removed.
    pub fn postgres(&self, i: usize) -> String {
        let host = &self.hosts[i];
        let dir = std::path::Path::new("/run/berth-hosts")
            .join(&self.set)
            .join(format!("pg{}", i + 1));
        std::fs::create_dir_all(&dir).expect("a directory for PostgreSQL");
        let set = format!("10.77.{}.0/24", self.set.trim_start_matches("bh"));
        crate::postgres::start_cluster(&dir, &host.address, 5432, Some(&host.name), Some(&set));
        format!("postgres://postgres@{}:5432/postgres", host.address)
    }

    /// Runs `program` with `args` on host `i` (its network, its engine).
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(["exec", &self.hosts[i].name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("infra/hosts.sh runs")
    }

    /// Starts `program` with `args` on host `i`, killed when the returned process is
    /// dropped.
    pub fn spawn(&self, i: usize, program: &str, args: &[&str]) -> Process {
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.hosts[i].name))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsenter runs");
        Process(child)
    }

    /// `docker ARGS` against host `i`'s engine; its standard output.
    pub fn docker(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.hosts[i].docker_host)
            .stdin(Stdio::null())
            .output()
            .expect("docker runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether a TCP connection from host `i` (from its own network stack, or from
    /// inside its container `container`) to `address:port` is accepted within 2 s.
    pub fn connects(&self, i: usize, container: Option<&str>, address: &str, port: u16) -> bool {
        let target = format!("{address} {port}");
        match container {
            Some(c) => {
                let script = format!("nc -w 2 {target} </dev/null >/dev/null 2>&1");
                Command::new("docker")
                    .args(["exec", c, "sh", "-c", &script])
                    .env("DOCKER_HOST", &self.hosts[i].docker_host)
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success())
            }
            None => {
                let script = format!("exec 3<>/dev/tcp/{address}/{port}");
                self.run(i, "timeout", &["2", "bash", "-c", &script])
                    .status
                    .success()
            }
        }
    }

    /// The TCP ports something listens on at host `i`, on any address but loopback.
    pub fn listening(&self, i: usize) -> Vec<u16> {
        let out = self.run(i, "ss", &["-Hltn"]);
        let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|local| !local.starts_with("127.") && !local.starts_with("[::1]"))
            .filter_map(|local| local.rsplit_once(':')?.1.parse().ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Takes host `i`'s link down: its engine, containers and agent keep running,
    /// cut off from every other host and the control plane.
    pub fn cut(&self, i: usize) {
        self.script(&["cut", &self.hosts[i].name]);
    }

    /// Stops host `i`'s engine, as a host's shutdown would (its containers stop with
    /// it), and starts it again.
    pub fn restart_engine(&self, i: usize) {
        self.script(&["restart-engine", &self.hosts[i].name]);
    }

    /// Brings host `i`'s link back.
    pub fn mend(&self, i: usize) {
        self.script(&["mend", &self.hosts[i].name]);
    }

    fn script(&self, args: &[&str]) {
        let status = Command::new("bash")
            .arg(script())
            .args(args)
            .status()
            .expect("infra/hosts.sh runs");
        assert!(status.success(), "infra/hosts.sh {args:?} failed");
    }

    /// Joins a `berth-node` on host `i` to `server` as `name`, serving its node API on
    /// the host's address and keeping its firewall, with `args` added.
    pub async fn join(&self, server: &Server, i: usize, name: &str, args: &[&str]) -> HostNode {
        self.join_to(server, &server.node_url(), i, name, args)
            .await
    }

    /// [`Self::join`] with a join token from `server`, the node given `allocators`
    /// (the node API URLs of every server of the control plane, comma-separated).
    pub async fn join_to(
        &self,
        server: &Server,
        allocators: &str,
        i: usize,
        name: &str,
        args: &[&str],
    ) -> HostNode {
        let token = server.join_token().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = HostNode {
            name: name.to_owned(),
            host: self.hosts[i].clone(),
            dir,
            process: None,
        };
        let allocator = allocators.to_owned();
        let listen = format!("{}:{NODE_API_PORT}", self.hosts[i].address);
        let mut command = node.command();
        command
            .args(["--peer-listen", &listen, "join", "--allocator", &allocator])
            .args(["--token", &token, "--name", name])
            .args(args);
        node.process = Some(Process(command.spawn().expect("berth-node starts")));
        node
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.set])
            .status();
    }
}

/// A `berth-node` on a test host.
#[derive(Debug)]
pub struct HostNode {
    /// Its name in the pool.
    pub name: String,
    /// The host it runs on.
    pub host: Host,
    /// Its state directory (identity).
    pub dir: tempfile::TempDir,
    process: Option<Process>,
}

impl HostNode {
    fn command(&self) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.host.name))
            .arg(sibling("berth-node"))
            .env("DOCKER_HOST", &self.host.docker_host)
            .env("BERTH_NODE_DIR", self.dir.path())
            .env("BERTH_LOG", "warn")
            .env("BERTH_FIREWALL", "enforce")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Kills the agent (SIGKILL), leaving its containers and firewall in place.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    /// Starts the agent again from its state directory (`berth-node run`).
    pub fn restart(&mut self) {
        let listen = format!("{}:{NODE_API_PORT}", self.host.address);
        let mut command = self.command();
        command.args(["--peer-listen", &listen, "run"]);
        self.process = Some(Process(command.spawn().expect("berth-node starts")));
    }

    /// What the names of the Docker objects the node makes begin with (`NODE.POOL`),
    /// once it has joined.
    pub fn prefix(&self) -> String {
        crate::plane::prefix_of(&self.name, self.dir.path())
    }
}
