//! Login throttling, counted three ways so that it slows an attacker without locking
//! out the owner. Pure: counts and time in, counts and a decision out.
//!
//! - A **pair** (a name asked for, from one source): a few failures in a row are
//!   free, then attempts are refused for a while, doubling with every further
//!   failure. This is what stops a guesser at one address.
//! - A **source** across every name: a bucket of attempts, so that one address cannot
//!   try name after name (or list which names exist).
//! - A **name** across every source: a bucket of attempts, the rate at which a
//!   guesser with many addresses can try one name. Attempts a pair refuses never
//!   reach it, so an attacker at one address cannot spend the name's rate, and the
//!   owner logs in from an address that has not failed.
//!
//! An attempt is charged before its password is checked (so concurrent attempts are
//! each counted) and a success gives its charges back.

use std::net::IpAddr;

use berth_protocol::limits::{Bucket, Rate};

/// Failures in a row allowed a pair before it is locked.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it.
pub const FIRST_LOCKOUT_MS: i64 = 30_000;
/// The longest lockout.
pub const MAX_LOCKOUT_MS: i64 = 3_600_000;
/// Attempts from one source, across names.
pub const SOURCE_RATE: Rate = Rate {
    per_period: 20,
    period_ms: 60_000,
    burst: 30,
};
/// Attempts at one name, across sources.
pub const NAME_RATE: Rate = Rate {
    per_period: 10,
    period_ms: 60_000,
    burst: 20,
};

/// What the throttle counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// One source, across names.
    Source(&'a str),
    /// One name asked for from one source.
    Pair {
        /// The tenant asked for.
        tenant: &'a str,
        /// The user name asked for.
        name: &'a str,
        /// Where the attempt came from.
        source: &'a str,
    },
    /// One name across sources.
    Name {
        /// The tenant asked for.
        tenant: &'a str,
        /// The user name asked for.
        name: &'a str,
    },
}

impl Key<'_> {
    /// The key as stored: quoted, so that no name can pass for another key.
    pub fn stored(&self) -> String {
        match self {
            Key::Source(source) => format!("source {source:?}"),
            Key::Pair {
                tenant,
                name,
                source,
            } => format!("pair {tenant:?} {name:?} {source:?}"),
            Key::Name { tenant, name } => format!("name {tenant:?} {name:?}"),
        }
    }
}

/// The source an attempt from `address` is counted under: an IPv4 address, or an
/// IPv6 address's /64 (what one subscriber is usually given).
pub fn source_of(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// A pair's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginState {
    /// Failures in a row.
    pub failures: u32,
    /// Attempts are refused until then (Unix milliseconds).
    pub locked_until_ms: i64,
}

/// Whether an attempt may be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Open,
    /// Refused; try again after this many milliseconds.
    Locked {
        /// Milliseconds until an attempt would be let through.
        retry_after_ms: i64,
    },
}

/// Whether `state` lets an attempt through at `now_ms`.
pub fn gate(state: LoginState, now_ms: i64) -> Gate {
    if now_ms < state.locked_until_ms {
        Gate::Locked {
            retry_after_ms: state.locked_until_ms - now_ms,
        }
    } else {
        Gate::Open
    }
}

/// The state after a failed password check at `now_ms`.
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

/// What is counted for one attempt's three keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counts {
    /// The source's bucket.
    pub source: Bucket,
    /// The pair's failures and lock.
    pub pair: LoginState,
    /// The name's bucket.
    pub name: Bucket,
}

impl Counts {
    /// Nothing counted yet at `now_ms`.
    pub fn fresh(now_ms: i64) -> Self {
        Self {
            source: Bucket::full(SOURCE_RATE, now_ms),
            pair: LoginState::default(),
            name: Bucket::full(NAME_RATE, now_ms),
        }
    }

    /// Decides an attempt at `now_ms`, cheapest refusal first: the source's rate,
    /// then the pair's lock, then the name's rate. An attempt let through is charged
    /// a failure in advance; [`Self::succeeded`] takes it back.
    pub fn attempt(&mut self, now_ms: i64) -> Gate {
        if let Err(retry_after_ms) = self.source.take(SOURCE_RATE, now_ms) {
            return Gate::Locked { retry_after_ms };
        }
        if let locked @ Gate::Locked { .. } = gate(self.pair, now_ms) {
            return locked;
        }
        if let Err(retry_after_ms) = self.name.take(NAME_RATE, now_ms) {
            return Gate::Locked { retry_after_ms };
        }
        self.pair = after_failure(self.pair, now_ms);
        Gate::Open
    }

    /// The counts after the attempt let through turned out to be the right password.
    pub fn succeeded(&mut self) {
        self.pair = LoginState::default();
        self.source.give_back(SOURCE_RATE);
        self.name.give_back(NAME_RATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_a_pair_locks_and_lockouts_grow() {
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
    }

    #[test]
    fn a_locked_pair_does_not_spend_the_name_so_a_clean_source_gets_through() {
        let name = Bucket::full(NAME_RATE, 0);
        let mut attacker = Counts {
            name,
            ..Counts::fresh(0)
        };
        let mut refused = 0;
        for _ in 0..1000 {
            if attacker.attempt(0) != Gate::Open {
                refused += 1;
            }
        }
        assert_eq!(refused, 1000 - FREE_FAILURES as usize);
        // The owner, from elsewhere, meets the name's bucket as the attacker left it.
        let mut owner = Counts {
            name: attacker.name,
            ..Counts::fresh(0)
        };
        assert_eq!(owner.attempt(0), Gate::Open);
        owner.succeeded();
        assert_eq!(owner.pair, LoginState::default());
    }

    #[test]
    fn one_source_cannot_try_name_after_name() {
        let mut source = Bucket::full(SOURCE_RATE, 0);
        let mut let_through = 0;
        for _ in 0..100 {
            // A fresh name each time: only the source's bucket remembers.
            let mut counts = Counts {
                source,
                ..Counts::fresh(0)
            };
            if counts.attempt(0) == Gate::Open {
                let_through += 1;
            }
            source = counts.source;
        }
        assert_eq!(let_through, SOURCE_RATE.burst);
    }

    #[test]
    fn many_sources_at_one_name_are_held_to_the_names_rate_and_a_success_refunds() {
        let mut name = Bucket::full(NAME_RATE, 0);
        let mut let_through = 0;
        for _ in 0..100 {
            let mut counts = Counts {
                name,
                ..Counts::fresh(0)
            };
            if counts.attempt(0) == Gate::Open {
                let_through += 1;
            }
            name = counts.name;
        }
        assert_eq!(let_through, NAME_RATE.burst);
        let mut counts = Counts {
            name,
            ..Counts::fresh(0)
        };
        let Gate::Locked { retry_after_ms } = counts.attempt(0) else {
            panic!("the name's rate is spent");
        };
        assert_eq!(counts.attempt(retry_after_ms), Gate::Open);
        counts.succeeded();
        assert!(counts.name.tokens() >= 1.0);
    }

    #[test]
    fn sources_are_addresses_or_ipv6_prefixes() {
        assert_eq!(source_of("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(source_of("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(
            source_of("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_ne!(
            Key::Pair {
                tenant: "a",
                name: "b\" \"c",
                source: "s"
            }
            .stored(),
            Key::Pair {
                tenant: "a",
                name: "b",
                source: "c\" \"s"
            }
            .stored()
        );
    }
}
