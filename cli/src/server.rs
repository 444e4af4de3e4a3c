//! `berth server`: the control plane as one process, for a pool of a few machines.
//! It serves the REST API (the gateway) and the node API (gRPC) over one database,
//! and prints the one command each other machine runs to join.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, DefaultRequest};
use berth_api_gateway::Gateway;
use berth_protocol::node_api::node_control_server::NodeControlServer;
use berth_tenant_service::TenantService;

/// The tenant created at start.
const DEFAULT_TENANT: &str = "default";

/// Where and how the control plane runs.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// The REST API's address.
    pub(crate) listen: SocketAddr,
    /// The node API's address.
    pub(crate) node_listen: SocketAddr,
    /// The node API's address as nodes reach it (default: `node_listen`).
    pub(crate) advertise: Option<String>,
    /// The database URL (default: SQLite in the data directory).
    pub(crate) database: Option<String>,
    /// The data directory (admin token, SQLite file).
    pub(crate) data_dir: PathBuf,
}

/// Runs until the process is stopped.
pub(crate) async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let database = config.database.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            config.data_dir.join("server.db").display()
        )
    });
    let db = berth_allocator::database::connect(&database).await?;
    let tenants = TenantService::open(db.clone()).await?;
    let allocator = Allocator::open(db, DefaultRequest::default()).await?;
    let nodes = NodeApi::new(allocator.clone());
    // The tenant `berth up --endpoint` uses unless told otherwise, so the printed
    // commands work as they are.
    tenants.ensure_tenant(DEFAULT_TENANT, now_ms()).await?;
    allocator
        .ensure_quota(DEFAULT_TENANT, berth_allocator::Limit::default())
        .await?;
    let token_file = config.data_dir.join("admin-token");
    let admin_token = admin_token(&token_file)?;
    let node_url = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.node_listen));
    let root = root_key(&config.data_dir.join("root-key"))?;
    let gateway = Gateway::new(
        tenants,
        allocator,
        nodes.clone(),
        &admin_token,
        &node_url,
        root,
    );

    let http = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(berth_api_gateway::configure(gateway.clone()))
    })
    .workers(2)
    .bind(config.listen)?;
    let api_addr = http.addrs().first().copied().unwrap_or(config.listen);
    let http = http.run();
    let grpc_listener = tokio::net::TcpListener::bind(config.node_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let grpc = tonic::transport::Server::builder()
        .add_service(NodeControlServer::new(nodes.clone()))
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
        .unwrap_or_else(|| format!("http://{grpc_addr}"));
    println!("berth control plane");
    println!(
        "  API       http://{api_addr}  (admin token in {})",
        token_file.display()
    );
    println!("  node API  {node_url}");
    println!("  state     {database}");
    println!();
    println!(
        "Join a machine as a node (the token works once, for an hour; more with POST /v1/join-tokens):"
    );
    println!("  berth-node join --allocator {node_url} --token {join_token} --name NODE_NAME");
    println!("Deploy to the pool:");
    println!(
        "  export BERTH_ENDPOINT=http://{api_addr} BERTH_TOKEN=$(cat {})",
        token_file.display()
    );
    println!("  berth up -f compose.yaml");
    tokio::select! {
        result = http => result?,
        result = grpc => result?,
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The root key that signs session tokens: kept in `path` (owner-only), made on first
/// start.
fn root_key(path: &Path) -> anyhow::Result<biscuit_auth::KeyPair> {
    use biscuit_auth::{Algorithm, KeyPair, PrivateKey};
    if let Ok(hex) = std::fs::read_to_string(path) {
        let key = PrivateKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(KeyPair::from(&key));
    }
    let key = KeyPair::new();
    write_secret(path, key.private().to_bytes_hex().as_bytes())?;
    Ok(key)
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, bytes)?;
    Ok(())
}

/// The admin token: `BERTH_ADMIN_TOKEN`, else the one kept in `path`, else a new one
/// written there readable by its owner only.
fn admin_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("BERTH_ADMIN_TOKEN") {
        return Ok(token);
    }
    if let Ok(token) = std::fs::read_to_string(path) {
        return Ok(token.trim().to_owned());
    }
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    let token = format!(
        "bat_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    write_secret(path, token.as_bytes())?;
    Ok(token)
}
