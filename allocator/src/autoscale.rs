//! The autoscaler: for each service with `x-berth.autoscale`, the replica count that
//! keeps the replicas' average CPU near the target, from the figures the nodes
//! report, within the service's bounds and the tenant's quota.
//!
//! It runs in the leading allocator (the process the nodes report to, so the one
//! that holds their CPU figures) and changes a topology exactly as `berth scale`
//! does, through a [`Scaler`] (the deploy path of `berth-deployments`): a new
//! revision, placed with the quota checked, forgotten if refused. So an autoscaled
//! change is in the topology's history, and the quota holds whoever asks. When the
//! quota stops a scale-up, the autoscaler takes as many replicas as fit and records
//! an event that says so; the next change of state (scaled, or stopped again) is
//! recorded too, but the same refusal is not repeated every round.
//!
//! The rule is the one Kubernetes' horizontal autoscaler uses: desired =
//! ceil(replicas × average / target), left alone within 10% of the target. It scales
//! up at once and down only after three rounds in a row asked for fewer, so a brief
//! lull does not drop replicas that the next burst needs.
//!
//! [`plan`] decides from observations alone (pure); [`Autoscaler`] observes, plans
//! and carries the plan out, one round per step.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use berth_protocol::assignment::TopologyRef;
use berth_protocol::topology::Autoscale;

use crate::control::{Controller, Next, Now};
use crate::events::EventKind;
use crate::node_api::NodeApi;
use crate::{Allocator, AllocatorError};

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

/// One autoscaled service as a round sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Its topology.
    pub id: TopologyRef,
    /// The service.
    pub service: String,
    /// Its replicas now.
    pub current: u32,
    /// Its bounds and target.
    pub bounds: Autoscale,
    /// The CPU each replica may use, in thousandths of a core, if limited.
    pub cpu_limit_millis: Option<u64>,
    /// The CPU of each replica with a reported figure, in thousandths of a core.
    pub measured: Vec<u64>,
}

/// A change the autoscaler wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Its topology.
    pub id: TopologyRef,
    /// The service.
    pub service: String,
    /// Its replicas now.
    pub current: u32,
    /// The replicas it should have.
    pub wanted: u32,
    /// Why, in words.
    pub why: String,
}

/// What the autoscaler remembers of one service between rounds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Rounds in a row that asked for fewer replicas.
    lower_rounds: u32,
    /// The last thing recorded about it, so that the same is not recorded again.
    last_said: String,
}

/// What the autoscaler remembers, by service.
pub type Memories = HashMap<(TopologyRef, String), Memory>;

/// The changes `observations` call for, remembering in `memory` how many rounds in
/// a row each service asked for fewer replicas. Services no longer observed are
/// forgotten.
pub fn plan(memory: &mut Memories, observations: &[Observation]) -> Vec<Decision> {
    memory.retain(|(id, service), _| {
        observations
            .iter()
            .any(|o| &o.id == id && &o.service == service)
    });
    let mut decisions = Vec::new();
    for o in observations {
        if o.measured.is_empty() {
            continue; // nothing measured yet (new, or its nodes not reporting)
        }
        let target = o.bounds.target_millis(o.cpu_limit_millis);
        // Replicas without a figure yet (just started) count as on target.
        let unmeasured = u64::from(o.current).saturating_sub(o.measured.len() as u64);
        let total = o.measured.iter().sum::<u64>() + unmeasured * target;
        let wanted = desired(o.current, total, target, &o.bounds);
        let state = memory.entry((o.id.clone(), o.service.clone())).or_default();
        if wanted < o.current {
            state.lower_rounds += 1;
            if state.lower_rounds < DOWN_AFTER_ROUNDS {
                continue;
            }
        } else {
            state.lower_rounds = 0;
        }
        if wanted == o.current {
            continue;
        }
        state.lower_rounds = 0;
        let average = total * 100 / (u64::from(o.current.max(1)) * target.max(1));
        decisions.push(Decision {
            id: o.id.clone(),
            service: o.service.clone(),
            current: o.current,
            wanted,
            why: format!(
                "average CPU {average}% of the {}% target",
                o.bounds.cpu_percent
            ),
        });
    }
    decisions
}

/// How a request to set a service's replicas ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scaled {
    /// Placed with the new count.
    Done,
    /// The quota or the pool's room refused it (the reason); nothing changed.
    Refused(String),
    /// The topology or the service is gone.
    Gone,
}

/// Sets replica counts through the deploy path (implemented by `berth-deployments`,
/// faked in tests).
pub trait Scaler: Send + Sync + 'static {
    /// What fails beyond a refusal.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sets `service` of `id` to `replicas` in a new revision and places it.
    fn set_replicas(
        &self,
        id: &TopologyRef,
        service: &str,
        replicas: u32,
    ) -> impl Future<Output = Result<Scaled, Self::Error>> + Send;
}

/// Failures of an autoscaling round.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// The allocator could not be read or written.
    #[error("the autoscaler cannot use the allocator: {0}")]
    Allocator(#[from] AllocatorError),
    /// Setting the replicas failed.
    #[error("the autoscaler cannot scale {id} {service}")]
    Scale {
        /// The topology.
        id: TopologyRef,
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Carries out `decision` through `scaler`, as far as the quota allows: at the
/// wanted count, or the most below it that fits. Returns what to record (None when
/// nothing changed and nothing is worth saying).
pub async fn carry_out<S: Scaler>(
    scaler: &S,
    decision: &Decision,
) -> Result<Option<String>, AutoscaleError> {
    let Decision {
        id,
        service,
        current,
        wanted,
        why,
    } = decision;
    let mut refusal = None;
    let mut n = *wanted;
    while n != *current {
        let outcome =
            scaler
                .set_replicas(id, service, n)
                .await
                .map_err(|e| AutoscaleError::Scale {
                    id: id.clone(),
                    service: service.clone(),
                    source: Box::new(e),
                })?;
        match outcome {
            Scaled::Done => {
                let mut said = format!("scaled from {current} to {n} replicas: {why}");
                if let Some(refusal) = refusal {
                    said.push_str(&format!(
                        "; {wanted} wanted, but the tenant's quota stops it at {n} ({refusal})"
                    ));
                }
                return Ok(Some(said));
            }
            Scaled::Gone => return Ok(None),
            Scaled::Refused(why_not) if n > *current => {
                refusal.get_or_insert(why_not);
                n -= 1;
            }
            Scaled::Refused(why_not) => {
                return Ok(Some(format!(
                    "{wanted} replicas wanted ({why}), but it was refused: {why_not}"
                )));
            }
        }
    }
    Ok(refusal.map(|refusal| {
        format!(
            "{wanted} replicas wanted ({why}), but the tenant's quota stops it at {current}: {refusal}"
        )
    }))
}

/// The autoscaling loop, in the leading allocator.
#[derive(Debug)]
pub struct Autoscaler<S> {
    allocator: Allocator,
    nodes: NodeApi,
    scaler: S,
    every: Duration,
    memory: Memories,
}

impl<S: Scaler> Autoscaler<S> {
    /// A loop reading the CPU figures `nodes` hold and scaling through `scaler`.
    pub fn new(allocator: Allocator, nodes: NodeApi, scaler: S, every: Duration) -> Self {
        Self {
            allocator,
            nodes,
            scaler,
            every,
            memory: Memories::new(),
        }
    }

    /// Every autoscaled service placed now, with its replicas' CPU.
    async fn observe(&self) -> Result<Vec<Observation>, AutoscaleError> {
        let mut observations = Vec::new();
        for (id, spec) in self.allocator.autoscaled().await? {
            let figures: BTreeMap<(String, u32), u32> = self.nodes.cpu_figures(&id);
            for (name, service) in &spec.services {
                let Some(bounds) = service.autoscale else {
                    continue;
                };
                observations.push(Observation {
                    id: id.clone(),
                    service: name.clone(),
                    current: service.replicas,
                    bounds,
                    cpu_limit_millis: service.limits.cpu_millis,
                    measured: (1..=service.replicas)
                        .filter_map(|r| figures.get(&(name.clone(), r)).map(|c| u64::from(*c)))
                        .collect(),
                });
            }
        }
        Ok(observations)
    }

    /// One round: observe, plan, carry out, record what changed.
    async fn round(&mut self, now: Now) -> Result<(), AutoscaleError> {
        let observations = self.observe().await?;
        for decision in plan(&mut self.memory, &observations) {
            let said = carry_out(&self.scaler, &decision).await?;
            let key = (decision.id.clone(), decision.service.clone());
            let Some(said) = said else { continue };
            if self.memory.get(&key).is_some_and(|m| m.last_said == said) {
                continue;
            }
            self.allocator
                .record_service_event(
                    &decision.id,
                    &decision.service,
                    EventKind::Autoscaled,
                    &said,
                    now.wall_ms,
                )
                .await?;
            tracing::info!(topology = %decision.id, service = %decision.service, "{said}");
            if let Some(memory) = self.memory.get_mut(&key) {
                memory.last_said = said;
            }
        }
        Ok(())
    }
}

impl<S: Scaler> Controller for Autoscaler<S> {
    const NAME: &'static str = "autoscaler";

    async fn step(&mut self, now: Now) -> Next {
        if let Err(e) = self.round(now).await {
            tracing::warn!(error = %e, "an autoscaling round failed");
        }
        Next::After(self.every)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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

    fn observed(current: u32, measured: &[u64]) -> Observation {
        Observation {
            id: TopologyRef {
                tenant: "acme".into(),
                topology: "shop".into(),
            },
            service: "web".into(),
            current,
            bounds: BOUNDS,
            // A whole core each: the 50% target is 500 millis.
            cpu_limit_millis: Some(1000),
            measured: measured.to_vec(),
        }
    }

    #[test]
    fn up_at_once_down_only_after_three_rounds_in_a_row() {
        let mut memory = Memories::new();
        let busy = plan(&mut memory, &[observed(2, &[1000, 1000])]);
        assert_eq!(busy.len(), 1);
        assert_eq!(busy[0].wanted, 4, "{busy:?}");
        let idle = [observed(4, &[10, 10, 10, 10])];
        assert!(plan(&mut memory, &idle).is_empty(), "first quiet round");
        assert!(plan(&mut memory, &idle).is_empty(), "second quiet round");
        let down = plan(&mut memory, &idle);
        assert_eq!(down.len(), 1, "third quiet round scales down");
        assert_eq!(down[0].wanted, 1);
        // A busy round between quiet ones starts the count again.
        assert!(plan(&mut memory, &idle).is_empty());
        assert_eq!(
            plan(&mut memory, &[observed(4, &[500, 500, 500, 500])]),
            vec![]
        );
        assert!(plan(&mut memory, &idle).is_empty());
        assert!(plan(&mut memory, &idle).is_empty());
    }

    #[test]
    fn nothing_measured_nothing_decided_and_gone_services_are_forgotten() {
        let mut memory = Memories::new();
        assert!(plan(&mut memory, &[observed(3, &[])]).is_empty());
        plan(&mut memory, &[observed(4, &[10, 10, 10, 10])]);
        assert_eq!(memory.len(), 1);
        plan(&mut memory, &[]);
        assert!(memory.is_empty());
    }

    /// Refuses every count above `most`.
    struct Quota {
        most: u32,
        asked: Mutex<Vec<u32>>,
    }

    impl Scaler for Quota {
        type Error = std::io::Error;

        async fn set_replicas(
            &self,
            _id: &TopologyRef,
            _service: &str,
            replicas: u32,
        ) -> Result<Scaled, std::io::Error> {
            self.asked.lock().expect("not poisoned").push(replicas);
            Ok(match replicas <= self.most {
                true => Scaled::Done,
                false => Scaled::Refused("over the quota".into()),
            })
        }
    }

    fn decision(current: u32, wanted: u32) -> Decision {
        Decision {
            id: observed(current, &[]).id,
            service: "web".into(),
            current,
            wanted,
            why: "busy".into(),
        }
    }

    #[tokio::test]
    async fn a_scale_up_takes_as_many_as_the_quota_allows_and_says_so() {
        let quota = Quota {
            most: 3,
            asked: Mutex::default(),
        };
        let said = carry_out(&quota, &decision(1, 5))
            .await
            .expect("no failure");
        assert_eq!(*quota.asked.lock().expect("not poisoned"), [5, 4, 3]);
        let said = said.expect("something to record");
        assert!(said.starts_with("scaled from 1 to 3 replicas"), "{said}");
        assert!(said.contains("quota stops it at 3"), "{said}");
    }

    #[tokio::test]
    async fn a_scale_up_the_quota_stops_entirely_changes_nothing_and_says_why() {
        let quota = Quota {
            most: 2,
            asked: Mutex::default(),
        };
        let said = carry_out(&quota, &decision(2, 4))
            .await
            .expect("no failure");
        assert_eq!(*quota.asked.lock().expect("not poisoned"), [4, 3]);
        assert!(said.expect("said").contains("stops it at 2"));
    }
}
