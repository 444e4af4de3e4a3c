//! Failure detection: node leases renewed by signed heartbeats, a detector that marks a
//! node suspect and then dead, and what follows a death (its replicas placed
//! elsewhere, its delegations revoked).
//!
//! The detector does not trust its own clock blindly. It ticks every [`TICK`]; when a
//! tick comes late (the allocator was paused, swapped, or starved of CPU), the time it
//! lost is added to every lease before any is judged, so a slow allocator never
//! declares healthy nodes dead: it only ever counts time during which it was able to
//! hear heartbeats (the lesson of Lifeguard's local health awareness in SWIM).
//!
//! Nodes fence themselves: a node that cannot renew its lease for `fence_after`
//! (shorter than `dead_after`) stops its replicas, so by the time the allocator
//! places them elsewhere the old copies are gone.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Unix milliseconds now.
pub use berth_protocol::time::now_ms;

/// How often the detector looks at the leases.
pub const TICK: Duration = Duration::from_millis(100);

/// The detector's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// How often nodes heartbeat.
    pub heartbeat: Duration,
    /// Silence after which a node is suspect (logged and counted, nothing moves).
    pub suspect_after: Duration,
    /// Silence after which a node is dead and its replicas are placed elsewhere.
    pub dead_after: Duration,
    /// Silence after which a node stops its own replicas; shorter than `dead_after`.
    pub fence_after: Duration,
    /// The most heartbeats a second the pool may send: past `heartbeats_per_second`
    /// nodes the interval stretches, and every threshold with it (as Nomad does).
    pub heartbeats_per_second: u32,
}

impl Default for Thresholds {
    /// Two heartbeats a second; suspect after 1.5 s (three missed), fenced after
    /// 1.5 s, dead after 2.5 s. See ARCHITECTURE.md for why.
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            suspect_after: Duration::from_millis(1_500),
            dead_after: Duration::from_millis(2_500),
            fence_after: Duration::from_millis(1_500),
            heartbeats_per_second: 2_000,
        }
    }
}

impl Thresholds {
    /// The thresholds for a pool of `nodes`: the heartbeat interval stretched so the
    /// pool sends at most `heartbeats_per_second`, and suspicion, fencing and death
    /// stretched as much, so they wait as many heartbeats as configured.
    pub fn for_pool(&self, nodes: usize) -> Self {
        let rate = f64::from(self.heartbeats_per_second.max(1));
        let needed = Duration::from_secs_f64(nodes as f64 / rate);
        if needed <= self.heartbeat {
            return *self;
        }
        let factor = needed.as_secs_f64() / self.heartbeat.as_secs_f64().max(1e-3);
        Self {
            heartbeat: needed,
            suspect_after: self.suspect_after.mul_f64(factor),
            fence_after: self.fence_after.mul_f64(factor),
            dead_after: self.dead_after.mul_f64(factor),
            heartbeats_per_second: self.heartbeats_per_second,
        }
    }

    /// Checks that they make sense together: a node must fence itself before it is
    /// declared dead, and be suspect before that.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.heartbeat >= self.suspect_after {
            return Err("the heartbeat interval must be shorter than suspect-after".into());
        }
        if self.suspect_after > self.dead_after {
            return Err("suspect-after must not be longer than dead-after".into());
        }
        if self.fence_after >= self.dead_after {
            return Err(
                "fence-after must be shorter than dead-after, so a cut-off node stops its replicas before they are placed elsewhere".into(),
            );
        }
        Ok(())
    }
}

/// What one tick found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Nodes that became suspect this tick.
    pub suspect: Vec<String>,
    /// Nodes that died this tick.
    pub dead: Vec<String>,
    /// How late the tick was, when it was late enough to extend the leases.
    pub late_by: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    /// When each live node last renewed its lease (extended by detector lateness).
    renewed: HashMap<String, Instant>,
    suspect: HashSet<String>,
    dead: HashSet<String>,
    last_tick: Option<Instant>,
}

/// The leases of every node, and the detector's judgement over them.
#[derive(Debug)]
pub struct Leases {
    thresholds: Thresholds,
    state: Mutex<State>,
}

impl Leases {
    /// No node yet.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            state: Mutex::default(),
        }
    }

    /// The thresholds as configured.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// The thresholds in force for the pool as it is now.
    pub fn in_force(&self) -> Thresholds {
        let nodes = self.state().renewed.len();
        self.thresholds.for_pool(nodes)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `node` as of `now` (a node known from the database when the
    /// allocator starts gets a whole lease to reconnect), unless watched already;
    /// `dead` nodes are remembered as dead.
    pub fn track(&self, node: &str, dead: bool, now: Instant) {
        let mut state = self.state();
        if dead {
            state.dead.insert(node.to_owned());
        } else if !state.dead.contains(node) {
            state.renewed.entry(node.to_owned()).or_insert(now);
        }
    }

    /// Renews `node`'s lease at `now`. Returns true when the node was dead (it came
    /// back).
    pub fn renew(&self, node: &str, now: Instant) -> bool {
        let mut state = self.state();
        state.renewed.insert(node.to_owned(), now);
        state.suspect.remove(node);
        state.dead.remove(node)
    }

    /// Forgets `node` was declared dead (its death could not be recorded, so it is
    /// judged again next tick).
    pub fn undo_death(&self, node: &str, now: Instant) {
        let mut state = self.state();
        if state.dead.remove(node) {
            state.renewed.insert(node.to_owned(), now);
        }
    }

    /// Judges every lease at `now`. A node past `dead_after` is dead (and no longer
    /// watched until it heartbeats again); past `suspect_after`, suspect.
    pub fn tick(&self, now: Instant) -> Verdicts {
        let mut state = self.state();
        let mut verdicts = Verdicts::default();
        if let Some(last) = state.last_tick {
            let gap = now.saturating_duration_since(last);
            let late = gap.saturating_sub(TICK);
            // Late by more than a tick: the detector could not have heard heartbeats
            // in that time, so it does not count against anyone.
            if late > TICK {
                for renewed in state.renewed.values_mut() {
                    *renewed += late;
                }
                verdicts.late_by = Some(late);
            }
        }
        state.last_tick = Some(now);
        let Thresholds {
            suspect_after,
            dead_after,
            ..
        } = self.thresholds.for_pool(state.renewed.len());
        let mut dead = Vec::new();
        let mut suspect = Vec::new();
        for (node, renewed) in &state.renewed {
            let silent = now.saturating_duration_since(*renewed);
            if silent >= dead_after {
                dead.push(node.clone());
            } else if silent >= suspect_after && !state.suspect.contains(node) {
                suspect.push(node.clone());
            }
        }
        for node in &dead {
            state.renewed.remove(node);
            state.suspect.remove(node);
            state.dead.insert(node.clone());
        }
        for node in &suspect {
            state.suspect.insert(node.clone());
        }
        dead.sort();
        suspect.sort();
        verdicts.dead = dead;
        verdicts.suspect = suspect;
        verdicts
    }

    /// How many nodes are suspect now.
    pub fn suspects(&self) -> usize {
        self.state().suspect.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> Leases {
        Leases::new(Thresholds {
            heartbeat: Duration::from_secs(1),
            suspect_after: Duration::from_secs(3),
            dead_after: Duration::from_secs(6),
            fence_after: Duration::from_secs(4),
            heartbeats_per_second: 2_000,
        })
    }

    #[test]
    fn a_silent_node_is_suspect_then_dead_and_comes_back_when_it_heartbeats() {
        let leases = leases();
        let start = Instant::now();
        leases.track("n1", false, start);
        leases.track("n2", false, start);
        let mut at = start;
        let mut seen = Vec::new();
        // n2 heartbeats every second; n1 says nothing. The detector ticks every TICK.
        let per_second = (Duration::from_secs(1).as_millis() / TICK.as_millis()) as u32;
        for step in 1..=7 * per_second {
            at = start + TICK * step;
            if step % per_second == 0 {
                leases.renew("n2", at);
            }
            let v = leases.tick(at);
            assert_eq!(v.late_by, None);
            for n in v.suspect {
                seen.push(format!("{:.1} s: {n} suspect", (at - start).as_secs_f64()));
            }
            for n in v.dead {
                seen.push(format!("{:.1} s: {n} dead", (at - start).as_secs_f64()));
            }
        }
        assert_eq!(seen, ["3.0 s: n1 suspect", "6.0 s: n1 dead"]);
        assert!(leases.renew("n1", at), "n1 came back from the dead");
        assert!(!leases.renew("n1", at));
        assert!(leases.tick(at + TICK).dead.is_empty());
    }

    #[test]
    fn a_paused_detector_does_not_declare_anyone_dead() {
        let leases = leases();
        let start = Instant::now();
        leases.track("n1", false, start);
        leases.tick(start);
        // The allocator stops for 20 s (longer than dead_after); n1 kept heartbeating
        // but nothing was heard. The next tick is late: nobody dies.
        let after = start + Duration::from_secs(20);
        let v = leases.tick(after);
        assert!(v.dead.is_empty() && v.suspect.is_empty(), "{v:?}");
        assert!(v.late_by.is_some_and(|l| l > Duration::from_secs(19)));
        // Heard again soon after: still alive.
        leases.renew("n1", after + TICK);
        assert!(leases.tick(after + TICK).dead.is_empty());
    }

    #[test]
    fn a_large_pool_heartbeats_less_often_and_waits_as_many_beats() {
        let t = Thresholds::default();
        assert_eq!(t.for_pool(1_000), t);
        let big = t.for_pool(10_000);
        assert_eq!(big.heartbeat, Duration::from_secs(5));
        assert_eq!(
            (big.suspect_after, big.fence_after, big.dead_after),
            (
                Duration::from_secs(15),
                Duration::from_secs(15),
                Duration::from_secs(25)
            )
        );
    }

    #[test]
    fn thresholds_must_fence_before_death() {
        assert!(Thresholds::default().validate().is_ok());
        let bad = Thresholds {
            fence_after: Duration::from_secs(20),
            ..Thresholds::default()
        };
        assert!(bad.validate().unwrap_err().contains("fence-after"));
    }
}
