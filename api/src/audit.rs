//! The audit ledger as auditors read it: entries, the chain's verification, tokens and
//! decisions explained, revocations, the graph of who can call what, and root keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A token was made.
    Minted,
    /// A token was narrowed by its holder and the narrower token shown to Berth.
    Attenuated,
    /// A token was made anew before the old one expired.
    Renewed,
    /// Revocation ids were revoked.
    Revoked,
    /// An authorization decision (allowed or denied, with the reason).
    Decision,
    /// A root key was introduced or retired.
    #[serde(rename = "root-key")]
    RootKey,
    /// A tenant's policy was changed by an admin.
    Policy,
}

impl EntryKind {
    /// The word stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minted => "minted",
            Self::Attenuated => "attenuated",
            Self::Renewed => "renewed",
            Self::Revoked => "revoked",
            Self::Decision => "decision",
            Self::RootKey => "root-key",
            Self::Policy => "policy",
        }
    }

    /// The kind a stored word names.
    pub fn parse(word: &str) -> Option<Self> {
        [
            Self::Minted,
            Self::Attenuated,
            Self::Renewed,
            Self::Revoked,
            Self::Decision,
            Self::RootKey,
            Self::Policy,
        ]
        .into_iter()
        .find(|k| k.as_str() == word)
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Its place in the chain, from 1.
    pub seq: u64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// What it records.
    pub kind: EntryKind,
    /// Who acted.
    pub actor: String,
    /// The tenant concerned.
    pub tenant: String,
    /// What it is about.
    pub subject: String,
    /// The token's datalog or the decision's reason.
    pub detail: String,
    /// The token's revocation ids, hex.
    pub revocation_ids: Vec<String>,
    /// The hash of the entry before.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// What [`Ledger::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verification {
    /// Whether every entry is intact and in place.
    pub intact: bool,
    /// How many entries were checked.
    pub entries: u64,
    /// The hash of the last entry (the head of the chain).
    pub head: String,
    /// The first problem found, naming the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The anchor to keep outside the database (`SEQ:HASH` of the head), so that a
    /// later verification can tell a rewritten or cut history (empty for an empty
    /// ledger).
    #[serde(default)]
    pub anchor: String,
    /// The witness's anchor the chain was checked against, when the server keeps a
    /// witness and no other anchor was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witnessed: Option<Witnessed>,
}

/// Which entries to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only entries whose subject contains this.
    pub subject: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// An anchor the witness took, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Witnessed {
    /// The anchor (`SEQ:HASH`).
    pub anchor: String,
    /// When it was taken, in Unix milliseconds.
    pub at_ms: i64,
}

/// Whose auditor asks, and against what.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// The auditor's own tenant (admins may leave it out).
    pub tenant: Option<String>,
    /// An anchor kept from an earlier verification (`SEQ:HASH`): that entry must still
    /// be there with that hash.
    #[param(pattern = "^[1-9][0-9]{0,18}:[0-9a-fA-F]{64}$")]
    pub anchor: Option<String>,
}

/// A token explained.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explained {
    /// The entry that minted it.
    pub minted: Entry,
    /// Whether any of its revocation ids is revoked.
    pub revoked: bool,
    /// Every later entry about it (attenuations, revocations), oldest first.
    pub history: Vec<Entry>,
}

/// `POST /v1/audit/revocations`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// Revocation ids, hex: a token's first id revokes it and every token attenuated
    /// from it; a later block's id revokes only the tokens that carry that block.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Instead of ids: every delegation in force that this node calls with or is
    /// called under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Instead of ids: every token minted for this tenant that may still be valid
    /// (sessions and delegations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Why, for the ledger.
    #[serde(default)]
    pub reason: String,
}

/// Which part of the graph, in which form.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GraphQuery {
    /// Only delegations to this tenant's services (auditors must name their own).
    pub tenant: Option<String>,
    /// `json` (the default) or `dot` (Graphviz).
    #[param(pattern = "^(json|dot)$")]
    pub format: Option<String>,
}

/// A decision explained.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionExplained {
    /// The decision as the deciding node reported it (`actor` is that node).
    pub decision: Entry,
    /// Whether the call was allowed.
    pub allowed: bool,
    /// The authorizer's reason.
    pub reason: String,
    /// The token presented, as Berth minted it, when Berth minted it; absent for a
    /// token Berth never minted (garbage, or signed by a forged root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Explained>,
    /// Revocation ids of blocks of the presented token that Berth never minted nor
    /// saw: blocks its holder appended.
    pub unknown_blocks: Vec<String>,
}

/// Whether to retire a key whose tokens may still be valid.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetireQuery {
    /// Retire now: tokens the key signed are refused at once.
    #[serde(default)]
    pub force: bool,
}

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

impl Reach {
    /// The graph in Graphviz DOT: nodes as boxes, each called node's services inside
    /// it, an arrow per delegation labelled with its operation.
    pub fn to_dot(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut dot =
            String::from("digraph \"who can call what\" {\n  rankdir=LR;\n  node [shape=box];\n");
        let mut services: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for e in &self.edges {
            services
                .entry(&e.target)
                .or_default()
                .insert(e.service_id());
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
                q(&e.service_id()),
                q(&e.operation)
            );
        }
        dot.push_str("}\n");
        dot
    }
}

impl Edge {
    /// The service port it reaches, as a DOT node id: `tenant/topology/service:port@node`.
    pub fn service_id(&self) -> String {
        format!(
            "{}/{}/{}:{}@{}",
            self.tenant, self.topology, self.service, self.port, self.target
        )
    }
}

/// One key, as listed (never its private half).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RootKeyInfo {
    /// The id tokens carry.
    pub id: u32,
    /// The public key, as biscuit tools take it: `ed25519/HEX`.
    pub public_key: String,
    /// Whether new tokens are signed with it (exactly one key is).
    pub signing: bool,
    /// When a newer key took over signing, Unix milliseconds; absent for the signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at_ms: Option<i64>,
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
