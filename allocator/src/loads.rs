//! The pool's nodes as placement sees them, kept in memory so that a deploy of a new
//! topology reads no node rows at all and no index has to move each time a node's
//! load changes: placement picks the least-loaded open nodes from here.
//!
//! A view, not the truth: capacity is reserved with conditional updates, and a node
//! that receives a new replica must still be open when the deploy commits (see
//! `store::shift_nodes`), so a stale view can make a deploy retry, never place wrongly.
//! What this process commits is applied at once; every node row a deploy reads
//! corrects its view; what other processes change (and what this one changes outside
//! deploys) is read back in full: behind the deploy that finds the view older than
//! [`FRESH_FOR`] (that deploy places from the view it has, so a deploy never waits on
//! reading a big pool), or before the next deploy after [`Loads::stale`]. A reading
//! behind a deploy may miss a commit of this process made while it read; the node's
//! next row read or the next reading corrects it.

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
    /// When the last full reading was made; None: never, or the view is stale.
    read_at: Option<Instant>,
    /// Whether a reading behind a deploy is under way.
    reading: bool,
}

/// What a deploy does about the view before it places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Before {
    /// Place from it.
    Place,
    /// Read every node first (never read, or stale).
    Read,
    /// Place from it, and read every node behind the deploy (older than [`FRESH_FOR`]);
    /// the caller starts the reading, and then no other deploy does until it ends.
    PlaceAndRead,
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

    /// What a deploy about to place does about the view.
    pub(crate) fn before_placing(&self) -> Before {
        let mut inner = self.inner();
        match inner.read_at {
            None => Before::Read,
            Some(at) if at.elapsed() < FRESH_FOR || inner.reading => Before::Place,
            Some(_) => {
                inner.reading = true;
                Before::PlaceAndRead
            }
        }
    }

    /// Forgets that the view is current (a node joined, was cordoned or drained, died
    /// or came back, or a deploy found a view out of date): the next deploy reads
    /// every node before it places.
    pub(crate) fn stale(&self) {
        self.inner().read_at = None;
    }

    /// Marks the view as due for a reading, behind the next deploy (replicas were
    /// removed or moved: nodes hold less than it says, which makes placement less
    /// even until read, never wrong).
    pub(crate) fn due(&self) {
        let mut inner = self.inner();
        if let Some(at) = inner.read_at {
            inner.read_at = Some(at.checked_sub(FRESH_FOR).unwrap_or(at));
        }
    }

    /// Reads every node from `db` and replaces what was known. A reading started by
    /// [`Before::PlaceAndRead`] ends here, whether or not it succeeds.
    pub(crate) async fn read(&self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
        let started = Instant::now();
        // Built before the view is locked: deploys place meanwhile.
        let fresh = crate::store::all_nodes(db).await.map(|nodes| {
            let mut fresh = Inner {
                read_at: Some(started),
                ..Inner::default()
            };
            for view in nodes {
                fresh.set(view);
            }
            fresh
        });
        let mut inner = self.inner();
        inner.reading = false;
        *inner = fresh?;
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
    fn a_view_is_read_first_when_unknown_and_behind_one_deploy_when_old() {
        let loads = Loads::default();
        assert_eq!(loads.before_placing(), Before::Read);
        loads.inner().read_at = Some(Instant::now());
        assert_eq!(loads.before_placing(), Before::Place);
        loads.due();
        assert_eq!(loads.before_placing(), Before::PlaceAndRead);
        assert_eq!(
            loads.before_placing(),
            Before::Place,
            "one reading at a time"
        );
        loads.inner().reading = false;
        loads.stale();
        assert_eq!(loads.before_placing(), Before::Read);
    }
}
