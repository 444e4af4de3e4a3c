//! "Who can call what" now: the node-to-node delegations in force, read back from the
//! audit ledger (the datalog of every delegation minted or renewed, never a token),
//! without those revoked or past their expiry. One edge per caller, operation and
//! resource; as JSON for tools and as DOT for people.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use berth_protocol::delegation;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};

use crate::entity::audit_entry;
use crate::ledger::{EntryKind, Ledger, LedgerError};
use crate::links::LINK_TOKEN_LIFETIME;

/// One delegation in force: `caller` may call `operation` on `target` for one service
/// port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Edge {
    /// The calling node.
    pub caller: String,
    /// The operation (`tunnel`, `health`).
    pub operation: String,
    /// The called node.
    pub target: String,
    /// The service's tenant.
    pub tenant: String,
    /// The service's topology.
    pub topology: String,
    /// The service.
    pub service: String,
    /// Its port (0 for operations on the whole service).
    pub port: u16,
    /// The newest token granting it, by its first revocation id (`berth audit explain`).
    pub token: String,
    /// When that token was minted, Unix milliseconds.
    pub minted_at_ms: i64,
}

/// The graph of who can call what.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reach {
    /// Every node that calls or is called.
    pub nodes: Vec<String>,
    /// The delegations in force, sorted.
    pub edges: Vec<Edge>,
}

impl Ledger {
    /// The delegations in force at `now`, of `tenant`'s services or of all.
    pub async fn reach(&self, tenant: Option<&str>, now: SystemTime) -> Result<Reach, LedgerError> {
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let oldest = now_ms
            .saturating_sub(i64::try_from(LINK_TOKEN_LIFETIME.as_millis()).unwrap_or(i64::MAX));
        let mut query = audit_entry::Entity::find()
            .filter(
                audit_entry::Column::Kind
                    .is_in([EntryKind::Minted.as_str(), EntryKind::Renewed.as_str()]),
            )
            .filter(audit_entry::Column::AtMs.gte(oldest))
            .filter(audit_entry::Column::Detail.contains("caller("))
            .order_by_asc(audit_entry::Column::Seq);
        if let Some(tenant) = tenant {
            query = query.filter(audit_entry::Column::Tenant.eq(tenant));
        }
        let rows = query.all(self.connection()).await?;
        // Newest token per edge: later rows replace earlier ones.
        // By caller, operation and service port (`service_id`).
        let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
        for entry in rows.into_iter().map(crate::ledger::entry_of) {
            let ids = &entry.revocation_ids;
            if self.is_revoked(ids).await? {
                continue;
            }
            let Ok(stated) = delegation::stated(&entry.detail, now) else {
                continue; // not datalog a delegation is made of
            };
            for s in stated.into_iter().filter(|s| s.live) {
                if tenant.is_some_and(|t| t != s.tenant) {
                    continue;
                }
                let edge = Edge {
                    caller: s.caller,
                    operation: s.operation,
                    target: s.target,
                    tenant: s.tenant,
                    topology: s.topology,
                    service: s.service,
                    port: s.port,
                    token: ids.first().cloned().unwrap_or_default(),
                    minted_at_ms: entry.at_ms,
                };
                let key = (
                    edge.caller.clone(),
                    edge.operation.clone(),
                    service_id(&edge),
                );
                edges.insert(key, edge);
            }
        }
        let edges: Vec<Edge> = edges.into_values().collect();
        let nodes: BTreeSet<String> = edges
            .iter()
            .flat_map(|e| [e.caller.clone(), e.target.clone()])
            .collect();
        Ok(Reach {
            nodes: nodes.into_iter().collect(),
            edges,
        })
    }
}

impl Reach {
    /// The graph in Graphviz DOT: nodes as boxes, each called node's services inside
    /// it, an arrow per delegation labelled with its operation.
    pub fn to_dot(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut dot =
            String::from("digraph \"who can call what\" {\n  rankdir=LR;\n  node [shape=box];\n");
        let mut services: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for e in &self.edges {
            services.entry(&e.target).or_default().insert(service_id(e));
        }
        for node in &self.nodes {
            let _ = writeln!(dot, "  {} [label={}];", q(&format!("node:{node}")), q(node));
        }
        for (i, (node, ids)) in services.iter().enumerate() {
            let _ = writeln!(dot, "  subgraph cluster_{i} {{\n    label={};", q(node));
            for id in ids {
                let label = id.split_once('@').map_or(id.as_str(), |(s, _)| s);
                let _ = writeln!(dot, "    {} [label={}, shape=ellipse];", q(id), q(label));
            }
            dot.push_str("  }\n");
        }
        for e in &self.edges {
            let _ = writeln!(
                dot,
                "  {} -> {} [label={}];",
                q(&format!("node:{}", e.caller)),
                q(&service_id(e)),
                q(&e.operation)
            );
        }
        dot.push_str("}\n");
        dot
    }
}

/// A service port on a node, as a DOT node id: `tenant/topology/service:port@node`.
fn service_id(e: &Edge) -> String {
    format!(
        "{}/{}/{}:{}@{}",
        e.tenant, e.topology, e.service, e.port, e.target
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_names_every_node_service_and_delegation_and_escapes_quotes() {
        let edge = Edge {
            caller: "n1".into(),
            operation: "tunnel".into(),
            target: "n\"2".into(),
            tenant: "acme".into(),
            topology: "shop".into(),
            service: "db".into(),
            port: 5432,
            token: "ab".into(),
            minted_at_ms: 1,
        };
        let reach = Reach {
            nodes: vec!["n1".into(), "n\"2".into()],
            edges: vec![edge],
        };
        let dot = reach.to_dot();
        assert!(
            dot.contains("\"node:n1\" -> \"acme/shop/db:5432@n\\\"2\" [label=\"tunnel\"];"),
            "{dot}"
        );
        assert!(dot.contains("label=\"n\\\"2\""), "{dot}");
        assert!(
            dot.contains("[label=\"acme/shop/db:5432\", shape=ellipse]"),
            "{dot}"
        );
    }
}
