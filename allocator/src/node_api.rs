//! The allocator's gRPC service towards nodes: join, the stream of a node's own
//! assignments, and signed status reports. Thin: each call verifies the caller with
//! [`Identities`] and hands over to the [`Allocator`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_protocol::assignment::{TopologyAssignment, TopologyRef};
use berth_protocol::node_api::node_control_server::NodeControl;
use berth_protocol::node_api::{
    AssignmentSet, BlobChunk, DecisionsBody, FetchBlobBody, HeartbeatAck, HeartbeatBody,
    JoinRequest, JoinResponse, LogRequest, LogsAck, LogsBody, ReportAck, ReportBody, SignedRequest,
    WatchBody, WatchEvent, methods, signing_payload, watch_event,
};
use berth_protocol::time::now_ms;
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::control::{Controller, Next, Now};
use crate::identity::{Identities, IdentityError};
pub use crate::pool::ReportedReplica;
use crate::{Allocator, AllocatorError, Limit};

/// Every this many detector ticks (ten seconds), replicas stuck on dead or draining
/// nodes are tried again.
const RETRY_STUCK_TICKS: u64 = 20;

/// How many recent assignment-set versions per node are remembered for checking reports.
const REMEMBERED_VERSIONS: usize = 64;
/// How often a stream rechecks the database even without a change signal (changes made
/// by another process), give or take a tenth, spread by node so that thousands of
/// streams do not recheck at once.
const RECHECK: Duration = Duration::from_secs(30);

/// [`RECHECK`] for `node`: between 0.9 and 1.1 times it, fixed per node.
fn recheck_for(node: &str) -> Duration {
    let spread = node
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 200;
    RECHECK.mul_f64(0.9 + f64::from(spread) / 1000.0)
}

fn refused(e: IdentityError) -> Status {
    match e {
        IdentityError::Database(e) => Status::internal(format!("database error: {e}")),
        IdentityError::UnknownToken | IdentityError::UsedToken | IdentityError::ExpiredToken => {
            Status::permission_denied(e.to_string())
        }
        IdentityError::NameTaken(_) => Status::already_exists(e.to_string()),
        IdentityError::BadName(_) | IdentityError::BadKey => {
            Status::invalid_argument(e.to_string())
        }
        IdentityError::UnknownNode(_)
        | IdentityError::BadSignature(_)
        | IdentityError::Replay { .. } => Status::unauthenticated(e.to_string()),
    }
}

/// Counters of the node API, for metrics.
#[derive(Debug, Default)]
pub struct NodeApiStats {
    /// Watch streams open now (nodes connected).
    pub connected: std::sync::atomic::AtomicI64,
    /// Nodes that joined since the process started.
    pub joins: AtomicU64,
    /// Reports accepted.
    pub reports_accepted: AtomicU64,
    /// Reports refused (bad signature, replay, not assigned, never sent).
    pub reports_refused: AtomicU64,
    /// Watch requests refused.
    pub watches_refused: AtomicU64,
    /// Heartbeats accepted.
    pub heartbeats: AtomicU64,
    /// Times a node became suspect.
    pub suspected: AtomicU64,
    /// Times a node was declared dead.
    pub declared_dead: AtomicU64,
    /// Detector ticks that came late enough to extend every lease.
    pub detector_late: AtomicU64,
    /// Whether this process leads the allocators and so serves the node API (see
    /// [`crate::leader`]); true unless told to stand by.
    pub leading: std::sync::atomic::AtomicBool,
}

/// Decrements the connected count when a stream ends, however it ends.
struct Connected(Arc<NodeApiStats>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State shared by every call.
#[derive(Debug, Default)]
struct Shared {
    /// Versions sent to each node, newest last.
    sent: HashMap<String, VecDeque<u64>>,
    /// Where each node serves its node API.
    peers: HashMap<String, String>,
    /// The open stream of each node, by stream id, for requests to the node.
    streams: HashMap<String, (u64, tokio::sync::mpsc::Sender<LogRequest>)>,
    /// Public keys of nodes that heartbeat, and the last heartbeat sequence of each
    /// (heartbeats are checked in memory, not against the database, at any rate).
    heartbeat_keys: HashMap<String, (Vec<u8>, u64)>,
    /// Requests sent to nodes and not fully answered: the node asked, and where the
    /// answer goes.
    pending: HashMap<u64, (String, tokio::sync::mpsc::Sender<LogsBody>)>,
    /// The CPU figures nodes report for replicas of services that autoscale, by
    /// topology, then by service and replica: thousandths of a core, and when.
    cpu: HashMap<TopologyRef, CpuFigures>,
    /// Nonces of recent blob fetches, oldest first (fetches older than
    /// [`FETCH_FRESHNESS`] are refused by their timestamp).
    fetch_nonces: (std::collections::HashSet<Vec<u8>>, VecDeque<Vec<u8>>),
}

/// How far a blob fetch's timestamp may be from this server's clock.
const FETCH_FRESHNESS: Duration = Duration::from_secs(60);
/// How many recent fetch nonces are remembered.
const FETCH_NONCES: usize = 100_000;

/// One topology's CPU figures: by service and replica, thousandths of a core and when
/// they were reported.
type CpuFigures = HashMap<(String, u32), (u32, std::time::Instant)>;

/// How long a reported CPU figure counts: a few of the nodes' reports.
const CPU_FIGURE_KEPT: Duration = Duration::from_secs(30);

/// Why the logs of a replica could not be asked for.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The node has no open stream to this process.
    #[error("node {0:?} is not connected, so its output cannot be read now")]
    NotConnected(String),
}

/// The NodeControl service.
#[derive(Clone, Debug)]
pub struct NodeApi {
    allocator: Allocator,
    identities: Identities,
    versions: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<NodeApiStats>,
    ledger: crate::ledger::Ledger,
    /// The root keys delegation tokens are minted with and nodes verify against, once
    /// set.
    root_keys: Arc<std::sync::RwLock<Option<crate::root_keys::RootKeys>>>,
    /// Link tokens minted, for renewal.
    link_tokens: Arc<Mutex<crate::links::LinkTokens>>,
    /// Node leases and the failure detector's state.
    leases: Arc<crate::liveness::Leases>,
    /// Whether [`Self::lead`] started the failure detector.
    detecting: Arc<std::sync::atomic::AtomicBool>,
    /// The pool's node addresses, as last read: one read serves every stream for
    /// [`POOL_ADDRESSES_FRESH`], and a node's announcement empties it.
    pool_addresses: Arc<tokio::sync::Mutex<Option<PoolAddresses>>>,
    /// The tenants' pushed images, when this server keeps them.
    images: Option<crate::images::ImageStore>,
    registries: Option<crate::registries::RegistryLogins>,
}

/// The pool's node addresses (node, IP) and when they were read.
type PoolAddresses = (std::time::Instant, Arc<Vec<(String, String)>>);

/// How long one read of the pool's node addresses serves every stream.
const POOL_ADDRESSES_FRESH: Duration = Duration::from_secs(1);

impl NodeApi {
    /// The service over `allocator`.
    pub fn new(allocator: Allocator) -> Self {
        let identities = Identities::new(allocator.connection().clone());
        Self {
            identities,
            versions: Arc::new(AtomicU64::new(1)),
            shared: Arc::default(),
            stats: Arc::new(NodeApiStats {
                leading: true.into(),
                ..NodeApiStats::default()
            }),
            ledger: crate::ledger::Ledger::new(allocator.connection().clone()),
            root_keys: Arc::default(),
            link_tokens: Arc::default(),
            leases: Arc::new(crate::liveness::Leases::new(
                crate::liveness::Thresholds::default(),
            )),
            detecting: Arc::default(),
            pool_addresses: Arc::default(),
            images: None,
            registries: None,
            allocator,
        }
    }

    /// Serves the blobs of the tenants' pushed images from `images` to the nodes that
    /// run them.
    pub fn with_images(mut self, images: crate::images::ImageStore) -> Self {
        self.images = Some(images);
        self
    }

    /// Hands nodes the tenants' registry logins their assignments need.
    pub fn with_registries(mut self, logins: crate::registries::RegistryLogins) -> Self {
        self.registries = Some(logins);
        self
    }

    /// The tenants' registry logins, when this server keeps them.
    pub fn registries(&self) -> Option<&crate::registries::RegistryLogins> {
        self.registries.as_ref()
    }

    /// The tenants' pushed images, when this server keeps them.
    pub fn images(&self) -> Option<&crate::images::ImageStore> {
        self.images.as_ref()
    }

    /// Checks a blob fetch (`node`'s signature, freshness, and that the node runs a
    /// replica of the tenant's image) and opens the blob.
    async fn open_blob(
        &self,
        signed: &SignedRequest,
    ) -> Result<(FetchBlobBody, tokio::fs::File), Status> {
        use berth_protocol::image::Digest;
        let body = FetchBlobBody::decode(signed.body.as_slice())
            .map_err(|e| Status::invalid_argument(format!("malformed body: {e}")))?;
        let key = self
            .identities
            .public_key(&signed.node)
            .await
            .map_err(refused)?
            .ok_or_else(|| refused(IdentityError::UnknownNode(signed.node.clone())))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
            .verify(
                &signing_payload(methods::FETCH_BLOB, &signed.body),
                &signed.signature,
            )
            .map_err(|_| refused(IdentityError::BadSignature(signed.node.clone())))?;
        let skew = (now_ms() - body.timestamp_ms).unsigned_abs();
        if Duration::from_millis(skew) > FETCH_FRESHNESS || body.nonce.len() < 16 {
            return Err(Status::unauthenticated(
                "the fetch is stale or carries no nonce",
            ));
        }
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let (seen, order) = &mut shared.fetch_nonces;
            if !seen.insert(body.nonce.clone()) {
                return Err(Status::unauthenticated("the fetch was replayed"));
            }
            order.push_back(body.nonce.clone());
            if order.len() > FETCH_NONCES
                && let Some(old) = order.pop_front()
            {
                seen.remove(&old);
            }
        }
        let digest =
            |text: &str| Digest::parse(text).map_err(|e| Status::invalid_argument(e.to_string()));
        let (image, blob) = (digest(&body.image)?, digest(&body.digest)?);
        let store = self
            .images
            .as_ref()
            .ok_or_else(|| Status::unavailable("this server keeps no images"))?;
        let runs_it = self
            .allocator
            .assignments_for_node(&signed.node)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .iter()
            .any(|a| {
                a.id.tenant == body.tenant
                    && a.services
                        .values()
                        .any(|s| s.digest.as_ref() == Some(&image))
            });
        let subject = format!("image.fetch {}/{image}", body.tenant);
        let decided = if runs_it {
            store
                .open(&body.tenant, &image, &blob)
                .await
                .map_err(|e| e.to_string())
        } else {
            Err(format!(
                "node {:?} runs no replica of tenant {:?}'s image {image}",
                signed.node, body.tenant
            ))
        };
        let detail = match &decided {
            Ok(_) => format!("allowed: blob {blob} served to node {:?}", signed.node),
            Err(reason) => format!("refused: blob {blob} to node {:?}: {reason}", signed.node),
        };
        self.ledger
            .append(
                crate::ledger::NewEntry {
                    kind: crate::ledger::EntryKind::Decision,
                    actor: "control-plane".to_owned(),
                    tenant: body.tenant.clone(),
                    subject,
                    detail,
                    revocation_ids: Vec::new(),
                },
                now_ms(),
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match decided {
            Ok((file, _)) => Ok((body, file)),
            Err(reason) => Err(Status::permission_denied(reason)),
        }
    }

    /// The IP addresses at which the pool's nodes other than `node` serve their node
    /// API: what `node`'s firewall treats as other nodes.
    async fn other_node_addresses(&self, node: &str) -> Result<Vec<String>, AllocatorError> {
        let all = {
            let mut cached = self.pool_addresses.lock().await;
            match &*cached {
                Some((at, all)) if at.elapsed() < POOL_ADDRESSES_FRESH => all.clone(),
                _ => {
                    let all = Arc::new(self.allocator.node_addresses().await?);
                    *cached = Some((std::time::Instant::now(), all.clone()));
                    all
                }
            }
        };
        let mut out: Vec<String> = all
            .iter()
            .filter(|(name, _)| name != node)
            .map(|(_, ip)| ip.clone())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The service with the failure detector's thresholds set.
    pub fn with_thresholds(mut self, thresholds: crate::liveness::Thresholds) -> Self {
        self.leases = Arc::new(crate::liveness::Leases::new(thresholds));
        self
    }

    /// Stands by while another process leads: every node API call is refused as
    /// unavailable, so that nodes go to the leader (they are given every allocator's
    /// address and try the next). The failure detector is not run.
    pub fn stand_by(&self) {
        self.stats.leading.store(false, Ordering::SeqCst);
    }

    /// Leads: serves the node API and runs the failure detector, which gives every
    /// node a full lease first, so nodes that were streaming to the previous leader
    /// have time to come over.
    /// Once leading, calling it again does nothing more.
    pub fn lead(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.stats.leading.store(true, Ordering::SeqCst);
        let first = !self.detecting.swap(true, Ordering::SeqCst);
        first.then(|| self.detect_failures())
    }

    /// Whether this process leads: it holds the nodes' streams.
    pub fn is_leading(&self) -> bool {
        self.stats.leading.load(Ordering::SeqCst)
    }

    /// An interceptor for the node API that refuses every call while this process
    /// stands by.
    pub fn only_when_leading(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let stats = Arc::clone(&self.stats);
        move |request| match stats.leading.load(Ordering::SeqCst) {
            true => Ok(request),
            false => Err(Status::unavailable(
                "this allocator is standing by; another one leads and serves the node API",
            )),
        }
    }

    /// Runs the failure detector until the process ends (see [`FailureDetector`]).
    pub fn detect_failures(&self) -> tokio::task::JoinHandle<()> {
        crate::control::spawn(
            FailureDetector::new(self.clone()),
            crate::control::SystemClock,
        )
    }

    /// What follows a death: the node takes and keeps nothing (its topologies are
    /// placed again), and every delegation to or from it is revoked.
    async fn node_died(&self, node: &str) {
        match self
            .allocator
            .declare_dead(node, crate::liveness::now_ms())
            .await
        {
            Ok(drained) => {
                self.stats.declared_dead.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, moved = ?drained.moved, stuck = ?drained.stuck, "node declared dead");
            }
            Err(e) => {
                tracing::error!(node = %node, error = %e, "a dead node could not be recorded; judged again");
                self.leases.undo_death(node, std::time::Instant::now());
                return;
            }
        }
        let revoked = async {
            let reach = self
                .ledger
                .reach(None, std::time::SystemTime::now())
                .await?;
            let ids: Vec<String> = reach
                .edges
                .into_iter()
                .filter(|e| e.caller == node || e.target == node)
                .map(|e| e.token)
                .collect();
            if !ids.is_empty() {
                self.ledger
                    .revoke(
                        &ids,
                        "platform",
                        "*",
                        &format!("node {node} was declared dead"),
                        crate::liveness::now_ms(),
                    )
                    .await?;
                self.allocator.changed();
            }
            Ok::<_, crate::ledger::LedgerError>(())
        };
        if let Err(e) = revoked.await {
            tracing::error!(node = %node, error = %e, "the dead node's delegations could not be revoked");
        }
    }

    /// Renews `node`'s lease for the heartbeat `signed`: the signature must verify with
    /// the node's key, and its sequence must be newer than its last heartbeat's.
    async fn accept_heartbeat(&self, signed: &SignedRequest) -> Result<HeartbeatAck, Status> {
        let body = HeartbeatBody::decode(signed.body.as_slice())
            .map_err(|e| Status::invalid_argument(format!("malformed body: {e}")))?;
        let known = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat_keys
            .get(&signed.node)
            .map(|(key, _)| key.clone());
        let key = match known {
            Some(key) => key,
            None => self
                .identities
                .public_key(&signed.node)
                .await
                .map_err(refused)?
                .ok_or_else(|| refused(IdentityError::UnknownNode(signed.node.clone())))?,
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
            .verify(
                &signing_payload(methods::HEARTBEAT, &signed.body),
                &signed.signature,
            )
            .map_err(|_| refused(IdentityError::BadSignature(signed.node.clone())))?;
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let entry = shared
                .heartbeat_keys
                .entry(signed.node.clone())
                .or_insert((key, 0));
            if body.sequence <= entry.1 {
                return Err(refused(IdentityError::Replay {
                    node: signed.node.clone(),
                    sequence: body.sequence,
                }));
            }
            entry.1 = body.sequence;
        }
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        if self.leases.renew(&signed.node, std::time::Instant::now()) {
            match self.allocator.declare_alive(&signed.node).await {
                Ok(_) => tracing::info!(node = %signed.node, "a dead node is back"),
                Err(e) => {
                    tracing::error!(node = %signed.node, error = %e, "a returning node could not be marked alive")
                }
            }
        }
        let t = self.leases.in_force();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Ok(HeartbeatAck {
            lease_ms: ms(t.dead_after),
            fence_after_ms: ms(t.fence_after),
            heartbeat_ms: ms(t.heartbeat),
        })
    }

    /// Mints link delegations with the signing key of `keys`, and tells nodes to
    /// trust every key in it; a rotation or retirement reaches nodes on their streams
    /// (call [`Self::root_keys_changed`]).
    pub fn mint_delegations_with(&self, keys: crate::root_keys::RootKeys) {
        *self.root_keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
        self.root_keys_changed();
    }

    /// Sends every node its new set of trusted keys and revoked ids now, and wakes
    /// the streams again once a new key may sign delegations (after
    /// [`crate::root_keys::PROPAGATION`]), so links are renewed under it at once.
    pub fn root_keys_changed(&self) {
        self.allocator.changed();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let allocator = self.allocator.clone();
            runtime.spawn(async move {
                tokio::time::sleep(crate::root_keys::PROPAGATION + Duration::from_millis(100))
                    .await;
                allocator.changed();
            });
        }
    }

    pub(crate) fn root_keys(&self) -> Option<crate::root_keys::RootKeys> {
        self.root_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// The audit ledger this service writes and whose revocations it sends nodes.
    pub fn ledger(&self) -> &crate::ledger::Ledger {
        &self.ledger
    }

    pub(crate) fn link_tokens(&self) -> std::sync::MutexGuard<'_, crate::links::LinkTokens> {
        self.link_tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `node` serves its node API, as it said when it opened its stream.
    pub(crate) fn peer_address(&self, node: &str) -> Option<String> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peers
            .get(node)
            .filter(|a| !a.is_empty())
            .cloned()
    }

    /// Whether `node` has its assignment stream open to this server.
    pub fn is_following(&self, node: &str) -> bool {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streams
            .contains_key(node)
    }

    /// The service's counters.
    pub fn stats(&self) -> &NodeApiStats {
        &self.stats
    }

    /// Join tokens and identities.
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// The latest reported status of each replica of a topology.
    pub async fn reported(&self, id: &TopologyRef) -> Result<Vec<ReportedReplica>, AllocatorError> {
        self.allocator.statuses(id).await
    }

    /// Checks a signed request and decodes its body; returns the node and body.
    async fn verified<B: Message + Default>(
        &self,
        request: &SignedRequest,
        method: &str,
        sequence: impl Fn(&B) -> u64,
    ) -> Result<B, Status> {
        let body = B::decode(request.body.as_slice())
            .map_err(|e| Status::invalid_argument(format!("malformed body: {e}")))?;
        self.identities
            .verify(
                &request.node,
                &signing_payload(method, &request.body),
                &request.signature,
                sequence(&body),
            )
            .await
            .map_err(refused)?;
        Ok(body)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;
type BlobStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

impl NodeApi {
    /// Asks `node` for the output of one replica; the answer arrives in parts on the
    /// returned channel (the last has `done`). Only `node` can answer it.
    pub fn request_logs(
        &self,
        node: &str,
        mut request: LogRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<LogsBody>, LogsError> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let stream = shared
            .streams
            .get(node)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| LogsError::NotConnected(node.to_owned()))?;
        request.request_id = self.versions.fetch_add(1, Ordering::Relaxed);
        shared
            .pending
            .insert(request.request_id, (node.to_owned(), tx));
        // Forget requests whose askers went away.
        shared.pending.retain(|_, (_, answer)| !answer.is_closed());
        drop(shared);
        stream
            .try_send(request)
            .map_err(|_| LogsError::NotConnected(node.to_owned()))?;
        Ok(rx)
    }
}

#[tonic::async_trait]
impl NodeControl for NodeApi {
    type FetchBlobStream = BlobStream;

    async fn fetch_blob(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<BlobStream>, Status> {
        let (_, file) = self.open_blob(&request.into_inner()).await?;
        Ok(Response::new(Box::pin(crate::images::chunks(file))))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let join = request.into_inner();
        self.identities
            .join(&join.token, &join.node_name, &join.public_key, now_ms())
            .await
            .map_err(refused)?;
        let capacity = Limit {
            cpu_millis: join.cpu_millis,
            memory_bytes: join.memory_bytes,
            containers: join.containers,
        };
        self.allocator
            .upsert_node(
                &join.node_name,
                capacity,
                &join.labels.into_iter().collect(),
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.stats.joins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %join.node_name, "node joined");
        let pool = self
            .allocator
            .pool_id()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(JoinResponse {
            node_name: join.node_name,
            pool,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<HeartbeatAck>, Status> {
        self.accept_heartbeat(request.get_ref())
            .await
            .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let signed = request.into_inner();
        let verified: Result<WatchBody, Status> = self
            .verified(&signed, methods::WATCH, |b: &WatchBody| b.sequence)
            .await;
        let body = match verified {
            Ok(body) => body,
            Err(e) => {
                self.stats.watches_refused.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        // Every server of the control plane learns the pool's addresses from the
        // database; a node whose announcement cannot be kept is not followed.
        if let Err(e) = self
            .allocator
            .record_announcement(&signed.node, &body.peer_address, &body.firewall)
            .await
        {
            return Err(Status::unavailable(e.to_string()));
        }
        *self.pool_addresses.lock().await = None;
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peers
            .insert(signed.node.clone(), body.peer_address);
        let node = signed.node;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        let mut changes = self.allocator.subscribe();
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        let connected = Connected(self.stats.clone());
        let (requests, mut asked) = tokio::sync::mpsc::channel::<LogRequest>(16);
        let stream_id = self.versions.fetch_add(1, Ordering::Relaxed);
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .streams
            .insert(node.clone(), (stream_id, requests));
        tokio::spawn(async move {
            let _connected = connected;
            api.follow(&node, &tx, &mut changes, &mut asked).await;
            let mut shared = api.shared.lock().unwrap_or_else(|p| p.into_inner());
            if shared
                .streams
                .get(&node)
                .is_some_and(|(id, _)| *id == stream_id)
            {
                shared.streams.remove(&node);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn logs(&self, request: Request<SignedRequest>) -> Result<Response<LogsAck>, Status> {
        let signed = request.into_inner();
        let body: LogsBody = self
            .verified(&signed, methods::LOGS, |b: &LogsBody| b.sequence)
            .await?;
        let answer = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            match shared.pending.get(&body.request_id) {
                Some((asked, answer)) if *asked == signed.node => {
                    let answer = answer.clone();
                    if body.done {
                        shared.pending.remove(&body.request_id);
                    }
                    answer
                }
                _ => {
                    return Err(Status::permission_denied(format!(
                        "request {} was never sent to node {:?}",
                        body.request_id, signed.node
                    )));
                }
            }
        };
        // The asker may have given up; that is not the node's fault.
        let _ = answer.send(body).await;
        Ok(Response::new(LogsAck {}))
    }

    async fn decisions(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<ReportAck>, Status> {
        let signed = request.into_inner();
        let body: DecisionsBody = self
            .verified(&signed, methods::DECISIONS, |b: &DecisionsBody| b.sequence)
            .await?;
        // The node that decided is the node that signed: a node speaks for itself only.
        for d in body.decisions {
            let tenant = d.resource.split('/').next().unwrap_or("*").to_owned();
            let verdict = if d.allowed { "allowed" } else { "refused" };
            self.ledger
                .append(
                    crate::ledger::NewEntry {
                        kind: crate::ledger::EntryKind::Decision,
                        actor: signed.node.clone(),
                        tenant,
                        subject: format!("{} {}", d.operation, d.resource),
                        detail: format!(
                            "{verdict}: {} (caller {:?}, decided at {} ms)",
                            d.reason, d.caller, d.at_ms
                        ),
                        revocation_ids: d.revocation_ids,
                    },
                    now_ms(),
                )
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(Response::new(ReportAck {}))
    }

    async fn report(&self, request: Request<SignedRequest>) -> Result<Response<ReportAck>, Status> {
        use tracing::Instrument;
        let span = tracing::info_span!("report", node = %request.get_ref().node);
        if let Some(parent) = berth_telemetry::extract(request.metadata()) {
            berth_telemetry::set_parent(&span, &parent);
        }
        let result = self
            .accept_report(request.into_inner())
            .instrument(span)
            .await;
        let counter = match &result {
            Ok(_) => &self.stats.reports_accepted,
            Err(e) => {
                tracing::warn!(reason = %e.message(), "report refused");
                &self.stats.reports_refused
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result.map(Response::new)
    }
}

impl NodeApi {
    /// Feeds one node's stream: its assignment set whenever it changes, and requests
    /// made of it, until the node goes away.
    async fn follow(
        &self,
        node: &str,
        tx: &tokio::sync::mpsc::Sender<Result<WatchEvent, Status>>,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        asked: &mut tokio::sync::mpsc::Receiver<LogRequest>,
    ) {
        let event = |e: watch_event::Event| Ok(WatchEvent { event: Some(e) });
        let api = self;
        let mut last_sent: Option<Vec<u8>> = None;
        loop {
            let seen = api.allocator.version_for(node);
            let mut set = match api.allocator.assignments_for_node(node).await {
                Ok(set) => set,
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                    return;
                }
            };
            crate::links::add_links(api, node, &mut set).await;
            crate::links::add_image_sources(api, node, &mut set).await;
            if let Some(logins) = &api.registries {
                logins.add_to(&mut set).await;
            }
            let revoked = match api.ledger.revoked_ids().await {
                Ok(ids) => ids,
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                    return;
                }
            };
            let pool_addresses = match api.other_node_addresses(node).await {
                Ok(addresses) => addresses,
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                    return;
                }
            };
            let root_keys: std::collections::HashMap<u32, Vec<u8>> = api
                .root_keys()
                .map(|keys| keys.public_keys().into_iter().collect())
                .unwrap_or_default();
            let mut json = serde_json::to_vec::<Vec<TopologyAssignment>>(&set).unwrap_or_default();
            // What the node trusts is part of what changes its set.
            let mut fingerprint = json.clone();
            fingerprint.extend(revoked.join(",").as_bytes());
            let mut ids: Vec<_> = root_keys.iter().collect();
            ids.sort();
            fingerprint.extend(format!("{ids:?}{pool_addresses:?}").as_bytes());
            if last_sent.as_ref() != Some(&fingerprint) {
                let version = api.versions.fetch_add(1, Ordering::Relaxed);
                {
                    let mut shared = api.shared.lock().unwrap_or_else(|p| p.into_inner());
                    let sent = shared.sent.entry(node.to_owned()).or_default();
                    sent.push_back(version);
                    if sent.len() > REMEMBERED_VERSIONS {
                        sent.pop_front();
                    }
                }
                let set = AssignmentSet {
                    version,
                    assignments_json: std::mem::take(&mut json),
                    root_keys,
                    revoked,
                    pool_addresses,
                };
                if tx
                    .send(event(watch_event::Event::Assignments(set)))
                    .await
                    .is_err()
                {
                    return; // the node went away
                }
                last_sent = Some(fingerprint);
            }
            // Wait for a change, passing on requests meanwhile.
            let recheck = tokio::time::sleep(recheck_for(node));
            tokio::pin!(recheck);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { return }
                        // Only changes that concern this node.
                        if api.allocator.version_for(node) != seen {
                            break;
                        }
                    }
                    () = &mut recheck => break,
                    () = tx.closed() => return,
                    Some(request) = asked.recv() => {
                        if tx.send(event(watch_event::Event::Logs(request))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl NodeApi {
    /// The recent CPU figures of `id`'s replicas, by service and replica number, in
    /// thousandths of a core (only for services that autoscale, from the nodes that
    /// stream to this process).
    pub fn cpu_figures(&self, id: &TopologyRef) -> BTreeMap<(String, u32), u32> {
        let now = std::time::Instant::now();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let Some(figures) = shared.cpu.get_mut(id) else {
            return BTreeMap::new();
        };
        figures.retain(|_, (_, at)| now.duration_since(*at) < CPU_FIGURE_KEPT);
        let out = figures
            .iter()
            .map(|(slot, (cpu, _))| (slot.clone(), *cpu))
            .collect();
        if figures.is_empty() {
            shared.cpu.remove(id);
        }
        out
    }

    /// Checks a report (signature, sequence, the set it answers, the replicas it
    /// speaks of) and records it.
    async fn accept_report(&self, signed: SignedRequest) -> Result<ReportAck, Status> {
        let body: ReportBody = self
            .verified(&signed, methods::REPORT, |b: &ReportBody| b.sequence)
            .await?;
        let node = signed.node;
        {
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let sent = shared
                .sent
                .get(&node)
                .is_some_and(|v| v.contains(&body.answers_version));
            if !sent {
                return Err(Status::failed_precondition(format!(
                    "report answers assignment set {}, which was never sent to node {node:?}",
                    body.answers_version
                )));
            }
        }
        let assigned = self
            .allocator
            .assignments_for_node(&node)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        for replica in &body.replicas {
            let owned = assigned.iter().any(|a| {
                a.id.tenant == replica.tenant
                    && a.id.topology == replica.topology
                    && a.slots.iter().any(|s| {
                        s.service == replica.service
                            && s.replica == replica.replica
                            && s.generation == replica.generation
                    })
            });
            if !owned {
                return Err(Status::permission_denied(format!(
                    "node {node:?} reported on {}/{} {}.{} (generation {}), which is not assigned to it",
                    replica.tenant,
                    replica.topology,
                    replica.service,
                    replica.replica,
                    replica.generation
                )));
            }
        }
        // What it says of old copies of moved replicas is not their status; and a
        // new copy running ends its move.
        let current = self
            .allocator
            .settle_moves(&node, body.replicas.clone(), now_ms())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.allocator
            .record_statuses(&node, &current, now_ms())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let now = std::time::Instant::now();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for replica in &body.replicas {
            let Some(cpu) = replica.cpu_millis else {
                continue;
            };
            let id = TopologyRef {
                tenant: replica.tenant.clone(),
                topology: replica.topology.clone(),
            };
            let figures = shared.cpu.entry(id).or_default();
            figures.retain(|_, (_, at)| now.duration_since(*at) < CPU_FIGURE_KEPT);
            figures.insert((replica.service.clone(), replica.replica), (cpu, now));
        }
        Ok(ReportAck {})
    }
}

impl crate::links::LinkContext for NodeApi {
    fn root_keys(&self) -> Option<crate::root_keys::RootKeys> {
        NodeApi::root_keys(self)
    }

    fn identities(&self) -> &Identities {
        NodeApi::identities(self)
    }

    fn allocator(&self) -> &Allocator {
        NodeApi::allocator(self)
    }

    fn peer_address(&self, node: &str) -> Option<String> {
        NodeApi::peer_address(self, node)
    }

    fn ledger(&self) -> &crate::ledger::Ledger {
        NodeApi::ledger(self)
    }

    fn link_tokens(&self) -> std::sync::MutexGuard<'_, crate::links::LinkTokens> {
        NodeApi::link_tokens(self)
    }
}

/// The failure detector's loop: on its first step every node known then gets one
/// lease to heartbeat; every [`crate::liveness::TICK`] after, a node silent past its
/// lease is suspect, then dead, and its replicas are placed elsewhere and its
/// delegations revoked. Now and then, what could not leave a dead or draining node
/// is tried again, since room may have freed elsewhere.
#[derive(Debug)]
pub struct FailureDetector {
    api: NodeApi,
    /// Steps taken; 0 before the first.
    steps: u64,
}

impl FailureDetector {
    /// The detector of `api`'s nodes.
    pub fn new(api: NodeApi) -> Self {
        Self { api, steps: 0 }
    }

    /// Gives every node known now a lease (dead ones stay dead until they heartbeat).
    async fn track_known(&self, now: Now) {
        match self.api.allocator.nodes().await {
            Ok(nodes) => {
                for n in nodes {
                    let dead = n.state == crate::pool::NodeState::Down;
                    self.api.leases.track(&n.name, dead, now.instant);
                }
            }
            Err(e) => tracing::error!(error = %e, "the failure detector cannot list nodes"),
        }
    }

    async fn retry_stuck(&self) {
        match self.api.allocator.retry_stuck().await {
            Ok(retried) => {
                for (node, drained) in retried.iter().filter(|(_, d)| !d.moved.is_empty()) {
                    tracing::info!(node = %node, moved = ?drained.moved, stuck = ?drained.stuck, "replicas left a dead or draining node on a retry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not retry stuck replicas"),
        }
    }
}

impl Controller for FailureDetector {
    const NAME: &'static str = "failure detector";

    async fn step(&mut self, now: Now) -> Next {
        if self.steps == 0 {
            self.track_known(now).await;
        } else if self.steps.is_multiple_of(RETRY_STUCK_TICKS) {
            self.retry_stuck().await;
        }
        self.steps += 1;
        let api = &self.api;
        let verdicts = api.leases.tick(now.instant);
        if let Some(late) = verdicts.late_by {
            api.stats.detector_late.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                late_ms = late.as_millis(),
                "the failure detector ran late; leases extended by as much"
            );
        }
        for node in verdicts.suspect {
            api.stats.suspected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %node, "node is suspect: no heartbeat");
        }
        for node in verdicts.dead {
            api.node_died(&node).await;
        }
        Next::After(crate::liveness::TICK)
    }
}
