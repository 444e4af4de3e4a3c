//! `berth`: run a topology file on this machine, inspect it and take it down.
//!
//! Exit codes: 0 success; 1 failed part way (what is running is said); 2 bad usage;
//! 3 the topology file is invalid; 4 Docker is not reachable; 5 refused by quota or
//! capacity (nothing changed); 6 a check before any change failed: a missing image or
//! a host port in use (nothing changed); 7 the control plane is unreachable or refused
//! the credentials.

mod local;
mod progress;
mod project;
mod remote;
mod server;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use berth_node_runtime::driver::ContainerListing;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde::Serialize;

use local::{LocalError, LocalPlane, data_dir};
use project::{ProjectError, find_file, load_project};

/// Berth: one topology file, from a laptop to a shared pool.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    file: FileArg,
    /// A control plane's API (`berth server` prints it); without it, Berth runs on this
    /// machine with an embedded control plane.
    #[arg(long, env = "BERTH_ENDPOINT", global = true, value_name = "URL")]
    endpoint: Option<String>,
    /// The API token for --endpoint.
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The tenant to act for with --endpoint.
    #[arg(long, env = "BERTH_TENANT", global = true, default_value = "default")]
    tenant: String,
    /// A certificate authority (PEM file) to trust for an `https://` --endpoint, besides
    /// the public ones (`berth server --tls` prints the one it made).
    #[arg(long, env = "BERTH_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `-f FILE`, accepted before the subcommand (as with Compose) and after it.
#[derive(Debug, Default, clap::Args)]
struct FileArg {
    /// The topology file (default: compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml in the current directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the topology's containers, networks and volumes.
    Up {
        #[command(flatten)]
        file: FileArg,
        /// Return once everything is up instead of following the logs.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Build every service with a `build` section first, even if its image is
        /// there (without it, only absent images are built).
        #[arg(long)]
        build: bool,
    },
    /// Build the images of the services with a `build` section (the named services,
    /// or all), through the engine's build API.
    Build {
        #[command(flatten)]
        file: FileArg,
        /// Services to build (all with a `build` section if none).
        services: Vec<String>,
    },
    /// Set how many replicas services run, `berth scale web=3 api=2`: locally the
    /// file's topology is brought up with those counts; against a pool the deployed
    /// topology is scaled.
    Scale {
        #[command(flatten)]
        file: FileArg,
        /// `SERVICE=REPLICAS`, one or more.
        #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
        services: Vec<(String, u32)>,
    },
    /// Remove the topology's containers and networks.
    Down {
        #[command(flatten)]
        file: FileArg,
        /// Remove its named volumes too.
        #[arg(short = 'v', long)]
        volumes: bool,
    },
    /// List the topology's containers (every local topology's with --all).
    Ps {
        #[command(flatten)]
        file: FileArg,
        /// Every topology, not only this file's.
        #[arg(short, long)]
        all: bool,
    },
    /// Show the output of the topology's containers.
    Logs {
        /// The topology file (`-f` here means --follow, as with Compose).
        #[arg(long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Keep following the output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this many lines from the end of each container's output.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// Only this service.
        service: Option<String>,
    },
    /// Check the topology file and report every problem in it.
    Validate {
        #[command(flatten)]
        file: FileArg,
    },
    /// Print the topology as Berth understands it: a Compose file with every value
    /// resolved and in one long form, which `docker-compose config` reads again
    /// (JSON with --json); with --model, Berth's normalised model, as the API takes it.
    Config {
        #[command(flatten)]
        file: FileArg,
        /// Print Berth's normalised model (the body of a deploy) instead.
        #[arg(long)]
        model: bool,
    },
    /// Log in to a control plane (--endpoint) and print a session token; use it as
    /// BERTH_TOKEN. The password is read from BERTH_PASSWORD, else from standard input.
    Login {
        /// The user's name.
        #[arg(long)]
        user: String,
    },
    /// Manage tenants (admin, with --endpoint).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage a tenant's quota (admin, with --endpoint).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Manage what a tenant's topologies may use beyond the pool's default policy
    /// (admin, with --endpoint).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage how much of the control plane a tenant may use: request, deploy and
    /// token rates, and the size of a topology (admin, with --endpoint).
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Manage users (admin, with --endpoint).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage nodes (admin, with --endpoint).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Read and check the audit ledger, explain and revoke tokens (with --endpoint).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The root keys that sign every token: list, rotate, retire (admin, with
    /// --endpoint).
    #[command(subcommand)]
    RootKey(RootKeyCommand),
    /// Run the control plane for a pool: the API, and the node API that node agents
    /// (`berth-node join`) connect to. Prints the command that joins a machine.
    Server {
        /// The API's address.
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: std::net::SocketAddr,
        /// The node API's address.
        #[arg(long, default_value = "127.0.0.1:7421")]
        node_listen: std::net::SocketAddr,
        /// The node API's URL as other machines reach it (default: from --node-listen).
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
        /// The database: `postgres://...` for a real pool (default: SQLite in the data
        /// directory).
        #[arg(long, env = "DATABASE_URL", value_name = "URL")]
        database: Option<String>,
        #[command(flatten)]
        liveness: LivenessArgs,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        witness: WitnessArgs,
        /// How often the autoscaler looks at services with `x-berth.autoscale`.
        #[arg(long, env = "BERTH_AUTOSCALE_EVERY", default_value = "15s", value_parser = parse_duration)]
        autoscale_every: std::time::Duration,
        /// How often replicas move to even the load across nodes.
        #[arg(long, env = "BERTH_REBALANCE_EVERY", default_value = "30s", value_parser = parse_duration)]
        rebalance_every: std::time::Duration,
        /// The most replicas of one service that may be moving or down at once while
        /// the load is evened (moves start the new copy before stopping the old).
        #[arg(long, env = "BERTH_DISRUPTION_BUDGET", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        disruption_budget: u32,
    },
    /// Run the whole platform on this machine: the control plane and a node agent on
    /// the local Docker engine. Prints the API's URL, an admin login, and the command
    /// that joins other machines.
    Dev {
        /// The API's address (use 0.0.0.0:7420 to let other machines reach it).
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: std::net::SocketAddr,
        /// The node API's address.
        #[arg(long, default_value = "127.0.0.1:7421")]
        node_listen: std::net::SocketAddr,
        /// The node API's URL as other machines reach it (default: from --node-listen).
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
        /// The database (default: SQLite in the data directory).
        #[arg(long, env = "DATABASE_URL", value_name = "URL")]
        database: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        witness: WitnessArgs,
    },
}

/// Where and how often the audit ledger's head is anchored outside the database.
#[derive(Debug, clap::Args)]
struct WitnessArgs {
    /// The file the ledger's head is appended to (default: `ledger-witness` in the
    /// data directory). Put it where the database's writers cannot write: another
    /// volume, or a file system that only appends.
    #[arg(long, env = "BERTH_WITNESS", value_name = "FILE")]
    witness: Option<PathBuf>,
    /// How often the ledger is checked since the last anchor and its head anchored.
    #[arg(long, env = "BERTH_WITNESS_EVERY", default_value = "60s", value_parser = parse_duration)]
    witness_every: std::time::Duration,
}

impl WitnessArgs {
    fn setting(&self, data_dir: &std::path::Path) -> server::WitnessSetting {
        server::WitnessSetting {
            path: self
                .witness
                .clone()
                .unwrap_or_else(|| data_dir.join("ledger-witness")),
            every: self.witness_every,
        }
    }
}

/// TLS on the control plane's API and node API.
#[derive(Debug, Default, clap::Args)]
struct TlsArgs {
    /// Serve both APIs over TLS with a certificate this server signs with its own
    /// authority, made on first start in the data directory (`tls/ca.pem`, which
    /// clients trust with `--ca`).
    #[arg(long)]
    tls: bool,
    /// A name or address clients reach the server by, added to the certificate made
    /// with --tls (repeatable; loopback, this machine's name and the listen addresses
    /// are always in it).
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    tls_names: Vec<String>,
    /// Serve TLS with this certificate chain (PEM) instead of a made one.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn setting(&self) -> tls::TlsSetting {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tls::TlsSetting::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if self.tls => tls::TlsSetting::Made {
                names: self.tls_names.clone(),
            },
            _ => tls::TlsSetting::Off,
        }
    }
}

impl Cli {
    /// The file named after the subcommand, else before it.
    fn file(&self) -> Option<&std::path::Path> {
        let after = match &self.command {
            Command::Up { file, .. }
            | Command::Down { file, .. }
            | Command::Scale { file, .. }
            | Command::Ps { file, .. }
            | Command::Validate { file }
            | Command::Build { file, .. }
            | Command::Config { file, .. } => file.file.as_deref(),
            Command::Logs { file, .. } => file.as_deref(),
            Command::Server { .. }
            | Command::Dev { .. }
            | Command::Login { .. }
            | Command::Tenant(_)
            | Command::Quota(_)
            | Command::Limits(_)
            | Command::Policy(_)
            | Command::User(_)
            | Command::Node(_)
            | Command::Audit(_)
            | Command::RootKey(_) => None,
        };
        after.or(self.file.file.as_deref())
    }
}

/// The failure detector's thresholds, as flags.
#[derive(Debug, Clone, clap::Args)]
struct LivenessArgs {
    /// Silence after which a node is suspect (for example 5s or 500ms).
    #[arg(long, env = "BERTH_SUSPECT_AFTER", default_value = "5s", value_parser = parse_duration)]
    suspect_after: std::time::Duration,
    /// Silence after which a node is dead and its replicas are placed elsewhere.
    #[arg(long, env = "BERTH_DEAD_AFTER", default_value = "15s", value_parser = parse_duration)]
    dead_after: std::time::Duration,
    /// Silence after which a node stops its own replicas (shorter than --dead-after).
    #[arg(long, env = "BERTH_FENCE_AFTER", default_value = "10s", value_parser = parse_duration)]
    fence_after: std::time::Duration,
    /// The most heartbeats a second the pool sends: larger pools heartbeat less often,
    /// and every threshold stretches to at least 5, 10 and 15 intervals.
    #[arg(long, env = "BERTH_HEARTBEATS_PER_SECOND", default_value_t = 2_000)]
    heartbeats_per_second: u32,
}

impl LivenessArgs {
    fn thresholds(&self) -> Result<berth_allocator::liveness::Thresholds, Failure> {
        let thresholds = berth_allocator::liveness::Thresholds {
            suspect_after: self.suspect_after,
            dead_after: self.dead_after,
            fence_after: self.fence_after,
            heartbeats_per_second: self.heartbeats_per_second,
            ..berth_allocator::liveness::Thresholds::default()
        };
        thresholds.validate().map_err(|message| Failure {
            exit: Exit::Invalid,
            message,
        })?;
        Ok(thresholds)
    }
}

/// A duration such as `15s`, `500ms` or `2m`.
fn parse_anchor(text: &str) -> Result<berth_allocator::ledger::Anchor, String> {
    text.parse()
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (for example 15s or 500ms)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// A quota, as flags.
#[derive(Debug, Clone, clap::Args)]
struct QuotaArgs {
    /// CPU, in cores (for example 4 or 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory, for example 8g or 512m.
    #[arg(long)]
    memory: Option<String>,
    /// Containers.
    #[arg(long)]
    containers: Option<u64>,
}

impl QuotaArgs {
    fn to_json(&self) -> Result<serde_json::Value, Failure> {
        let invalid = |message: String| Failure {
            exit: Exit::Invalid,
            message,
        };
        let cpu_millis = self
            .cpus
            .map(berth_protocol::topology::units::cpus_to_millis)
            .transpose()
            .map_err(invalid)?;
        let memory_bytes = self
            .memory
            .as_deref()
            .map(berth_protocol::topology::units::parse_bytes)
            .transpose()
            .map_err(invalid)?;
        Ok(
            serde_json::json!({ "cpu_millis": cpu_millis, "memory_bytes": memory_bytes, "containers": self.containers }),
        )
    }
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant, with a quota (unlimited where not given).
    Create {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Set a tenant's quota; a limit left out is unlimited.
    Set {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Show a tenant's quota and what it uses.
    Show {
        /// The tenant.
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum LimitsCommand {
    /// Set a tenant's limits, replacing what it had; a limit left out takes its
    /// default.
    Set {
        /// The tenant.
        tenant: String,
        /// API requests a second (bursts of twice as many).
        #[arg(long)]
        requests_per_second: Option<u32>,
        /// Deploys, scales and removals a minute.
        #[arg(long)]
        deploys_per_minute: Option<u32>,
        /// Attenuated tokens first seen an hour (each an audit ledger entry).
        #[arg(long)]
        attenuations_per_hour: Option<u32>,
        /// Services in one topology.
        #[arg(long)]
        services_per_topology: Option<u32>,
        /// Replicas of one service.
        #[arg(long)]
        replicas_per_service: Option<u32>,
    },
    /// Show the limits in force for a tenant, defaults filled in.
    Show {
        /// The tenant.
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Set what a tenant may use beyond the default, replacing what it had: each
    /// `--allow KEY` or `--allow KEY:VALUE` (`cap_add:NET_ADMIN`); none restores the
    /// default. The change is recorded in the audit ledger.
    Set {
        /// The tenant.
        tenant: String,
        /// An allowance (repeatable).
        #[arg(long)]
        allow: Vec<String>,
    },
    /// Show a tenant's policy and the settings an allowance may name.
    Show {
        /// The tenant.
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from BERTH_PASSWORD, else standard input.
    Create {
        /// The tenant.
        tenant: String,
        /// The user's name.
        name: String,
        /// admin, developer or auditor.
        #[arg(long, default_value = "developer")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Ledger entries, newest first.
    List {
        /// Only this kind: minted, attenuated, renewed, revoked, decision.
        #[arg(long)]
        kind: Option<String>,
        /// Only this tenant (an auditor must name their own).
        #[arg(long = "of-tenant", value_name = "TENANT")]
        of_tenant: Option<String>,
        /// Only entries whose subject contains this.
        #[arg(long)]
        subject: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Walk the ledger's hash chain; exits 1 when an entry was changed, removed or moved.
    /// Prints an anchor to keep outside the database.
    Verify {
        /// An anchor printed by an earlier verify (`SEQ:HASH`): that entry must still be
        /// there with that hash, which catches a history rewritten whole or cut short.
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_anchor)]
        anchor: Option<berth_allocator::ledger::Anchor>,
    },
    /// A token, by its first revocation id: its datalog, whether it is revoked, its
    /// history. Or a node-API decision, by its entry number: its reason and the token
    /// presented.
    Explain {
        /// The revocation id (the `subject` of its `minted` entry), or a decision's
        /// entry number.
        id: String,
    },
    /// Who can call what now: every delegation in force, node -> operation ->
    /// node/service.
    Graph {
        /// Only delegations to this tenant's services (an auditor must name their own).
        #[arg(long = "of-tenant", value_name = "TENANT")]
        of_tenant: Option<String>,
        /// `text`, `json` or `dot` (Graphviz: `berth audit graph --format dot | dot -Tsvg`).
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Revoke tokens by revocation id (a token's first id revokes it and everything
    /// attenuated from it).
    Revoke {
        /// Revocation ids, hex.
        #[arg(required_unless_present_any = ["node", "of_tenant"])]
        ids: Vec<String>,
        /// Instead of ids: every delegation in force to or from this node.
        #[arg(long, conflicts_with_all = ["ids", "of_tenant"])]
        node: Option<String>,
        /// Instead of ids: every token of this tenant that may still be valid.
        #[arg(long = "of-tenant", value_name = "TENANT", conflicts_with = "ids")]
        of_tenant: Option<String>,
        /// Why, for the ledger.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum RootKeyCommand {
    /// The keys tokens are verified against (public halves), the signing one last.
    List,
    /// Make a new key that signs every token from now on; tokens under the old ones
    /// keep working until they expire. Nodes get the new key and new link tokens.
    Rotate,
    /// Stop accepting a key: refused while tokens it signed may still be valid,
    /// unless forced.
    Retire {
        /// The key's id.
        id: u32,
        /// Retire now: tokens it signed are refused at once.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Make a one-time join token and print the command that joins a machine.
    JoinToken {
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// List the nodes with their capacity, use, labels and state.
    List,
    /// Place no new replicas on a node; those it runs stay.
    Cordon {
        /// The node.
        name: String,
    },
    /// Make a cordoned or drained node take replicas again.
    Uncordon {
        /// The node.
        name: String,
    },
    /// Cordon a node and move its replicas to other nodes.
    Drain {
        /// The node.
        name: String,
    },
}

/// Exit codes, as documented at the top of this file and in the README.
#[derive(Clone, Copy, Debug)]
enum Exit {
    Failure = 1,
    Invalid = 3,
    DockerUnavailable = 4,
    Refused = 5,
    Preflight = 6,
    Unreachable = 7,
}

#[derive(Debug)]
struct Failure {
    exit: Exit,
    message: String,
}

impl From<ProjectError> for Failure {
    fn from(e: ProjectError) -> Self {
        let exit = match e {
            ProjectError::Invalid(_) | ProjectError::DotEnv { .. } => Exit::Invalid,
            ProjectError::NotFound { .. } | ProjectError::Unreadable { .. } => Exit::Invalid,
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}

impl From<LocalError> for Failure {
    fn from(e: LocalError) -> Self {
        let exit = match &e {
            LocalError::Docker(berth_node_runtime::DriverError::Unavailable { .. }) => {
                Exit::DockerUnavailable
            }
            LocalError::Refused(_) => Exit::Refused,
            LocalError::Preflight(_) | LocalError::Build(_) => Exit::Preflight,
            LocalError::State { .. } | LocalError::Docker(_) | LocalError::Apply(_) => {
                Exit::Failure
            }
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}

impl From<remote::RemoteError> for Failure {
    fn from(e: remote::RemoteError) -> Self {
        let exit = match &e {
            remote::RemoteError::Unreachable { .. } => Exit::Unreachable,
            remote::RemoteError::Trust { .. } => Exit::Failure,
            remote::RemoteError::Refused { .. } => Exit::Invalid,
            remote::RemoteError::Api { code, .. } => match code.as_str() {
                "invalid_topology" | "bad_request" => Exit::Invalid,
                "quota_exceeded" | "no_capacity" => Exit::Refused,
                "unauthenticated" => Exit::Unreachable,
                _ => Exit::Failure,
            },
        };
        Failure {
            exit,
            message: e.to_string(),
        }
    }
}

impl Cli {
    /// The remote control plane, when --endpoint is given.
    fn remote(&self) -> Result<Option<remote::Remote>, Failure> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let token = self.token.as_deref().ok_or_else(|| Failure {
            exit: Exit::Unreachable,
            message: "--endpoint needs a token: pass --token or set BERTH_TOKEN".into(),
        })?;
        Ok(Some(remote::Remote::new(
            endpoint,
            token,
            &self.tenant,
            self.ca.as_deref(),
        )?))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    // The exporter's connection needs the runtime; the control plane logs at info,
    // the commands a person types only their warnings.
    let _telemetry = {
        let _entered = runtime.enter();
        match cli.command {
            Command::Server { .. } | Command::Dev { .. } => {
                berth_telemetry::init("berth-server", "info")
            }
            _ => berth_telemetry::init("berth", "warn"),
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message.trim_end());
            ExitCode::from(failure.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Validate { .. } => validate(&cli).await,
        Command::Config { model, .. } => config(&cli, *model),
        Command::Up { detach, build, .. } => up(&cli, *detach, *build).await,
        Command::Build { services, .. } => build(&cli, services).await,
        Command::Scale { services, .. } => scale(&cli, services).await,
        Command::Down { volumes, .. } => down(&cli, *volumes).await,
        Command::Ps { all, .. } => ps(&cli, *all).await,
        Command::Logs {
            follow,
            tail,
            service,
            ..
        } => logs(&cli, *follow, *tail, service.as_deref()).await,
        Command::Tenant(_)
        | Command::Quota(_)
        | Command::Limits(_)
        | Command::Policy(_)
        | Command::User(_)
        | Command::Node(_)
        | Command::Audit(_)
        | Command::RootKey(_) => admin(&cli).await,
        Command::Login { user } => login(&cli, user).await,
        Command::Server {
            listen,
            node_listen,
            advertise,
            database,
            liveness,
            autoscale_every,
            rebalance_every,
            disruption_budget,
            tls,
            witness,
        } => {
            let config = server::ServerConfig {
                listen: *listen,
                node_listen: *node_listen,
                advertise: advertise.clone(),
                database: database.clone(),
                witness: witness.setting(&data_dir()),
                data_dir: data_dir(),
                local_node: false,
                thresholds: liveness.thresholds()?,
                autoscale_every: *autoscale_every,
                rebalance_every: *rebalance_every,
                disruption_budget: *disruption_budget,
                tls: tls.setting(),
            };
            server::run(config).await.map_err(|e| Failure {
                exit: Exit::Failure,
                message: format!("{e:#}"),
            })
        }
        Command::Dev {
            listen,
            node_listen,
            advertise,
            database,
            tls,
            witness,
        } => {
            let config = server::ServerConfig {
                listen: *listen,
                node_listen: *node_listen,
                advertise: advertise.clone(),
                database: database.clone(),
                witness: witness.setting(&data_dir().join("dev")),
                data_dir: data_dir().join("dev"),
                thresholds: berth_allocator::liveness::Thresholds::default(),
                local_node: true,
                autoscale_every: std::time::Duration::from_secs(15),
                rebalance_every: std::time::Duration::from_secs(30),
                disruption_budget: 1,
                tls: tls.setting(),
            };
            server::run(config).await.map_err(|e| {
                let docker = e.to_string().contains("Docker");
                Failure {
                    exit: if docker {
                        Exit::DockerUnavailable
                    } else {
                        Exit::Failure
                    },
                    message: format!("{e:#}"),
                }
            })
        }
    }
}

fn load(cli: &Cli) -> Result<berth_protocol::topology::Loaded, Failure> {
    let file = find_file(cli.file())?;
    let loaded = load_project(&file)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded)
}

/// The topology's name: from the file when it loads, else from the directory (so that
/// `down` works even when the file is gone or broken).
fn topology_name(cli: &Cli) -> Result<String, Failure> {
    match find_file(cli.file()).and_then(|f| load_project(&f)) {
        Ok(loaded) => Ok(loaded.topology.name),
        Err(ProjectError::NotFound { dir }) => {
            let name = berth_protocol::topology::normalize_name(
                dir.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            );
            if name.is_empty() {
                Err(Failure {
                    exit: Exit::Invalid,
                    message: format!(
                        "cannot tell which topology: no topology file in {}",
                        dir.display()
                    ),
                })
            } else {
                Ok(name)
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn validate(cli: &Cli) -> Result<(), Failure> {
    let file = find_file(cli.file())?;
    match load_project(&file) {
        Ok(loaded) => {
            // Against a pool, the pool itself says what its policy for the tenant
            // refuses; each refusal is shown at its line of this file.
            let policy = match cli.remote()? {
                Some(remote) => match remote.dry_run(&loaded.topology).await {
                    Ok(answer) => answer.policy,
                    Err(e) => return Err(located(cli, &loaded, &file, e)),
                },
                None => {
                    let policy = berth_protocol::topology::Policy::local();
                    let refusals = loaded.refusals(&file.display().to_string(), &policy);
                    if !refusals.is_empty() {
                        return Err(show_refusals(cli, &file, &policy.name, refusals));
                    }
                    policy.name
                }
            };
            if cli.json {
                print_json(
                    &serde_json::json!({ "valid": true, "name": loaded.topology.name, "warnings": loaded.warnings }),
                );
            } else {
                for warning in &loaded.warnings {
                    eprintln!("warning: {warning}");
                }
                let n = loaded.topology.services.len();
                println!(
                    "{}: valid topology {:?} with {n} service{} (policy: {policy})",
                    file.display(),
                    loaded.topology.name,
                    if n == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        Err(ProjectError::Invalid(e)) if cli.json => {
            print_json(&serde_json::json!({ "valid": false, "errors": e.diagnostics }));
            Err(Failure {
                exit: Exit::Invalid,
                message: format!("{} problem(s) in {}", e.diagnostics.len(), file.display()),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A remote failure; refusals by the pool's policy are shown at their lines of `file`.
fn located(
    cli: &Cli,
    loaded: &berth_protocol::topology::Loaded,
    file: &std::path::Path,
    e: remote::RemoteError,
) -> Failure {
    match e {
        remote::RemoteError::Refused { refusals } => {
            let name = file.display().to_string();
            let policy = refusals
                .first()
                .map_or_else(|| "pool".to_owned(), |r| r.policy.clone());
            let mut located: Vec<_> = refusals.iter().map(|r| loaded.locate(&name, r)).collect();
            located.sort_by_key(|d| (d.line, d.column));
            show_refusals(cli, file, &policy, located)
        }
        other => other.into(),
    }
}

/// Prints refusals (as JSON with --json) and the failure that sums them up.
fn show_refusals(
    cli: &Cli,
    file: &std::path::Path,
    policy: &str,
    refusals: Vec<berth_protocol::topology::Diagnostic>,
) -> Failure {
    if cli.json {
        print_json(&serde_json::json!({ "valid": false, "errors": refusals }));
    } else {
        for refusal in &refusals {
            eprintln!("{refusal}");
        }
    }
    Failure {
        exit: Exit::Invalid,
        message: format!(
            "{} setting(s) in {} refused by the {policy} policy; nothing was changed",
            refusals.len(),
            file.display(),
        ),
    }
}

fn config(cli: &Cli, model: bool) -> Result<(), Failure> {
    let loaded = load(cli)?;
    if model {
        print_json(&loaded.topology);
        return Ok(());
    }
    let compose = berth_protocol::topology::to_compose(&loaded.topology);
    if cli.json {
        print_json(&compose);
    } else {
        let yaml = serde_saphyr::to_string(&compose).map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("cannot render the topology: {e}"),
        })?;
        print!("{yaml}");
    }
    Ok(())
}

/// Builds the images of the file's services locally (`berth build`).
async fn build(cli: &Cli, services: &[String]) -> Result<(), Failure> {
    let loaded = load(cli)?;
    let topology = &loaded.topology;
    if let Some(unknown) = services
        .iter()
        .find(|s| !topology.services.contains_key(s.as_str()))
    {
        return Err(Failure {
            exit: Exit::Invalid,
            message: format!("no service {unknown:?} in topology {:?}", topology.name),
        });
    }
    if cli.endpoint.is_some() {
        return Err(Failure {
            exit: Exit::Invalid,
            message: "a pool runs images, it does not build them: run `berth build` without --endpoint, then push the image where the nodes reach it".into(),
        });
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let built = plane
        .build(topology, services, true, |service, line| {
            eprintln!("{service}  | {line}");
        })
        .await?;
    if cli.json {
        print_json(&serde_json::json!({ "built": built }));
    } else if built.is_empty() {
        println!("no service of {:?} has a `build` section", topology.name);
    } else {
        for name in &built {
            println!("built {} for service {name}", topology.services[name].image);
        }
    }
    Ok(())
}

async fn up(cli: &Cli, detach: bool, always_build: bool) -> Result<(), Failure> {
    let file = find_file(cli.file())?;
    let loaded = load(cli)?;
    if let Some(remote) = cli.remote()? {
        let topology = &loaded.topology;
        // As on one machine: `up` returns once every replica runs (or one fails),
        // showing each as its node reports it; without -d it then follows the logs. A
        // token that may deploy but not read returns once the deploy is placed.
        let deployed = remote
            .up(topology, std::time::Duration::from_secs(300), cli.json)
            .await
            .map_err(|e| located(cli, &loaded, &file, e))?;
        let running = deployed.replicas.iter().all(|r| r.state == "running");
        let what = if running { "running" } else { "placed" };
        if cli.json {
            print_json(&deployed);
        } else {
            println!(
                "topology {:?} is up in tenant {:?}: revision {}, {} replica(s) {what}",
                topology.name,
                cli.tenant,
                deployed.revision,
                deployed.replicas.len()
            );
        }
        if detach || cli.json || !running {
            return Ok(());
        }
        println!(
            "following logs; Ctrl-C stops following and leaves the topology running (`berth down` removes it)"
        );
        return remote_logs(cli, &remote, &topology.name, true, Some(10), None).await;
    }
    let topology = loaded.topology;
    let plane = LocalPlane::open(&data_dir()).await?;
    // Images a service builds: absent ones (all of them with --build), before any
    // check or change, as Compose does.
    plane
        .build(&topology, &[], always_build, |service, line| {
            if !cli.json {
                eprintln!("{service}  | {line}");
            }
        })
        .await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.up(&topology, events).await;
    let _ = shown.await;
    let outcome = result?;
    let containers = plane.ps(Some(&topology.name)).await?;
    if cli.json {
        print_json(&serde_json::json!({
            "topology": topology.name,
            "created": outcome.created,
            "unchanged": outcome.unchanged,
            "removed": outcome.removed,
            "containers": containers.iter().map(ContainerJson::from).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "topology {:?} is up: {} created, {} unchanged, {} removed",
            topology.name, outcome.created, outcome.unchanged, outcome.removed
        );
        print_reachable(&containers);
    }
    if detach || cli.json {
        return Ok(());
    }
    println!(
        "following logs; Ctrl-C stops following and leaves the topology running (`berth down` removes it)"
    );
    follow_logs(&plane, &containers, true, Some(10)).await
}

fn print_reachable(containers: &[ContainerListing]) {
    for c in containers {
        for (ip, port) in &c.container.host_ports {
            let host = if ip.is_empty() || ip == "0.0.0.0" || ip == "::" {
                "localhost"
            } else {
                ip.as_str()
            };
            if ip == "::"
                && c.container
                    .host_ports
                    .iter()
                    .any(|(i, p)| i == "0.0.0.0" && p == port)
            {
                continue;
            }
            println!(
                "  {}.{} reachable at {host}:{port}",
                c.container.service, c.container.replica
            );
        }
    }
}

async fn down(cli: &Cli, volumes: bool) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    if let Some(remote) = cli.remote()? {
        let removed = remote.remove(&name).await?;
        if cli.json {
            print_json(&removed);
        } else {
            println!("topology {name:?} is down in tenant {:?}", cli.tenant);
        }
        return Ok(());
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.down(&name, volumes, events).await;
    let _ = shown.await;
    let outcome = result?;
    if cli.json {
        print_json(&serde_json::json!({ "topology": name, "removed": outcome.removed }));
    } else {
        println!(
            "topology {name:?} is down: {} container{} removed",
            outcome.removed,
            if outcome.removed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ContainerJson<'a> {
    topology: &'a str,
    service: &'a str,
    replica: u32,
    name: &'a str,
    state: &'a str,
    status: &'a str,
    ports: Vec<String>,
}

impl<'a> From<&'a ContainerListing> for ContainerJson<'a> {
    fn from(c: &'a ContainerListing) -> Self {
        ContainerJson {
            topology: &c.topology.topology,
            service: &c.container.service,
            replica: c.container.replica,
            name: &c.container.name,
            state: &c.state,
            status: &c.status,
            ports: c
                .container
                .host_ports
                .iter()
                .map(|(ip, p)| format!("{ip}:{p}"))
                .collect(),
        }
    }
}

async fn ps(cli: &Cli, all: bool) -> Result<(), Failure> {
    let name = if all { None } else { Some(topology_name(cli)?) };
    if let Some(remote) = cli.remote()? {
        let name = name.ok_or_else(|| Failure {
            exit: Exit::Invalid,
            message: "--all is not available with --endpoint yet".into(),
        })?;
        let status = remote.status(&name).await?;
        if cli.json {
            print_json(&status);
        } else {
            remote::print_replicas(&status.replicas);
        }
        return Ok(());
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let containers = plane.ps(name.as_deref()).await?;
    if cli.json {
        print_json(
            &containers
                .iter()
                .map(ContainerJson::from)
                .collect::<Vec<_>>(),
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<28} {:<10} {:<28} PORTS",
        "TOPOLOGY", "NAME", "STATE", "STATUS"
    );
    for c in &containers {
        let json = ContainerJson::from(c);
        println!(
            "{:<16} {:<28} {:<10} {:<28} {}",
            json.topology,
            json.name,
            json.state,
            json.status,
            json.ports.join(", ")
        );
    }
    Ok(())
}

async fn logs(
    cli: &Cli,
    follow: bool,
    tail: Option<u64>,
    service: Option<&str>,
) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    if let Some(remote) = cli.remote()? {
        return remote_logs(cli, &remote, &name, follow, tail, service).await;
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let containers: Vec<ContainerListing> = plane
        .ps(Some(&name))
        .await?
        .into_iter()
        .filter(|c| service.is_none_or(|s| c.container.service == s))
        .collect();
    if containers.is_empty() {
        let what = service.map_or_else(
            || format!("topology {name:?}"),
            |s| format!("service {s:?} of topology {name:?}"),
        );
        return Err(Failure {
            exit: Exit::Failure,
            message: format!("no containers for {what}; is it up (`berth ps`)?"),
        });
    }
    follow_logs(&plane, &containers, follow, tail).await
}

/// How often `logs -f` against a pool asks for what was written since.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `berth logs` against a pool: the last lines of every replica, each asked of the
/// node that runs it; with `follow`, then every [`FOLLOW_EVERY`] what each wrote
/// since, until Ctrl-C. A line is printed once: each replica's lines are kept apart
/// by when its node's engine stamped them.
async fn remote_logs(
    cli: &Cli,
    remote: &remote::Remote,
    name: &str,
    follow: bool,
    tail: Option<u64>,
    service: Option<&str>,
) -> Result<(), Failure> {
    if cli.json && !follow {
        let replicas = remote
            .logs(name, service, tail.unwrap_or(100), None)
            .await?;
        print_json(&replicas);
        return Ok(());
    }
    // Per replica: the stamp of the last line printed, and the last error said.
    let mut printed: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut said: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut since = None;
    let mut tail = tail.unwrap_or(100);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let replicas = remote.logs(name, service, tail, since).await?;
        let none = Vec::new();
        let replicas = replicas.as_array().unwrap_or(&none);
        let label = |r: &serde_json::Value| {
            format!(
                "{}.{}",
                r["service"].as_str().unwrap_or_default(),
                r["replica"]
            )
        };
        let width = replicas.iter().map(|r| label(r).len()).max().unwrap_or(0);
        for r in replicas {
            let label = label(r);
            let stamps = r["at_ns"].as_array().unwrap_or(&none);
            for (i, line) in r["lines"].as_array().unwrap_or(&none).iter().enumerate() {
                let at = stamps
                    .get(i)
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0);
                let last = printed.get(&label).copied();
                if at != 0 && last.is_some_and(|last| at <= last) {
                    continue; // printed already
                }
                if at != 0 {
                    printed.insert(label.clone(), at);
                }
                let text = line.as_str().unwrap_or_default();
                if cli.json {
                    let record = serde_json::json!({
                        "service": r["service"], "replica": r["replica"], "node": r["node"],
                        "at_ns": at, "line": text,
                    });
                    println!("{record}");
                } else {
                    println!("{label:<width$} | {text}");
                }
            }
            let error = r["error"].as_str().unwrap_or_default();
            if said.get(&label).map(String::as_str).unwrap_or_default() != error {
                if !error.is_empty() {
                    eprintln!("{label}: {error}");
                }
                said.insert(label, error.to_owned());
            }
        }
        if !follow {
            return Ok(());
        }
        // Next, what was written after the earliest last line of any replica (the
        // others' lines up to their own last are skipped above). A replica that has
        // printed nothing yet sent all it had with the first answer.
        since = printed.values().min().copied();
        tail = 10_000;
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

async fn follow_logs(
    plane: &LocalPlane,
    containers: &[ContainerListing],
    follow: bool,
    tail: Option<u64>,
) -> Result<(), Failure> {
    use berth_node_runtime::ContainerDriver;
    let labels: std::collections::HashMap<String, String> = containers
        .iter()
        .map(|c| {
            (
                c.container.name.clone(),
                format!("{}.{}", c.container.service, c.container.replica),
            )
        })
        .collect();
    let width = labels.values().map(String::len).max().unwrap_or(0);
    let streams = containers
        .iter()
        .map(|c| plane.driver().logs(&c.container.name, follow, tail, None));
    let mut merged = futures_util::stream::select_all(streams);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            line = merged.next() => match line {
                Some(Ok(line)) => {
                    let label = labels.get(&line.container).map_or(line.container.as_str(), String::as_str);
                    println!("{label:<width$} | {}", line.text);
                }
                Some(Err(e)) => return Err(Failure { exit: Exit::Failure, message: e.to_string() }),
                None => return Ok(()),
            },
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

fn parse_scale(text: &str) -> Result<(String, u32), String> {
    let (service, count) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write SERVICE=REPLICAS, for example web=3"))?;
    let count = count
        .parse()
        .map_err(|_| format!("{text:?}: {count:?} is not a number of replicas"))?;
    Ok((service.to_owned(), count))
}

async fn scale(cli: &Cli, services: &[(String, u32)]) -> Result<(), Failure> {
    let loaded = load(cli)?;
    let replicas: std::collections::BTreeMap<String, u32> = services.iter().cloned().collect();
    // Every service named must be in the file, wherever it runs.
    let topology =
        berth_deployments::with_replicas(loaded.topology, &replicas).map_err(|e| Failure {
            exit: Exit::Invalid,
            message: e.to_string(),
        })?;
    if let Some(remote) = cli.remote()? {
        let deployed = remote.scale(&topology.name, &replicas).await?;
        if cli.json {
            print_json(&deployed);
        } else {
            println!(
                "topology {:?} scaled in tenant {:?}: revision {}, {} replica(s) placed",
                topology.name,
                cli.tenant,
                deployed.revision,
                deployed.replicas.len()
            );
        }
        return Ok(());
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.up(&topology, events).await;
    let _ = shown.await;
    let outcome = result?;
    if cli.json {
        print_json(&serde_json::json!({
            "topology": topology.name,
            "created": outcome.created,
            "unchanged": outcome.unchanged,
            "removed": outcome.removed,
        }));
    } else {
        println!(
            "topology {:?} scaled: {} created, {} unchanged, {} removed",
            topology.name, outcome.created, outcome.unchanged, outcome.removed
        );
    }
    Ok(())
}

fn print_nodes(nodes: &serde_json::Value) {
    let none = Vec::new();
    let nodes = nodes.as_array().unwrap_or(&none);
    println!(
        "{:<24} {:<9} {:>11} {:>13} {:>11}  {:<9} LABELS",
        "NODE", "STATE", "CONTAINERS", "CPU (millis)", "MEMORY (MiB)", "FIREWALL"
    );
    let of = |used: &serde_json::Value, cap: &serde_json::Value, scale: u64| {
        let used = used.as_u64().unwrap_or(0) / scale;
        match cap.as_u64() {
            Some(cap) => format!("{used}/{}", cap / scale),
            None => format!("{used}/-"),
        }
    };
    for n in nodes {
        let labels: Vec<String> = n["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let firewall = match n["firewall"].as_str().unwrap_or_default() {
            "" => "-",
            said => said,
        };
        println!(
            "{:<24} {:<9} {:>11} {:>13} {:>11}  {:<9} {}",
            n["name"].as_str().unwrap_or_default(),
            n["state"].as_str().unwrap_or_default(),
            of(&n["used"]["containers"], &n["capacity"]["containers"], 1),
            of(&n["used"]["cpu_millis"], &n["capacity"]["cpu_millis"], 1),
            of(
                &n["used"]["memory_bytes"],
                &n["capacity"]["memory_bytes"],
                1 << 20
            ),
            firewall,
            labels.join(",")
        );
    }
}

/// Percent-encodes a query or path value.
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read_password() -> Result<String, Failure> {
    match std::env::var("BERTH_PASSWORD") {
        Ok(p) => Ok(p),
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| Failure {
                exit: Exit::Failure,
                message: format!("cannot read the password: {e}"),
            })?;
            Ok(line.trim_end_matches(['\n', '\r']).to_owned())
        }
    }
}

/// The admin subcommands: each is one call of the REST API.
async fn admin(cli: &Cli) -> Result<(), Failure> {
    use reqwest::Method;
    let remote = cli.remote()?.ok_or_else(|| Failure {
        exit: Exit::Invalid,
        message: "admin commands need --endpoint (or BERTH_ENDPOINT) and an admin token".into(),
    })?;
    let answer = match &cli.command {
        Command::Tenant(TenantCommand::Create { name, quota }) => {
            remote
                .admin(
                    Method::POST,
                    "/tenants",
                    Some(serde_json::json!({ "name": name, "quota": quota.to_json()? })),
                )
                .await?
        }
        Command::Quota(QuotaCommand::Set { tenant, quota }) => {
            remote
                .admin(
                    Method::PUT,
                    &format!("/tenants/{tenant}/quota"),
                    Some(quota.to_json()?),
                )
                .await?
        }
        Command::Policy(PolicyCommand::Set { tenant, allow }) => {
            remote
                .admin(
                    Method::PUT,
                    &format!("/tenants/{tenant}/policy"),
                    Some(serde_json::json!({ "allow": allow })),
                )
                .await?
        }
        Command::Limits(LimitsCommand::Set {
            tenant,
            requests_per_second,
            deploys_per_minute,
            attenuations_per_hour,
            services_per_topology,
            replicas_per_service,
        }) => {
            let limits = berth_protocol::limits::TenantLimits {
                requests_per_second: *requests_per_second,
                deploys_per_minute: *deploys_per_minute,
                attenuations_per_hour: *attenuations_per_hour,
                services_per_topology: *services_per_topology,
                replicas_per_service: *replicas_per_service,
            };
            let body = serde_json::to_value(limits).map_err(|e| Failure {
                exit: Exit::Failure,
                message: format!("cannot write the limits: {e}"),
            })?;
            remote
                .admin(
                    Method::PUT,
                    &format!("/tenants/{tenant}/limits"),
                    Some(body),
                )
                .await?
        }
        Command::Limits(LimitsCommand::Show { tenant }) => {
            remote
                .admin(Method::GET, &format!("/tenants/{tenant}/limits"), None)
                .await?
        }
        Command::Policy(PolicyCommand::Show { tenant }) => {
            remote
                .admin(Method::GET, &format!("/tenants/{tenant}/policy"), None)
                .await?
        }
        Command::Quota(QuotaCommand::Show { tenant }) => {
            remote
                .admin(Method::GET, &format!("/tenants/{tenant}/quota"), None)
                .await?
        }
        Command::User(UserCommand::Create { tenant, name, role }) => {
            let role = berth_protocol::capability::Role::parse(role).ok_or_else(|| Failure {
                exit: Exit::Invalid,
                message: format!("unknown role {role:?}: use admin, developer or auditor"),
            })?;
            let password = read_password()?;
            remote
                .admin(
                    Method::POST,
                    &format!("/tenants/{tenant}/users"),
                    Some(serde_json::json!({ "name": name, "password": password, "role": role })),
                )
                .await?
        }
        Command::Node(NodeCommand::JoinToken { ttl }) => {
            let answer = remote
                .admin(
                    Method::POST,
                    "/join-tokens",
                    Some(serde_json::json!({ "ttl_seconds": ttl })),
                )
                .await?;
            if !cli.json {
                println!("{}", answer["join_command"].as_str().unwrap_or_default());
                return Ok(());
            }
            answer
        }
        Command::Audit(AuditCommand::List {
            kind,
            of_tenant,
            subject,
            limit,
        }) => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [("kind", kind), ("tenant", of_tenant), ("subject", subject)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", url_encode(value)));
                }
            }
            let entries = remote
                .admin(
                    Method::GET,
                    &format!("/audit/entries?{}", query.join("&")),
                    None,
                )
                .await?;
            if !cli.json {
                for e in entries.as_array().into_iter().flatten() {
                    println!(
                        "{:>6}  {:<10} {:<10} {:<24} {}",
                        e["seq"],
                        e["kind"].as_str().unwrap_or_default(),
                        e["tenant"].as_str().unwrap_or_default(),
                        e["actor"].as_str().unwrap_or_default(),
                        e["subject"].as_str().unwrap_or_default()
                    );
                }
                return Ok(());
            }
            entries
        }
        Command::Audit(AuditCommand::Verify { anchor }) => {
            let path = match anchor {
                Some(anchor) => format!("/audit/verify?anchor={anchor}"),
                None => "/audit/verify".to_owned(),
            };
            let verified = remote.admin(Method::GET, &path, None).await?;
            let intact = verified["intact"].as_bool().unwrap_or(false);
            if cli.json {
                print_json(&verified);
            } else if intact {
                println!(
                    "the ledger is intact: {} entries, head {}",
                    verified["entries"],
                    verified["head"].as_str().unwrap_or_default()
                );
                if let Some(anchor) = anchor {
                    println!("entry {} is the one anchored", anchor.seq);
                }
                if let Some(w) = verified["witnessed"]["anchor"].as_str() {
                    println!("it holds the server witness's last anchor: {w}");
                }
                let kept = verified["anchor"].as_str().unwrap_or_default();
                if !kept.is_empty() {
                    println!(
                        "anchor (keep it outside the database, then `berth audit verify --anchor {kept}`): {kept}"
                    );
                }
            }
            if !intact {
                let against = match verified["witnessed"]["anchor"].as_str() {
                    Some(w) if anchor.is_none() => {
                        format!(" (checked against the server witness's last anchor {w})")
                    }
                    _ => String::new(),
                };
                return Err(Failure {
                    exit: Exit::Failure,
                    message: format!(
                        "the ledger is broken: {}{against}",
                        verified["problem"].as_str().unwrap_or("unknown problem")
                    ),
                });
            }
            return Ok(());
        }
        Command::Audit(AuditCommand::Explain { id }) if id.bytes().all(|b| b.is_ascii_digit()) => {
            let explained = remote
                .admin(Method::GET, &format!("/audit/decisions/{id}"), None)
                .await?;
            if !cli.json {
                print_decision(&explained);
                return Ok(());
            }
            explained
        }
        Command::Audit(AuditCommand::Graph { of_tenant, format }) => {
            let path = match of_tenant {
                Some(tenant) => format!("/audit/graph?tenant={}", url_encode(tenant)),
                None => "/audit/graph".to_owned(),
            };
            let graph = remote.admin(Method::GET, &path, None).await?;
            let reach: berth_allocator::reach::Reach = serde_json::from_value(graph.clone())
                .map_err(|e| Failure {
                    exit: Exit::Failure,
                    message: format!("the server sent a graph this berth cannot read: {e}"),
                })?;
            match format.as_str() {
                "json" => print_json(&graph),
                "dot" => print!("{}", reach.to_dot()),
                "text" if cli.json => print_json(&graph),
                "text" => {
                    if reach.edges.is_empty() {
                        println!("no delegation is in force");
                    }
                    for e in &reach.edges {
                        println!(
                            "{} -> {} {}/{}/{}:{} on {}  (token {})",
                            e.caller,
                            e.operation,
                            e.tenant,
                            e.topology,
                            e.service,
                            e.port,
                            e.target,
                            e.token
                        );
                    }
                }
                other => {
                    return Err(Failure {
                        exit: Exit::Invalid,
                        message: format!("--format must be text, json or dot, not {other:?}"),
                    });
                }
            }
            return Ok(());
        }
        Command::Audit(AuditCommand::Explain { id }) => {
            let explained = remote
                .admin(
                    Method::GET,
                    &format!("/audit/tokens/{}", url_encode(id)),
                    None,
                )
                .await?;
            if !cli.json {
                let minted = &explained["minted"];
                println!(
                    "token {id}\n  tenant   {}\n  minted   entry {} at {} (Unix ms)\n  revoked  {}",
                    minted["tenant"].as_str().unwrap_or_default(),
                    minted["seq"],
                    minted["at_ms"],
                    explained["revoked"]
                );
                println!("{}", minted["detail"].as_str().unwrap_or_default());
                for e in explained["history"].as_array().into_iter().flatten() {
                    println!(
                        "-- entry {} {} by {}\n{}",
                        e["seq"],
                        e["kind"].as_str().unwrap_or_default(),
                        e["actor"].as_str().unwrap_or_default(),
                        e["detail"].as_str().unwrap_or_default()
                    );
                }
                return Ok(());
            }
            explained
        }
        Command::Audit(AuditCommand::Revoke {
            ids,
            node,
            of_tenant,
            reason,
        }) => {
            let mut body = serde_json::json!({ "ids": ids, "reason": reason });
            if let Some(node) = node {
                body["node"] = node.clone().into();
            }
            if let Some(tenant) = of_tenant {
                body["tenant"] = tenant.clone().into();
            }
            let entry = remote
                .admin(Method::POST, "/audit/revocations", Some(body))
                .await?;
            if !cli.json {
                let revoked = entry["revocation_ids"].as_array().map_or(0, Vec::len);
                println!("revoked {revoked} id(s); ledger entry {}", entry["seq"]);
                return Ok(());
            }
            entry
        }
        Command::RootKey(RootKeyCommand::List) => {
            let keys = remote.admin(Method::GET, "/root-keys", None).await?;
            if !cli.json {
                for key in keys.as_array().into_iter().flatten() {
                    println!(
                        "{:>4}  {}{}",
                        key["id"],
                        key["public_key"].as_str().unwrap_or_default(),
                        if key["signing"] == true {
                            "  (signing)"
                        } else {
                            ""
                        }
                    );
                }
                return Ok(());
            }
            keys
        }
        Command::RootKey(RootKeyCommand::Rotate) => {
            let key = remote.admin(Method::POST, "/root-keys", None).await?;
            if !cli.json {
                println!(
                    "root key {} signs every new token from now on: {}",
                    key["id"],
                    key["public_key"].as_str().unwrap_or_default()
                );
                return Ok(());
            }
            key
        }
        Command::RootKey(RootKeyCommand::Retire { id, force }) => {
            remote
                .admin(
                    Method::DELETE,
                    &format!("/root-keys/{id}{}", if *force { "?force=true" } else { "" }),
                    None,
                )
                .await?
        }
        Command::Node(NodeCommand::List) => {
            let nodes = remote.admin(Method::GET, "/nodes", None).await?;
            if !cli.json {
                print_nodes(&nodes);
                return Ok(());
            }
            nodes
        }
        Command::Node(NodeCommand::Cordon { name }) => {
            remote
                .admin(Method::POST, &format!("/nodes/{name}/cordon"), None)
                .await?
        }
        Command::Node(NodeCommand::Uncordon { name }) => {
            remote
                .admin(Method::POST, &format!("/nodes/{name}/uncordon"), None)
                .await?
        }
        Command::Node(NodeCommand::Drain { name }) => {
            remote
                .admin(Method::POST, &format!("/nodes/{name}/drain"), None)
                .await?
        }
        _ => {
            return Err(Failure {
                exit: Exit::Failure,
                message: "not an admin command".into(),
            });
        }
    };
    print_json(&answer);
    Ok(())
}

async fn login(cli: &Cli, user: &str) -> Result<(), Failure> {
    let endpoint = cli.endpoint.as_deref().ok_or_else(|| Failure {
        exit: Exit::Invalid,
        message: "login needs --endpoint (or BERTH_ENDPOINT)".into(),
    })?;
    let password = read_password()?;
    let session = remote::login(endpoint, cli.ca.as_deref(), &cli.tenant, user, &password).await?;
    if cli.json {
        print_json(&session);
    } else {
        eprintln!(
            "logged in to tenant {:?} as {user:?} ({:?}); the token expires at {} (Unix time)",
            cli.tenant, session.role, session.expires_at
        );
        println!("{}", session.token);
    }
    Ok(())
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

/// A decision explained, for people.
fn print_decision(explained: &serde_json::Value) {
    let decision = &explained["decision"];
    let verdict = if explained["allowed"].as_bool() == Some(true) {
        "allowed"
    } else {
        "refused"
    };
    println!(
        "decision {}: {verdict} by node {} at {} (Unix ms)\n  call     {}\n  reason   {}",
        decision["seq"],
        decision["actor"].as_str().unwrap_or_default(),
        decision["at_ms"],
        decision["subject"].as_str().unwrap_or_default(),
        explained["reason"].as_str().unwrap_or_default(),
    );
    match explained.get("token") {
        Some(token) => {
            let minted = &token["minted"];
            println!(
                "  token    {} ({} at entry {}, revoked {})",
                minted["subject"].as_str().unwrap_or_default(),
                minted["kind"].as_str().unwrap_or_default(),
                minted["seq"],
                token["revoked"]
            );
            for line in minted["detail"].as_str().unwrap_or_default().lines() {
                println!("    {line}");
            }
        }
        None => println!("  token    never minted by Berth (garbage, or signed by another root)"),
    }
    for id in explained["unknown_blocks"].as_array().into_iter().flatten() {
        println!(
            "  block    {} was appended by the holder and never shown to Berth",
            id.as_str().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn file_goes_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["berth", "-f", "a.yaml", "logs", "-f", "web"]).unwrap();
        assert_eq!(cli.file(), Some(std::path::Path::new("a.yaml")));
        assert!(matches!(cli.command, Command::Logs { follow: true, .. }));
        let cli = Cli::try_parse_from(["berth", "up", "-d", "-f", "b.yaml"]).unwrap();
        assert_eq!(cli.file(), Some(std::path::Path::new("b.yaml")));
        let cli = Cli::try_parse_from(["berth", "logs", "--file", "c.yaml"]).unwrap();
        assert_eq!(cli.file(), Some(std::path::Path::new("c.yaml")));
    }
}
