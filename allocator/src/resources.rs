//! Resource amounts and quotas: plain arithmetic, no I/O.

use std::fmt;

pub use berth_api::{Limit, Resources};

/// Which quota a request exceeds, and by how much.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct QuotaExceeded {
    /// The tenant.
    pub tenant: String,
    /// Each exceeded dimension: (name, limit, would-be usage).
    pub over: Vec<(&'static str, u64, u64)>,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the deploy does not fit tenant {:?}'s quota:",
            self.tenant
        )?;
        for (i, (what, limit, wanted)) in self.over.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            let by = wanted - limit;
            match *what {
                "cpu" => write!(
                    f,
                    "{sep}CPU would be {} of {} cores (over by {})",
                    cores(*wanted),
                    cores(*limit),
                    cores(by)
                )?,
                "memory" => write!(
                    f,
                    "{sep}memory would be {} of {} (over by {})",
                    mib(*wanted),
                    mib(*limit),
                    mib(by)
                )?,
                _ => write!(
                    f,
                    "{sep}containers would be {wanted} of {limit} (over by {by})"
                )?,
            }
        }
        write!(f, ". Nothing was changed.")
    }
}

fn cores(millis: u64) -> String {
    format!("{}", millis as f64 / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1024 * 1024))
}

/// Checks that `used` plus `delta` stays within `quota`.
pub fn check_quota(
    tenant: &str,
    used: Resources,
    delta: Resources,
    quota: &Limit,
) -> Result<(), QuotaExceeded> {
    let wanted = used.plus(delta);
    let mut over = Vec::new();
    let dims = [
        ("cpu", quota.cpu_millis, wanted.cpu_millis, delta.cpu_millis),
        (
            "memory",
            quota.memory_bytes,
            wanted.memory_bytes,
            delta.memory_bytes,
        ),
        (
            "containers",
            quota.containers,
            wanted.containers,
            delta.containers,
        ),
    ];
    for (name, limit, wanted, delta) in dims {
        if let Some(limit) = limit {
            // A request that does not grow a dimension is never refused for it, so
            // lowering a quota below current use never blocks scaling down.
            if delta > 0 && wanted > limit {
                over.push((name, limit, wanted));
            }
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(QuotaExceeded {
            tenant: tenant.to_owned(),
            over,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu: u64, mem: u64, n: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            containers: n,
        }
    }

    #[test]
    fn within_and_over() {
        let quota = Limit {
            cpu_millis: Some(2000),
            memory_bytes: None,
            containers: Some(10),
        };
        assert!(check_quota("t", r(1000, 0, 5), r(1000, 1 << 40, 5), &quota).is_ok());
        let e = check_quota("t", r(1000, 0, 5), r(1500, 0, 6), &quota).unwrap_err();
        assert_eq!(e.over, vec![("cpu", 2000, 2500), ("containers", 10, 11)]);
        let text = e.to_string();
        assert!(
            text.contains("CPU would be 2.5 of 2 cores (over by 0.5)"),
            "{text}"
        );
        assert!(
            text.contains("containers would be 11 of 10 (over by 1)"),
            "{text}"
        );
    }

    #[test]
    fn shrinking_is_never_refused() {
        let quota = Limit {
            cpu_millis: None,
            memory_bytes: None,
            containers: Some(2),
        };
        assert!(check_quota("t", r(0, 0, 5), r(0, 0, 0), &quota).is_ok());
    }
}
