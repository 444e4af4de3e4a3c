//! The node agent's timekeeping, apart from its I/O: the lease (when it was renewed,
//! when the node must fence itself), the duties done every so often, and how a failed
//! report backs off. Every decision takes `now` from the caller, on tokio's clock, so
//! the tests drive it with paused time.

use std::time::Duration;

use tokio::time::Instant;

/// The node's lease, as far as the node knows it.
#[derive(Debug)]
pub(crate) struct Lease {
    /// When the last heartbeat the allocator accepted was sent.
    renewed: Instant,
    /// How long the node may go without renewing before it fences itself.
    fence_after: Duration,
    /// Whether it has fenced itself (stopped its replicas) since it last renewed.
    fenced: bool,
    /// When the next heartbeat is due.
    next: Instant,
    /// How often to heartbeat, as the allocator last said.
    every: Duration,
}

impl Lease {
    /// A lease counted as renewed at `now`, heartbeating at once and then `every`.
    pub(crate) fn new(now: Instant, fence_after: Duration, every: Duration) -> Self {
        Self {
            renewed: now,
            fence_after,
            fenced: false,
            next: now,
            every,
        }
    }

    /// Sets how long the node may go without renewing.
    pub(crate) fn fence_after(&mut self, fence_after: Duration) {
        self.fence_after = fence_after;
    }

    /// When the next heartbeat is due.
    pub(crate) fn next_heartbeat(&self) -> Instant {
        self.next
    }

    /// Whether a heartbeat is due at `now`; when it is, the one after is scheduled.
    pub(crate) fn heartbeat_due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }

    /// The allocator accepted the heartbeat sent at `sent`, and gave the pool's
    /// settings where it had them. Returns whether the node had fenced itself (it
    /// then asks for its current assignments anew).
    pub(crate) fn renewed(
        &mut self,
        sent: Instant,
        fence_after: Option<Duration>,
        every: Option<Duration>,
    ) -> bool {
        self.renewed = self.renewed.max(sent);
        if let Some(fence_after) = fence_after.filter(|d| !d.is_zero()) {
            self.fence_after = fence_after;
        }
        if let Some(every) = every.filter(|d| !d.is_zero()) {
            self.every = every;
        }
        std::mem::replace(&mut self.fenced, false)
    }

    /// When the node must fence itself if it renews nothing before: none once it has.
    pub(crate) fn fence_deadline(&self) -> Option<Instant> {
        (!self.fenced).then(|| self.renewed + self.fence_after)
    }

    /// When the agent must next look at its lease: the next heartbeat, or the fence
    /// deadline if that comes first (so a fence is not a heartbeat late).
    pub(crate) fn next_wake(&self) -> Instant {
        self.fence_deadline()
            .map_or(self.next, |deadline| deadline.min(self.next))
    }

    /// How long the node has gone without renewing, when that is long enough that it
    /// must fence itself now (and has not yet).
    pub(crate) fn must_fence(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.renewed);
        (!self.fenced && silent >= self.fence_after).then_some(silent)
    }

    /// Records whether the node's replicas are stopped (a fence that failed part way
    /// is tried again on the next beat).
    pub(crate) fn set_fenced(&mut self, fenced: bool) {
        self.fenced = fenced;
    }

    /// Whether the node has fenced itself since it last renewed.
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced
    }
}

/// A duty done every so often: due at `next`, then `every` after it was last done.
#[derive(Debug)]
pub(crate) struct Every {
    next: Instant,
    every: Duration,
}

impl Every {
    /// First due at `first`.
    pub(crate) fn starting(first: Instant, every: Duration) -> Self {
        Self { next: first, every }
    }

    /// Whether the duty is due at `now`; when it is, the next time is scheduled.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

/// A report that failed and is owed again: when, and how long the wait before was.
/// Each failure doubles the wait, up to a ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owed {
    due: Instant,
    wait: Duration,
}

impl Owed {
    /// A first failure at `now`: sent again after `first`.
    pub(crate) fn first(now: Instant, first: Duration) -> Self {
        Self {
            due: now + first,
            wait: first,
        }
    }

    /// Whether it is time to send it again.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.due
    }

    /// It failed again at `now`: the wait doubles, to at most `most`.
    pub(crate) fn failed_again(self, now: Instant, most: Duration) -> Self {
        let wait = (self.wait * 2).min(most);
        Self {
            due: now + wait,
            wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_node_that_cannot_renew_fences_once_after_its_lease() {
        let mut lease = Lease::new(Instant::now(), 10 * SECOND, SECOND);
        assert!(lease.heartbeat_due(Instant::now()));
        assert!(!lease.heartbeat_due(Instant::now()), "one beat per period");
        tokio::time::advance(9 * SECOND).await;
        assert_eq!(lease.must_fence(Instant::now()), None);
        tokio::time::advance(SECOND).await;
        assert_eq!(lease.must_fence(Instant::now()), Some(10 * SECOND));
        lease.set_fenced(true);
        tokio::time::advance(5 * SECOND).await;
        assert_eq!(lease.must_fence(Instant::now()), None, "fenced once");
        // Renewed again: the node asks for its assignments anew, and counts afresh.
        assert!(lease.renewed(Instant::now(), None, None));
        assert!(!lease.is_fenced());
        tokio::time::advance(9 * SECOND).await;
        assert_eq!(lease.must_fence(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_agent_wakes_for_its_fence_deadline_before_a_later_heartbeat() {
        let start = Instant::now();
        let mut lease = Lease::new(start, Duration::from_millis(1_500), Duration::from_secs(1));
        assert!(lease.heartbeat_due(start));
        assert_eq!(lease.next_wake(), start + Duration::from_secs(1));
        assert!(lease.heartbeat_due(start + Duration::from_secs(1)));
        // The heartbeat at 1 s was not answered: the fence is due at 1.5 s, before the
        // next heartbeat at 2 s.
        assert_eq!(
            lease.fence_deadline(),
            Some(start + Duration::from_millis(1_500))
        );
        assert_eq!(lease.next_wake(), start + Duration::from_millis(1_500));
        lease.set_fenced(true);
        assert_eq!(lease.fence_deadline(), None);
        assert_eq!(lease.next_wake(), start + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_allocators_settings_take_over_and_a_late_answer_does_not_rewind() {
        let start = Instant::now();
        let mut lease = Lease::new(start, 10 * SECOND, SECOND);
        assert!(lease.heartbeat_due(start));
        tokio::time::advance(SECOND).await;
        let sent = Instant::now();
        assert!(lease.heartbeat_due(sent));
        assert!(!lease.renewed(sent, Some(3 * SECOND), Some(SECOND / 2)));
        // An answer to an older heartbeat, arriving after, keeps the newer renewal.
        assert!(!lease.renewed(start, None, None));
        tokio::time::advance(2 * SECOND).await;
        assert_eq!(lease.must_fence(Instant::now()), None);
        tokio::time::advance(SECOND).await;
        assert_eq!(lease.must_fence(Instant::now()), Some(3 * SECOND));
        // The new period: due half a second after the last beat.
        assert_eq!(lease.next_heartbeat(), sent + SECOND);
        assert!(lease.heartbeat_due(Instant::now()));
        assert_eq!(lease.next_heartbeat(), Instant::now() + SECOND / 2);
        // A zero setting is no setting.
        lease.renewed(Instant::now(), Some(Duration::ZERO), Some(Duration::ZERO));
        assert!(lease.must_fence(Instant::now() + 3 * SECOND).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_duty_is_due_once_per_period_from_when_it_was_done() {
        let mut resync = Every::starting(Instant::now() + 5 * SECOND, 5 * SECOND);
        assert!(!resync.due(Instant::now()));
        tokio::time::advance(7 * SECOND).await;
        assert!(resync.due(Instant::now()));
        assert!(!resync.due(Instant::now()));
        tokio::time::advance(4 * SECOND).await;
        assert!(
            !resync.due(Instant::now()),
            "five seconds after it was done"
        );
        tokio::time::advance(SECOND).await;
        assert!(resync.due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_report_backs_off_to_a_ceiling() {
        let most = 30 * SECOND;
        let mut owed = Owed::first(Instant::now(), SECOND);
        assert!(!owed.due(Instant::now()));
        let mut waits = Vec::new();
        for _ in 0..7 {
            tokio::time::advance(owed.wait).await;
            assert!(owed.due(Instant::now()));
            owed = owed.failed_again(Instant::now(), most);
            waits.push(owed.wait.as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
    }
}
