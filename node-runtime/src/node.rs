//! A node, assembled in one place for `berth-node` and for the node `berth dev` runs:
//! the engine driver scoped to the node's pool, the reconciler, the agent, its
//! firewall and, when the node listens, the node API other nodes call. What differs
//! between the two is said in [`NodeSettings`], not by assembling twice.

use std::sync::Arc;

use berth_protocol::node_api::node_peer_server::NodePeerServer;

use crate::agent::{self, Agent, AgentError, NodeIdentity};
use crate::docker::DockerDriver;
use crate::driver::DriverError;
use crate::firewall::Firewall;
use crate::peer::PeerApi;
use crate::reconcile::{ReconcileOptions, Reconciler};

/// Where a node serves its node API.
#[derive(Debug)]
pub struct NodeApiListener {
    /// The socket, bound.
    pub listener: tokio::net::TcpListener,
    /// The URL other nodes reach it at (default: the socket's own address).
    pub advertised: Option<String>,
}

/// What differs between one node and another.
#[derive(Debug, Default)]
pub struct NodeSettings {
    /// The node's own firewall, installed, if it keeps one.
    pub firewall: Option<Firewall>,
    /// The node API, if the node serves one (links reach it there).
    pub node_api: Option<NodeApiListener>,
    /// Where the node keeps the blobs of pushed images it fetched (and serves them
    /// from), if it runs pushed images.
    pub image_dir: Option<std::path::PathBuf>,
}

/// Why a node could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The container engine cannot be reached.
    #[error("connecting to the container engine")]
    Engine(#[from] DriverError),
    /// The node's identity cannot be used.
    #[error(transparent)]
    Identity(#[from] AgentError),
    /// The node API's socket has no address.
    #[error("the node API's socket")]
    Listener(#[source] std::io::Error),
    /// The node's identity key cannot make a TLS acceptor.
    #[error("the node API's TLS: {0}")]
    Tls(String),
    /// The image cache cannot be made.
    #[error(transparent)]
    Images(#[from] crate::images::FetchError),
}

/// The agent of `identity`, with everything `settings` asks for, ready to run; its
/// node API (if any) is already served, on a task of its own.
pub async fn assemble(
    identity: NodeIdentity,
    settings: NodeSettings,
) -> Result<Agent<DockerDriver>, NodeError> {
    let driver = Arc::new(DockerDriver::connect_scoped(agent::scope_of(&identity)).await?);
    let reconciler = Reconciler::new(driver.clone(), ReconcileOptions::default());
    let name = identity.name.clone();
    let tls = identity.tls()?;
    let mut agent = Agent::new(identity, reconciler)?.with_firewall(settings.firewall);
    let images = match settings.image_dir {
        Some(dir) => Some(Arc::new(crate::images::ImageCache::new(
            dir,
            agent.signer(),
        )?)),
        None => None,
    };
    if let Some(images) = &images {
        agent = agent.with_images(images.clone());
    }
    if let Some(NodeApiListener {
        listener,
        advertised,
    }) = settings.node_api
    {
        let local = listener.local_addr().map_err(NodeError::Listener)?;
        let mut peer = PeerApi::new(&name, driver, agent.trust());
        if let Some(images) = images {
            peer = peer.with_images(images);
        }
        let advertised = advertised.unwrap_or(format!("http://{local}"));
        agent = agent.with_peer(peer.clone(), &advertised);
        tracing::info!(address = %local, "node API served");
        let acceptor = tls.acceptor().map_err(NodeError::Tls)?;
        let tunnels = peer.clone();
        let incoming = crate::node_tls::incoming(listener, acceptor, move |connection| {
            let tunnels = tunnels.clone();
            tokio::spawn(async move { tunnels.serve_tunnel(connection).await });
        });
        tokio::spawn(
            crate::peer::server()
                .add_service(NodePeerServer::new(peer))
                .serve_with_incoming(incoming),
        );
    }
    Ok(agent)
}
