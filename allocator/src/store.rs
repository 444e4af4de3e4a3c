//! The allocator's rows, read and changed: the SQL helpers the deploy path, the
//! pool's views, rebalancing and events share (conversions between the database's
//! signed integers and amounts, node views, the quota and capacity shifts made with
//! conditional updates, the end of moves). No decision is made here.

use berth_protocol::assignment::TopologyRef;
use berth_protocol::limits::TenantLimits;
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, DbErr, EntityTrait, QueryFilter, QuerySelect};

use std::collections::{BTreeMap, BTreeSet};

use crate::entity::{assignment, lingering, node, placement, quota, tenant_limit};
use crate::placement::{NodeView, Placed};
use crate::resources::{Limit, Resources};

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn limit_of(v: Option<i64>) -> Option<u64> {
    v.map(|x| u64::try_from(x).unwrap_or(0))
}

pub(crate) fn used_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) async fn load_placed<C: sea_orm::ConnectionTrait>(
    db: &C,
    id: &TopologyRef,
) -> Result<Vec<Placed>, DbErr> {
    Ok(assignment::Entity::find()
        .filter(assignment::Column::Tenant.eq(&id.tenant))
        .filter(assignment::Column::Topology.eq(&id.topology))
        .all(db)
        .await?
        .into_iter()
        .map(placed_of)
        .collect())
}

/// Writes what a deploy placed: the topology's placement row (inserted, or updated
/// over the one before), its `slots` (the old ones already deleted) and its `events`,
/// and ends its moves (its deploy decides anew where everything runs); returns the
/// nodes whose old copies go. On PostgreSQL one statement and one round trip, which
/// binds a slot column's values as one array (`unnest`) rather than eight parameters
/// a row; elsewhere the row, then 500 slots a statement, then the events and moves.
pub(crate) async fn write_deploy(
    txn: &sea_orm::DatabaseTransaction,
    row: placement::Model,
    slots: &[Placed],
    events: &[crate::events::Event],
    now_ms: i64,
) -> Result<Vec<String>, DbErr> {
    use sea_orm::ActiveValue::Set;
    use sea_orm::ConnectionTrait;
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        let (events, event_values) = match events.is_empty() {
            true => (String::new(), Vec::new()),
            false => {
                let (ctes, values) = crate::events::append_and_trim_ctes(14, events, now_ms);
                (format!(", {ctes}"), values)
            }
        };
        let mut values: Vec<sea_orm::Value> = vec![
            row.tenant.into(),
            row.topology.into(),
            column(slots, |p| p.service.clone()),
            column(slots, |p| i64::from(p.replica)),
            column(slots, |p| p.node.clone()),
            column(slots, |p| to_i64(p.generation)),
            column(slots, |p| to_i64(p.cost.cpu_millis)),
            column(slots, |p| to_i64(p.cost.memory_bytes)),
            row.revision.into(),
            row.spec.into(),
            row.next_generation.into(),
            row.traceparent.into(),
            row.autoscaled.into(),
        ];
        values.extend(event_values);
        let statement = sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            format!(
                "WITH placed AS (\
                   INSERT INTO placements \
                   (tenant, topology, revision, spec, next_generation, traceparent, autoscaled) \
                   VALUES ($1, $2, $9, $10, $11, $12, $13) \
                   ON CONFLICT (tenant, topology) DO UPDATE SET \
                   revision = excluded.revision, spec = excluded.spec, \
                   next_generation = excluded.next_generation, \
                   traceparent = excluded.traceparent, autoscaled = excluded.autoscaled), \
                 slots AS (\
                   INSERT INTO assignments \
                   (tenant, topology, service, replica, node, generation, cpu_millis, memory_bytes) \
                   SELECT $1, $2, s, r, n, g, c, m FROM unnest(\
                   $3::text[], $4::int8[], $5::text[], $6::int8[], $7::int8[], $8::int8[]\
                   ) AS t(s, r, n, g, c, m)), \
                 gone AS (\
                   DELETE FROM lingering_slots WHERE tenant = $1 AND topology = $2 \
                   RETURNING node){events} \
                 SELECT node FROM gone"
            ),
            values,
        );
        let gone = txn.query_all_raw(statement).await?;
        return gone.iter().map(|r| r.try_get("", "node")).collect();
    }
    let id = TopologyRef {
        tenant: row.tenant.clone(),
        topology: row.topology.clone(),
    };
    placement::Entity::insert(placement::ActiveModel::from(row))
        .on_conflict(
            sea_orm::sea_query::OnConflict::columns([
                placement::Column::Tenant,
                placement::Column::Topology,
            ])
            .update_columns([
                placement::Column::Revision,
                placement::Column::Spec,
                placement::Column::NextGeneration,
                placement::Column::Traceparent,
                placement::Column::Autoscaled,
            ])
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    for chunk in slots.chunks(500) {
        let rows = chunk.iter().map(|p| assignment::ActiveModel {
            tenant: Set(id.tenant.clone()),
            topology: Set(id.topology.clone()),
            service: Set(p.service.clone()),
            replica: Set(i64::from(p.replica)),
            node: Set(p.node.clone()),
            generation: Set(to_i64(p.generation)),
            cpu_millis: Set(to_i64(p.cost.cpu_millis)),
            memory_bytes: Set(to_i64(p.cost.memory_bytes)),
        });
        assignment::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
    }
    crate::events::record(txn, &id, events, now_ms).await?;
    forget_moves(txn, &id).await
}

/// One column of `rows` as a PostgreSQL array, for `unnest`.
pub(crate) fn column<T, V>(rows: &[T], value: impl Fn(&T) -> V) -> sea_orm::Value
where
    Vec<V>: Into<sea_orm::Value>,
{
    rows.iter().map(value).collect::<Vec<V>>().into()
}

/// The slot an assignment row holds.
pub(crate) fn placed_of(a: assignment::Model) -> Placed {
    Placed {
        service: a.service,
        replica: u32::try_from(a.replica).unwrap_or(0),
        node: a.node,
        generation: u64::try_from(a.generation).unwrap_or(0),
        cost: Resources {
            cpu_millis: used_of(a.cpu_millis),
            memory_bytes: used_of(a.memory_bytes),
            containers: 1,
        },
    }
}

pub(crate) fn quota_parts(row: &quota::Model) -> (Limit, Resources) {
    (
        Limit {
            cpu_millis: limit_of(row.cpu_millis_limit),
            memory_bytes: limit_of(row.memory_bytes_limit),
            containers: limit_of(row.containers_limit),
        },
        Resources {
            cpu_millis: used_of(row.cpu_millis_used),
            memory_bytes: used_of(row.memory_bytes_used),
            containers: used_of(row.containers_used),
        },
    )
}

/// A signed change of reserved resources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Delta {
    cpu: i64,
    memory: i64,
    containers: i64,
}

impl Delta {
    pub(crate) fn between(before: Resources, after: Resources) -> Self {
        let d = |b: u64, a: u64| to_i64(a).saturating_sub(to_i64(b));
        Self {
            cpu: d(before.cpu_millis, after.cpu_millis),
            memory: d(before.memory_bytes, after.memory_bytes),
            containers: d(before.containers, after.containers),
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.cpu == 0 && self.memory == 0 && self.containers == 0
    }
}

/// How many of the least-loaded nodes a deploy of `wants` replicas looks at: enough to
/// give every replica a node of its own twice over.
pub(crate) fn candidates_for(wants: usize) -> usize {
    wants.saturating_mul(2).clamp(64, 4096)
}

/// What a node's row says it can hold.
pub(crate) fn capacity_of(n: &node::Model) -> Limit {
    Limit {
        cpu_millis: limit_of(n.cpu_millis_capacity),
        memory_bytes: limit_of(n.memory_bytes_capacity),
        containers: limit_of(n.containers_capacity),
    }
}

/// What a node's row says is reserved on it.
pub(crate) fn used_on(n: &node::Model) -> Resources {
    Resources {
        cpu_millis: used_of(n.cpu_millis_used),
        memory_bytes: used_of(n.memory_bytes_used),
        containers: used_of(n.containers_used),
    }
}

pub(crate) fn node_view(n: node::Model) -> NodeView {
    NodeView {
        capacity: capacity_of(&n),
        used: used_on(&n),
        // A dead node takes nothing and keeps nothing.
        schedulable: n.schedulable && n.down_since_ms.is_none(),
        draining: n.draining || n.down_since_ms.is_some(),
        labels: serde_json::from_str(&n.labels).unwrap_or_default(),
        name: n.name,
    }
}

/// Every node of the pool.
pub(crate) async fn all_nodes<C: sea_orm::ConnectionTrait>(db: &C) -> Result<Vec<NodeView>, DbErr> {
    Ok(node::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(node_view)
        .collect())
}

/// The nodes named, read by name.
pub(crate) async fn nodes_named<'a, C: sea_orm::ConnectionTrait>(
    db: &C,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<NodeView>, DbErr> {
    let names: BTreeSet<&str> = names.into_iter().map(String::as_str).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let mut nodes = Vec::with_capacity(names.len());
    for chunk in names.chunks(500) {
        let rows = node::Entity::find()
            .filter(node::Column::Name.is_in(chunk.iter().copied()))
            .all(db)
            .await?;
        nodes.extend(rows.into_iter().map(node_view));
    }
    Ok(nodes)
}

/// Locks the tenant's quota row and returns it (None if there is none): a row lock on
/// PostgreSQL (`SELECT ... FOR UPDATE`, one statement that leaves no dead row version
/// behind), the write lock on SQLite (the row written without a change, then read), so
/// that a transaction that starts with it serialises with the tenant's other writers
/// and never has to upgrade a read lock.
pub(crate) async fn lock_tenant(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &str,
) -> Result<Option<quota::Model>, DbErr> {
    use sea_orm::ConnectionTrait;
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        return quota::Entity::find_by_id(tenant.to_owned())
            .lock_exclusive()
            .one(txn)
            .await;
    }
    if !touch_quota(txn, tenant).await? {
        return Ok(None);
    }
    quota::Entity::find_by_id(tenant.to_owned()).one(txn).await
}

/// What is placed of a topology: its placement's revision and next generation (None
/// before its first deploy) and its slots.
#[derive(Debug)]
pub(crate) struct Placing {
    pub(crate) revision: Option<i64>,
    pub(crate) next_generation: i64,
    pub(crate) slots: Vec<Placed>,
}

/// Locks the tenant's quota row as [`lock_tenant`] does, then reads what is placed of
/// `id` in one statement (the placement joined to its slots). The read is a statement
/// of its own, after the lock: on PostgreSQL a statement that waited for a row lock
/// sees the locked row as its holder committed it, but every other row as it was when
/// the statement began, so a placement read with the lock could be the one from
/// before the deploy the lock waited for.
pub(crate) async fn lock_tenant_for(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &str,
    id: &TopologyRef,
) -> Result<Option<(quota::Model, Placing)>, DbErr> {
    use sea_orm::sea_query::{Alias, JoinType, Query};
    use sea_orm::{ConnectionTrait, FromQueryResult, Iterable};
    let Some(quota) = lock_tenant(txn, tenant).await? else {
        return Ok(None);
    };
    let (revision, next_generation) = (Alias::new("p_revision"), Alias::new("p_next_generation"));
    let select = Query::select()
        .expr_as(
            Expr::col((placement::Entity, placement::Column::Revision)),
            revision.clone(),
        )
        .expr_as(
            Expr::col((placement::Entity, placement::Column::NextGeneration)),
            next_generation.clone(),
        )
        .columns(assignment::Column::iter().map(|c| (assignment::Entity, c)))
        .from(placement::Entity)
        .join(
            JoinType::LeftJoin,
            assignment::Entity,
            Condition::all()
                .add(
                    Expr::col((assignment::Entity, assignment::Column::Tenant))
                        .equals((placement::Entity, placement::Column::Tenant)),
                )
                .add(
                    Expr::col((assignment::Entity, assignment::Column::Topology))
                        .equals((placement::Entity, placement::Column::Topology)),
                ),
        )
        .and_where(Expr::col((placement::Entity, placement::Column::Tenant)).eq(&id.tenant))
        .and_where(Expr::col((placement::Entity, placement::Column::Topology)).eq(&id.topology))
        .to_owned();
    let mut placing = Placing {
        revision: None,
        next_generation: 1,
        slots: Vec::new(),
    };
    for row in txn.query_all(&select).await? {
        placing.revision = Some(row.try_get("", "p_revision")?);
        placing.next_generation = row.try_get("", "p_next_generation")?;
        // A placement without slots joins to one row of nulls.
        if row.try_get::<Option<String>>("", "service")?.is_some() {
            placing
                .slots
                .push(placed_of(assignment::Model::from_query_result(&row, "")?));
        }
    }
    Ok(Some((quota, placing)))
}

/// Writes the tenant's quota row without changing it, which takes SQLite's write lock
/// before anything is read. Whether there is such a row.
async fn touch_quota(txn: &sea_orm::DatabaseTransaction, tenant: &str) -> Result<bool, DbErr> {
    let touched = quota::Entity::update_many()
        .col_expr(
            quota::Column::ContainersUsed,
            Expr::col(quota::Column::ContainersUsed),
        )
        .filter(quota::Column::Tenant.eq(tenant))
        .exec(txn)
        .await?;
    Ok(touched.rows_affected > 0)
}

/// Shifts a tenant's reserved usage by `delta`, atomically: a dimension that grows must
/// stay within its limit, one that shrinks always applies. Returns whether it applied.
pub(crate) async fn shift_quota(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &str,
    delta: Delta,
) -> Result<bool, DbErr> {
    let updated = quota::Entity::update_many()
        .col_expr(
            quota::Column::CpuMillisUsed,
            Expr::col(quota::Column::CpuMillisUsed).add(delta.cpu),
        )
        .col_expr(
            quota::Column::MemoryBytesUsed,
            Expr::col(quota::Column::MemoryBytesUsed).add(delta.memory),
        )
        .col_expr(
            quota::Column::ContainersUsed,
            Expr::col(quota::Column::ContainersUsed).add(delta.containers),
        )
        .filter(quota::Column::Tenant.eq(tenant))
        .filter(within(
            quota::Column::CpuMillisUsed,
            quota::Column::CpuMillisLimit,
            delta.cpu,
        ))
        .filter(within(
            quota::Column::MemoryBytesUsed,
            quota::Column::MemoryBytesLimit,
            delta.memory,
        ))
        .filter(within(
            quota::Column::ContainersUsed,
            quota::Column::ContainersLimit,
            delta.containers,
        ))
        .exec(txn)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Moves the reserved usage of several nodes, each by its delta, all or nothing, as
/// [`shift_quota`] does against a quota: a node's usage moves only where its capacity
/// has the room for a growing delta. The nodes in `opening` receive new replicas and must
/// also still be open (schedulable, not draining, alive), whatever their delta.
/// Returns the name of a node that lacks the room or is closed, if one does (the
/// caller rolls the transaction back).
///
/// On PostgreSQL one statement locks the rows in name order and updates each by its
/// own delta ([`shift_postgres`]); elsewhere (SQLite, one writer at a time) a
/// statement per distinct delta does, since a deploy of a hundred replicas spreads
/// over a hundred nodes, mostly by the same delta.
pub(crate) async fn shift_nodes(
    txn: &sea_orm::DatabaseTransaction,
    shifts: &BTreeMap<String, Delta>,
    opening: &BTreeSet<String>,
) -> Result<Option<String>, DbErr> {
    const CHUNK: usize = 500;
    let shifts = shifts_of(shifts, opening);
    if shifts.is_empty() {
        return Ok(None);
    }
    if sea_orm::ConnectionTrait::get_database_backend(txn) == sea_orm::DatabaseBackend::Postgres {
        return Ok(shift_postgres(txn, None, &shifts).await?.lacking);
    }
    let mut by_delta: std::collections::HashMap<(Delta, bool), Vec<&str>> =
        std::collections::HashMap::new();
    for (name, delta, opens) in &shifts {
        by_delta.entry((*delta, *opens)).or_default().push(name);
    }
    for ((delta, opens), names) in &by_delta {
        let open = match opens {
            true => Condition::all()
                .add(node::Column::Schedulable.eq(true))
                .add(node::Column::Draining.eq(false))
                .add(node::Column::DownSinceMs.is_null()),
            false => Condition::all(),
        };
        for chunk in names.chunks(CHUNK) {
            let updated = node::Entity::update_many()
                .col_expr(
                    node::Column::CpuMillisUsed,
                    Expr::col(node::Column::CpuMillisUsed).add(delta.cpu),
                )
                .col_expr(
                    node::Column::MemoryBytesUsed,
                    Expr::col(node::Column::MemoryBytesUsed).add(delta.memory),
                )
                .col_expr(
                    node::Column::ContainersUsed,
                    Expr::col(node::Column::ContainersUsed).add(delta.containers),
                )
                .filter(node::Column::Name.is_in(chunk.iter().copied()))
                .filter(within(
                    node::Column::CpuMillisUsed,
                    node::Column::CpuMillisCapacity,
                    delta.cpu,
                ))
                .filter(within(
                    node::Column::MemoryBytesUsed,
                    node::Column::MemoryBytesCapacity,
                    delta.memory,
                ))
                .filter(within(
                    node::Column::ContainersUsed,
                    node::Column::ContainersCapacity,
                    delta.containers,
                ))
                .filter(open.clone())
                .exec(txn)
                .await?;
            if updated.rows_affected != chunk.len() as u64 {
                let chunk: Vec<Shift<'_>> = chunk.iter().map(|n| (*n, *delta, *opens)).collect();
                return Ok(Some(lacking_room(txn, &chunk).await?));
            }
        }
    }
    Ok(None)
}

/// A node's name, the change of what is reserved on it, and whether it must be open.
type Shift<'a> = (&'a str, Delta, bool);

/// The nodes whose rows a shift changes or checks, in name order.
fn shifts_of<'a>(
    shifts: &'a BTreeMap<String, Delta>,
    opening: &BTreeSet<String>,
) -> Vec<Shift<'a>> {
    shifts
        .iter()
        .map(|(n, d)| (n.as_str(), *d, opening.contains(n)))
        .filter(|(_, d, opens)| *opens || !d.is_zero())
        .collect()
}

/// What [`reserve`] could not reserve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unreserved {
    /// The tenant's quota lacks the room.
    Quota,
    /// This node lacks the room, or is closed and had to be open.
    Node(String),
}

/// Reserves a deploy's resources, all or nothing: the tenant's quota moved by `quota`
/// as [`shift_quota`] does, and every node by its delta as [`shift_nodes`] does. The
/// caller holds the tenant's lock ([`lock_tenant_for`]) and rolls the transaction
/// back on failure. On PostgreSQL one statement and one round trip.
pub(crate) async fn reserve(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &str,
    quota: Delta,
    shifts: &BTreeMap<String, Delta>,
    opening: &BTreeSet<String>,
) -> Result<Option<Unreserved>, DbErr> {
    if sea_orm::ConnectionTrait::get_database_backend(txn) == sea_orm::DatabaseBackend::Postgres {
        let shifted =
            shift_postgres(txn, Some((tenant, quota)), &shifts_of(shifts, opening)).await?;
        return Ok(match shifted {
            Shifted { quota: false, .. } => Some(Unreserved::Quota),
            Shifted { lacking, .. } => lacking.map(Unreserved::Node),
        });
    }
    if !shift_quota(txn, tenant, quota).await? {
        return Ok(Some(Unreserved::Quota));
    }
    Ok(shift_nodes(txn, shifts, opening)
        .await?
        .map(Unreserved::Node))
}

/// [`reserve`] and [`shift_nodes`] on PostgreSQL, in one statement: the node rows are
/// locked first, in name order (a materialised `SELECT ... ORDER BY name FOR UPDATE`
/// whose rows the update joins, so no row is written before its lock is taken in
/// that order and concurrent deploys never deadlock), then each is moved by its own
/// delta, bound as arrays, only where it has the room and, if it must, is open; and
/// the tenant's quota row, if one is given (already locked by the caller), is moved
/// as [`shift_quota`] moves it.
async fn shift_postgres(
    txn: &sea_orm::DatabaseTransaction,
    quota: Option<(&str, Delta)>,
    shifts: &[Shift<'_>],
) -> Result<Shifted, DbErr> {
    use sea_orm::ConnectionTrait;
    let (tenant, delta) = match quota {
        Some((tenant, delta)) => (Some(tenant.to_owned()), delta),
        None => (None, Delta::default()),
    };
    let statement = sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "WITH wanted AS MATERIALIZED (\
           SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bool[]) \
           AS w(name, cpu, memory, containers, opens)), \
         locked AS MATERIALIZED (\
           SELECT name FROM nodes WHERE name IN (SELECT name FROM wanted) \
           ORDER BY name FOR UPDATE), \
         moved AS (\
           UPDATE nodes n SET \
             cpu_millis_used = n.cpu_millis_used + w.cpu, \
             memory_bytes_used = n.memory_bytes_used + w.memory, \
             containers_used = n.containers_used + w.containers \
           FROM wanted w \
           WHERE n.name = w.name AND n.name IN (SELECT name FROM locked) \
             AND (w.cpu <= 0 OR n.cpu_millis_capacity IS NULL \
                  OR n.cpu_millis_used + w.cpu <= n.cpu_millis_capacity) \
             AND (w.memory <= 0 OR n.memory_bytes_capacity IS NULL \
                  OR n.memory_bytes_used + w.memory <= n.memory_bytes_capacity) \
             AND (w.containers <= 0 OR n.containers_capacity IS NULL \
                  OR n.containers_used + w.containers <= n.containers_capacity) \
             AND (NOT w.opens \
                  OR (n.schedulable AND NOT n.draining AND n.down_since_ms IS NULL)) \
           RETURNING 1), \
         reserved AS (\
           UPDATE quotas SET \
             cpu_millis_used = cpu_millis_used + $7::int8, \
             memory_bytes_used = memory_bytes_used + $8::int8, \
             containers_used = containers_used + $9::int8 \
           WHERE tenant = $6::text \
             AND ($7::int8 <= 0 OR cpu_millis_limit IS NULL \
                  OR cpu_millis_used + $7::int8 <= cpu_millis_limit) \
             AND ($8::int8 <= 0 OR memory_bytes_limit IS NULL \
                  OR memory_bytes_used + $8::int8 <= memory_bytes_limit) \
             AND ($9::int8 <= 0 OR containers_limit IS NULL \
                  OR containers_used + $9::int8 <= containers_limit) \
           RETURNING 1) \
         SELECT (SELECT count(*) FROM moved) AS moved, \
                (SELECT count(*) FROM reserved) AS reserved",
        [
            column(shifts, |(name, _, _)| (*name).to_owned()),
            column(shifts, |(_, delta, _)| delta.cpu),
            column(shifts, |(_, delta, _)| delta.memory),
            column(shifts, |(_, delta, _)| delta.containers),
            column(shifts, |(_, _, opens)| *opens),
            tenant.clone().into(),
            delta.cpu.into(),
            delta.memory.into(),
            delta.containers.into(),
        ],
    );
    let row = txn
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the counts of a reservation".to_owned()))?;
    let moved: i64 = row.try_get("", "moved")?;
    let reserved: i64 = row.try_get("", "reserved")?;
    let quota = tenant.is_none() || reserved == 1;
    let lacking = match quota && moved != shifts.len() as i64 {
        true => Some(lacking_room(txn, shifts).await?),
        false => None,
    };
    Ok(Shifted { quota, lacking })
}

/// What [`shift_postgres`] did.
struct Shifted {
    /// Whether the quota (if one was to be moved) was.
    quota: bool,
    /// A node that lacks the room or is closed, if one does.
    lacking: Option<String>,
}

/// Which of `shifts`' nodes lacks the room for its delta (or is gone, or closed when
/// it had to be open): read only once a shift of them failed, to name it.
async fn lacking_room(
    txn: &sea_orm::DatabaseTransaction,
    shifts: &[Shift<'_>],
) -> Result<String, DbErr> {
    let rows = node::Entity::find()
        .filter(node::Column::Name.is_in(shifts.iter().map(|(name, _, _)| *name)))
        .all(txn)
        .await?;
    let fits = |used: i64, limit: Option<i64>, by: i64| {
        by <= 0 || limit.is_none_or(|limit| used.saturating_add(by) <= limit)
    };
    let lacking = shifts.iter().find(|(name, delta, open)| {
        rows.iter().find(|r| r.name == *name).is_none_or(|r| {
            let closed = !r.schedulable || r.draining || r.down_since_ms.is_some();
            (*open && closed)
                || !(fits(r.cpu_millis_used, r.cpu_millis_capacity, delta.cpu)
                    && fits(r.memory_bytes_used, r.memory_bytes_capacity, delta.memory)
                    && fits(r.containers_used, r.containers_capacity, delta.containers))
        })
    });
    Ok(lacking
        .or(shifts.first())
        .map(|(name, _, _)| (*name).to_owned())
        .unwrap_or_default())
}

/// `used + delta <= limit`, or no limit, or a change that does not grow.
pub(crate) fn within<C: ColumnTrait>(used: C, limit: C, delta: i64) -> Condition {
    if delta <= 0 {
        return Condition::all();
    }
    let fits: SimpleExpr = Expr::col(used).add(delta).lte(Expr::col(limit));
    Condition::any().add(limit.is_null()).add(fits)
}

pub(crate) fn limits_of(row: &tenant_limit::Model) -> TenantLimits {
    let value = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    TenantLimits {
        requests_per_second: value(row.requests_per_second),
        deploys_per_minute: value(row.deploys_per_minute),
        attenuations_per_hour: value(row.attenuations_per_hour),
        services_per_topology: value(row.services_per_topology),
        replicas_per_service: value(row.replicas_per_service),
        image_mebibytes: value(row.image_mebibytes),
    }
}

/// Ends the moves of `id` (its deploy or removal decides anew where everything runs):
/// returns the nodes whose old copies go.
pub(crate) async fn forget_moves(
    txn: &sea_orm::DatabaseTransaction,
    id: &TopologyRef,
) -> Result<Vec<String>, sea_orm::DbErr> {
    let rows = lingering::Entity::find()
        .filter(lingering::Column::Tenant.eq(&id.tenant))
        .filter(lingering::Column::Topology.eq(&id.topology))
        .all(txn)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    lingering::Entity::delete_many()
        .filter(lingering::Column::Tenant.eq(&id.tenant))
        .filter(lingering::Column::Topology.eq(&id.topology))
        .exec(txn)
        .await?;
    Ok(rows.into_iter().map(|l| l.node).collect())
}
