//! What happened to a topology's replicas, for the people who run them: placed,
//! rescheduled (moved to another node), removed, and each change of state a node
//! reports (`started`, `failed`, ...). Placement events are written in the deploy's own
//! transaction, so a refused deploy leaves none; state events when the node reports
//! a change. Each topology keeps its newest [`KEPT`] events.

use std::collections::HashMap;

use berth_protocol::assignment::TopologyRef;
use berth_protocol::node_api::ReplicaStatus;
use berth_protocol::replica::ReplicaState;
use berth_protocol::topology::Topology;
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::entity::replica_event;
use crate::placement::Placed;
use crate::store::{column, to_i64};
use crate::{Allocator, AllocatorError};

/// How many events a topology keeps.
pub const KEPT: u64 = 500;

pub use berth_api::topologies::{Event, EventKind};

/// An event of `slot`, its time set when it is recorded.
fn slot_event(kind: EventKind, slot: &Placed, detail: String) -> Event {
    Event {
        at_ms: 0,
        kind,
        service: slot.service.clone(),
        replica: slot.replica,
        generation: slot.generation,
        node: slot.node.clone(),
        detail,
    }
}

/// What a placement changes: each replica placed anew, moved, or no longer wanted.
pub(crate) fn placement_events(before: &[Placed], after: &[Placed]) -> Vec<Event> {
    let old: HashMap<(&str, u32), &Placed> = before
        .iter()
        .map(|p| ((p.service.as_str(), p.replica), p))
        .collect();
    let mut events = Vec::new();
    for slot in after {
        match old.get(&(slot.service.as_str(), slot.replica)) {
            Some(was) if was.generation == slot.generation => {}
            Some(was) if was.node != slot.node => events.push(slot_event(
                EventKind::Rescheduled,
                slot,
                format!("moved from {} to {}", was.node, slot.node),
            )),
            Some(_) => events.push(slot_event(
                EventKind::Placed,
                slot,
                "replaced where it was".to_owned(),
            )),
            None => events.push(slot_event(
                EventKind::Placed,
                slot,
                format!("on {}", slot.node),
            )),
        }
    }
    let kept: std::collections::HashSet<(&str, u32)> = after
        .iter()
        .map(|p| (p.service.as_str(), p.replica))
        .collect();
    for was in before {
        if !kept.contains(&(was.service.as_str(), was.replica)) {
            events.push(slot_event(
                EventKind::Removed,
                was,
                format!("no longer wanted on {}", was.node),
            ));
        }
    }
    events
}

/// What a report changes: each replica whose state (or generation) differs from what
/// was last reported for it.
pub(crate) fn state_events(
    node: &str,
    previous: &HashMap<(String, String, String, u32), (u64, String)>,
    statuses: &[ReplicaStatus],
) -> Vec<(TopologyRef, Event)> {
    statuses
        .iter()
        .filter(|s| {
            let key = (
                s.tenant.clone(),
                s.topology.clone(),
                s.service.clone(),
                s.replica,
            );
            previous.get(&key) != Some(&(s.generation, s.state.clone()))
        })
        .map(|s| {
            (
                TopologyRef {
                    tenant: s.tenant.clone(),
                    topology: s.topology.clone(),
                },
                Event {
                    at_ms: 0,
                    kind: EventKind::of_state(ReplicaState::parse(&s.state)),
                    service: s.service.clone(),
                    replica: s.replica,
                    generation: s.generation,
                    node: node.to_owned(),
                    detail: s.detail.clone(),
                },
            )
        })
        .collect()
}

/// Appends `events` of `id`, then forgets all but its newest [`KEPT`].
pub(crate) async fn record(
    db: &impl ConnectionTrait,
    id: &TopologyRef,
    events: &[Event],
    now_ms: i64,
) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        return append_and_trim(db, id, events, now_ms).await;
    }
    for chunk in events.chunks(500) {
        let rows = chunk.iter().map(|e| replica_event::ActiveModel {
            tenant: Set(id.tenant.clone()),
            topology: Set(id.topology.clone()),
            service: Set(e.service.clone()),
            replica: Set(i64::from(e.replica)),
            generation: Set(to_i64(e.generation)),
            node: Set(e.node.clone()),
            kind: Set(e.kind.as_str().to_owned()),
            detail: Set(e.detail.clone()),
            at_ms: Set(now_ms),
            ..Default::default()
        });
        replica_event::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await?;
    }
    let oldest_kept: Option<i64> = replica_event::Entity::find()
        .select_only()
        .column(replica_event::Column::Id)
        .filter(replica_event::Column::Tenant.eq(&id.tenant))
        .filter(replica_event::Column::Topology.eq(&id.topology))
        .order_by_desc(replica_event::Column::Id)
        .offset(KEPT - 1)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    if let Some(oldest) = oldest_kept {
        replica_event::Entity::delete_many()
            .filter(replica_event::Column::Tenant.eq(&id.tenant))
            .filter(replica_event::Column::Topology.eq(&id.topology))
            .filter(replica_event::Column::Id.lt(oldest))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Appends `events` of `id` on PostgreSQL and forgets all but its newest [`KEPT`], in
/// one statement and one round trip (see [`append_and_trim_ctes`]).
async fn append_and_trim(
    db: &impl ConnectionTrait,
    id: &TopologyRef,
    events: &[Event],
    now_ms: i64,
) -> Result<(), DbErr> {
    let (ctes, values) = append_and_trim_ctes(3, events, now_ms);
    let mut bound: Vec<sea_orm::Value> = vec![id.tenant.clone().into(), id.topology.clone().into()];
    bound.extend(values);
    let statement = sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        format!("WITH {ctes} SELECT 1"),
        bound,
    );
    db.execute_raw(statement).await?;
    Ok(())
}

/// The `WITH` items that append `events` on PostgreSQL and forget all but the newest
/// [`KEPT`] of their topology (whose tenant and name are bound as `$1` and `$2`), and
/// the values of their own parameters, numbered from `$first`. A column's values are
/// bound as one array (`unnest`), not nine parameters an event; the oldest event kept
/// is found among the rows there were and those just added (which the statement's
/// own delete does not see, so of a batch longer than [`KEPT`] only its newest are
/// added at all). Data-modifying items run whether or not the statement reads them.
pub(crate) fn append_and_trim_ctes(
    first: usize,
    events: &[Event],
    now_ms: i64,
) -> (String, Vec<sea_orm::Value>) {
    let events = &events[events.len().saturating_sub(KEPT as usize)..];
    let p: Vec<String> = (first..first + 8).map(|n| format!("${n}")).collect();
    let ctes = format!(
        "added AS (\
           INSERT INTO replica_events \
           (tenant, topology, at_ms, service, replica, generation, node, kind, detail) \
           SELECT $1, $2, {now}, s, r, g, n, k, d FROM unnest(\
           {s}::text[], {r}::int8[], {g}::int8[], {n}::text[], {k}::text[], {d}::text[]\
           ) WITH ORDINALITY AS t(s, r, g, n, k, d, i) ORDER BY i \
           RETURNING id), \
         oldest_kept AS (\
           SELECT id FROM (\
             SELECT id FROM replica_events WHERE tenant = $1 AND topology = $2 \
             UNION ALL SELECT id FROM added\
           ) AS every ORDER BY id DESC OFFSET {offset} LIMIT 1), \
         trimmed AS (\
           DELETE FROM replica_events \
           WHERE tenant = $1 AND topology = $2 AND id < (SELECT id FROM oldest_kept))",
        now = p[0],
        s = p[1],
        r = p[2],
        g = p[3],
        n = p[4],
        k = p[5],
        d = p[6],
        offset = p[7],
    );
    let values = vec![
        now_ms.into(),
        column(events, |e| e.service.clone()),
        column(events, |e| i64::from(e.replica)),
        column(events, |e| to_i64(e.generation)),
        column(events, |e| e.node.clone()),
        column(events, |e| e.kind.as_str().to_owned()),
        column(events, |e| e.detail.clone()),
        to_i64(KEPT - 1).into(),
    ];
    (ctes, values)
}

impl Allocator {
    /// Records an event of a whole service of `id` (replica 0, no node), such as an
    /// autoscaling decision.
    pub async fn record_service_event(
        &self,
        id: &TopologyRef,
        service: &str,
        kind: EventKind,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), AllocatorError> {
        let event = Event {
            at_ms: now_ms,
            kind,
            service: service.to_owned(),
            replica: 0,
            generation: 0,
            node: String::new(),
            detail: detail.to_owned(),
        };
        Ok(record(self.connection(), id, &[event], now_ms).await?)
    }

    /// The placed topologies with a service that autoscales, with the spec placed.
    pub async fn autoscaled(&self) -> Result<Vec<(TopologyRef, Topology)>, AllocatorError> {
        let rows = crate::entity::placement::Entity::find()
            .filter(crate::entity::placement::Column::Autoscaled.eq(true))
            .all(self.connection())
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let id = TopologyRef {
                tenant: row.tenant,
                topology: row.topology,
            };
            let spec: Topology = serde_json::from_str(&row.spec)
                .map_err(|e| AllocatorError::Corrupt(id.clone(), e))?;
            if spec.services.values().any(|s| s.autoscale.is_some()) {
                out.push((id, spec));
            }
        }
        Ok(out)
    }

    /// A topology's newest events, newest first (at most `limit`, at most [`KEPT`]).
    pub async fn events(&self, id: &TopologyRef, limit: u64) -> Result<Vec<Event>, AllocatorError> {
        let rows = replica_event::Entity::find()
            .filter(replica_event::Column::Tenant.eq(&id.tenant))
            .filter(replica_event::Column::Topology.eq(&id.topology))
            .order_by_desc(replica_event::Column::Id)
            .limit(limit.min(KEPT))
            .all(self.connection())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Event {
                at_ms: r.at_ms,
                kind: EventKind::parse(&r.kind),
                service: r.service,
                replica: u32::try_from(r.replica).unwrap_or(0),
                generation: u64::try_from(r.generation).unwrap_or(0),
                node: r.node,
                detail: r.detail,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resources;

    fn slot(service: &str, replica: u32, node: &str, generation: u64) -> Placed {
        Placed {
            service: service.to_owned(),
            replica,
            node: node.to_owned(),
            generation,
            cost: Resources::default(),
        }
    }

    #[test]
    fn a_placement_says_what_is_new_what_moved_and_what_went() {
        let before = [
            slot("web", 1, "n1", 1),
            slot("web", 2, "n1", 2),
            slot("db", 1, "n2", 3),
        ];
        let after = [
            slot("web", 1, "n1", 1),
            slot("web", 2, "n3", 4),
            slot("web", 3, "n2", 5),
        ];
        let events = placement_events(&before, &after);
        let kinds: Vec<(&str, &str, u32)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.service.as_str(), e.replica))
            .collect();
        assert_eq!(
            kinds,
            [
                ("rescheduled", "web", 2),
                ("placed", "web", 3),
                ("removed", "db", 1)
            ]
        );
        assert_eq!(events[0].detail, "moved from n1 to n3");
        assert!(
            placement_events(&after, &after).is_empty(),
            "nothing changed, nothing said"
        );
    }

    #[test]
    fn a_report_says_only_what_changed() {
        let status = |replica: u32, generation: u64, state: &str| ReplicaStatus {
            cpu_millis: None,
            tenant: "acme".to_owned(),
            topology: "shop".to_owned(),
            service: "web".to_owned(),
            replica,
            generation,
            state: state.to_owned(),
            detail: String::new(),
        };
        let mut previous = HashMap::new();
        previous.insert(
            ("acme".into(), "shop".into(), "web".into(), 1),
            (1, "running".to_owned()),
        );
        previous.insert(
            ("acme".into(), "shop".into(), "web".into(), 2),
            (2, "created".to_owned()),
        );
        let events = state_events(
            "n1",
            &previous,
            &[
                status(1, 1, "running"),
                status(2, 2, "running"),
                status(3, 3, "exited"),
            ],
        );
        let kinds: Vec<(&str, u32)> = events
            .iter()
            .map(|(_, e)| (e.kind.as_str(), e.replica))
            .collect();
        assert_eq!(kinds, [("started", 2), ("failed", 3)]);
    }
}
