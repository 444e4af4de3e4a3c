//! The command line: every command, argument and flag of `berth`, parsed by clap
//! into types the command modules take. No command runs here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::failure::{Exit, Failure};
use crate::remote;

/// Berth: one topology file, from a laptop to a shared pool.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about)]
pub(crate) struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) file: FileArg,
    /// A control plane's API (`berth server` prints it); without it, Berth runs on this
    /// machine with an embedded control plane.
    #[arg(long, env = "BERTH_ENDPOINT", global = true, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// The API token for --endpoint.
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The tenant to act for with --endpoint.
    #[arg(long, env = "BERTH_TENANT", global = true, default_value = "default")]
    pub(crate) tenant: String,
    /// A certificate authority (PEM file) to trust for an `https://` --endpoint, besides
    /// the public ones (`berth server --tls` prints the one it made).
    #[arg(long, env = "BERTH_CA", global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `-f FILE`, accepted before the subcommand (as with Compose) and after it.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct FileArg {
    /// The topology file (default: compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml in the current directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// Against a pool: push each service's image from this machine's engine
        /// first (`berth push`), so that the pool runs what was built here.
        #[arg(long)]
        push: bool,
    },
    /// Send images from this machine's engine to the pool (--endpoint), layer by
    /// layer, skipping the layers the pool has; topologies then name them as usual.
    Push {
        /// The images, as the engine names them (`name:tag`).
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Manage the tenant's registry logins in the pool (with --endpoint): nodes pull
    /// the tenant's images with them; locally, `docker login` is used as Compose uses it.
    #[command(subcommand)]
    Registry(RegistryCommand),
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
        /// The REST API's URL as the other servers of the pool reach it, to forward
        /// what only the leader answers (default: from --listen, with --advertise's
        /// host when --listen is a wildcard).
        #[arg(long, value_name = "URL")]
        advertise_api: Option<String>,
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
        /// The REST API's URL as the other servers of the pool reach it, to forward
        /// what only the leader answers (default: from --listen, with --advertise's
        /// host when --listen is a wildcard).
        #[arg(long, value_name = "URL")]
        advertise_api: Option<String>,
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
pub(crate) struct WitnessArgs {
    /// The file the ledger's head is appended to (default: `ledger-witness` in the
    /// data directory). Put it where the database's writers cannot write: another
    /// volume, or a file system that only appends.
    #[arg(long, env = "BERTH_WITNESS", value_name = "FILE")]
    pub(crate) witness: Option<PathBuf>,
    /// How often the ledger is checked since the last anchor and its head anchored.
    #[arg(long, env = "BERTH_WITNESS_EVERY", default_value = "60s", value_parser = parse_duration)]
    pub(crate) witness_every: std::time::Duration,
}

impl WitnessArgs {
    pub(crate) fn setting(&self, data_dir: &std::path::Path) -> crate::server::WitnessSetting {
        crate::server::WitnessSetting {
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
pub(crate) struct TlsArgs {
    /// Serve both APIs over TLS with a certificate this server signs with its own
    /// authority, made on first start in the data directory (`tls/ca.pem`, which
    /// clients trust with `--ca`).
    #[arg(long)]
    pub(crate) tls: bool,
    /// A name or address clients reach the server by, added to the certificate made
    /// with --tls (repeatable; loopback, this machine's name and the listen addresses
    /// are always in it).
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    pub(crate) tls_names: Vec<String>,
    /// Serve TLS with this certificate chain (PEM) instead of a made one.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl TlsArgs {
    pub(crate) fn setting(&self) -> crate::tls::TlsSetting {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::tls::TlsSetting::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if self.tls => crate::tls::TlsSetting::Made {
                names: self.tls_names.clone(),
            },
            _ => crate::tls::TlsSetting::Off,
        }
    }
}

impl Cli {
    /// The file named after the subcommand, else before it.
    pub(crate) fn file(&self) -> Option<&std::path::Path> {
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
            | Command::Push { .. }
            | Command::Registry(_)
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
pub(crate) struct LivenessArgs {
    /// Silence after which a node is suspect (for example 5s or 500ms). Nodes
    /// heartbeat every 500 ms.
    #[arg(long, env = "BERTH_SUSPECT_AFTER", default_value = "1500ms", value_parser = parse_duration)]
    pub(crate) suspect_after: std::time::Duration,
    /// Silence after which a node is dead and its replicas are placed elsewhere.
    #[arg(long, env = "BERTH_DEAD_AFTER", default_value = "2500ms", value_parser = parse_duration)]
    pub(crate) dead_after: std::time::Duration,
    /// Silence after which a node stops its own replicas (shorter than --dead-after).
    #[arg(long, env = "BERTH_FENCE_AFTER", default_value = "1500ms", value_parser = parse_duration)]
    pub(crate) fence_after: std::time::Duration,
    /// The most heartbeats a second the pool sends: larger pools heartbeat less often,
    /// and every threshold stretches as much (3, 3 and 5 intervals by default).
    #[arg(long, env = "BERTH_HEARTBEATS_PER_SECOND", default_value_t = 2_000)]
    pub(crate) heartbeats_per_second: u32,
}

impl LivenessArgs {
    pub(crate) fn thresholds(&self) -> Result<berth_allocator::liveness::Thresholds, Failure> {
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
pub(crate) fn parse_anchor(text: &str) -> Result<berth_allocator::ledger::Anchor, String> {
    text.parse()
}

pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
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
pub(crate) struct QuotaArgs {
    /// CPU, in cores (for example 4 or 0.5).
    #[arg(long)]
    pub(crate) cpus: Option<f64>,
    /// Memory, for example 8g or 512m.
    #[arg(long)]
    pub(crate) memory: Option<String>,
    /// Containers.
    #[arg(long)]
    pub(crate) containers: Option<u64>,
}

impl QuotaArgs {
    /// The quota the flags set (a dimension left out is unlimited).
    pub(crate) fn to_limit(&self) -> Result<berth_api::Limit, Failure> {
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
        Ok(berth_api::Limit {
            cpu_millis,
            memory_bytes,
            containers: self.containers,
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Keep a login to a registry for the tenant (the password is read from standard
    /// input, or BERTH_REGISTRY_PASSWORD; it is sealed and never shown again).
    Login {
        /// The registry, `host[:port]`.
        registry: String,
        /// The user name.
        #[arg(long, short)]
        username: String,
    },
    /// List the registries the tenant has a login for.
    List,
    /// Forget the tenant's login to a registry.
    Logout {
        /// The registry, `host[:port]`.
        registry: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Create a tenant, with a quota (unlimited where not given).
    Create {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum QuotaCommand {
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
pub(crate) enum LimitsCommand {
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
        /// Pushed images kept for the tenant, in MiB.
        #[arg(long)]
        image_mebibytes: Option<u32>,
    },
    /// Show the limits in force for a tenant, defaults filled in.
    Show {
        /// The tenant.
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
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
pub(crate) enum UserCommand {
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
pub(crate) enum AuditCommand {
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
pub(crate) enum RootKeyCommand {
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
pub(crate) enum NodeCommand {
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

pub(crate) fn parse_scale(text: &str) -> Result<(String, u32), String> {
    let (service, count) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write SERVICE=REPLICAS, for example web=3"))?;
    let count = count
        .parse()
        .map_err(|_| format!("{text:?}: {count:?} is not a number of replicas"))?;
    Ok((service.to_owned(), count))
}

impl Cli {
    /// The remote control plane, when --endpoint is given.
    pub(crate) fn remote(&self) -> Result<Option<remote::Remote>, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    pub(crate) fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    pub(crate) fn file_goes_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["berth", "-f", "a.yaml", "logs", "-f", "web"]).unwrap();
        assert_eq!(cli.file(), Some(std::path::Path::new("a.yaml")));
        assert!(matches!(cli.command, Command::Logs { follow: true, .. }));
        let cli = Cli::try_parse_from(["berth", "up", "-d", "-f", "b.yaml"]).unwrap();
        assert_eq!(cli.file(), Some(std::path::Path::new("b.yaml")));
        let cli = Cli::try_parse_from(["berth", "logs", "--file", "c.yaml"]).unwrap();
        assert_eq!(cli.file(), Some(std::path::Path::new("c.yaml")));
    }
}
