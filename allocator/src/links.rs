//! Cross-node links, the allocator's side: for each topology a node runs part of, the
//! services it reaches that have no replica there, and for each of their ports and
//! each of (up to [`LINK_TARGETS`]) nodes that run one, a delegation allowing exactly
//! that node to tunnel to exactly that port of that service on that node. Tokens live [`LINK_TOKEN_LIFETIME`] and are minted
//! anew when half of it has passed; every mint is in the audit ledger first.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use berth_protocol::assignment::{Link, TopologyAssignment, TopologyRef};
use berth_protocol::delegation::{self, Grant, NodeOperation};
use berth_protocol::time::now_ms;
use berth_protocol::topology::Protocol;

use crate::Allocator;
use crate::identity::Identities;
use crate::ledger::Ledger;
use crate::ledger::{EntryKind, NewEntry};
use crate::root_keys::RootKeys;

/// How many nodes running a service a link may reach it on: connections go to each
/// in turn, and to the next when one cannot take them.
pub const LINK_TARGETS: usize = 3;

/// How long a link's token is valid.
pub const LINK_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// Which link a token is for: caller, target, topology, service, port.
pub(crate) type LinkKey = (String, String, TopologyRef, String, u16);

/// The token a link was last given.
#[derive(Clone, Debug)]
pub(crate) struct LinkToken {
    token: String,
    expires: SystemTime,
    /// The root key that signed it.
    key_id: u32,
    /// Its first revocation id.
    first_id: String,
    /// The topology revision it was minted for.
    revision: u64,
}

/// Tokens minted, by link.
pub(crate) type LinkTokens = HashMap<LinkKey, LinkToken>;

/// What minting links needs of the node API that sends them: the keys, the nodes'
/// identities and addresses, the placements, the ledger, and the tokens minted so far.
pub(crate) trait LinkContext: Sync {
    /// The root keys, once the server may sign.
    fn root_keys(&self) -> Option<RootKeys>;
    /// The nodes' identities.
    fn identities(&self) -> &Identities;
    /// The placements.
    fn allocator(&self) -> &Allocator;
    /// The address `node` serves its node API at, as it last said.
    fn peer_address(&self, node: &str) -> Option<String>;
    /// The audit ledger.
    fn ledger(&self) -> &Ledger;
    /// The tokens minted so far, by link.
    fn link_tokens(&self) -> std::sync::MutexGuard<'_, LinkTokens>;
}

/// Adds to each of `node`'s assignments the links its services need.
pub(crate) async fn add_links(cx: &impl LinkContext, node: &str, set: &mut [TopologyAssignment]) {
    let Some(keys) = cx.root_keys() else {
        return; // no key to mint with: no links
    };
    let (key_id, root) = keys.delegating(now_ms());
    let caller_key = match cx.identities().public_key(node).await {
        Ok(Some(key)) => key,
        _ => return,
    };
    // Targets' keys, read once for the whole set.
    let mut peer_keys: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    for assignment in set.iter_mut() {
        let (Ok(Some(spec)), Ok(placed)) = (
            cx.allocator().placed_spec(&assignment.id).await,
            cx.allocator().placed(&assignment.id).await,
        ) else {
            continue;
        };
        let here: BTreeSet<&str> = placed
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.service.as_str())
            .collect();
        let mut links = Vec::new();
        for (name, service) in &spec.services {
            if here.contains(name.as_str()) {
                continue; // a local replica answers by name already
            }
            // The nodes of its lowest replicas, a few, each reachable over TLS.
            let mut replicas: Vec<_> = placed.iter().filter(|p| &p.service == name).collect();
            replicas.sort_by_key(|p| p.replica);
            let mut targets = Vec::new();
            for replica in replicas {
                if targets.len() == LINK_TARGETS
                    || targets.iter().any(|(n, _, _)| n == &replica.node)
                {
                    continue;
                }
                let Some(peer) = cx.peer_address(&replica.node) else {
                    continue; // that node serves no node API
                };
                if !peer_keys.contains_key(&replica.node) {
                    let key = cx.identities().public_key(&replica.node).await;
                    peer_keys.insert(replica.node.clone(), key.ok().flatten());
                }
                let Some(Some(peer_key)) = peer_keys.get(&replica.node) else {
                    continue; // a node with no key cannot be reached over TLS
                };
                let peer_key = berth_protocol::assignment::hex_encode(peer_key);
                targets.push((replica.node.clone(), peer, peer_key));
            }
            let ports: BTreeSet<u16> = service
                .expose
                .iter()
                .filter(|e| e.protocol == Protocol::Tcp)
                .map(|e| e.port)
                .chain(
                    service
                        .ports
                        .iter()
                        .filter(|p| p.protocol == Protocol::Tcp)
                        .map(|p| p.target),
                )
                .collect();
            let mut each = Vec::new();
            for port in &ports {
                for target in &targets {
                    each.push((*port, target.clone()));
                }
            }
            for (port, (target, peer, peer_key)) in each {
                let grant = Grant {
                    caller: node.to_owned(),
                    caller_key: caller_key.clone(),
                    target: target.clone(),
                    operation: NodeOperation::Tunnel,
                    tenant: assignment.id.tenant.clone(),
                    topology: assignment.id.topology.clone(),
                    service: name.clone(),
                    port,
                    expires: SystemTime::now() + LINK_TOKEN_LIFETIME,
                };
                if let Some(token) =
                    link_token(cx, &grant, key_id, &root, assignment.revision).await
                {
                    links.push(Link {
                        service: name.clone(),
                        port,
                        node: target,
                        peer,
                        peer_key,
                        token,
                    });
                }
            }
        }
        assignment.links = links;
    }
}

/// The token for `grant`'s link: the one minted before while it has more than half
/// its life left and its key still signs, else a new one, recorded in the ledger
/// before it is handed out. After a rotation every link is renewed under the new
/// key, so the old key can be retired without cutting a link.
///
/// A link whose token was revoked is withheld (no token, so no listener) until a
/// new revision of the topology is placed: revoking cuts the link, and the topology
/// is what says again who may reach whom.
async fn link_token(
    cx: &impl LinkContext,
    grant: &Grant,
    key_id: u32,
    root: &biscuit_auth::KeyPair,
    revision: u64,
) -> Option<String> {
    let key: LinkKey = (
        grant.caller.clone(),
        grant.target.clone(),
        TopologyRef {
            tenant: grant.tenant.clone(),
            topology: grant.topology.clone(),
        },
        grant.service.clone(),
        grant.port,
    );
    let renew_after = SystemTime::now() + LINK_TOKEN_LIFETIME / 2;
    let previous = cx.link_tokens().get(&key).cloned();
    if let Some(last) = &previous {
        if last.revision == revision
            && cx
                .ledger()
                .is_revoked(std::slice::from_ref(&last.first_id))
                .await
                .unwrap_or(true)
        {
            return None; // revoked: withheld until the topology changes
        }
        if last.expires > renew_after && last.key_id == key_id {
            return Some(last.token.clone());
        }
    }
    let token = delegation::mint(root, key_id, grant).ok()?;
    // Which key signed it, for auditors and for rotation.
    let datalog = format!(
        "// root key {key_id}\n{}",
        token.print_block_source(0).unwrap_or_default()
    );
    let ids = berth_protocol::capability::revocation_ids(&token.revocation_identifiers());
    let first_id = ids.first().cloned().unwrap_or_default();
    let kind = if previous.is_some() {
        EntryKind::Renewed
    } else {
        EntryKind::Minted
    };
    let recorded = cx
        .ledger()
        .append_delegation(
            NewEntry {
                kind,
                actor: "platform".to_owned(),
                tenant: grant.tenant.clone(),
                subject: ids.first().cloned().unwrap_or_default(),
                detail: datalog,
                revocation_ids: ids,
            },
            now_ms(),
        )
        .await;
    if let Err(e) = recorded {
        // No token leaves without its entry.
        tracing::error!(error = %e, "a link token was not minted");
        return None;
    }
    let encoded = token.to_base64().ok()?;
    cx.link_tokens().insert(
        key,
        LinkToken {
            token: encoded.clone(),
            expires: grant.expires,
            key_id,
            first_id,
            revision,
        },
    );
    Some(encoded)
}

/// How many other nodes a node may fetch one pushed image from, unless the server
/// is told otherwise.
pub const IMAGE_SOURCES: usize = 3;

/// How many other nodes a node may fetch one pushed image from:
/// `BERTH_IMAGE_PEER_SOURCES`, else [`IMAGE_SOURCES`]; 0 has every node fetch from
/// the control plane alone.
fn image_sources() -> usize {
    static SOURCES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SOURCES.get_or_init(|| {
        std::env::var("BERTH_IMAGE_PEER_SOURCES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(IMAGE_SOURCES)
    })
}

/// Adds to each of `node`'s assignments the nodes it may fetch its pushed images
/// from: nodes running a replica of the same service revision's image (so holding
/// its blobs), each with a delegation for `image.fetch` of exactly that image of
/// exactly that tenant, minted, recorded and renewed as link tokens are. Sources are
/// listed from a different one first for each node, so fetches spread over them.
pub(crate) async fn add_image_sources(
    cx: &impl LinkContext,
    node: &str,
    set: &mut [TopologyAssignment],
) {
    let Some(keys) = cx.root_keys() else {
        return;
    };
    let (key_id, root) = keys.delegating(now_ms());
    let caller_key = match cx.identities().public_key(node).await {
        Ok(Some(key)) => key,
        _ => return,
    };
    for assignment in set.iter_mut() {
        let images: BTreeSet<berth_protocol::image::Digest> = assignment
            .services
            .values()
            .filter_map(|s| s.digest.clone())
            .collect();
        if images.is_empty() {
            continue;
        }
        let Ok(reported) = cx.allocator().statuses(&assignment.id).await else {
            continue;
        };
        let mut sources = Vec::new();
        for image in images {
            let services: BTreeSet<&str> = assignment
                .services
                .iter()
                .filter(|(_, s)| s.digest.as_ref() == Some(&image))
                .map(|(name, _)| name.as_str())
                .collect();
            let mut holders: Vec<String> = reported
                .iter()
                .filter(|r| {
                    r.node != node
                        && r.status.state == "running"
                        && services.contains(r.status.service.as_str())
                })
                .map(|r| r.node.clone())
                .collect();
            holders.sort();
            holders.dedup();
            if holders.is_empty() {
                continue;
            }
            let turn = node.bytes().map(usize::from).sum::<usize>() % holders.len();
            holders.rotate_left(turn);
            for holder in holders.into_iter().take(image_sources()) {
                let Some(peer) = cx.peer_address(&holder) else {
                    continue;
                };
                let Ok(Some(peer_key)) = cx.identities().public_key(&holder).await else {
                    continue;
                };
                let grant = Grant::image_fetch(
                    node,
                    caller_key.clone(),
                    &holder,
                    &assignment.id.tenant,
                    &image,
                    SystemTime::now() + LINK_TOKEN_LIFETIME,
                );
                if let Some(token) =
                    link_token(cx, &grant, key_id, &root, assignment.revision).await
                {
                    sources.push(berth_protocol::assignment::ImageSource {
                        image: image.clone(),
                        node: holder,
                        peer,
                        peer_key: berth_protocol::assignment::hex_encode(&peer_key),
                        token,
                    });
                }
            }
        }
        assignment.image_sources = sources;
    }
}
