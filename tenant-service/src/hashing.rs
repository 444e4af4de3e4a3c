//! Password hashing on a bounded pool: argon2 is slow on purpose, so it runs off the
//! threads that serve requests, a few at a time, with a bounded queue. A flood of
//! logins is answered "busy" before it costs anything, and cannot starve the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// The hashing pool.
#[derive(Debug)]
pub struct Hashing {
    running: Semaphore,
    admitted: AtomicUsize,
    most_admitted: usize,
}

/// A place in the pool's queue, held for one login.
#[derive(Debug)]
pub struct Admitted<'a>(&'a Hashing);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hashing {
    /// A pool hashing on all cores but one (at least one), with `waiting` more logins
    /// queued for each.
    pub fn for_this_machine(waiting: usize) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let running = cores.saturating_sub(1).max(1);
        Arc::new(Self {
            running: Semaphore::new(running),
            admitted: AtomicUsize::new(0),
            most_admitted: running * (1 + waiting),
        })
    }

    /// A place in the queue, or `None` when it is full.
    pub fn admit(&self) -> Option<Admitted<'_>> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self);
        (before < self.most_admitted).then_some(admitted)
    }

    /// Runs `hash` on the pool when a hasher is free.
    pub async fn run<T: Send + 'static>(
        &self,
        hash: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.running.acquire().await.ok()?;
        tokio::task::spawn_blocking(hash).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_and_a_place_is_freed_when_dropped() {
        let pool = Hashing::for_this_machine(2);
        let held: Vec<_> = std::iter::from_fn(|| pool.admit()).take(1000).collect();
        assert_eq!(held.len(), pool.most_admitted);
        assert!(pool.admit().is_none());
        drop(held);
        assert!(pool.admit().is_some());
    }
}
