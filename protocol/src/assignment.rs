//! What the allocator hands a node: the part of a topology that runs there.
//!
//! A node never sees more than its own slots: the services it runs, and the networks
//! and volumes those services use. Each slot carries the generation under which it was
//! placed, so a node that returns after its slots moved can tell that it is stale.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::{Network, Service, Volume};

/// Identifies a topology: the tenant that owns it and its name within the tenant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopologyRef {
    /// The owning tenant.
    pub tenant: String,
    /// The topology's name.
    pub topology: String,
}

impl TopologyRef {
    /// The prefix of every Docker object of this topology: `tenant.topology`. Tenant and
    /// topology names never hold a `.`, so two topologies never share a prefix.
    pub fn prefix(&self) -> String {
        format!("{}.{}", self.tenant, self.topology)
    }

    /// The container name of one replica, `tenant.topology.service.N`.
    pub fn container_name(&self, service: &str, replica: u32) -> String {
        format!("{}.{service}.{replica}", self.prefix())
    }

    /// The Docker name of one of the topology's networks or volumes.
    pub fn object_name(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix())
    }
}

impl std::fmt::Display for TopologyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.topology)
    }
}

/// How a node names the Docker objects it creates, and which it counts as its own.
///
/// Unscoped, objects are named `tenant.topology.…` (the embedded local plane), and
/// objects a node agent made are not its own. Node agents scope by their node name and
/// their pool: objects are named `node.pool.tenant.topology.…` and labelled
/// `berth.node` and `berth.pool`, so that several agents, of one pool or of several (two
/// `berth dev` servers, a pool beside a local `berth up`), may share one engine and
/// never touch each other's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    node: Option<String>,
    pool: Option<String>,
}

impl Scope {
    /// No scope: the engine belongs to the local plane.
    pub fn unscoped() -> Self {
        Scope::default()
    }

    /// Objects named and labelled for `node`, of a pool whose identity is not known
    /// (a node that joined before pools had one).
    pub fn node(node: &str) -> Self {
        Scope {
            node: Some(node.to_owned()),
            pool: None,
        }
    }

    /// Objects named and labelled for `node` of `pool`.
    pub fn node_of(pool: &str, node: &str) -> Self {
        Scope {
            node: Some(node.to_owned()),
            pool: Some(pool.to_owned()),
        }
    }

    /// The node, when scoped.
    pub fn node_name(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The labels, beyond the topology's, that mark an object as this scope's.
    pub fn labels(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(node) = &self.node {
            out.push((labels::NODE, node.as_str()));
        }
        if let Some(pool) = &self.pool {
            out.push((labels::POOL, pool.as_str()));
        }
        out
    }

    /// Whether an object labelled `get` is this scope's own: with the scope's labels,
    /// or, unscoped, with no node's.
    pub fn owns<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        match &self.node {
            None => get(labels::NODE).is_none(),
            Some(_) => self.labels().iter().all(|(k, v)| get(k) == Some(*v)),
        }
    }

    /// The container name of one replica.
    pub fn container_name(&self, id: &TopologyRef, service: &str, replica: u32) -> String {
        self.prefixed(id.container_name(service, replica))
    }

    /// The Docker name of one of the topology's networks or volumes.
    pub fn object_name(&self, id: &TopologyRef, name: &str) -> String {
        self.prefixed(id.object_name(name))
    }

    fn prefixed(&self, name: String) -> String {
        match (&self.node, &self.pool) {
            (Some(node), Some(pool)) => format!("{node}.{pool}.{name}"),
            (Some(node), None) => format!("{node}.{name}"),
            (None, _) => name,
        }
    }
}

/// One replica of one service, placed on one node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot {
    /// The service.
    pub service: String,
    /// The replica number, from 1.
    pub replica: u32,
    /// The placement generation: grows each time the slot is placed anew.
    pub generation: u64,
}

/// The part of one topology a node must run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopologyAssignment {
    /// Which topology.
    pub id: TopologyRef,
    /// The topology revision this assignment implements.
    pub revision: u64,
    /// The specs of the services that have slots here.
    pub services: BTreeMap<String, Service>,
    /// The networks those services join.
    pub networks: BTreeMap<String, Network>,
    /// The volumes those services mount.
    pub volumes: BTreeMap<String, Volume>,
    /// The slots on this node.
    pub slots: Vec<Slot>,
    /// The W3C trace context of the deploy that placed this revision, so that the
    /// node's work on it joins the deploy's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Services of the topology with no replica on this node that its services reach
    /// by name: each through a tunnel to a node that runs one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// What the admin allowed the tenant beyond the pool's default policy, for the
    /// node's own check before it creates a container.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub allow: std::collections::BTreeSet<String>,
    /// Other nodes that hold the pushed images this topology's services run here,
    /// each with a delegation to fetch that one image from it; the control plane
    /// serves what none of them can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_sources: Vec<ImageSource>,
    /// The tenant's credentials for the registries this topology's images here come
    /// from, and only those; sent with the assignment, never stored with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_credentials: Vec<RegistryCredential>,
}

/// A tenant's login to one registry. Its `Debug` leaves the password out, so that no
/// log line carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// The registry (`host[:port]`), as image references name it.
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A node that holds one of a tenant's pushed images, and the right to fetch it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The image's id.
    pub image: crate::image::Digest,
    /// The node that holds it.
    pub node: String,
    /// That node's API (`http://host:port`).
    pub peer: String,
    /// That node's Ed25519 public key (hex).
    pub peer_key: String,
    /// The delegation token (biscuit, base64) for `image.fetch` of this image there.
    pub token: String,
}

/// How a node reaches one port of a service that runs only on other nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The service, as its clients name it.
    pub service: String,
    /// Its container port.
    pub port: u16,
    /// The node that runs a replica of it.
    pub node: String,
    /// That node's API (`http://host:port`).
    pub peer: String,
    /// That node's Ed25519 public key (hex): the only key the calling node accepts
    /// at the other end of the connection.
    #[serde(default)]
    pub peer_key: String,
    /// The delegation token allowing this node to tunnel there (biscuit, base64); it
    /// expires soon and is renewed in a later set.
    pub token: String,
}

/// Bytes as lowercase hex, as keys travel in assignments.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex; `None` when it is not hex.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Labels Berth puts on every Docker object it creates; they are how a node finds
/// what it owns.
pub mod labels {
    /// Marks an object as Berth's.
    pub const MANAGED: &str = "berth.managed";
    /// The owning tenant.
    pub const TENANT: &str = "berth.tenant";
    /// The topology.
    pub const TOPOLOGY: &str = "berth.topology";
    /// The service (containers).
    pub const SERVICE: &str = "berth.service";
    /// The replica number (containers).
    pub const REPLICA: &str = "berth.replica";
    /// The slot's placement generation (containers).
    pub const GENERATION: &str = "berth.generation";
    /// A hash of everything the container was created from; a change means replace.
    pub const CONFIG_HASH: &str = "berth.config-hash";
    /// The network's or volume's name within the topology.
    pub const NAME: &str = "berth.name";
    /// The node that owns the object, when the node runtime is scoped.
    pub const NODE: &str = "berth.node";
    /// The pool of that node.
    pub const POOL: &str = "berth.pool";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_encode(&[0, 255, 16]), "00ff10");
        assert_eq!(hex_decode("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_decode("00FF10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("abc"), None);
    }

    #[test]
    fn a_scope_owns_only_what_carries_its_node_and_pool() {
        let labelled = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
        };
        let ours = Scope::node_of("p1", "local");
        assert!(ours.owns(labelled(&[(labels::NODE, "local"), (labels::POOL, "p1")])));
        assert!(!ours.owns(labelled(&[(labels::NODE, "local"), (labels::POOL, "p2")])));
        assert!(!ours.owns(labelled(&[(labels::NODE, "local")])));
        assert!(!ours.owns(labelled(&[])));
        let local = Scope::unscoped();
        assert!(local.owns(labelled(&[])));
        assert!(!local.owns(labelled(&[(labels::NODE, "local"), (labels::POOL, "p1")])));
        let id = TopologyRef {
            tenant: "t".into(),
            topology: "app".into(),
        };
        assert_ne!(
            Scope::node_of("p1", "local").container_name(&id, "web", 1),
            Scope::node_of("p2", "local").container_name(&id, "web", 1)
        );
    }

    #[test]
    fn names_cannot_collide_across_tenants() {
        let a = TopologyRef {
            tenant: "a-b".into(),
            topology: "c".into(),
        };
        let b = TopologyRef {
            tenant: "a".into(),
            topology: "b-c".into(),
        };
        assert_ne!(a.prefix(), b.prefix());
        assert_eq!(a.container_name("web", 2), "a-b.c.web.2");
        assert_eq!(b.object_name("default"), "a.b-c.default");
    }
}
