//! Login throttling: after a few failed logins in a row, a user's logins are refused
//! for a while, doubling with every further failure. Pure: state and time in, state
//! out.

/// Failures in a row allowed before logins are locked.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const FIRST_LOCKOUT_MS: i64 = 30_000;
/// The longest lockout.
pub const MAX_LOCKOUT_MS: i64 = 3_600_000;

/// A user's login state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginState {
    /// Failures in a row.
    pub failures: u32,
    /// Logins are refused until then (Unix milliseconds).
    pub locked_until_ms: i64,
}

/// Whether a login may be attempted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Open,
    /// Refused; try again after this many milliseconds.
    Locked {
        /// Milliseconds until the lock lifts.
        retry_after_ms: i64,
    },
}

/// Whether `state` lets a login through at `now_ms`.
pub fn gate(state: LoginState, now_ms: i64) -> Gate {
    if now_ms < state.locked_until_ms {
        Gate::Locked {
            retry_after_ms: state.locked_until_ms - now_ms,
        }
    } else {
        Gate::Open
    }
}

/// The state after a failed login at `now_ms`.
pub fn after_failure(state: LoginState, now_ms: i64) -> LoginState {
    let failures = state.failures.saturating_add(1);
    let locked_until_ms = if failures >= FREE_FAILURES {
        let doublings = (failures - FREE_FAILURES).min(20);
        let lockout = FIRST_LOCKOUT_MS
            .saturating_mul(1 << doublings)
            .min(MAX_LOCKOUT_MS);
        now_ms.saturating_add(lockout)
    } else {
        state.locked_until_ms
    };
    LoginState {
        failures,
        locked_until_ms,
    }
}

/// The state after a successful login.
pub fn after_success() -> LoginState {
    LoginState::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_logins_lock_and_lockouts_grow() {
        let mut state = LoginState::default();
        for _ in 0..FREE_FAILURES - 1 {
            state = after_failure(state, 0);
            assert_eq!(gate(state, 0), Gate::Open);
        }
        state = after_failure(state, 0);
        assert_eq!(
            gate(state, 0),
            Gate::Locked {
                retry_after_ms: FIRST_LOCKOUT_MS
            }
        );
        assert_eq!(gate(state, FIRST_LOCKOUT_MS), Gate::Open);
        state = after_failure(state, FIRST_LOCKOUT_MS);
        assert_eq!(
            gate(state, FIRST_LOCKOUT_MS),
            Gate::Locked {
                retry_after_ms: 2 * FIRST_LOCKOUT_MS
            }
        );
        for _ in 0..40 {
            state = after_failure(state, 0);
        }
        assert_eq!(
            gate(state, 0),
            Gate::Locked {
                retry_after_ms: MAX_LOCKOUT_MS
            }
        );
        assert_eq!(gate(after_success(), 0), Gate::Open);
    }
}
