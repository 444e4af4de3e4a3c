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

/// Runs until the process is stopped: opens the stores and the secrets, serves both
/// APIs, campaigns for the lead, and says how to use it (`berth dev` first starts its
/// node).
pub(crate) async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    if config.local_node {
        // Docker first, so that `berth dev` without it fails before serving.
        berth_node_runtime::docker::DockerDriver::connect().await?;
    }
    let stores = open_stores(&config).await?;
    let tls = tls_of(&config)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let secrets = open_secrets(&config, &stores).await?;
    let gateway = gateway_of(&config, &stores, &secrets, tls.as_ref(), scheme)?;
    let leadership = lead_when_elected(
        Leading {
            db: stores.db.clone(),
            database: stores.database.clone(),
            allocator: stores.allocator.clone(),
            nodes: stores.nodes.clone(),
            deployments: Deployments::new(
                stores.tenants.clone(),
                stores.allocator.clone(),
                Target::Pool,
            ),
            api_url: config
                .advertise_api
                .clone()
                .unwrap_or_else(|| api_url_of(scheme, config.listen, config.advertise.as_deref())),
        },
        &config,
    );
    let (http, api_addr) = serve_api(gateway, config.listen, tls.as_ref())?;
    let (grpc, node_addr) = serve_node_api(&stores.nodes, config.node_listen, tls.as_ref()).await?;
    let served = Served {
        api: format!("{scheme}://{api_addr}"),
        node_url: config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{node_addr}")),
        ca_file: tls.as_ref().and_then(|tls| tls.ca_file.clone()),
    };
    let announced = announce(&config, &stores, &secrets, &served);
    tokio::select! {
        result = http => result?,
        result = grpc => result?,
        lost = leadership => return Err(lost?),
        result = announced => result?,
    }
    Ok(())
}

/// What the servers of a pool share, sealed: the admin token, and the root keys that
/// sign sessions and delegations.
struct Secrets {
    /// The admin token this server accepts.
    admin_token: String,
    /// Where a copy of it is kept for the admin.
    token_file: PathBuf,
    /// The root keys.
    keys: berth_allocator::root_keys::RootKeys,
    /// `berth dev`'s admin password.
    admin_password: Option<String>,
}

/// Opens the secrets: sealed in the database under this server's secrets key on
/// PostgreSQL (servers of one control plane share only their database), in the data
/// directory on SQLite (one server owns it). The node API mints delegations with the
/// root keys from now on, and follows the rotations other servers make.
async fn open_secrets(config: &ServerConfig, stores: &Stores) -> anyhow::Result<Secrets> {
    let seal = match berth_allocator::database::is_postgres(&stores.database) {
        true => Some(crate::secrets::secrets_key(&config.data_dir)?),
        false => None,
    };
    let token_file = config.data_dir.join("admin-token");
    let admin_token = admin_token_of(seal.as_ref(), &stores.db, &token_file).await?;
    // Nodes verify delegation tokens offline against the keys' public halves.
    let keys = root_keys_of(seal, &stores.db, &config.data_dir).await?;
    stores.nodes.mint_delegations_with(keys.clone());
    follow_root_keys(keys.clone(), stores.nodes.clone());
    let admin_password = match config.local_node {
        true => Some(dev_admin(&stores.tenants, &config.data_dir.join("admin-password")).await?),
        false => None,
    };
    Ok(Secrets {
        admin_token,
        token_file,
        keys,
        admin_password,
    })
}

/// The gateway of this server: over the stores, minting with the root keys, forwarding
/// to the leader what only it answers, anchoring the ledger's head.
fn gateway_of(
    config: &ServerConfig,
    stores: &Stores,
    secrets: &Secrets,
    tls: Option<&crate::tls::ServerTls>,
    scheme: &str,
) -> anyhow::Result<Gateway> {
    let node_url = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", config.node_listen));
    let gateway = Gateway::new(
        stores.tenants.clone(),
        stores.allocator.clone(),
        stores.nodes.clone(),
        &secrets.admin_token,
        &node_url,
        secrets.keys.clone(),
    );
    // The servers of one pool present one certificate, or certificates of an
    // authority it trusts.
    let to_leader = berth_api::client::http_trusting(tls.and_then(|tls| tls.ca_file.as_deref()))?;
    let gateway = gateway.with_leader_client(to_leader);
    let gateway = match tls {
        Some(tls) => gateway.with_tls(tls.leaf(), tls.ca_file.as_deref()),
        None => gateway,
    };
    // Every server anchors the ledger's head (several sharing one file append whole
    // lines), so the witness keeps going whichever of them leads.
    let witness = berth_allocator::witness::Witness::new(&config.witness.path);
    control::spawn(
        Anchoring::new(
            witness.clone(),
            stores.nodes.ledger().clone(),
            config.witness.every,
        ),
        SystemClock,
    );
    Ok(gateway.with_witness(witness))
}

/// Serves the REST API at `listen`; returns the server and the address it is bound to.
fn serve_api(
    gateway: Gateway,
    listen: SocketAddr,
    tls: Option<&crate::tls::ServerTls>,
) -> anyhow::Result<(actix_web::dev::Server, SocketAddr)> {
    let http = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(berth_api_gateway::configure(gateway.clone()))
    })
    .workers(2);
    let http = match tls {
        Some(tls) => http.bind_rustls_0_23(listen, tls.rustls()?)?,
        None => http.bind(listen)?,
    };
    let bound = http.addrs().first().copied().unwrap_or(listen);
    Ok((http.run(), bound))
}

/// Serves the node API at `listen` (answering only while this server leads); returns
/// the server and the address it is bound to.
async fn serve_node_api(
    nodes: &NodeApi,
    listen: SocketAddr,
    tls: Option<&crate::tls::ServerTls>,
) -> anyhow::Result<(
    impl std::future::Future<Output = Result<(), tonic::transport::Error>> + use<>,
    SocketAddr,
)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let mut grpc = match tls {
        Some(tls) => tonic::transport::Server::builder().tls_config(tls.tonic())?,
        None => tonic::transport::Server::builder(),
    };
    let served = grpc
        .add_service(NodeControlServer::with_interceptor(
            nodes.clone(),
            nodes.only_when_leading(),
        ))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    Ok((served, bound))
}

/// Where a server serves, as its users reach it.
struct Served {
    /// The REST API's URL.
    api: String,
    /// The node API's URL.
    node_url: String,
    /// The authority clients add to trust it, with TLS.
    ca_file: Option<PathBuf>,
}

/// Prints how to use the server, then waits forever: at once for `berth server`;
/// for `berth dev`, once its node follows its assignments and takes work, so that a
/// deploy made the moment the URL appears is placed.
async fn announce(
    config: &ServerConfig,
    stores: &Stores,
    secrets: &Secrets,
    served: &Served,
) -> anyhow::Result<()> {
    // What a client adds to trust this server: the authority the server made, or
    // (with the admin's own certificate) whatever the admin's clients already trust.
    let ca_arg = served
        .ca_file
        .as_ref()
        .map(|ca| format!(" --ca {}", ca.display()))
        .unwrap_or_default();
    let ca_env = served
        .ca_file
        .as_ref()
        .map(|ca| format!(" BERTH_CA={}", ca.display()))
        .unwrap_or_default();
    let join_token = || {
        stores
            .nodes
            .identities()
            .create_join_token(now_ms(), 3_600_000)
    };
    if config.local_node {
        start_dev_node(served, join_token().await?, config.data_dir.join("node"))?;
        if !dev_node_takes_work(&stores.allocator, &stores.nodes).await {
            eprintln!(
                "warning: node {DEV_NODE:?} has not joined within {} s; deploys are placed once it does",
                DEV_NODE_JOINS_WITHIN.as_secs()
            );
        }
        print_dev(
            &served.api,
            &served.node_url,
            &stores.database,
            secrets.admin_password.as_deref(),
            &format!("--token {}{ca_arg}", join_token().await?),
            &ca_env,
        );
    } else {
        print_server(&Printed {
            api: served.api.clone(),
            node_url: &served.node_url,
            database: &stores.database,
            token_file: &secrets.token_file,
            ca_file: served.ca_file.as_deref(),
            join: format!("--token {}{ca_arg}", join_token().await?),
            ca_env: &ca_env,
        });
    }
    std::future::pending().await
}

/// Starts `berth dev`'s node beside the server: it joins through the node API being
/// served, with `join_token` the first time.
fn start_dev_node(served: &Served, join_token: String, dir: PathBuf) -> anyhow::Result<()> {
    let url = served.node_url.clone();
    let ca = match &served.ca_file {
        Some(path) => Some(std::fs::read_to_string(path)?),
        None => None,
    };
    tokio::spawn(async move {
        match dev_node(&url, ca.as_deref(), &join_token, &dir).await {
            Ok(node) => node.await,
            Err(e) => eprintln!("error: node {DEV_NODE:?} could not start: {e:#}"),
        }
    });
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
    let settings = berth_node_runtime::node::NodeSettings {
        image_dir: Some(dir.join("images")),
        ..Default::default()
    };
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
    // Pushed images are kept beside the database. Servers sharing one PostgreSQL
    // serve each its own directory: a pool of several servers keeps it on storage
    // they share.
    let images =
        berth_allocator::images::ImageStore::new(db.clone(), config.data_dir.join("images"))?;
    // Registry logins are sealed under the secrets key, which every server of one
    // control plane is given.
    let logins = berth_allocator::registries::RegistryLogins::new(
        db.clone(),
        crate::secrets::secrets_key(&config.data_dir)?,
    );
    let nodes = NodeApi::new(allocator.clone())
        .with_thresholds(config.thresholds)
        .with_images(images)
        .with_registries(logins);
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
    // Standing by too: the REST API answers statuses from memory, and hears here
    // what the leader changed.
    allocator.hear_others(&database).await?;
    let mut lead = berth_allocator::leader::campaign(&db, &database, || {
        println!("standing by: another allocator leads; this one serves the REST API and takes the lead when it is free");
    })
    .await?;
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
        berth_protocol::error_chain(&lost)
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
