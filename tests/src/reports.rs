//! Reports as a node would send them, for tests of the allocator without node agents.

use berth_allocator::Allocator;
use berth_protocol::node_api::ReplicaStatus;

/// `node` reports every slot of its assignment set running (old copies of moving
/// replicas included, as a node would), through the same steps the node API takes;
/// returns what counted as the replicas' status.
pub async fn report_running(allocator: &Allocator, node: &str, now_ms: i64) -> Vec<ReplicaStatus> {
    let statuses: Vec<ReplicaStatus> = allocator
        .assignments_for_node(node)
        .await
        .expect("assignments")
        .into_iter()
        .flat_map(|a| {
            let id = a.id.clone();
            a.slots.into_iter().map(move |s| ReplicaStatus {
                tenant: id.tenant.clone(),
                topology: id.topology.clone(),
                service: s.service,
                replica: s.replica,
                generation: s.generation,
                state: "running".into(),
                detail: String::new(),
                cpu_millis: None,
            })
        })
        .collect();
    let current = allocator
        .settle_moves(node, statuses, now_ms)
        .await
        .expect("settle");
    allocator
        .record_statuses(node, &current, now_ms)
        .await
        .expect("record");
    current
}
