//! The node agent: joins the pool once, then pulls its own assignments from the
//! allocator and reconciles them, reporting what its containers do.
//!
//! The pull loop is an explicit state machine ([`LoopState`]) advanced by
//! [`Agent::step`]: connect and open the watch stream, apply each assignment set as it
//! arrives, and on any break back off exponentially before connecting again. Every
//! request in the node's name is signed with the node's own key.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_protocol::assignment::{TopologyAssignment, TopologyRef};
use berth_protocol::node_api::node_control_client::NodeControlClient;
use berth_protocol::node_api::{
    AssignmentSet, DecisionsBody, HeartbeatBody, JoinRequest, LogRequest, LogsBody, PeerDecision,
    ReplicaStatus, ReportBody, WatchBody, WatchEvent, methods, watch_event,
};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::transport::Channel;

use berth_telemetry as telemetry;

use crate::driver::ContainerDriver;
use crate::links::Tunnels;
use crate::peer::{PeerApi, Trust};
use crate::reconcile::Reconciler;
pub use crate::signer::Signer;
use crate::timing::{Every, Lease, Owed};

/// Why the agent could not join or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// There is no identity file: the node has not joined.
    #[error("no node identity in {}: join first with `berth-node join`", path.display())]
    NotJoined {
        /// The file looked for.
        path: PathBuf,
    },
    /// The identity file could not be read or written.
    #[error("node identity {}", path.display())]
    IdentityFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The identity file holds something else than an identity.
    #[error("node identity {}", path.display())]
    IdentityUnreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// The node's key is not a usable Ed25519 key, or none could be made.
    #[error("the node's key: {0}")]
    Key(String),
    /// The allocator cannot be reached.
    #[error("cannot reach the allocator at {url}: {message}")]
    Connect {
        /// Its address.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The allocator refused.
    #[error("the allocator refused: {0}")]
    Refused(String),
    /// The certificate authority to trust the allocator by is not one.
    #[error("the certificate authority given for the allocator is not usable: {0}")]
    Authority(String),
}

/// Checks that `pem` holds at least one certificate, so that a wrong file given as the
/// allocator's authority is named now rather than as a failed handshake later.
fn check_authority(pem: &str) -> Result<(), AgentError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Authority(format!("not PEM: {e}")))?;
    match certificates.is_empty() {
        true => Err(AgentError::Authority(
            "it holds no PEM certificate".to_owned(),
        )),
        false => Ok(()),
    }
}

/// What a node keeps about itself: its name, where the allocator is, and its key.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's name in the pool.
    pub name: String,
    /// The allocators' gRPC addresses, `http://host:port`, comma-separated when the
    /// control plane runs several (the node streams to whichever leads).
    pub allocator: String,
    /// The certificate authority (PEM) an `https://` allocator's certificate must chain
    /// to; without it, the public authorities are trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator_ca: Option<String>,
    /// The pool's identity, as the allocator gave it at join (absent for a node that
    /// joined before pools had one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The Ed25519 key pair, PKCS#8, hex.
    key_pkcs8_hex: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .field("allocator", &self.allocator)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The identity file in a state directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("identity.json")
    }

    /// Reads the identity from a state directory.
    pub fn load(dir: &Path) -> Result<Self, AgentError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::NotJoined { path });
            }
            Err(source) => return Err(AgentError::IdentityFile { path, source }),
        };
        serde_json::from_str(&text)
            .map_err(|source| AgentError::IdentityUnreadable { path, source })
    }

    fn save(&self, dir: &Path) -> Result<(), AgentError> {
        let path = Self::path(dir);
        let text = serde_json::to_string_pretty(self).map_err(|source| {
            AgentError::IdentityUnreadable {
                path: path.clone(),
                source,
            }
        })?;
        let written = (|| {
            std::fs::create_dir_all(dir)?;
            // The key is the node's credential: readable by its owner only.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path)?;
            std::io::Write::write_all(&mut file, text.as_bytes())
        })();
        written.map_err(|source| AgentError::IdentityFile { path, source })
    }

    /// A new identity with a fresh key pair (not yet registered anywhere).
    pub fn generate(name: &str, allocator: &str) -> Result<Self, AgentError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| AgentError::Key("the system random source failed".into()))?;
        Ok(NodeIdentity {
            name: name.to_owned(),
            allocator: allocator.to_owned(),
            allocator_ca: None,
            pool: None,
            key_pkcs8_hex: berth_protocol::assignment::hex_encode(pkcs8.as_ref()),
        })
    }

    /// The allocators' addresses, in the order given (never empty).
    pub fn allocators(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .allocator
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        match urls.is_empty() {
            true => vec![self.allocator.as_str()],
            false => urls,
        }
    }

    /// The public half of the node's key.
    pub fn public_key(&self) -> Result<Vec<u8>, AgentError> {
        Ok(self.key_pair()?.public_key().as_ref().to_vec())
    }

    /// The node's key as it presents itself to other nodes over TLS.
    pub fn tls(&self) -> Result<crate::node_tls::NodeTls, AgentError> {
        crate::node_tls::NodeTls::from_pkcs8(&self.pkcs8()?).map_err(AgentError::Key)
    }

    fn pkcs8(&self) -> Result<Vec<u8>, AgentError> {
        berth_protocol::assignment::hex_decode(&self.key_pkcs8_hex)
            .ok_or_else(|| AgentError::Key("it is not hex".into()))
    }

    /// The signer of what this node sends.
    pub fn signer(&self) -> Result<Signer, AgentError> {
        Ok(Signer::new(&self.name, self.key_pair()?, self.tls()?))
    }

    fn key_pair(&self) -> Result<Ed25519KeyPair, AgentError> {
        Ed25519KeyPair::from_pkcs8(&self.pkcs8()?)
            .map_err(|e| AgentError::Key(format!("it is not Ed25519 PKCS#8: {e}")))
    }
}

/// What a node offers the pool.
#[derive(Clone, Debug, Default)]
pub struct Capacity {
    /// CPU, thousandths of a core.
    pub cpu_millis: Option<u64>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Containers.
    pub containers: Option<u64>,
    /// Labels that placement constraints select on (`node.labels.KEY == VALUE`).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A client of the allocator at `url`; over TLS (`https://`) its certificate must
/// chain to `ca` (PEM), or to a public authority when `ca` is not given.
async fn connect(url: &str, ca: Option<&str>) -> Result<NodeControlClient<Channel>, AgentError> {
    let failed = |message: String| AgentError::Connect {
        url: url.to_owned(),
        message,
    };
    // An allocator whose host is cut off answers nothing, not even a refusal: give up
    // on connecting after a while, and notice a silent connection by its pings.
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| failed(format!("not an address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(CONNECT_TIMEOUT)
        .keep_alive_timeout(CONNECT_TIMEOUT)
        .keep_alive_while_idle(true);
    let endpoint = match url.starts_with("https://") {
        true => {
            let tls = match ca {
                Some(pem) => tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => tonic::transport::ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint
                .tls_config(tls)
                .map_err(|e| failed(berth_protocol::error_chain(&e)))?
        }
        false => endpoint,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| failed(berth_protocol::error_chain(&e)))?;
    Ok(NodeControlClient::new(channel))
}

/// The node's connections to its allocators, one per address, shared by the heartbeat
/// and the pull loop: HTTP/2 carries the heartbeat's calls beside the stream of
/// assignments on one connection (each call still bounded by its own deadline), so a
/// pool costs its allocators one connection per node rather than two.
#[derive(Clone, Debug, Default)]
struct Connections(Arc<std::sync::Mutex<Open>>);

/// The connections open now, by address, and how many were ever made.
#[derive(Debug, Default)]
struct Open {
    by_url: HashMap<String, Connection>,
    made: u64,
}

/// A client of one allocator, as [`Connections`] hands it out.
#[derive(Clone, Debug)]
struct Connection {
    url: String,
    /// Which connection of those made to any address this is.
    serial: u64,
    client: NodeControlClient<Channel>,
}

impl Connections {
    /// A client of the allocator at `url`: the connection already open to it, or a
    /// new one (over TLS chained to `ca`, as [`connect`] makes it).
    async fn get(&self, url: &str, ca: Option<&str>) -> Result<Connection, AgentError> {
        if let Some(open) = self.open().by_url.get(url) {
            return Ok(open.clone());
        }
        let client = connect(url, ca).await?;
        let mut open = self.open();
        open.made += 1;
        let serial = open.made;
        Ok(open
            .by_url
            .entry(url.to_owned())
            .or_insert(Connection {
                url: url.to_owned(),
                serial,
                client,
            })
            .clone())
    }

    /// Forgets the connection `used` (it failed): the next [`Self::get`] of its address
    /// opens another. One the other holder opened since is kept. A client already
    /// handed out keeps its connection until it drops it.
    fn forget(&self, used: &Connection) {
        let mut open = self.open();
        if open
            .by_url
            .get(&used.url)
            .is_some_and(|c| c.serial == used.serial)
        {
            open.by_url.remove(&used.url);
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the engine shows now of `slot` of `a` among `running`: its container, if any,
/// its state and its detail (the topology's failure when it has no container).
fn observed<'c>(
    a: &TopologyAssignment,
    slot: &berth_protocol::assignment::Slot,
    running: &'c [crate::driver::ContainerListing],
    failures: &[(TopologyRef, String)],
) -> (Option<&'c crate::driver::ContainerListing>, String, String) {
    let container = running.iter().find(|c| {
        c.topology == a.id
            && c.container.service == slot.service
            && c.container.replica == slot.replica
            && c.container.generation == slot.generation
    });
    let failure = failures.iter().find(|(id, _)| id == &a.id);
    let (state, detail) = match (container, failure) {
        (Some(c), _) => (c.state.clone(), c.status.clone()),
        (None, Some((_, why))) => ("failed".to_owned(), why.clone()),
        (None, None) => ("missing".to_owned(), String::new()),
    };
    (container, state, detail)
}

/// A replica's state as a report compares it (without its changing detail).
type StateKey = (TopologyRef, String, u32, u64, String);

fn state_key(
    a: &TopologyAssignment,
    slot: &berth_protocol::assignment::Slot,
    state: &str,
) -> StateKey {
    (
        a.id.clone(),
        slot.service.clone(),
        slot.replica,
        slot.generation,
        state.to_owned(),
    )
}

/// Joins the pool: makes a key pair, spends the one-time `token` to register it under
/// `name`, and saves the identity in `dir`. An `https://` allocator's certificate must
/// chain to `ca` (PEM) when it is given; the node keeps `ca` for later connections.
pub async fn join(
    allocator: &str,
    ca: Option<&str>,
    token: &str,
    name: &str,
    capacity: Capacity,
    dir: &Path,
) -> Result<NodeIdentity, AgentError> {
    if let Some(pem) = ca {
        check_authority(pem)?;
    }
    let mut identity = NodeIdentity::generate(name, allocator)?;
    identity.allocator_ca = ca.map(str::to_owned);
    let public_key = identity.public_key()?;
    let request = JoinRequest {
        token: token.to_owned(),
        node_name: name.to_owned(),
        public_key,
        cpu_millis: capacity.cpu_millis,
        memory_bytes: capacity.memory_bytes,
        containers: capacity.containers,
        labels: capacity.labels.into_iter().collect(),
    };
    // With several allocators, the one that leads answers; the others stand by.
    let mut last = None;
    for url in identity.allocators() {
        let mut client = match connect(url, ca).await {
            Ok(client) => client,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match client.join(request.clone()).await {
            Ok(joined) => {
                let pool = joined.into_inner().pool;
                identity.pool = (!pool.is_empty()).then_some(pool);
                identity.save(dir)?;
                return Ok(identity);
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                last = Some(AgentError::Refused(format!("{url}: {}", s.message())));
            }
            Err(s) => return Err(AgentError::Refused(s.message().to_owned())),
        }
    }
    Err(last.unwrap_or_else(|| AgentError::Refused("no allocator address given".into())))
}

/// How long a node goes without a renewed lease before it fences itself, until the
/// allocator tells it the pool's setting.
pub const DEFAULT_FENCE_AFTER: Duration = Duration::from_secs(10);

/// How often the node compares what its engine runs with its last set: it makes again
/// what went missing behind its back, and reports when a replica's state changed.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// How often a node reports the CPU of the replicas of services that autoscale.
const CPU_REPORT_EVERY: Duration = Duration::from_secs(5);

/// A failed report is sent again after this, then after twice as long each time.
const REPORT_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two tries of a failed report.
const REPORT_RETRY_MOST: Duration = Duration::from_secs(30);

/// How often the node heartbeats (and reports its peer API's decisions) until the
/// allocator says otherwise.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long the node waits to connect to an allocator, and for an answer to its pings
/// on a connection that has gone quiet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the node waits for a heartbeat's answer, at most (and no later than its
/// fence deadline).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// The least the agent sleeps between two looks at its lease (a fence that failed,
/// its deadline past, is tried again after this rather than in a busy loop).
const WAKE_LEAST: Duration = Duration::from_millis(20);

/// How long a heartbeat may wait for its answer however near the fence deadline is.
const HEARTBEAT_LEAST: Duration = Duration::from_millis(100);

/// What heartbeats: the lease and a client of the allocators of its own, so that a
/// heartbeat is sent on time while the node reconciles a large set (its connection is
/// the pull loop's when both talk to the same allocator).
#[derive(Debug)]
struct Heart {
    signer: Arc<Signer>,
    /// The allocators' addresses, tried in turn until one leads and answers.
    allocators: Vec<String>,
    ca: Option<String>,
    connections: Connections,
    client: Option<Connection>,
    next_allocator: usize,
    /// Which allocator (an index into `allocators`) renewed the lease last.
    renewed_by: Option<usize>,
    lease: Lease,
    /// A renewal came after the node had fenced itself, and the agent has not yet
    /// asked for its assignments anew.
    was_fenced: bool,
}

impl Heart {
    /// Heartbeats if one is due: None when none was, else whether the allocator
    /// renewed the lease.
    async fn beat(&mut self) -> Option<bool> {
        let now = Instant::now();
        if !self.lease.heartbeat_due(now) {
            return None;
        }
        let (sequence, timestamp_ms) = self.signer.next_sequence();
        let request = self.signer.sign(
            methods::HEARTBEAT,
            &HeartbeatBody {
                sequence,
                timestamp_ms,
            },
        );
        // A heartbeat waits for its answer no later than the fence deadline: a node
        // cut off fences on time, however its packets are lost.
        let give_up = self
            .lease
            .fence_deadline()
            .map_or(now + HEARTBEAT_TIMEOUT, |deadline| {
                deadline
                    .max(now + HEARTBEAT_LEAST)
                    .min(now + HEARTBEAT_TIMEOUT)
            });
        if self.client.is_none() {
            let url = &self.allocators[self.next_allocator % self.allocators.len()];
            let connecting = self.connections.get(url, self.ca.as_deref());
            let connected = tokio::time::timeout_at(give_up, connecting)
                .await
                .unwrap_or_else(|_| Err(AgentError::Refused("no connection in time".into())));
            match connected {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    tracing::debug!(error = %e, "heartbeat: cannot connect");
                    self.next_allocator = self.next_allocator.wrapping_add(1);
                    return Some(false);
                }
            }
        }
        let client = &mut self.client.as_mut()?.client;
        let answer = tokio::time::timeout_at(give_up, client.heartbeat(request))
            .await
            .map_err(|_| "no answer in time".to_owned())
            .and_then(|r| r.map_err(|s| s.message().to_owned()));
        match answer {
            Ok(ack) => {
                let ack = ack.into_inner();
                let millis = |ms: i64| u64::try_from(ms).ok().map(Duration::from_millis);
                self.was_fenced |=
                    self.lease
                        .renewed(now, millis(ack.fence_after_ms), millis(ack.heartbeat_ms));
                self.renewed_by = Some(self.next_allocator % self.allocators.len());
                Some(true)
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                // The client may hold a dead connection, or one to an allocator that
                // stands by: make a new one, to the next allocator, next time.
                if let Some(used) = self.client.take() {
                    self.connections.forget(&used);
                }
                self.next_allocator = self.next_allocator.wrapping_add(1);
                Some(false)
            }
        }
    }

    /// Runs `work` to its end, heartbeating whenever one is due meanwhile.
    async fn beating<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            let due = self.lease.next_heartbeat();
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep_until(due) => {
                    self.beat().await;
                }
            }
        }
    }
}

/// Where the pull loop stands.
#[derive(Debug)]
pub enum LoopState {
    /// About to connect; `attempt` counts failures in a row.
    Connect {
        /// Failures in a row.
        attempt: u32,
    },
    /// Receiving assignment sets and requests.
    Watch(Box<Streaming<WatchEvent>>),
    /// Waiting before connecting again.
    Backoff {
        /// Failures in a row.
        attempt: u32,
    },
}

/// The delay before reconnecting after `attempt` failures in a row: 100 ms doubling,
/// at most 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << attempt.min(16)))
        .min(Duration::from_secs(10))
}

/// A set as applied: its version, its assignments, and the topologies that failed
/// with why.
type AppliedSet = (u64, Vec<TopologyAssignment>, Vec<(TopologyRef, String)>);

/// The node agent.
#[derive(Debug)]
pub struct Agent<D> {
    identity: NodeIdentity,
    signer: Arc<Signer>,
    reconciler: Reconciler<D>,
    /// The connections to the allocators, shared with the heartbeat.
    connections: Connections,
    /// The pull loop's client of the allocator it streams from.
    client: Option<Connection>,
    /// The root keys and revocations the allocator sends, shared with the peer API.
    trust: Arc<RwLock<Trust>>,
    /// The peer API whose decisions this agent reports.
    peer: Option<PeerApi<D>>,
    /// Where other nodes reach this node's API, told to the allocator.
    peer_address: String,
    /// The calling ends of this node's links.
    tunnels: Tunnels,
    /// The node's firewall on its host, when it enforces one.
    firewall: Option<crate::firewall::Firewall>,
    /// What the node tells the allocator of its firewall.
    firewall_announced: &'static str,
    /// What heartbeats, and the lease it renews.
    heart: Heart,
    /// Which allocator (an index into the identity's list) the open stream is from.
    stream_from: Option<usize>,
    /// Which of the allocators' addresses to try next (they are tried in turn until
    /// one leads and answers).
    next_allocator: usize,
    /// The last set applied (its version, assignments and failures), reported again
    /// every [`CPU_REPORT_EVERY`] while it holds a service that autoscales.
    last_set: Option<AppliedSet>,
    /// The previous CPU time sample of each container, by container id.
    cpu_seen: HashMap<String, (u64, Instant)>,
    /// When the CPU figures are next due.
    cpu_report: Every,
    /// The replicas' states as last reported.
    reported: Vec<StateKey>,
    /// When the engine is next compared with the last set.
    resync: Every,
    /// The last set's report failed: when to send it again.
    report_owed: Option<Owed>,
    /// Where pushed images are fetched to, when the node runs them.
    images: Option<Arc<crate::images::ImageCache>>,
}

impl<D: ContainerDriver> Agent<D> {
    /// An agent for `identity`, running containers through `reconciler`.
    pub fn new(identity: NodeIdentity, reconciler: Reconciler<D>) -> Result<Self, AgentError> {
        let signer = Arc::new(identity.signer()?);
        let connections = Connections::default();
        let heart = Heart {
            signer: signer.clone(),
            allocators: identity
                .allocators()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            ca: identity.allocator_ca.clone(),
            connections: connections.clone(),
            client: None,
            next_allocator: 0,
            renewed_by: None,
            lease: Lease::new(Instant::now(), DEFAULT_FENCE_AFTER, HEARTBEAT_EVERY),
            was_fenced: false,
        };
        Ok(Self {
            signer: signer.clone(),
            tunnels: Tunnels::new(signer),
            firewall: None,
            firewall_announced: "",
            peer_address: String::new(),
            identity,
            reconciler,
            connections,
            client: None,
            next_allocator: 0,
            last_set: None,
            cpu_seen: HashMap::new(),
            cpu_report: Every::starting(Instant::now(), CPU_REPORT_EVERY),
            report_owed: None,
            reported: Vec::new(),
            resync: Every::starting(Instant::now() + RESYNC_EVERY, RESYNC_EVERY),
            trust: Arc::default(),
            peer: None,
            heart,
            stream_from: None,
            images: None,
        })
    }

    /// Fences after `fence_after` without a renewed lease until the allocator says
    /// otherwise (its answer to each heartbeat carries the pool's setting).
    pub fn with_fence_after(mut self, fence_after: Duration) -> Self {
        self.heart.lease.fence_after(fence_after);
        self
    }

    /// Heartbeats when one is due, reports decisions, and fences the node when its
    /// lease has run out. Returns true when the lease was renewed after a fence (the
    /// watch stream should then be opened anew, for the allocator's current set).
    async fn beat(&mut self) -> bool {
        let Some(renewed) = self.heart.beat().await else {
            return false;
        };
        let mut reconnect = false;
        if renewed {
            if std::mem::take(&mut self.heart.was_fenced) {
                tracing::warn!(node = %self.identity.name, "lease renewed after a fence; asking for the current assignments");
                reconnect = true;
            }
            // Another allocator renews the lease than the one the stream is from: the
            // lead moved (the old leader may be cut off, its connection silent rather
            // than closed), and the stream follows it.
            if let (Some(by), Some(from)) = (self.heart.renewed_by, self.stream_from)
                && by != from
            {
                tracing::warn!(node = %self.identity.name, "the lease is renewed by another allocator; following it");
                self.client = None;
                self.next_allocator = by;
                self.stream_from = None;
                reconnect = true;
            }
            if let Err(e) = self.flush_decisions().await {
                tracing::warn!(error = %e, "could not report decisions");
            }
        }
        if let Some(silent) = self.heart.lease.must_fence(Instant::now()) {
            self.fence(silent).await;
        }
        reconnect
    }

    /// Stops every replica of this node at once: it could not renew its lease, so the
    /// allocator may be placing them elsewhere.
    async fn fence(&mut self, silent: Duration) {
        self.heart.lease.set_fenced(true);
        let driver = self.reconciler.driver();
        let listed = match driver.list_all(None).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::error!(error = %e, "cannot list containers to fence this node");
                self.heart.lease.set_fenced(false); // try again on the next beat
                return;
            }
        };
        // Every replica at once: the fence must end before the allocator's lease does.
        let running: Vec<_> = listed.iter().filter(|c| c.container.running).collect();
        let kills = futures_util::future::join_all(
            running
                .iter()
                .map(|c| driver.kill_container(&c.container.id)),
        )
        .await;
        let mut stopped = 0;
        for (c, killed) in running.iter().zip(kills) {
            match killed {
                Ok(()) => stopped += 1,
                Err(e) => {
                    tracing::error!(container = %c.container.name, error = %e, "cannot fence a replica");
                    self.heart.lease.set_fenced(false);
                }
            }
        }
        tracing::warn!(
            node = %self.identity.name,
            silent_ms = silent.as_millis(),
            stopped,
            "lease lost: replicas stopped until the allocator is reached again"
        );
    }

    /// Waits `total`, heartbeating (and fencing if need be) meanwhile.
    async fn pause(&mut self, total: Duration) {
        let until = Instant::now() + total;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let wake = self.heart.lease.next_wake().max(now + WAKE_LEAST);
            tokio::time::sleep_until(until.min(wake)).await;
            self.beat().await;
        }
    }

    /// The key this node signs with, for what else speaks in its name.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer.clone()
    }

    /// Fetches the pushed images its replicas run into `images` before they start.
    pub fn with_images(mut self, images: Arc<crate::images::ImageCache>) -> Self {
        self.images = Some(images);
        self
    }

    /// What the node trusts, as the allocator last said; share it with a [`PeerApi`].
    pub fn trust(&self) -> Arc<RwLock<Trust>> {
        self.trust.clone()
    }

    /// Serves `peer` (reachable by other nodes at `address`, `http://host:port`) and
    /// reports its decisions to the allocator, signed, about every second.
    pub fn with_peer(mut self, peer: PeerApi<D>, address: &str) -> Self {
        self.peer = Some(peer);
        self.peer_address = address.to_owned();
        self
    }

    /// Keeps `firewall` (installed) up to date with the pool's addresses and this
    /// node's link listeners, or, with `None`, says the node enforces none.
    pub fn with_firewall(mut self, firewall: Option<crate::firewall::Firewall>) -> Self {
        self.firewall_announced = match firewall {
            Some(_) => crate::firewall::Mode::Enforce.announced(),
            None => crate::firewall::Mode::Off.announced(),
        };
        self.firewall = firewall;
        self
    }

    /// Removes the node's firewall, if it installed one (the node is stopping).
    pub async fn remove_firewall(&mut self) {
        if let Some(firewall) = self.firewall.take()
            && let Err(e) = firewall.remove().await
        {
            tracing::warn!(error = %e, "cannot remove the firewall");
        }
    }

    /// Sends the peer API's decisions since the last time, and the blobs the image
    /// cache refused; on failure they are lost
    /// from the ledger but still in this node's log.
    async fn flush_decisions(&mut self) -> Result<(), AgentError> {
        let mut taken = self
            .peer
            .as_ref()
            .map(|peer| peer.take_decisions())
            .unwrap_or_default();
        if let Some(images) = &self.images {
            taken.extend(images.take_decisions());
        }
        let decisions: Vec<PeerDecision> = taken
            .into_iter()
            .map(|d| PeerDecision {
                allowed: d.allowed,
                operation: d.operation.to_owned(),
                resource: d.resource,
                caller: d.caller,
                reason: d.reason,
                revocation_ids: d.revocation_ids,
                at_ms: d.at_ms,
            })
            .collect();
        if decisions.is_empty() {
            return Ok(());
        }
        let (sequence, timestamp_ms) = self.signer.next_sequence();
        let request = self.signer.sign(
            methods::DECISIONS,
            &DecisionsBody {
                sequence,
                timestamp_ms,
                decisions,
            },
        );
        self.client()
            .await?
            .decisions(request)
            .await
            .map_err(|s| AgentError::Refused(s.message().to_owned()))?;
        Ok(())
    }

    /// Runs the pull loop until the process ends.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Runs as [`Self::run`] does until `stop` completes, then removes the node's
    /// firewall (the node is leaving its host).
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut state = LoopState::Connect { attempt: 0 };
        loop {
            tokio::select! {
                () = &mut stop => break,
                next = self.step(state) => state = next,
            }
        }
        self.remove_firewall().await;
    }

    /// Advances the pull loop by one step.
    pub async fn step(&mut self, state: LoopState) -> LoopState {
        match state {
            LoopState::Connect { attempt } => match self.open_watch_before_fence().await {
                Ok(stream) => LoopState::Watch(Box::new(stream)),
                Err(e) => {
                    tracing::warn!(node = %self.identity.name, error = %e, "watch failed");
                    LoopState::Backoff {
                        attempt: attempt + 1,
                    }
                }
            },
            LoopState::Watch(mut stream) => {
                let wait = self
                    .heart
                    .lease
                    .next_wake()
                    .saturating_duration_since(Instant::now())
                    .max(WAKE_LEAST);
                let next = match tokio::time::timeout(wait, stream.message()).await {
                    Err(_) => LoopState::Watch(stream),
                    Ok(message) => self.on_message(message, stream).await,
                };
                if self.beat().await {
                    return LoopState::Connect { attempt: 0 };
                }
                self.report_again_if_owed().await;
                self.report_cpu_if_due().await;
                self.resync_if_due().await;
                next
            }
            LoopState::Backoff { attempt } => {
                self.pause(backoff(attempt)).await;
                LoopState::Connect { attempt }
            }
        }
    }

    /// Opens the assignment stream, giving up at the fence deadline so that the
    /// fence is not late for a connection that hangs (the back-off that follows
    /// heartbeats and fences).
    async fn open_watch_before_fence(&mut self) -> Result<Streaming<WatchEvent>, AgentError> {
        let Some(deadline) = self.heart.lease.fence_deadline() else {
            return self.open_watch().await;
        };
        let deadline = deadline.max(Instant::now() + HEARTBEAT_LEAST);
        tokio::time::timeout_at(deadline, self.open_watch())
            .await
            .unwrap_or_else(|_| {
                Err(AgentError::Refused(
                    "no assignment stream before the fence deadline".into(),
                ))
            })
    }

    async fn on_message(
        &mut self,
        message: Result<Option<WatchEvent>, tonic::Status>,
        stream: Box<Streaming<WatchEvent>>,
    ) -> LoopState {
        match message {
            Ok(Some(event)) => {
                match event.event {
                    Some(watch_event::Event::Assignments(set)) => self.apply(set).await,
                    Some(watch_event::Event::Logs(request)) => {
                        if let Err(e) = self.answer_logs(request).await {
                            tracing::warn!(error = %e, "could not send logs");
                        }
                    }
                    None => {}
                }
                LoopState::Watch(stream)
            }
            Ok(None) | Err(_) => {
                self.drop_client();
                LoopState::Backoff { attempt: 1 }
            }
        }
    }

    /// Forgets the allocator connection; the next one goes to the next allocator.
    fn drop_client(&mut self) {
        if let Some(used) = self.client.take() {
            self.connections.forget(&used);
        }
        self.next_allocator = self.next_allocator.wrapping_add(1);
    }

    async fn client(&mut self) -> Result<&mut NodeControlClient<Channel>, AgentError> {
        if self.client.is_none() {
            let urls = self.identity.allocators();
            let url = urls[self.next_allocator % urls.len()];
            let ca = self.identity.allocator_ca.as_deref();
            match self.connections.get(url, ca).await {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    self.next_allocator = self.next_allocator.wrapping_add(1);
                    return Err(e);
                }
            }
        }
        self.client
            .as_mut()
            .map(|c| &mut c.client)
            .ok_or_else(|| AgentError::Refused("no client".into()))
    }

    /// Reads the output of the replica `request` names, in this node's own scope (so
    /// only its own containers can be read), and sends it back in signed parts.
    async fn answer_logs(&mut self, request: LogRequest) -> Result<(), AgentError> {
        use futures_util::StreamExt;
        /// At most this many lines per answer, and per part of it.
        const MOST: usize = 10_000;
        const PART: usize = 1_000;
        let id = TopologyRef {
            tenant: request.tenant.clone(),
            topology: request.topology.clone(),
        };
        let driver = self.reconciler.driver();
        let name = driver
            .scope()
            .container_name(&id, &request.service, request.replica);
        let tail = (request.tail > 0).then_some(request.tail);
        let since = (request.since_ns > 0).then_some(request.since_ns);
        let mut stream = driver.logs(&name, false, tail, since);
        let mut lines = Vec::new();
        let mut error = String::new();
        while let Some(line) = stream.next().await {
            match line {
                Ok(line) => lines.push((line.text, line.at_ns.unwrap_or(0))),
                Err(e) => {
                    error = e.to_string();
                    break;
                }
            }
        }
        if lines.len() > MOST {
            lines.drain(..lines.len() - MOST);
        }
        let mut parts: Vec<Vec<(String, i64)>> =
            lines.chunks(PART).map(<[(String, i64)]>::to_vec).collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let (sequence, timestamp_ms) = self.signer.next_sequence();
            let (lines, at_ns) = part.into_iter().unzip();
            let signed = self.signer.sign(
                methods::LOGS,
                &LogsBody {
                    sequence,
                    timestamp_ms,
                    request_id: request.request_id,
                    lines,
                    at_ns,
                    done: i == last,
                    error: if i == last {
                        error.clone()
                    } else {
                        String::new()
                    },
                },
            );
            self.client()
                .await?
                .logs(signed)
                .await
                .map_err(|s| AgentError::Refused(s.message().to_owned()))?;
        }
        Ok(())
    }

    async fn open_watch(&mut self) -> Result<Streaming<WatchEvent>, AgentError> {
        let (sequence, timestamp_ms) = self.signer.next_sequence();
        let request = self.signer.sign(
            methods::WATCH,
            &WatchBody {
                sequence,
                timestamp_ms,
                peer_address: self.peer_address.clone(),
                firewall: self.firewall_announced.to_owned(),
            },
        );
        let client = self.client().await?;
        match client.watch(request).await {
            Ok(response) => {
                self.stream_from = Some(self.next_allocator % self.heart.allocators.len());
                Ok(response.into_inner())
            }
            Err(status) => {
                self.drop_client();
                Err(AgentError::Refused(status.message().to_owned()))
            }
        }
    }

    /// Reconciles one assignment set: every topology in it is applied, every topology
    /// this node runs that is not in it is removed (its volumes kept); then reports.
    async fn apply(&mut self, set: AssignmentSet) {
        // First what the node trusts: a revocation takes effect before anything else.
        {
            let mut keys = berth_protocol::capability::Keyring::default();
            for (id, key) in &set.root_keys {
                match biscuit_auth::PublicKey::from_bytes(key, biscuit_auth::Algorithm::Ed25519) {
                    Ok(key) => keys = keys.with(*id, key),
                    Err(e) => tracing::warn!(id, error = %e, "unusable root key"),
                }
            }
            let mut trust = self.trust.write().unwrap_or_else(|p| p.into_inner());
            trust.keys = keys;
            trust.revoked = set.revoked.iter().cloned().collect();
        }
        if let Some(firewall) = &mut self.firewall
            && let Err(e) = firewall.set_nodes(&set.pool_addresses).await
        {
            tracing::error!(error = %e, "cannot update the firewall's node addresses");
        }
        let assignments: Vec<TopologyAssignment> =
            match serde_json::from_slice(&set.assignments_json) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "unreadable assignment set");
                    return;
                }
            };
        let mut failures = Vec::new();
        let mut traced = None;
        for assignment in &assignments {
            use tracing::Instrument;
            let (events, _) = mpsc::unbounded_channel();
            // Each topology's work is part of the trace of the deploy that placed it.
            let span = tracing::info_span!(
                "reconcile",
                node = %self.identity.name,
                topology = %assignment.id,
                revision = assignment.revision,
                trace_id = tracing::field::Empty,
            );
            if let Some(parent) = &assignment.trace {
                telemetry::set_parent(&span, parent);
                span.record("trace_id", telemetry::trace_id(parent).unwrap_or_default());
                traced = Some(span.clone());
            }
            if let Some(images) = self.images.clone() {
                let control = self.client().await.ok().cloned();
                let driver = self.reconciler.driver();
                let fetch = images
                    .ensure(driver.as_ref(), control, assignment)
                    .instrument(span.clone());
                if let Err(e) = self.heart.beating(fetch).await {
                    span.in_scope(|| tracing::warn!(error = %e, "images could not be fetched"));
                    failures.push((assignment.id.clone(), e.to_string()));
                    continue;
                }
            }
            let work = self
                .reconciler
                .apply(assignment, events)
                .instrument(span.clone());
            let result = self.heart.beating(work).await;
            match result {
                Ok(outcome) => span.in_scope(|| {
                    tracing::info!(
                        created = outcome.created,
                        unchanged = outcome.unchanged,
                        removed = outcome.removed,
                        "reconciled"
                    );
                }),
                Err(e) => {
                    span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                    failures.push((assignment.id.clone(), e.to_string()));
                }
            }
        }
        let gateways = self.link_addresses(&assignments).await;
        self.tunnels.apply(&assignments, &gateways).await;
        if let Some(firewall) = &mut self.firewall
            && let Err(e) = firewall.set_links(&self.tunnels.listeners()).await
        {
            tracing::error!(error = %e, "cannot let containers reach their links");
        }
        let wanted: BTreeSet<TopologyRef> = assignments.iter().map(|a| a.id.clone()).collect();
        if let Ok(running) = self.reconciler.driver().list_all(None).await {
            let stale: BTreeSet<TopologyRef> = running
                .into_iter()
                .map(|c| c.topology)
                .filter(|t| !wanted.contains(t))
                .collect();
            for id in stale {
                let (events, _) = mpsc::unbounded_channel();
                let work = self.reconciler.remove(&id, false, events);
                if let Err(e) = self.heart.beating(work).await {
                    tracing::warn!(topology = %id, error = %e, "removal failed");
                }
            }
        }
        let span = tracing::info_span!("report", node = %self.identity.name);
        if let Some(parent) = traced.as_ref().and_then(telemetry::traceparent) {
            telemetry::set_parent(&span, &parent);
        }
        let reported = {
            use tracing::Instrument;
            self.report(set.version, &assignments, &failures)
                .instrument(span)
                .await
        };
        self.report_owed = match reported {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "report failed; it is sent again");
                Some(Owed::first(Instant::now(), REPORT_RETRY_FIRST))
            }
        };
        self.last_set = Some((set.version, assignments, failures));
    }

    /// Sends the last set's report again when it failed (a busy allocator, a lost
    /// connection): nothing else would, until the set changes, and the replicas
    /// would show as pending meanwhile. Reports are idempotent; retries back off.
    async fn report_again_if_owed(&mut self) {
        let Some(owed) = self.report_owed else {
            return;
        };
        if !owed.due(Instant::now()) {
            return;
        }
        let Some((version, assignments, failures)) = self.last_set.take() else {
            self.report_owed = None;
            return;
        };
        self.report_owed = match self.report(version, &assignments, &failures).await {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(error = %e, "report failed again");
                Some(owed.failed_again(Instant::now(), REPORT_RETRY_MOST))
            }
        };
        self.last_set = Some((version, assignments, failures));
    }

    /// Every [`RESYNC_EVERY`], unless fenced: reconciles the last set again (making
    /// what was removed behind the node's back) and reports if the engine now shows
    /// any replica in another state than last reported.
    async fn resync_if_due(&mut self) {
        let now = Instant::now();
        if self.heart.lease.is_fenced() || !self.resync.due(now) {
            return;
        }
        let Some((version, assignments, mut failures)) = self.last_set.take() else {
            return;
        };
        for a in &assignments {
            let (events, _) = mpsc::unbounded_channel();
            let work = self.reconciler.apply(a, events);
            match self.heart.beating(work).await {
                Ok(outcome) if outcome.created > 0 || outcome.removed > 0 => {
                    failures.retain(|(id, _)| id != &a.id);
                    tracing::info!(topology = %a.id, created = outcome.created, removed = outcome.removed, "made again what the engine lost");
                }
                Ok(_) => failures.retain(|(id, _)| id != &a.id),
                Err(e) => {
                    failures.retain(|(id, _)| id != &a.id);
                    failures.push((a.id.clone(), e.to_string()));
                }
            }
        }
        let states: Option<Vec<StateKey>> = match self.reconciler.driver().list_all(None).await {
            Ok(running) => Some(
                assignments
                    .iter()
                    .flat_map(|a| {
                        a.slots.iter().map(|slot| {
                            let (_, state, _) = observed(a, slot, &running, &failures);
                            state_key(a, slot, &state)
                        })
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the engine's containers");
                None
            }
        };
        if states.is_some_and(|s| s != self.reported)
            && let Err(e) = self.report(version, &assignments, &failures).await
        {
            tracing::debug!(error = %e, "report failed; it is sent again");
            self.report_owed = Some(Owed::first(now, REPORT_RETRY_FIRST));
        }
        self.last_set = Some((version, assignments, failures));
    }

    /// The host's addresses on the networks of each topology with links, where its
    /// link listeners listen (a network the engine does not know yet has none).
    async fn link_addresses(
        &self,
        assignments: &[TopologyAssignment],
    ) -> HashMap<TopologyRef, Vec<std::net::IpAddr>> {
        let driver = self.reconciler.driver();
        let mut gateways = HashMap::new();
        for a in assignments.iter().filter(|a| !a.links.is_empty()) {
            let mut addresses = Vec::new();
            for network in a.networks.keys() {
                let name = driver.scope().object_name(&a.id, network);
                match driver.network_gateway(&name).await {
                    Ok(Some(ip)) if !addresses.contains(&ip) => addresses.push(ip),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(network = %name, error = %e, "no address for links"),
                }
            }
            gateways.insert(a.id.clone(), addresses);
        }
        gateways
    }

    /// Reports the last set again, with fresh CPU figures, when they are due and a
    /// service of it autoscales.
    async fn report_cpu_if_due(&mut self) {
        if !self.cpu_report.due(Instant::now()) {
            return;
        }
        let Some((version, assignments, failures)) = self.last_set.take() else {
            return;
        };
        let autoscaled = assignments
            .iter()
            .any(|a| a.services.values().any(|s| s.autoscale.is_some()));
        if autoscaled {
            match self.report(version, &assignments, &failures).await {
                Ok(()) => self.report_owed = None,
                Err(e) => tracing::debug!(error = %e, "CPU report failed"),
            }
        }
        self.last_set = Some((version, assignments, failures));
    }

    /// The CPU `container` used since its previous sample, in thousandths of a core.
    async fn cpu_millis(&mut self, container: &str) -> Option<u32> {
        let now = Instant::now();
        let used = match self.reconciler.driver().cpu_time(container).await {
            Ok(Some(used)) => used,
            _ => return None,
        };
        let previous = self.cpu_seen.insert(container.to_owned(), (used, now))?;
        let elapsed = now.saturating_duration_since(previous.1).as_nanos();
        if elapsed == 0 || used < previous.0 {
            return None;
        }
        let millis = u128::from(used - previous.0) * 1000 / elapsed;
        u32::try_from(millis).ok()
    }

    async fn report(
        &mut self,
        version: u64,
        assignments: &[TopologyAssignment],
        failures: &[(TopologyRef, String)],
    ) -> Result<(), AgentError> {
        let running = self
            .reconciler
            .driver()
            .list_all(None)
            .await
            .map_err(|e| AgentError::Refused(e.to_string()))?;
        let mut replicas = Vec::new();
        let mut states = Vec::new();
        for a in assignments {
            for slot in &a.slots {
                let (container, state, detail) = observed(a, slot, &running, failures);
                states.push(state_key(a, slot, &state));
                let autoscaled = a
                    .services
                    .get(&slot.service)
                    .is_some_and(|s| s.autoscale.is_some());
                let cpu_millis = match container {
                    Some(c) if autoscaled && c.container.running => {
                        self.cpu_millis(&c.container.id).await
                    }
                    _ => None,
                };
                replicas.push(ReplicaStatus {
                    cpu_millis,
                    tenant: a.id.tenant.clone(),
                    topology: a.id.topology.clone(),
                    service: slot.service.clone(),
                    replica: slot.replica,
                    generation: slot.generation,
                    state,
                    detail,
                });
            }
        }
        self.cpu_seen
            .retain(|id, _| running.iter().any(|c| &c.container.id == id));
        let (sequence, timestamp_ms) = self.signer.next_sequence();
        let request = self.signer.sign(
            methods::REPORT,
            &ReportBody {
                sequence,
                timestamp_ms,
                answers_version: version,
                replicas,
            },
        );
        let mut request = tonic::Request::new(request);
        telemetry::inject(request.metadata_mut());
        let client = self.client().await?;
        client
            .report(request)
            .await
            .map_err(|s| AgentError::Refused(s.message().to_owned()))?;
        self.reported = states;
        Ok(())
    }
}

/// The scope of the objects the node makes: its name and its pool.
pub fn scope_of(identity: &NodeIdentity) -> berth_protocol::assignment::Scope {
    use berth_protocol::assignment::Scope;
    match &identity.pool {
        Some(pool) => Scope::node_of(pool, &identity.name),
        None => Scope::node(&identity.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_file_without_a_certificate_is_named_at_join() {
        let certificate = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(check_authority(certificate).is_ok());
        let key_only = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
        for wrong in ["my-hostname\n", "", key_only] {
            let error = check_authority(wrong).expect_err(wrong).to_string();
            assert!(error.contains("not usable"), "{error}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn sequences_always_grow() {
        let identity = NodeIdentity::generate("n", "http://x").unwrap();
        let signer = identity.signer().unwrap();
        let mut last = 0;
        for _ in 0..1000 {
            let (n, _) = signer.next_sequence();
            assert!(n > last);
            last = n;
        }
    }

    #[tokio::test]
    async fn a_failed_connection_is_forgotten_but_not_one_opened_since() {
        let url = "http://127.0.0.1:1";
        let made = |serial| Connection {
            url: url.to_owned(),
            serial,
            client: NodeControlClient::new(
                tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
            ),
        };
        let connections = Connections::default();
        let first = made(1);
        connections
            .open()
            .by_url
            .insert(url.to_owned(), first.clone());
        // Both holders get the one connection.
        let shared = connections.get(url, None).await.expect("the open one");
        assert_eq!(shared.serial, 1);
        connections.forget(&first);
        assert!(connections.open().by_url.is_empty());
        // The stream's holder opened another; the heartbeat's failure on the first,
        // noticed later, leaves it.
        connections.open().by_url.insert(url.to_owned(), made(2));
        connections.forget(&shared);
        let kept = connections.get(url, None).await.expect("the newer one");
        assert_eq!(kept.serial, 2);
    }
}
