//! The API a node offers other nodes: a tunnel to one port of one of its service
//! replicas (on a connection of its own, [`crate::tunnel`]), the health of one of its
//! services, and the blobs of pushed images it holds. Every call is decided offline by
//! [`berth_protocol::delegation::authorize`]: the call must be signed by the key the
//! delegation token is bound to, for this node, fresh (timestamp and nonce), and the
//! token must verify against a root key this node accepts, be unexpired, unrevoked,
//! and grant exactly this operation on exactly this resource. Each decision, allowed
//! or refused with its reason, is kept for the node to report.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use berth_protocol::assignment::TopologyRef;
use berth_protocol::capability::Keyring;
use berth_protocol::delegation::{self, Call, NodeOperation, Refused};
use berth_protocol::node_api::node_peer_server::NodePeer;
use berth_protocol::node_api::{
    BlobChunk, HealthReply, PeerCall, PeerCallBody, ReplicaHealth, peer_signing_payload,
};
use berth_protocol::time::now_ms;
use berth_protocol::token_cache::TokenCache;
use prost::Message;
use ring::signature::{ED25519, UnparsedPublicKey};
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::driver::ContainerDriver;

/// Method names in peer-call signatures.
pub mod methods {
    /// `Tunnel`.
    pub const TUNNEL: &str = "Tunnel";
    /// `Health`.
    pub const HEALTH: &str = "Health";
    /// `FetchBlob`.
    pub const FETCH_BLOB: &str = "FetchBlob";
}

/// How far a call's timestamp may be from this node's clock.
const FRESHNESS: Duration = Duration::from_secs(60);
/// How many recent nonces are remembered (calls older than [`FRESHNESS`] are refused
/// by their timestamp anyway).
const NONCES: usize = 100_000;
/// How many verified tokens are kept (the cache is emptied when full).
const VERIFIED_TOKENS: usize = 10_000;

/// One decision of this node's API, for the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call was allowed.
    pub allowed: bool,
    /// The operation asked.
    pub operation: &'static str,
    /// The resource asked, `tenant/topology/service:port`.
    pub resource: String,
    /// The caller the token names (empty when the token could not be read).
    pub caller: String,
    /// Why (the refusal) or `allowed`.
    pub reason: String,
    /// The token's revocation ids, when it could be read.
    pub revocation_ids: Vec<String>,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

/// What the node accepts, as the allocator last said: root keys and revoked ids.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Root public keys by id.
    pub keys: Keyring,
    /// Revoked revocation ids.
    pub revoked: HashSet<String>,
}

#[derive(Debug, Default)]
struct Nonces {
    seen: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

/// The node's peer API.
#[derive(Debug)]
pub struct PeerApi<D> {
    node: String,
    driver: Arc<D>,
    trust: Arc<RwLock<Trust>>,
    nonces: Arc<Mutex<Nonces>>,
    decisions: Arc<Mutex<Vec<Decision>>>,
    /// Tokens whose signatures verified, with the root key they verified under.
    verified: Arc<TokenCache<delegation::Verified>>,
    /// The blobs of pushed images this node holds, served to the nodes the allocator
    /// lets fetch them.
    images: Option<Arc<crate::images::ImageCache>>,
}

impl<D> Clone for PeerApi<D> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            driver: self.driver.clone(),
            trust: self.trust.clone(),
            nonces: self.nonces.clone(),
            decisions: self.decisions.clone(),
            verified: self.verified.clone(),
            images: self.images.clone(),
        }
    }
}

impl<D: ContainerDriver> PeerApi<D> {
    /// The API of node `node`, reaching its containers through `driver`, trusting what
    /// `trust` holds (the agent updates it from the allocator).
    pub fn new(node: &str, driver: Arc<D>, trust: Arc<RwLock<Trust>>) -> Self {
        Self {
            node: node.to_owned(),
            driver,
            trust,
            nonces: Arc::default(),
            decisions: Arc::default(),
            verified: Arc::new(TokenCache::new(VERIFIED_TOKENS)),
            images: None,
        }
    }

    /// Serves the blobs `images` holds to nodes with an `image.fetch` delegation.
    pub fn with_images(mut self, images: Arc<crate::images::ImageCache>) -> Self {
        self.images = Some(images);
        self
    }

    /// The decisions made since the last call, oldest first.
    pub fn take_decisions(&self) -> Vec<Decision> {
        std::mem::take(&mut *self.decisions.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Decides `call` for `operation`, which came over a connection made with
    /// `connection_key` (see [`crate::node_tls::connection_key`]); records the decision
    /// either way.
    pub fn decide(
        &self,
        method: &str,
        operation: NodeOperation,
        call: &PeerCall,
        connection_key: Option<&[u8]>,
    ) -> Result<PeerCallBody, Status> {
        let body = PeerCallBody::decode(call.body.as_slice()).unwrap_or_default();
        let resource = match operation {
            NodeOperation::ImageFetch => {
                format!("{}/{} blob {}", body.tenant, body.service, body.digest)
            }
            _ => format!(
                "{}/{}/{}:{}",
                body.tenant, body.topology, body.service, body.port
            ),
        };
        let outcome = self.check(method, operation, call, &body, connection_key);
        let mut decision = Decision {
            allowed: outcome.is_ok(),
            operation: operation.as_str(),
            resource,
            caller: String::new(),
            reason: "allowed".to_owned(),
            revocation_ids: Vec::new(),
            at_ms: now_ms(),
        };
        let result = match outcome {
            Ok(allowed) => {
                decision.caller = allowed.caller;
                decision.revocation_ids = allowed.revocation_ids;
                Ok(body)
            }
            Err(refused) => {
                // What the token says, for the record, though it was refused.
                if let Ok(unverified) = biscuit_auth::UnverifiedBiscuit::from(&call.token) {
                    decision.revocation_ids = berth_protocol::capability::revocation_ids(
                        &unverified.revocation_identifiers(),
                    );
                }
                decision.reason = refused.to_string();
                Err(Status::permission_denied(refused.to_string()))
            }
        };
        tracing::info!(
            allowed = decision.allowed,
            operation = decision.operation,
            resource = %decision.resource,
            reason = %decision.reason,
            "peer call"
        );
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(decision);
        result
    }

    fn check(
        &self,
        method: &str,
        operation: NodeOperation,
        call: &PeerCall,
        body: &PeerCallBody,
        connection_key: Option<&[u8]>,
    ) -> Result<delegation::Allowed, Refused> {
        match connection_key {
            None => {
                return Err(Refused::Invalid(
                    "the call did not come over the node API's TLS".into(),
                ));
            }
            Some(key) if key != call.caller_key.as_slice() => {
                return Err(Refused::Invalid(
                    "the call is signed by another key than its connection's".into(),
                ));
            }
            Some(_) => {}
        }
        UnparsedPublicKey::new(&ED25519, &call.caller_key)
            .verify(&peer_signing_payload(method, &call.body), &call.signature)
            .map_err(|_| Refused::Invalid("the call is not signed by the key it names".into()))?;
        if body.target != self.node {
            return Err(Refused::WrongTarget {
                target: body.target.clone(),
            });
        }
        if (now_ms() - body.timestamp_ms).unsigned_abs() > FRESHNESS.as_millis() as u64 {
            return Err(Refused::Invalid("the call is not fresh".into()));
        }
        {
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            if body.nonce.len() < 16 || !nonces.seen.insert(body.nonce.clone()) {
                return Err(Refused::Invalid("the call was replayed".into()));
            }
            nonces.order.push_back(body.nonce.clone());
            if nonces.order.len() > NONCES
                && let Some(old) = nonces.order.pop_front()
            {
                nonces.seen.remove(&old);
            }
        }
        let port = u16::try_from(body.port).map_err(|_| Refused::NotGranted {
            operation: operation.as_str(),
            resource: format!("port {}", body.port),
        })?;
        let trust = self.trust.read().unwrap_or_else(|p| p.into_inner());
        let biscuit = self.verified(&call.token, &trust)?;
        let allowed = delegation::authorize_verified(
            &biscuit,
            |ids| ids.iter().any(|id| trust.revoked.contains(id)),
            &Call {
                presenter_key: &call.caller_key,
                node: &self.node,
                operation,
                tenant: &body.tenant,
                topology: &body.topology,
                service: &body.service,
                port,
                now: SystemTime::now(),
            },
        )?;
        if operation == NodeOperation::ImageFetch {
            self.blob_of_image(body)?;
        }
        Ok(allowed)
    }

    /// For a fetch the token allowed: the blob asked must be the image granted or one
    /// of its layers (a delegation for one image is no key to another's blobs).
    fn blob_of_image(&self, body: &PeerCallBody) -> Result<(), Refused> {
        use berth_protocol::image::Digest;
        let not_granted = || Refused::NotGranted {
            operation: NodeOperation::ImageFetch.as_str(),
            resource: format!("blob {} (not part of image {})", body.digest, body.service),
        };
        let image = Digest::parse(&body.service).map_err(|_| not_granted())?;
        let blob = Digest::parse(&body.digest).map_err(|_| not_granted())?;
        if blob == image {
            return Ok(());
        }
        let layers = self
            .images
            .as_ref()
            .and_then(|images| images.layers_of(&image))
            .unwrap_or_default();
        if layers.contains(&blob) {
            Ok(())
        } else {
            Err(not_granted())
        }
    }

    /// The token, verified: from the cache when it was verified before under a root key
    /// this node still accepts (the same key), else parsed and verified now. Revocation
    /// is decided on every call; expiry and the policies as
    /// [`delegation::authorize_verified`] says.
    fn verified(&self, token: &[u8], trust: &Trust) -> Result<Arc<delegation::Verified>, Refused> {
        self.verified.verified(
            token,
            delegation::Verified::root_key_id,
            |id| trust.keys.key(id).ok().map(|k| k.to_bytes().to_vec()),
            || delegation::verify(token, |id| trust.keys.key(id)),
        )
    }

    /// Serves one tunnel connection ([`crate::tunnel`]): waits for its call, decides
    /// it as any call (signed by the connection's key), answers, and once the tunnel is
    /// open carries bytes between the connection and the service until both ends close.
    pub async fn serve_tunnel(&self, mut connection: crate::node_tls::Accepted) {
        use crate::tunnel;
        let connection_key = crate::node_tls::accepted_key(&connection);
        // A spare connection waits here until its caller needs it.
        let call = tokio::time::timeout(
            tunnel::CALL_WITHIN,
            tunnel::receive::<PeerCall>(&mut connection, tunnel::MAX_CALL),
        )
        .await;
        let Ok(Ok(call)) = call else {
            return;
        };
        let opened = self.open_service(&call, connection_key.as_deref()).await;
        let answer = tunnel::answer(opened.as_ref().map(|_| ()));
        if tunnel::send(&mut connection, &answer).await.is_err() {
            return;
        }
        match opened {
            Ok(mut service) => {
                let _ = tunnel::carry(&mut connection, &mut service).await;
            }
            Err(_) => {
                let _ = connection.shutdown().await;
            }
        }
    }

    /// Decides a tunnel's call and connects to the service it names.
    async fn open_service(
        &self,
        call: &PeerCall,
        connection_key: Option<&[u8]>,
    ) -> Result<tokio::net::TcpStream, Status> {
        let body = self.decide(methods::TUNNEL, NodeOperation::Tunnel, call, connection_key)?;
        let address = self.address_of(&body).await?;
        let socket = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect to {address}: {e}")))?;
        let _ = socket.set_nodelay(true);
        Ok(socket)
    }

    /// The running replica of a service on this node, and its address.
    async fn address_of(&self, body: &PeerCallBody) -> Result<std::net::SocketAddr, Status> {
        let id = TopologyRef {
            tenant: body.tenant.clone(),
            topology: body.topology.clone(),
        };
        let containers = self
            .driver
            .list_containers(&id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        for c in containers.iter().filter(|c| c.service == body.service) {
            if let Ok(Some(ip)) = self.driver.container_address(&c.name).await {
                let port = u16::try_from(body.port).unwrap_or(0);
                return Ok(std::net::SocketAddr::new(ip, port));
            }
        }
        Err(Status::unavailable(format!(
            "no running replica of {} here",
            body.service
        )))
    }
}

/// A server for the node API's gRPC calls: large windows (blobs), no Nagle delay.
pub fn server() -> tonic::transport::Server {
    use crate::node_tls::{CONNECTION_WINDOW, STREAM_WINDOW};
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<D: ContainerDriver> NodePeer for PeerApi<D> {
    type FetchBlobStream = BlobStream;

    async fn fetch_blob(&self, request: Request<PeerCall>) -> Result<Response<BlobStream>, Status> {
        let connection_key = crate::node_tls::connection_key(&request);
        let call = request.into_inner();
        let body = self.decide(
            methods::FETCH_BLOB,
            NodeOperation::ImageFetch,
            &call,
            connection_key.as_deref(),
        )?;
        let blob = berth_protocol::image::Digest::parse(&body.digest)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let path = self
            .images
            .as_ref()
            .and_then(|images| images.held(&blob))
            .ok_or_else(|| Status::not_found(format!("this node does not hold {blob}")))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::unavailable(format!("reading {blob}: {e}")))?;
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, 1024 * 1024).map(|part| {
            part.map(|data| BlobChunk { data })
                .map_err(|e| Status::unavailable(format!("reading the blob: {e}")))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn health(&self, request: Request<PeerCall>) -> Result<Response<HealthReply>, Status> {
        let connection_key = crate::node_tls::connection_key(&request);
        let call = request.into_inner();
        let body = self.decide(
            methods::HEALTH,
            NodeOperation::Health,
            &call,
            connection_key.as_deref(),
        )?;
        let id = TopologyRef {
            tenant: body.tenant.clone(),
            topology: body.topology.clone(),
        };
        let listed = self
            .driver
            .list_all(Some(&body.tenant))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let replicas = listed
            .into_iter()
            .filter(|c| c.topology == id && c.container.service == body.service)
            .map(|c| ReplicaHealth {
                replica: c.container.replica,
                state: c.state,
                detail: c.status,
            })
            .collect();
        Ok(Response::new(HealthReply { replicas }))
    }
}
