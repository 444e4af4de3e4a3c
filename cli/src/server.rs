//! `berth server`: the control plane as one process, for a pool of a few machines.
//! It serves the REST API (the gateway) and the node API (gRPC) over one database,
//! and prints the one command each other machine runs to join.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_allocator::autoscale::Autoscaler;
use berth_allocator::control::{self, SystemClock};
use berth_allocator::node_api::NodeApi;
use berth_allocator::rebalance::Rebalancer;
use berth_allocator::witness::Anchoring;
use berth_allocator::{Allocator, DefaultRequest};
use berth_api_gateway::Gateway;
use berth_deployments::{Deployments, Target};
use berth_protocol::node_api::node_control_server::NodeControlServer;
use berth_protocol::time::now_ms;
use berth_tenant_service::TenantService;

/// The tenant created at start.
const DEFAULT_TENANT: &str = "default";

/// How often a server reads the root key file again for changes another server made.
const KEY_FILE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Where and how the control plane runs.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// The REST API's address.
    pub(crate) listen: SocketAddr,
    /// The node API's address.
    pub(crate) node_listen: SocketAddr,
    /// The node API's address as nodes reach it (default: `node_listen`).
    pub(crate) advertise: Option<String>,
    /// The REST API's address as the other servers reach it (default: from
    /// `listen`).
    pub(crate) advertise_api: Option<String>,
    /// The database URL (default: SQLite in the data directory).
    pub(crate) database: Option<String>,
    /// The data directory (admin token, SQLite file).
    pub(crate) data_dir: PathBuf,
    /// `berth dev`: also run a node agent on this machine's Docker, joined over the
    /// node API like any other, and an `admin` user to log in with.
    pub(crate) local_node: bool,
    /// The failure detector's thresholds.
    pub(crate) thresholds: berth_allocator::liveness::Thresholds,
    /// How often the autoscaler runs (in the leader).
    pub(crate) autoscale_every: std::time::Duration,
    /// How often the leader evens the load across nodes.
    pub(crate) rebalance_every: std::time::Duration,
    /// The most replicas of a service moving or down at once while rebalancing.
    pub(crate) disruption_budget: u32,
    /// Whether both APIs are served over TLS, and with which certificate.
    pub(crate) tls: crate::tls::TlsSetting,
    /// Where the audit ledger's head is anchored, and how often.
    pub(crate) witness: WitnessSetting,
}

/// The ledger's witness file and its schedule.
#[derive(Debug, Clone)]
pub(crate) struct WitnessSetting {
    /// The file anchors are appended to.
    pub(crate) path: PathBuf,
    /// How often.
    pub(crate) every: std::time::Duration,
}

/// The name of the node `berth dev` runs.
const DEV_NODE: &str = "local";

/// Runs until the process is stopped.
pub(crate) async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    // Connect to Docker first, so that `berth dev` without it fails before serving.
    let docker = if config.local_node {
        Some(berth_node_runtime::docker::DockerDriver::connect().await?)
    } else {
        None
    };
    drop(docker);
    let Stores {
        database,
        db,
        tenants,
        allocator,
        nodes,
    } = open_stores(&config).await?;
    let token_file = config.data_dir.join("admin-token");
    // Servers of one control plane share only their PostgreSQL database: the root keys
    // and the admin token are kept there, sealed under the secrets key each server is
    // given. On SQLite one server owns the data directory and keeps them there.
    let seal = match berth_allocator::database::is_postgres(&database) {
        true => Some(crate::secrets::secrets_key(&config.data_dir)?),
        false => None,
    };
    let admin_token = admin_token_of(seal.as_ref(), &db, &token_file).await?;
    let tls = tls_of(&config)?;
    let scheme = match tls {
        Some(_) => "https",
        None => "http",
    };
    let node_url = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", config.node_listen));
    let api_url = config
        .advertise_api
        .clone()
        .unwrap_or_else(|| api_url_of(scheme, config.listen, config.advertise.as_deref()));
    // The keys that sign sessions and delegations; nodes verify delegation tokens
    // offline against their public halves.
    let keys = root_keys_of(seal, &db, &config.data_dir).await?;
    nodes.mint_delegations_with(keys.clone());
    follow_root_keys(keys.clone(), nodes.clone());
    let admin_password = if config.local_node {
        Some(dev_admin(&tenants, &config.data_dir.join("admin-password")).await?)
    } else {
        None
    };
    let gateway = Gateway::new(
        tenants.clone(),
        allocator.clone(),
        nodes.clone(),
        &admin_token,
        &node_url,
        keys,
    );
    // A standby forwards to the leader what only the leader answers; the servers of
    // one pool present one certificate, or certificates of an authority it trusts.
    let to_leader =
        berth_api::client::http_trusting(tls.as_ref().and_then(|tls| tls.ca_file.as_deref()))?;
    let gateway = gateway.with_leader_client(to_leader);
    let gateway = match &tls {
        Some(tls) => gateway.with_tls(tls.leaf(), tls.ca_file.as_deref()),
        None => gateway,
    };
    // Every server anchors the ledger's head (several sharing one file append whole
    // lines), so the witness keeps going whichever of them leads.
    let witness = berth_allocator::witness::Witness::new(&config.witness.path);
    let gateway = gateway.with_witness(witness.clone());
    control::spawn(
        Anchoring::new(witness, nodes.ledger().clone(), config.witness.every),
        SystemClock,
    );

    let leadership = lead_when_elected(
        Leading {
            db,
            database: database.clone(),
            allocator: allocator.clone(),
            nodes: nodes.clone(),
            deployments: Deployments::new(tenants.clone(), allocator.clone(), Target::Pool),
            api_url,
        },
        &config,
    );

    let http = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(berth_api_gateway::configure(gateway.clone()))
    })
    .workers(2);
    let http = match &tls {
        Some(tls) => http.bind_rustls_0_23(config.listen, tls.rustls()?)?,
        None => http.bind(config.listen)?,
    };
    let api_addr = http.addrs().first().copied().unwrap_or(config.listen);
    let http = http.run();
    let grpc_listener = tokio::net::TcpListener::bind(config.node_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let mut grpc = match &tls {
        Some(tls) => tonic::transport::Server::builder().tls_config(tls.tonic())?,
        None => tonic::transport::Server::builder(),
    };
    let grpc = grpc
        .add_service(NodeControlServer::with_interceptor(
            nodes.clone(),
            nodes.only_when_leading(),
        ))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
            grpc_listener,
        ));

    let join_token = nodes
        .identities()
        .create_join_token(now_ms(), 3_600_000)
        .await?;
    let node_url = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{grpc_addr}"));
    let ca_file = tls.as_ref().and_then(|tls| tls.ca_file.clone());
    // What a client adds to trust this server: the authority the server made, or
    // (with the admin's own certificate) whatever the admin's clients already trust.
    let ca_arg = ca_file
        .as_ref()
        .map(|ca| format!(" --ca {}", ca.display()))
        .unwrap_or_default();
    let ca_env = ca_file
        .as_ref()
        .map(|ca| format!(" BERTH_CA={}", ca.display()))
        .unwrap_or_default();
    if config.local_node {
        // The node joins through the node API served below, so it runs beside it.
        let (url, token, dir) = (
            node_url.clone(),
            join_token.clone(),
            config.data_dir.join("node"),
        );
        let ca = match &ca_file {
            Some(path) => Some(std::fs::read_to_string(path)?),
            None => None,
        };
        tokio::spawn(async move {
            match dev_node(&url, ca.as_deref(), &token, &dir).await {
                Ok(node) => node.await,
                Err(e) => eprintln!("error: node {DEV_NODE:?} could not start: {e:#}"),
            }
        });
        let join_token = nodes
            .identities()
            .create_join_token(now_ms(), 3_600_000)
            .await?;
        // The URL is printed once the local node follows its assignments and takes
        // work, so that a deploy made the moment it appears is placed.
        let printed = async {
            if !dev_node_takes_work(&allocator, &nodes).await {
                eprintln!(
                    "warning: node {DEV_NODE:?} has not joined within {} s; deploys are placed once it does",
                    DEV_NODE_JOINS_WITHIN.as_secs()
                );
            }
            print_dev(
                &format!("{scheme}://{api_addr}"),
                &node_url,
                &database,
                admin_password.as_deref(),
                &format!("--token {join_token}{ca_arg}"),
                &ca_env,
            );
            std::future::pending::<()>().await;
        };
        tokio::select! {
            result = http => result?,
            result = grpc => result?,
            lost = leadership => return Err(lost?),
            () = printed => {}
        }
        return Ok(());
    }
    print_server(&Printed {
        api: format!("{scheme}://{api_addr}"),
        node_url: &node_url,
        database: &database,
        token_file: &token_file,
        ca_file: ca_file.as_deref(),
        join: format!("--token {join_token}{ca_arg}"),
        ca_env: &ca_env,
    });
    tokio::select! {
        result = http => result?,
        result = grpc => result?,
        lost = leadership => return Err(lost?),
    }
    Ok(())
}

/// Whether the `berth dev` node joins, follows its assignments and takes work within
/// [`DEV_NODE_JOINS_WITHIN`].
async fn dev_node_takes_work(allocator: &Allocator, nodes: &NodeApi) -> bool {
    let deadline = std::time::Instant::now() + DEV_NODE_JOINS_WITHIN;
    loop {
        let active = allocator.nodes().await.is_ok_and(|listed| {
            listed
                .iter()
                .any(|n| n.name == DEV_NODE && n.state == berth_allocator::pool::NodeState::Active)
        });
        if active && nodes.is_following(DEV_NODE) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// What `berth server` prints once it serves.
struct Printed<'a> {
    api: String,
    node_url: &'a str,
    database: &'a str,
    token_file: &'a Path,
    ca_file: Option<&'a Path>,
    /// The join command's arguments after the allocator's address.
    join: String,
    ca_env: &'a str,
}

/// Prints where the control plane serves and the commands that join a node and
/// deploy to it.
fn print_server(p: &Printed<'_>) {
    println!("berth control plane");
    println!(
        "  API       {}  (admin token in {})",
        p.api,
        p.token_file.display()
    );
    println!("  node API  {}", p.node_url);
    println!("  state     {}", p.database);
    if let Some(ca) = p.ca_file {
        println!(
            "  TLS       certificates signed by the authority in {} (copy it to clients)",
            ca.display()
        );
    }
    println!();
    println!(
        "Join a machine as a node (the token works once, for an hour; more with POST /v1/join-tokens):"
    );
    println!(
        "  berth-node join --allocator {} {} --name NODE_NAME",
        p.node_url, p.join
    );
    println!("Deploy to the pool:");
    println!(
        "  export BERTH_ENDPOINT={}{} BERTH_TOKEN=$(cat {})",
        p.api,
        p.ca_env,
        p.token_file.display()
    );
    println!("  berth up -f compose.yaml");
}

fn print_dev(
    api: &str,
    node_url: &str,
    database: &str,
    admin_password: Option<&str>,
    join_args: &str,
    ca_env: &str,
) {
    println!("berth dev: the control plane, and node {DEV_NODE:?} on this machine's Docker");
    println!("  API       {api}   (OpenAPI at /openapi.json, metrics at /metrics)");
    println!("  node API  {node_url}");
    println!("  state     {database}");
    if let Some(password) = admin_password {
        println!("  admin     user \"admin\" of tenant \"default\", password {password}");
    }
    println!();
    println!("Log in and deploy:");
    println!("  export BERTH_ENDPOINT={api}{ca_env}");
    println!(
        "  export BERTH_TOKEN=$(BERTH_PASSWORD='{}' berth login --user admin)",
        admin_password.unwrap_or("")
    );
    println!("  berth up -f compose.yaml");
    println!("Join another machine as a node (the token works once, for an hour):");
    println!("  berth-node join --allocator {node_url} {join_args} --name NODE_NAME");
}

/// The `admin` user of the default tenant that `berth dev` prints: its password is
/// made on first start and kept in `path` (owner-only).
async fn dev_admin(tenants: &TenantService, path: &Path) -> anyhow::Result<String> {
    if let Ok(password) = std::fs::read_to_string(path) {
        return Ok(password.trim().to_owned());
    }
    let password = crate::secrets::random_hex(12)?;
    tenants
        .create_user(
            DEFAULT_TENANT,
            "admin",
            &password,
            berth_protocol::capability::Role::Admin,
            now_ms(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the admin user: {e}"))?;
    crate::secrets::write_secret(path, password.as_bytes())?;
    Ok(password)
}

/// How long `berth dev` waits for its node before it prints its URL regardless.
const DEV_NODE_JOINS_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The node agent of `berth dev`: joins through the node API with a one-time token
/// the first time (its identity is kept in `dir`), then follows its assignments.
async fn dev_node(
    node_url: &str,
    ca: Option<&str>,
    join_token: &str,
    dir: &Path,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    use berth_node_runtime::agent::{self, Capacity, NodeIdentity};
    std::fs::create_dir_all(dir)?;
    let identity = match NodeIdentity::load(dir) {
        // The node of an earlier start: it reaches the control plane where, and as,
        // this start serves it (with or without --tls, on another port).
        Ok(mut identity) => {
            identity.allocator = node_url.to_owned();
            identity.allocator_ca = ca.map(str::to_owned);
            identity
        }
        Err(_) => {
            let capacity = Capacity::default();
            agent::join(node_url, ca, join_token, DEV_NODE, capacity, dir).await?
        }
    };
    // The development node shares this machine's network: it keeps no firewall, and
    // serves no node API (it is the only node).
    let settings = berth_node_runtime::node::NodeSettings::default();
    let agent = berth_node_runtime::node::assemble(identity, settings).await?;
    Ok(agent.run())
}

/// The services of a server over its database.
struct Stores {
    /// The database's URL.
    database: String,
    db: berth_allocator::database::DatabaseConnection,
    tenants: TenantService,
    allocator: Allocator,
    nodes: NodeApi,
}

/// Opens the database (SQLite in the data directory unless one is given) and the
/// services over it, standing by on PostgreSQL until elected, with the default
/// tenant ready.
async fn open_stores(config: &ServerConfig) -> anyhow::Result<Stores> {
    let database = config.database.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            config.data_dir.join("server.db").display()
        )
    });
    let db = berth_allocator::database::connect(&database).await?;
    let tenants = TenantService::open(db.clone()).await?;
    let allocator = Allocator::open(db.clone(), DefaultRequest::default()).await?;
    let nodes = NodeApi::new(allocator.clone()).with_thresholds(config.thresholds);
    // On PostgreSQL, until this process leads it serves the REST API only; on SQLite
    // it is the only process and leads from the start.
    match berth_allocator::database::is_postgres(&database) {
        true => nodes.stand_by(),
        false => drop(nodes.lead()),
    }
    // The tenant `berth up --endpoint` uses unless told otherwise, so the printed
    // commands work as they are.
    tenants.ensure_tenant(DEFAULT_TENANT, now_ms()).await?;
    allocator
        .ensure_quota(DEFAULT_TENANT, berth_allocator::Limit::default())
        .await?;
    Ok(Stores {
        database,
        db,
        tenants,
        allocator,
        nodes,
    })
}

/// The admin token this server accepts: on PostgreSQL the one every server of the pool
/// shares (sealed in the database; one given in `BERTH_ADMIN_TOKEN` wins here), on
/// SQLite the one kept in `token_file`.
async fn admin_token_of(
    seal: Option<&berth_allocator::sealing::SealingKey>,
    db: &berth_allocator::database::DatabaseConnection,
    token_file: &Path,
) -> anyhow::Result<String> {
    let Some(seal) = seal else {
        return crate::secrets::admin_token(token_file);
    };
    let given = std::env::var("BERTH_ADMIN_TOKEN").ok();
    let here = std::fs::read_to_string(token_file).ok();
    let made = format!("bat_{}", crate::secrets::random_hex(32)?);
    let token = berth_allocator::sealing::shared_secret(db, seal, "admin-token", || {
        given
            .clone()
            .or_else(|| here.map(|t| t.trim().to_owned()))
            .unwrap_or(made)
    })
    .await?;
    // An admin token given to this server is the one it accepts.
    let token = given.unwrap_or(token);
    if !token_file.exists() {
        crate::secrets::read_or_create_secret(token_file, || Ok(token.clone()))?;
    }
    Ok(token)
}

/// The certificate both APIs are served with, if any.
fn tls_of(config: &ServerConfig) -> anyhow::Result<Option<crate::tls::ServerTls>> {
    Ok(match &config.tls {
        crate::tls::TlsSetting::Off => None,
        crate::tls::TlsSetting::Files { cert, key } => {
            Some(crate::tls::ServerTls::from_files(cert, key)?)
        }
        crate::tls::TlsSetting::Made { names } => {
            let names = crate::tls::names_for(
                &[config.listen, config.node_listen],
                config.advertise.as_deref(),
                names,
            );
            Some(crate::tls::ServerTls::made_in(
                &config.data_dir.join("tls"),
                &names,
            )?)
        }
    })
}

/// The root keys: sealed in the database on PostgreSQL (a key file from before is
/// imported), in the data directory's key file on SQLite.
async fn root_keys_of(
    seal: Option<berth_allocator::sealing::SealingKey>,
    db: &berth_allocator::database::DatabaseConnection,
    data_dir: &Path,
) -> anyhow::Result<berth_allocator::root_keys::RootKeys> {
    Ok(match seal {
        Some(seal) => {
            berth_allocator::root_keys::RootKeys::open_in_database(
                db.clone(),
                seal,
                Some(&data_dir.join("root-keys")),
            )
            .await?
        }
        None => berth_allocator::root_keys::RootKeys::open(
            &data_dir.join("root-keys"),
            Some(&data_dir.join("root-key")),
        )?,
    })
}

/// Takes, until the process ends, the root key rotations and retirements other
/// servers make, and has the leader pass them on to the nodes at once.
fn follow_root_keys(keys: berth_allocator::root_keys::RootKeys, nodes: NodeApi) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEY_FILE_RECHECK);
        loop {
            tick.tick().await;
            match keys.reload().await {
                Ok(true) => {
                    tracing::info!("root keys changed by another server");
                    nodes.root_keys_changed();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the root keys again"),
            }
        }
    });
}

/// What a server needs to lead.
struct Leading {
    db: berth_allocator::database::DatabaseConnection,
    database: String,
    allocator: Allocator,
    nodes: NodeApi,
    deployments: Deployments,
    api_url: String,
}

/// Waits to be elected, then leads: serves the node API, runs the control loops, and
/// records where its REST API is. Ends (with the reason) only if the lead is lost, so
/// the process can stop rather than act as a second leader.
async fn lead_when_elected(
    leading: Leading,
    config: &ServerConfig,
) -> anyhow::Result<anyhow::Error> {
    let Leading {
        db,
        database,
        allocator,
        nodes,
        deployments,
        api_url,
    } = leading;
    let (autoscale_every, rebalance_every, disruption_budget) = (
        config.autoscale_every,
        config.rebalance_every,
        config.disruption_budget,
    );
    let mut lead = berth_allocator::leader::campaign(&db, &database, || {
        println!("standing by: another allocator leads; this one serves the REST API and takes the lead when it is free");
    })
    .await?;
    allocator.hear_others(&database).await?;
    allocator.record_leader(&api_url, now_ms()).await?;
    nodes.lead();
    control::spawn(
        Autoscaler::new(
            allocator.clone(),
            nodes.clone(),
            deployments,
            autoscale_every,
        ),
        SystemClock,
    );
    control::spawn(
        Rebalancer::new(allocator.clone(), rebalance_every, disruption_budget),
        SystemClock,
    );
    if lead.is_elected() {
        println!("leading: this allocator serves the node API and runs the failure detector");
    }
    let lost = lead.lost().await;
    Ok(anyhow::anyhow!(
        "this allocator lost the lead ({}); it stops so that it can never act as a second leader",
        berth_telemetry::error_chain(&lost)
    ))
}

/// The REST API's URL as the other servers reach it: `listen` itself, or, when it is
/// a wildcard, the host the node API is advertised at (else loopback) with its port.
fn api_url_of(scheme: &str, listen: SocketAddr, advertise: Option<&str>) -> String {
    if !listen.ip().is_unspecified() {
        return format!("{scheme}://{listen}");
    }
    let host = advertise
        .and_then(|url| url.split_once("://").map(|(_, rest)| rest))
        .and_then(|rest| rest.split('/').next())
        .map(|authority| match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        })
        .filter(|host| !host.is_empty())
        .unwrap_or("127.0.0.1");
    format!("{scheme}://{host}:{}", listen.port())
}
