//! "Who can call what" now: the node-to-node delegations in force, read back from the
//! audit ledger (the datalog of every delegation minted or renewed, never a token),
//! without those revoked or past their expiry. One edge per caller, operation and
//! resource; as JSON for tools and as DOT for people.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use berth_protocol::delegation;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

pub use berth_api::audit::{Edge, Reach};

use crate::entity::audit_entry;
use crate::ledger::{EntryKind, Ledger, LedgerError};
use crate::links::LINK_TOKEN_LIFETIME;

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
            .filter(audit_entry::Column::Delegation.eq(true))
            .order_by_asc(audit_entry::Column::Seq);
        if let Some(tenant) = tenant {
            query = query.filter(audit_entry::Column::Tenant.eq(tenant));
        }
        let rows = query.all(self.connection()).await?;
        // Newest token per edge: later rows replace earlier ones.
        // By caller, operation and service port (`service_id`).
        let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
        for entry in rows.into_iter().map(crate::ledger::entry_of) {
            let entry = entry?;
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
                    edge.service_id(),
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
