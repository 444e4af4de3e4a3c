//! The pool's nodes as placement sees them, kept in memory so that a deploy of a new
//! topology reads no node rows at all and no index has to move each time a node's
//! load changes: placement picks the least-loaded open nodes from here.
//!
//! A view, not the truth: capacity is reserved with conditional updates, and a node
//! that receives a new replica must still be open when the deploy commits (see
//! `store::shift_nodes`), so a stale view can make a deploy retry, never place wrongly.
//! What this process commits is applied at once; every node row a deploy reads
//! corrects its view; what other processes change (and what this one changes outside
//! deploys) is read back in full at most [`FRESH_FOR`] later, or at the next deploy
//! after [`Loads::stale`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbErr};

use crate::placement::NodeView;
use crate::resources::Resources;

/// How long a full reading of the pool's nodes is trusted before it is read again.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

/// The pool's nodes, and the open ones by load.
#[derive(Debug, Default)]
pub(crate) struct Loads {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every node.
    views: HashMap<String, NodeView>,
    /// The open nodes, least loaded first (then by name, the order placement breaks
    /// ties in), by the containers they hold.
    by_load: BTreeSet<(u64, String)>,
    /// When the last full reading stops being trusted; None: never read, or stale.
    fresh_until: Option<Instant>,
}

fn is_open(n: &NodeView) -> bool {
    n.schedulable && !n.draining
}

impl Inner {
    fn set(&mut self, view: NodeView) {
        if let Some(old) = self.views.get(&view.name)
            && is_open(old)
        {
            self.by_load
                .remove(&(old.used.containers, view.name.clone()));
        }
        if is_open(&view) {
            self.by_load
                .insert((view.used.containers, view.name.clone()));
        }
        self.views.insert(view.name.clone(), view);
    }
}

impl Loads {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the next deploy must read every node first.
    pub(crate) fn needs_reading(&self) -> bool {
        self.inner()
            .fresh_until
            .is_none_or(|until| Instant::now() >= until)
    }

    /// Forgets that the views are current (a node joined, drained, died or came back,
    /// replicas were removed or moved, or a deploy found a view out of date): the next
    /// deploy reads every node.
    pub(crate) fn stale(&self) {
        self.inner().fresh_until = None;
    }

    /// Reads every node from `db` and replaces what was known.
    pub(crate) async fn read(&self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
        let nodes = crate::store::all_nodes(db).await?;
        let mut fresh = Inner {
            fresh_until: Some(Instant::now() + FRESH_FOR),
            ..Inner::default()
        };
        for view in nodes {
            fresh.set(view);
        }
        *self.inner() = fresh;
        Ok(())
    }

    /// The `n` open nodes with the fewest containers, least loaded first.
    pub(crate) fn least_loaded(&self, n: usize) -> Vec<NodeView> {
        let inner = self.inner();
        inner
            .by_load
            .iter()
            .take(n)
            .filter_map(|(_, name)| inner.views.get(name).cloned())
            .collect()
    }

    /// Corrects each node's view from its row as just read.
    pub(crate) fn saw(&self, nodes: &[NodeView]) {
        let mut inner = self.inner();
        for n in nodes {
            inner.set(n.clone());
        }
    }

    /// Applies a committed change of this process: what a topology reserves on `name`
    /// went from `before` to `after`.
    pub(crate) fn shift(&self, name: &str, before: Resources, after: Resources) {
        let mut inner = self.inner();
        if let Some(view) = inner.views.get(name) {
            let mut view = view.clone();
            view.used = view.used.minus(before).plus(after);
            inner.set(view);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::resources::Limit;

    fn view(name: &str, containers: u64, open: bool) -> NodeView {
        NodeView {
            name: name.into(),
            capacity: Limit::default(),
            used: Resources {
                containers,
                ..Resources::default()
            },
            schedulable: open,
            draining: false,
            labels: BTreeMap::new(),
        }
    }

    fn containers(containers: u64) -> Resources {
        Resources {
            containers,
            ..Resources::default()
        }
    }

    fn names(views: Vec<NodeView>) -> Vec<String> {
        views.into_iter().map(|v| v.name).collect()
    }

    #[test]
    fn the_least_loaded_come_first_then_by_name() {
        let loads = Loads::default();
        loads.saw(&[view("c", 1, true), view("b", 2, true), view("a", 1, true)]);
        assert_eq!(names(loads.least_loaded(2)), ["a", "c"]);
        loads.shift("a", Resources::default(), containers(5));
        assert_eq!(names(loads.least_loaded(3)), ["c", "b", "a"]);
        loads.shift("c", containers(1), Resources::default());
        assert_eq!(names(loads.least_loaded(1)), ["c"]);
        assert_eq!(loads.least_loaded(1)[0].used.containers, 0);
    }

    #[test]
    fn a_closed_node_is_no_candidate_and_an_unknown_one_stays_unknown() {
        let loads = Loads::default();
        loads.saw(&[view("a", 0, true), view("b", 1, true)]);
        loads.saw(&[view("a", 0, false)]);
        assert_eq!(names(loads.least_loaded(5)), ["b"]);
        loads.shift("a", Resources::default(), containers(1));
        loads.shift("z", Resources::default(), containers(1));
        assert_eq!(names(loads.least_loaded(5)), ["b"]);
        loads.saw(&[view("a", 3, true)]);
        assert_eq!(names(loads.least_loaded(5)), ["b", "a"]);
    }

    #[test]
    fn loads_need_reading_until_read_and_again_once_stale() {
        let loads = Loads::default();
        assert!(loads.needs_reading());
        loads.inner().fresh_until = Some(Instant::now() + FRESH_FOR);
        assert!(!loads.needs_reading());
        loads.stale();
        assert!(loads.needs_reading());
    }
}
