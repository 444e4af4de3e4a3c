//! The node's own firewall on its host: an nftables table of its own (`inet
//! berth_node`), written through `nft`'s JSON interface, that makes the host answer the
//! pool's other nodes and its tenants' containers on the node API port only.
//!
//! - From the addresses of the pool's other nodes (the allocator sends them with every
//!   assignment set), a new connection reaches the node API port and nothing else: not
//!   the host's other services, not what a topology publishes.
//! - From containers (whatever arrives on a Docker bridge), a new connection to the host
//!   reaches the node API port and the link listeners the node opened for those
//!   containers' topologies (each its address and port, kept in a set), nothing else.
//! - What a topology publishes is reachable from other addresses as the admin's policy
//!   says (`--published-from`, default anywhere but the pool's nodes).
//! - Answers to the node's own connections (its stream to the control plane, its
//!   tunnels) and loopback pass.
//!
//! The table is replaced whole when the node starts (an agent killed before it could
//! remove it left it in force, which is the safe side), and removed when the node stops.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

/// The table's name, in the `inet` family.
pub const TABLE: &str = "berth_node";

/// Whether the node enforces its firewall, as `berth node list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The node installs and keeps its table.
    Enforce,
    /// The admin runs their own firewall; the node installs nothing.
    Off,
}

impl Mode {
    /// What the node tells the allocator.
    pub fn announced(self) -> &'static str {
        match self {
            Self::Enforce => "enforced",
            Self::Off => "off",
        }
    }
}

/// An IPv4 network, `ADDRESS/PREFIX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// Its first address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 network: write ADDRESS/PREFIX"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{text:?}: the prefix must be 0 to 32"))?;
        Ok(Self { address, prefix })
    }
}

/// The node's table, installed; removed when dropped.
#[derive(Debug)]
pub struct Firewall {
    nodes: BTreeSet<Ipv4Addr>,
    links: BTreeSet<SocketAddr>,
}

impl Firewall {
    /// Replaces the node's table with one that lets the pool's nodes and containers
    /// reach `node_api_port` only (nothing, for a node that serves no node API), and
    /// what is published be reached from `published_from` (anywhere when empty) but not
    /// from other nodes.
    pub async fn install(
        node_api_port: Option<u16>,
        published_from: &[Network],
    ) -> Result<Self, String> {
        apply(&ruleset(node_api_port, published_from)).await?;
        Ok(Self {
            nodes: BTreeSet::new(),
            links: BTreeSet::new(),
        })
    }

    /// Makes `addresses` the pool's other nodes (IPv4 ones; the table covers IPv4).
    pub async fn set_nodes(&mut self, addresses: &[String]) -> Result<(), String> {
        let nodes: BTreeSet<Ipv4Addr> = addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if nodes == self.nodes {
            return Ok(());
        }
        let elements: Vec<Value> = nodes.iter().map(|ip| json!(ip.to_string())).collect();
        apply(&replace_set("nodes", elements)).await?;
        self.nodes = nodes;
        Ok(())
    }

    /// Makes `listeners` the link listeners containers may reach on the host.
    pub async fn set_links(&mut self, listeners: &[SocketAddr]) -> Result<(), String> {
        let links: BTreeSet<SocketAddr> = listeners
            .iter()
            .copied()
            .filter(SocketAddr::is_ipv4)
            .collect();
        if links == self.links {
            return Ok(());
        }
        let elements: Vec<Value> = links
            .iter()
            .map(|l| json!({"concat": [l.ip().to_string(), l.port()]}))
            .collect();
        apply(&replace_set("links", elements)).await?;
        self.links = links;
        Ok(())
    }

    /// Removes the table (the node is leaving).
    pub async fn remove(self) -> Result<(), String> {
        let table = json!({"family": "inet", "name": TABLE});
        apply(&json!({"nftables": [{"delete": {"table": table}}]})).await
    }
}

/// The whole table, replacing any left from before in the same transaction.
fn ruleset(node_api_port: Option<u16>, published_from: &[Network]) -> Value {
    let table = json!({"family": "inet", "name": TABLE});
    let chain = |name: &str, hook: &str| {
        json!({"add": {"chain": {
            "family": "inet", "table": TABLE, "name": name,
            "type": "filter", "hook": hook, "prio": -5, "policy": "accept"
        }}})
    };
    let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}});
    let established = json!({"match": {"op": "in",
        "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let from_nodes = json!({"match": {"op": "==",
        "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@nodes"}});
    let dnat = json!({"match": {"op": "in",
        "left": {"ct": {"key": "status"}}, "right": "dnat"}});
    let arrives_on = |interface: &str| json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": interface}});
    let (accept, drop) = (json!({"accept": null}), json!({"drop": null}));
    let mut commands = vec![
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
        json!({"add": {"set": {"family": "inet", "table": TABLE, "name": "nodes",
            "type": "ipv4_addr"}}}),
        json!({"add": {"set": {"family": "inet", "table": TABLE, "name": "links",
            "type": ["ipv4_addr", "inet_service"]}}}),
        chain("input", "input"),
        rule("input", vec![established.clone(), accept.clone()]),
        rule("input", vec![arrives_on("lo"), accept.clone()]),
    ];
    if let Some(port) = node_api_port {
        commands.push(rule(
            "input",
            vec![
                json!({"match": {"op": "==",
                    "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": port}}),
                accept.clone(),
            ],
        ));
    }
    commands.extend([
        rule(
            "input",
            vec![
                json!({"match": {"op": "==",
                    "left": {"concat": [
                        {"payload": {"protocol": "ip", "field": "daddr"}},
                        {"payload": {"protocol": "tcp", "field": "dport"}}
                    ]},
                    "right": "@links"}}),
                accept.clone(),
            ],
        ),
        rule("input", vec![from_nodes.clone(), drop.clone()]),
        rule("input", vec![arrives_on("docker0"), drop.clone()]),
        rule("input", vec![arrives_on("br-*"), drop.clone()]),
        chain("forward", "forward"),
        rule("forward", vec![established, accept]),
        rule("forward", vec![dnat.clone(), from_nodes, drop.clone()]),
    ]);
    if !published_from.is_empty() {
        let allowed: Vec<Value> = published_from
            .iter()
            .map(|n| json!({"prefix": {"addr": n.address.to_string(), "len": n.prefix}}))
            .collect();
        commands.push(rule(
            "forward",
            vec![
                dnat,
                json!({"match": {"op": "!=",
                    "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"set": allowed}}}),
                drop,
            ],
        ));
    }
    json!({ "nftables": commands })
}

/// Empties the set `name` and fills it with `elements`, in one transaction.
fn replace_set(name: &str, elements: Vec<Value>) -> Value {
    let set = |extra: Option<Vec<Value>>| {
        let mut set = json!({"family": "inet", "table": TABLE, "name": name});
        if let Some(elements) = extra {
            set["elem"] = Value::Array(elements);
        }
        set
    };
    let mut commands = vec![json!({"flush": {"set": set(None)}})];
    if !elements.is_empty() {
        commands.push(json!({"add": {"element": set(Some(elements))}}));
    }
    json!({ "nftables": commands })
}

/// Runs `nft -j -f -` with `batch`.
async fn apply(batch: &Value) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run nft ({e}): install nftables, or run the node with --firewall off if you keep your own firewall"))?;
    let mut stdin = child.stdin.take().ok_or("nft has no input")?;
    stdin
        .write_all(batch.to_string().as_bytes())
        .await
        .map_err(|e| format!("writing to nft: {e}"))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the node's rules: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_read_with_their_prefix() {
        let n: Network = "10.1.0.0/16".parse().expect("network");
        assert_eq!((n.address, n.prefix), (Ipv4Addr::new(10, 1, 0, 0), 16));
        let one: Network = "192.0.2.7".parse().expect("address");
        assert_eq!(one.prefix, 32);
        assert!("10.1.0.0/33".parse::<Network>().is_err());
        assert!("example/8".parse::<Network>().is_err());
    }

    /// The table's rules in order: their chain, their matches' right-hand sides and
    /// their verdict.
    fn rules(batch: &Value) -> Vec<(String, Vec<Value>, String)> {
        batch["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|command| command["add"].get("rule"))
            .map(|rule| {
                let expr = rule["expr"].as_array().cloned().unwrap_or_default();
                let rights = expr.iter().filter_map(|e| e["match"].get("right").cloned());
                let verdict = expr
                    .iter()
                    .find_map(|e| e.as_object().and_then(|o| o.keys().find(|k| *k != "match")))
                    .cloned()
                    .unwrap_or_default();
                (
                    rule["chain"].as_str().unwrap_or_default().to_owned(),
                    rights.collect(),
                    verdict,
                )
            })
            .collect()
    }

    #[test]
    fn the_table_lets_only_the_node_api_port_through_from_nodes() {
        let table = rules(&ruleset(Some(7443), &[]));
        let at = |chain: &str, right: &Value, verdict: &str| {
            table
                .iter()
                .position(|(c, r, v)| c == chain && r.contains(right) && v == verdict)
        };
        let api = at("input", &json!(7443), "accept").expect("the node API is let in");
        let nodes = at("input", &json!("@nodes"), "drop").expect("other nodes are dropped");
        assert!(api < nodes, "{table:?}");
        // Containers reach their links, and nothing else on the host.
        let links = at("input", &json!("@links"), "accept").expect("links");
        let bridges = at("input", &json!("br-*"), "drop").expect("bridges dropped");
        assert!(links < bridges, "{table:?}");
        // What is published is not reached from other nodes.
        assert!(
            at("forward", &json!("@nodes"), "drop").is_some(),
            "{table:?}"
        );
        // No published-from rule unless the admin restricts it.
        assert_eq!(table.iter().filter(|(c, ..)| c == "forward").count(), 2);
        let restricted = rules(&ruleset(Some(7443), &["10.9.0.0/16".parse().expect("net")]));
        let allowed = json!({"set": [{"prefix": {"addr": "10.9.0.0", "len": 16}}]});
        assert!(
            restricted
                .iter()
                .any(|(c, r, v)| c == "forward" && r.contains(&allowed) && v == "drop"),
            "{restricted:?}"
        );
        // A node that serves no node API lets no port in from nodes or containers.
        let closed = rules(&ruleset(None, &[]));
        assert!(
            !closed
                .iter()
                .any(|(_, r, v)| v == "accept" && r.iter().any(Value::is_u64)),
            "{closed:?}"
        );
    }

    #[test]
    fn an_empty_set_is_only_flushed() {
        let batch = replace_set("nodes", vec![]);
        assert_eq!(batch["nftables"].as_array().map(Vec::len), Some(1));
        let filled = replace_set("links", vec![json!({"concat": ["10.0.0.1", 80]})]);
        assert_eq!(
            filled["nftables"][1]["add"]["element"]["elem"][0]["concat"][1],
            80
        );
    }
}
