//! Control loops: the failure detector, the rebalancer, the autoscaler and the
//! ledger's witness are each a [`Controller`] whose `step` does one round and says
//! when it wants the next, and one runner, [`spawn`], owns the timing.
//!
//! Time is passed in, never reached for: a step gets [`Now`] from the runner's
//! [`Clock`], so tests drive steps with any time they like, and the runner itself is
//! tested under tokio's paused clock. Steps report their own failures (a round that
//! fails is logged and tried again at the next tick): a control loop never ends
//! before its process does.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time a step runs at: the wall clock for what is recorded, a monotonic
/// instant for what is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds.
    pub wall_ms: i64,
    /// A monotonic instant, for durations.
    pub instant: Instant,
}

/// Where a runner reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Now;
}

/// The system's clock; its monotonic half follows tokio's, so a paused test clock
/// pauses it too.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            instant: tokio::time::Instant::now().into_std(),
        }
    }
}

/// What a loop does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Step again after this long.
    After(Duration),
}

/// One control loop: a round at a time.
pub trait Controller: Send + 'static {
    /// The loop's name, for logs.
    const NAME: &'static str;

    /// Does one round at `now`; says when to do the next.
    fn step(&mut self, now: Now) -> impl Future<Output = Next> + Send;
}

/// Runs `controller` until the process ends (or the task is aborted), reading the
/// time from `clock`. The first round runs at once.
pub fn spawn<C: Controller>(mut controller: C, clock: impl Clock) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::debug!(controller = C::NAME, "control loop started");
        loop {
            let Next::After(wait) = controller.step(clock.now()).await;
            tokio::time::sleep(wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Counts its rounds and asks for the next after `every`.
    struct Counting {
        rounds: Arc<AtomicU32>,
        every: Duration,
    }

    impl Controller for Counting {
        const NAME: &'static str = "counting";

        async fn step(&mut self, _now: Now) -> Next {
            self.rounds.fetch_add(1, Ordering::SeqCst);
            Next::After(self.every)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_steps_at_once_then_as_each_step_asks() {
        let rounds = Arc::new(AtomicU32::new(0));
        let every = Duration::from_secs(15);
        let task = spawn(
            Counting {
                rounds: Arc::clone(&rounds),
                every,
            },
            SystemClock,
        );
        tokio::task::yield_now().await;
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            1,
            "the first round runs at once"
        );
        tokio::time::sleep(every * 3 + Duration::from_millis(1)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_follows_the_paused_clock() {
        let before = SystemClock.now();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = SystemClock.now();
        assert_eq!(after.instant - before.instant, Duration::from_secs(60));
    }
}
