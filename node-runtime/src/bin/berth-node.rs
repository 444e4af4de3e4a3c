//! `berth-node`: the node agent.
//!
//! `berth-node join --allocator URL --token TOKEN --name NAME` joins the pool once (the
//! admin's join command prints these) and then runs; `berth-node run` runs a node that
//! joined before. The node's identity (its name and key) lives in `--state-dir`.

use std::path::PathBuf;

use anyhow::Context;
use berth_node_runtime::agent::{self, Capacity, NodeIdentity};
use berth_node_runtime::firewall::{Firewall, Mode, Network};
use berth_node_runtime::node::{self, NodeApiListener, NodeSettings};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth-node", version, about = "The Berth node agent")]
struct Cli {
    /// Where the node keeps its identity.
    #[arg(long, env = "BERTH_NODE_DIR", global = true, default_value_os_t = default_state_dir())]
    state_dir: PathBuf,
    /// Serve the node API other nodes call (tunnels, health) on this address, each call
    /// allowed only by a delegation token the allocator minted.
    #[arg(long, env = "BERTH_PEER_LISTEN", global = true, value_name = "ADDR")]
    peer_listen: Option<std::net::SocketAddr>,
    /// The node API's URL as other nodes reach it (default: from --peer-listen).
    #[arg(long, env = "BERTH_PEER_ADVERTISE", global = true, value_name = "URL")]
    peer_advertise: Option<String>,
    /// Keep the node's own firewall on this host (an nftables table, `inet berth_node`):
    /// the pool's other nodes and containers reach the node API port only. `off` when
    /// you run your own firewall, or when nodes share a host.
    #[arg(long, env = "BERTH_FIREWALL", global = true, value_enum, default_value_t = Mode::Enforce)]
    firewall: Mode,
    /// Where what topologies publish may be reached from (`ADDRESS/PREFIX`, repeatable;
    /// default anywhere but the pool's other nodes, which never reach it).
    #[arg(
        long = "published-from",
        env = "BERTH_PUBLISHED_FROM",
        global = true,
        value_delimiter = ',',
        value_name = "NETWORK"
    )]
    published_from: Vec<Network>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the pool with a one-time token, then run.
    Join {
        /// The allocator's gRPC address, `http://host:port`; with several allocators on
        /// one PostgreSQL database, all of their addresses, comma-separated.
        #[arg(long)]
        allocator: String,
        /// The one-time join token.
        #[arg(long, env = "BERTH_JOIN_TOKEN")]
        token: String,
        /// The certificate authority (PEM file) an `https://` allocator's certificate
        /// must chain to (`berth server --tls` prints it); kept with the identity.
        #[arg(long, env = "BERTH_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// This node's name in the pool.
        #[arg(long)]
        name: String,
        /// CPU this node offers, in thousandths of a core (default: unlimited).
        #[arg(long)]
        cpu_millis: Option<u64>,
        /// Memory this node offers, in bytes (default: unlimited).
        #[arg(long)]
        memory_bytes: Option<u64>,
        /// Containers this node runs at most.
        #[arg(long, default_value_t = 500)]
        containers: u64,
        /// A label for placement constraints, `KEY=VALUE` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Run a node that has joined.
    Run,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{text:?} is not a label: write KEY=VALUE")),
    }
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
        .join(".local/share/berth-node")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = berth_telemetry::init("berth-node", "info");
    let identity = match cli.command {
        Command::Join {
            allocator,
            token,
            ca,
            name,
            cpu_millis,
            memory_bytes,
            containers,
            labels,
        } => {
            let capacity = Capacity {
                cpu_millis,
                memory_bytes,
                containers: Some(containers),
                labels: labels.into_iter().collect(),
            };
            let ca = match ca {
                Some(path) => {
                    anyhow::ensure!(
                        allocator
                            .split(',')
                            .all(|url| url.trim().starts_with("https://")),
                        "--ca is for allocators reached over TLS: write their addresses as https://HOST:PORT"
                    );
                    Some(std::fs::read_to_string(&path).with_context(|| {
                        format!("reading the certificate authority {}", path.display())
                    })?)
                }
                None => None,
            };
            let identity = agent::join(
                &allocator,
                ca.as_deref(),
                &token,
                &name,
                capacity,
                &cli.state_dir,
            )
            .await?;
            eprintln!(
                "joined as {name}; identity saved in {}",
                NodeIdentity::path(&cli.state_dir).display()
            );
            identity
        }
        Command::Run => NodeIdentity::load(&cli.state_dir)?,
    };
    eprintln!(
        "node {} watching its assignments at {}",
        identity.name, identity.allocator
    );
    let firewall = match cli.firewall {
        Mode::Off => None,
        Mode::Enforce => Some(
            Firewall::install(cli.peer_listen.map(|a| a.port()), &cli.published_from)
                .await
                .map_err(anyhow::Error::msg)
                .context("installing the node's firewall")?,
        ),
    };
    let node_api = match cli.peer_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on {address} for the node API"))?;
            eprintln!("node API on {}", listener.local_addr()?);
            Some(NodeApiListener {
                listener,
                advertised: cli.peer_advertise.clone(),
            })
        }
        None => None,
    };
    let settings = NodeSettings {
        firewall,
        node_api,
        image_dir: Some(cli.state_dir.join("images")),
    };
    let agent = node::assemble(identity, settings)
        .await
        .context("starting the node")?;
    agent.run_until(stopped()).await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT (the node is being stopped).
async fn stopped() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
