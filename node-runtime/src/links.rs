//! The calling end of cross-node links. A service whose replicas all run on other
//! nodes is reached, by its containers' peers on this node, at its name, which the
//! containers resolve to this host's address on their topology's own network; the
//! node listens there on the service's port (so two topologies, or two tenants, that
//! reach remote services on the same port never collide) and carries each connection
//! through a tunnel to a node that runs a replica (the one with the fewest of this
//! listener's tunnels open, equals in turn), presenting the delegation the allocator
//! minted for exactly that (caller this node, target that node, operation `tunnel`,
//! that service and port), signed with this node's key. Tokens renew in later assignment sets without touching
//! listeners or containers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use berth_protocol::assignment::{Link, TopologyAssignment, TopologyRef};
use berth_protocol::node_api::{PeerCall, PeerCallBody};
use ring::rand::SecureRandom;
use tokio::sync::watch;

use crate::peer::methods;
use crate::signer::Signer;
use crate::tunnel::{self, Spares};

/// A listener: the topology, the remote service, its port, and the host address
/// (on one of the topology's networks) it listens at.
type Key = (TopologyRef, String, u16, IpAddr);

/// The listeners of this node's links, each with the links to the nodes that run
/// the service (the same service and port, one per node).
#[derive(Debug)]
pub struct Tunnels {
    signer: Arc<Signer>,
    /// A connection ready per peer node, for its next tunnel.
    spares: Spares,
    listening: HashMap<Key, (tokio::task::JoinHandle<()>, watch::Sender<Vec<Link>>)>,
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        for (task, _) in self.listening.values() {
            task.abort();
        }
    }
}

impl Tunnels {
    /// No links yet; calls are signed by `signer`.
    pub fn new(signer: Arc<Signer>) -> Self {
        Self {
            signer,
            spares: Spares::default(),
            listening: HashMap::new(),
        }
    }

    /// The addresses and ports the node listens at for its links now.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.listening
            .keys()
            .map(|(_, _, port, ip)| SocketAddr::new(*ip, *port))
            .collect()
    }

    /// Listens for every link in `assignments` at the host's addresses on that
    /// topology's networks (`gateways`), and stops listening for links no longer
    /// there. An address and port already taken is logged and skipped.
    pub async fn apply(
        &mut self,
        assignments: &[TopologyAssignment],
        gateways: &HashMap<TopologyRef, Vec<IpAddr>>,
    ) {
        let mut wanted: HashMap<Key, Vec<Link>> = HashMap::new();
        for a in assignments {
            let addresses = gateways.get(&a.id).map(Vec::as_slice).unwrap_or_default();
            for l in &a.links {
                for ip in addresses {
                    let key = (a.id.clone(), l.service.clone(), l.port, *ip);
                    wanted.entry(key).or_default().push(l.clone());
                }
            }
        }
        self.listening.retain(|key, (task, _)| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, mut links) in wanted {
            links.sort_by(|a, b| a.node.cmp(&b.node));
            if let Some((_, current)) = self.listening.get(&key) {
                current.send_replace(links);
                continue;
            }
            let (service, port) = (key.1.clone(), key.2);
            let address = SocketAddr::new(key.3, port);
            let listener = match tokio::net::TcpListener::bind(address).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%address, %service, error = %e, "cannot listen for a link");
                    continue;
                }
            };
            let nodes: Vec<&str> = links.iter().map(|l| l.node.as_str()).collect();
            tracing::info!(%address, %service, ?nodes, "link listening");
            let (tx, rx) = watch::channel(links);
            let (signer, spares) = (self.signer.clone(), self.spares.clone());
            let id = key.0.clone();
            let spread = Arc::new(std::sync::Mutex::new(Spread::default()));
            let task = tokio::spawn(async move {
                // Connections go to the node with the fewest open, in turn among equals.
                let mut next = 0usize;
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        // Out of descriptors, say: wait rather than spin.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let links = rx.borrow().clone();
                    let turn = next;
                    next = next.wrapping_add(1);
                    let order = {
                        let spread = spread.lock().unwrap_or_else(|p| p.into_inner());
                        order(&links, &spread, turn, std::time::Instant::now())
                    };
                    let (signer, id, spares) = (signer.clone(), id.clone(), spares.clone());
                    let (service, spread) = (service.clone(), spread.clone());
                    tokio::spawn(async move {
                        let tried = order.iter().map(|i| &links[*i]);
                        if let Err(e) = carry(socket, &id, tried, &spread, &signer, &spares).await {
                            tracing::warn!(%service, error = %e, "tunnel failed");
                        }
                    });
                }
            });
            self.listening.insert(key, (task, tx));
        }
    }
}

/// How long a node that failed to open a tunnel is tried after the others.
const FAILED_GOES_LAST: std::time::Duration = std::time::Duration::from_secs(5);

/// What one listener knows of the nodes it reaches: the tunnels open to each now, and
/// when each last failed to open one.
#[derive(Debug, Default)]
struct Spread {
    open: HashMap<String, usize>,
    failed: HashMap<String, std::time::Instant>,
}

/// The order to try `links` in for the `turn`th connection: the fewest open tunnels
/// first, equals in turn (so short connections go round), and a node that failed in
/// the last [`FAILED_GOES_LAST`] after all the others, so that a node that is gone
/// costs the connections after it nothing until it is tried again.
fn order(links: &[Link], spread: &Spread, turn: usize, now: std::time::Instant) -> Vec<usize> {
    let n = links.len().max(1);
    let mut indices: Vec<usize> = (0..links.len()).collect();
    indices.sort_by_key(|&i| {
        let node = &links[i].node;
        let failed = spread
            .failed
            .get(node)
            .is_some_and(|at| now.saturating_duration_since(*at) < FAILED_GOES_LAST);
        let open = spread.open.get(node).copied().unwrap_or(0);
        (failed, open, (i + n - turn % n) % n)
    });
    indices
}

/// Counts one open tunnel to a node for as long as it lives.
struct Counted<'a> {
    spread: &'a std::sync::Mutex<Spread>,
    node: String,
}

impl<'a> Counted<'a> {
    fn new(spread: &'a std::sync::Mutex<Spread>, node: &str) -> Self {
        let mut s = spread.lock().unwrap_or_else(|p| p.into_inner());
        *s.open.entry(node.to_owned()).or_default() += 1;
        s.failed.remove(node);
        Self {
            spread,
            node: node.to_owned(),
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut s = self.spread.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = s.open.get_mut(&self.node) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                s.open.remove(&self.node);
            }
        }
    }
}

/// Carries one connection through a tunnel to the first of `links` that opens one.
async fn carry<'l>(
    mut socket: tokio::net::TcpStream,
    id: &TopologyRef,
    links: impl Iterator<Item = &'l Link>,
    spread: &std::sync::Mutex<Spread>,
    signer: &Signer,
    spares: &Spares,
) -> Result<(), String> {
    let mut failures = Vec::new();
    let links: Vec<&Link> = links.collect();
    // What the client has already sent travels with the call, which saves a round
    // trip for clients that speak first; it is kept until a node opens the tunnel.
    let mut early = vec![0u8; EARLY];
    let read = socket.try_read(&mut early).unwrap_or(0);
    early.truncate(read);
    for (n, link) in links.iter().enumerate() {
        // The last node left is given as long as the caller waits: skipping it gains
        // nothing, and a loaded node may take longer than OPEN_WITHIN to answer.
        let within = match n + 1 < links.len() {
            true => OPEN_WITHIN,
            false => LAST_OPEN_WITHIN,
        };
        match open(id, link, signer, spares, within, &early).await {
            Ok(mut tunnel) => {
                let _counted = Counted::new(spread, &link.node);
                return tunnel::carry(&mut socket, &mut tunnel)
                    .await
                    .map_err(|e| e.to_string());
            }
            Err(e) => {
                tracing::info!(service = %link.service, node = %link.node, error = %e, "tunnel not opened; trying the next node");
                spread
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failed
                    .insert(link.node.clone(), std::time::Instant::now());
                failures.push(e);
            }
        }
    }
    Err(match failures.is_empty() {
        true => "no node to reach".to_owned(),
        false => failures.join("; "),
    })
}

/// Opens a tunnel to `link.node`, sending `early` (what the client had sent when
/// its connection was taken) right behind the call: the node reads it only once it
/// has allowed the call, and a refusal leaves it to be sent to the next node. A spare
/// connection the node closed meanwhile is replaced by a new one.
async fn open(
    id: &TopologyRef,
    link: &Link,
    signer: &Signer,
    spares: &Spares,
    within: std::time::Duration,
    early: &[u8],
) -> Result<tunnel::Connection, String> {
    let token = base64::engine::general_purpose::URL_SAFE
        .decode(&link.token)
        .map_err(|e| format!("unreadable token: {e}"))?;
    let peer_key = berth_protocol::assignment::hex_decode(&link.peer_key)
        .ok_or_else(|| format!("node {}'s key is not hex", link.node))?;
    // A node that neither answers nor refuses in time (gone, but its connection not
    // yet seen closed) is skipped like one that refuses, so that the connection goes
    // on to the next node while its client still waits.
    let opening = async {
        let (connection, spare) = spares
            .take(signer.tls(), &link.peer, &peer_key)
            .await
            .map_err(|e| format!("cannot reach node {}: {e}", link.node))?;
        let opened = tunnel::open(connection, &call(id, link, signer, token.clone())?, early).await;
        match opened {
            Err(tunnel::NotOpened::Connection(_)) if spare => {
                let fresh = signer
                    .tls()
                    .dial_tunnel(&link.peer, &peer_key)
                    .await
                    .map_err(|e| format!("cannot reach node {}: {e}", link.node))?;
                tunnel::open(fresh, &call(id, link, signer, token)?, early).await
            }
            opened => opened,
        }
        .map_err(|e| format!("node {} did not open the tunnel: {e}", link.node))
    };
    tokio::time::timeout(within, opening)
        .await
        .map_err(|_| format!("node {} did not answer within {within:?}", link.node))?
}

/// The signed call for a tunnel over `link`, fresh (its own time and nonce).
fn call(
    id: &TopologyRef,
    link: &Link,
    signer: &Signer,
    token: Vec<u8>,
) -> Result<PeerCall, String> {
    let mut nonce = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "the system random source failed".to_owned())?;
    let body = PeerCallBody {
        target: link.node.clone(),
        tenant: id.tenant.clone(),
        topology: id.topology.clone(),
        service: link.service.clone(),
        port: u32::from(link.port),
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        nonce,
        digest: String::new(),
    };
    Ok(signer.peer_call(methods::TUNNEL, token, &body))
}

/// The most a tunnel sends with its call of what its client has already sent.
const EARLY: usize = 16 * 1024;

/// How long a node has to open a tunnel before the next node is tried.
const OPEN_WITHIN: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long the last node left has to open a tunnel.
const LAST_OPEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn links(nodes: &[&str]) -> Vec<Link> {
        nodes
            .iter()
            .map(|n| Link {
                service: "db".into(),
                port: 5432,
                node: (*n).to_owned(),
                peer: String::new(),
                peer_key: String::new(),
                token: String::new(),
            })
            .collect()
    }

    fn names(links: &[Link], order: &[usize]) -> Vec<String> {
        order.iter().map(|i| links[*i].node.clone()).collect()
    }

    #[test]
    fn equals_are_taken_in_turn() {
        let l = links(&["a", "b", "c"]);
        let now = std::time::Instant::now();
        let firsts: Vec<String> = (0..4)
            .map(|turn| names(&l, &order(&l, &Spread::default(), turn, now))[0].clone())
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a"]);
        assert_eq!(
            names(&l, &order(&l, &Spread::default(), 1, now)),
            ["b", "c", "a"]
        );
    }

    #[test]
    fn the_node_with_fewest_open_tunnels_goes_first() {
        let l = links(&["a", "b", "c"]);
        let mut spread = Spread::default();
        spread.open.insert("a".into(), 2);
        spread.open.insert("c".into(), 1);
        let now = std::time::Instant::now();
        for turn in 0..3 {
            assert_eq!(names(&l, &order(&l, &spread, turn, now)), ["b", "c", "a"]);
        }
    }

    #[test]
    fn a_node_that_just_failed_goes_last_for_a_while() {
        let l = links(&["a", "b"]);
        let mut spread = Spread::default();
        let now = std::time::Instant::now();
        spread.failed.insert("a".into(), now);
        spread.open.insert("b".into(), 5);
        assert_eq!(names(&l, &order(&l, &spread, 0, now)), ["b", "a"]);
        let later = now + FAILED_GOES_LAST;
        assert_eq!(names(&l, &order(&l, &spread, 0, later)), ["a", "b"]);
    }

    #[test]
    fn an_open_tunnel_counts_until_it_ends() {
        let spread = std::sync::Mutex::new(Spread::default());
        spread
            .lock()
            .expect("lock")
            .failed
            .insert("a".into(), std::time::Instant::now());
        {
            let _one = Counted::new(&spread, "a");
            let _two = Counted::new(&spread, "a");
            let s = spread.lock().expect("lock");
            assert_eq!(s.open.get("a"), Some(&2));
            assert!(s.failed.is_empty(), "an open tunnel clears the failure");
        }
        assert!(spread.lock().expect("lock").open.is_empty());
    }
}
