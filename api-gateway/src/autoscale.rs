//! The autoscaler: for each service with `x-berth.autoscale`, the replica count that
//! keeps the replicas' average CPU near the target, from the figures the nodes
//! report, within the service's bounds and the tenant's quota.
//!
//! It runs in the leading allocator (the process the nodes report to) and changes a
//! topology exactly as `berth scale` does: a new revision, placed by the allocator
//! with the quota checked, forgotten if refused. So an autoscaled change is in the
//! topology's history, and the quota holds whoever asks. When the quota stops a
//! scale-up, the autoscaler takes as many replicas as fit and records an event that
//! says so; the next change of state (scaled, or stopped again) is recorded too, but
//! the same refusal is not repeated every round.
//!
//! The rule is the one Kubernetes' horizontal autoscaler uses: desired =
//! ceil(replicas × average / target), left alone within 10% of the target. It scales
//! up at once and down only after three rounds in a row asked for fewer, so a brief
//! lull does not drop replicas that the next burst needs.

use std::collections::HashMap;
use std::time::Duration;

use berth_allocator::AllocatorError;
use berth_protocol::assignment::TopologyRef;
use berth_protocol::topology::Autoscale;

use crate::Gateway;

/// Within this share of the target, the count is left as it is.
const TOLERANCE: f64 = 0.1;

/// Rounds in a row that must ask for fewer replicas before any are removed.
const DOWN_AFTER_ROUNDS: u32 = 3;

/// The replica count for a service running `current` replicas that together use
/// `total_millis` of CPU, each meant to use `target_millis`, within `bounds`.
pub fn desired(current: u32, total_millis: u64, target_millis: u64, bounds: &Autoscale) -> u32 {
    let current = current.max(1);
    let target = target_millis.max(1) as f64;
    let ratio = total_millis as f64 / (f64::from(current) * target);
    let wanted = match (ratio - 1.0).abs() <= TOLERANCE {
        true => current,
        false => {
            let n = (total_millis as f64 / target).ceil();
            if n >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                n as u32
            }
        }
    };
    wanted.clamp(bounds.min, bounds.max.max(bounds.min))
}

/// What one service's autoscaling remembers between rounds.
#[derive(Debug, Default)]
struct Memory {
    /// Rounds in a row that asked for fewer replicas.
    lower_rounds: u32,
    /// The last thing recorded about it, so that the same is not recorded again.
    last_said: String,
}

/// Runs the autoscaler every `every` until the process ends.
pub fn run(gw: Gateway, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut memory: HashMap<(TopologyRef, String), Memory> = HashMap::new();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = round(&gw, &mut memory).await {
                tracing::warn!(error = %e, "an autoscaling round failed");
            }
        }
    })
}

async fn round(
    gw: &Gateway,
    memory: &mut HashMap<(TopologyRef, String), Memory>,
) -> Result<(), String> {
    let placed = gw.allocator.autoscaled().await.map_err(|e| e.to_string())?;
    memory.retain(|(id, _), _| placed.iter().any(|(p, _)| p == id));
    for (id, spec) in placed {
        let figures = gw.nodes.cpu_figures(&id);
        for (name, service) in &spec.services {
            let Some(bounds) = service.autoscale else {
                continue;
            };
            let current = service.replicas;
            let measured: Vec<u64> = (1..=current)
                .filter_map(|r| figures.get(&(name.clone(), r)).map(|c| u64::from(*c)))
                .collect();
            if measured.is_empty() {
                continue; // nothing measured yet (new, or its nodes not reporting)
            }
            let target = bounds.target_millis(service.limits.cpu_millis);
            // Replicas without a figure yet (just started) count as on target.
            let unmeasured = u64::from(current) - measured.len() as u64;
            let total = measured.iter().sum::<u64>() + unmeasured * target;
            let wanted = desired(current, total, target, &bounds);
            let state = memory.entry((id.clone(), name.clone())).or_default();
            let average = total * 100 / (u64::from(current.max(1)) * target);
            let why = format!(
                "average CPU {average}% of the {}% target",
                bounds.cpu_percent
            );
            if wanted < current {
                state.lower_rounds += 1;
                if state.lower_rounds < DOWN_AFTER_ROUNDS {
                    continue;
                }
            } else {
                state.lower_rounds = 0;
            }
            if wanted == current {
                continue;
            }
            state.lower_rounds = 0;
            let said = scale(gw, &id, name, current, wanted, &why).await?;
            if let Some(said) = said
                && said != state.last_said
            {
                gw.allocator
                    .record_service_event(
                        &id,
                        name,
                        berth_allocator::events::EventKind::Autoscaled,
                        &said,
                        crate::now_ms(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(topology = %id, service = %name, "{said}");
                state.last_said = said;
            }
        }
    }
    Ok(())
}

/// Moves `service` of `id` from `current` towards `wanted` replicas, as far as the
/// quota allows; returns what to record (None when nothing changed and nothing is
/// worth saying).
async fn scale(
    gw: &Gateway,
    id: &TopologyRef,
    service: &str,
    current: u32,
    wanted: u32,
    why: &str,
) -> Result<Option<String>, String> {
    let mut refusal = None;
    let mut n = wanted;
    loop {
        if n == current {
            break;
        }
        match set_replicas(gw, id, service, n).await? {
            Ok(()) => {
                let mut said = format!("scaled from {current} to {n} replicas: {why}");
                if let Some(refusal) = refusal {
                    said.push_str(&format!(
                        "; {wanted} wanted, but the tenant's quota stops it at {n} ({refusal})"
                    ));
                }
                return Ok(Some(said));
            }
            Err(AllocatorError::Quota(e)) if n > current => {
                refusal.get_or_insert_with(|| e.to_string());
                n -= 1;
            }
            Err(AllocatorError::Placement(e)) if n > current => {
                refusal.get_or_insert_with(|| format!("no room: {e}"));
                n -= 1;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(refusal.map(|refusal| {
        format!(
            "{wanted} replicas wanted ({why}), but the tenant's quota stops it at {current}: {refusal}"
        )
    }))
}

/// Sets `service`'s replica count in the tenant's current revision of `id` and places
/// it; the inner error is the allocator's refusal.
async fn set_replicas(
    gw: &Gateway,
    id: &TopologyRef,
    service: &str,
    replicas: u32,
) -> Result<Result<(), AllocatorError>, String> {
    let wanted = std::collections::BTreeMap::from([(service.to_owned(), replicas)]);
    match gw
        .deployments
        .scale(&id.tenant, &id.topology, &wanted)
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(berth_deployments::DeployError::Allocator(refused)) => Ok(Err(refused)),
        // Removed meanwhile.
        Err(
            berth_deployments::DeployError::UnknownService { .. }
            | berth_deployments::DeployError::Tenant(
                berth_tenant_service::TenantError::UnknownTopology { .. },
            ),
        ) => Ok(Ok(())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Autoscale = Autoscale {
        min: 1,
        max: 10,
        cpu_percent: 50,
    };

    #[test]
    fn busy_replicas_ask_for_more_and_idle_ones_for_fewer() {
        // Two replicas at twice the target: four.
        assert_eq!(desired(2, 2 * 2 * 100, 100, &BOUNDS), 4);
        // Three replicas nearly idle: one.
        assert_eq!(desired(3, 15, 100, &BOUNDS), 1);
        // Within 10% of the target either way: unchanged.
        assert_eq!(desired(4, 4 * 108, 100, &BOUNDS), 4);
        assert_eq!(desired(4, 4 * 92, 100, &BOUNDS), 4);
        // Just past the tolerance: one more.
        assert_eq!(desired(4, 4 * 115, 100, &BOUNDS), 5);
    }

    #[test]
    fn the_bounds_hold() {
        assert_eq!(desired(5, 100 * 100, 100, &BOUNDS), 10);
        assert_eq!(desired(5, 0, 100, &BOUNDS), 1);
        assert_eq!(desired(0, 0, 100, &BOUNDS), 1);
        let wide = Autoscale {
            min: 2,
            max: u32::MAX,
            cpu_percent: 1,
        };
        assert_eq!(desired(1, u64::MAX, 1, &wide), u32::MAX);
    }
}
