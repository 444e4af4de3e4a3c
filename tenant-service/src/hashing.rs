//! Password hashing on a bounded pool: argon2 is slow and memory-hard on purpose
//! (19 MiB a hash), so it runs on a few threads of its own, off the threads that
//! serve requests, with a bounded queue. A flood of logins is answered "busy" before
//! it costs anything and cannot starve the rest; and the memory the hashes take is
//! that of a few threads, not of every thread that ever hashed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use berth_protocol::limits::{Bucket, Rate};
use berth_protocol::time::now_ms;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing pool.
#[derive(Debug)]
pub struct Hashing {
    jobs: Mutex<mpsc::Sender<Job>>,
    admitted: AtomicUsize,
    most_admitted: usize,
    /// Hashes a second, so that a flood takes a bounded share of a core however many
    /// connections it comes on.
    budget: Mutex<Bucket>,
}

/// Hashes the pool starts a second (a login is one; the threads could do more, but
/// the rest of the server needs the core as much).
const HASHES: Rate = Rate {
    per_period: 20,
    period_ms: 1_000,
    burst: 60,
};

/// A place in the pool's queue, held for one login.
#[derive(Debug)]
pub struct Admitted<'a>(&'a Hashing);

impl Admitted<'_> {
    /// Gives back the hash this place was counted for: the login was refused before
    /// its password was checked.
    pub fn not_hashed(&self) {
        self.0
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .give_back(HASHES);
    }
}

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
        let threads = cores.saturating_sub(1).max(1);
        let (send, receive) = mpsc::channel::<Job>();
        let receive = Arc::new(Mutex::new(receive));
        for i in 0..threads {
            let receive = receive.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("berth-hash-{i}"))
                .spawn(move || {
                    loop {
                        // One job at a time: the lock is held only to take it.
                        let job = match receive.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Arc::new(Self {
            jobs: Mutex::new(send),
            admitted: AtomicUsize::new(0),
            most_admitted: threads * (1 + waiting),
            budget: Mutex::new(Bucket::full(HASHES, now_ms())),
        })
    }

    /// A place in the queue, or `None` when it is full or the second's hashes are
    /// spent.
    pub fn admit(&self) -> Option<Admitted<'_>> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self);
        if before >= self.most_admitted {
            return None;
        }
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        budget.take(HASHES, now_ms()).ok().map(|()| admitted)
    }

    /// Runs `hash` on the pool; `None` if the pool is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        hash: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(hash());
        });
        self.jobs.lock().ok()?.send(job).ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_and_a_place_is_freed_when_dropped() {
        let pool = Hashing::for_this_machine(2);
        let held: Vec<_> = std::iter::from_fn(|| pool.admit()).take(1000).collect();
        assert_eq!(held.len(), pool.most_admitted.min(HASHES.burst as usize));
        assert!(pool.admit().is_none());
    }

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_answer() {
        let pool = Hashing::for_this_machine(2);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .flatten();
        assert!(name.is_some_and(|n| n.starts_with("berth-hash-")));
    }
}
