//! How much of the control plane one tenant may use: request rates and the size of a
//! topology, set by an admin per tenant, with defaults; and the token bucket that
//! enforces a rate. Pure: time is passed in.

use serde::{Deserialize, Serialize};

/// A tenant's limits, as an admin sets them. A field left out takes its default
/// ([`TenantLimits::DEFAULT`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// API requests per second, with bursts of twice as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub requests_per_second: Option<u32>,
    /// Deploys, scales and removals per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub deploys_per_minute: Option<u32>,
    /// Attenuated tokens first seen per hour (each is written to the audit ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub attenuations_per_hour: Option<u32>,
    /// Services in one topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub services_per_topology: Option<u32>,
    /// Replicas of one service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub replicas_per_service: Option<u32>,
    /// Pushed images the control plane keeps for the tenant, in MiB (each blob counted
    /// once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub image_mebibytes: Option<u32>,
}

/// The largest value any limit takes.
pub const MOST: u32 = 1_000_000;

/// A tenant's limits with every default filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Effective {
    /// API requests per second (bursts of twice as many).
    pub requests_per_second: u32,
    /// Deploys, scales and removals per minute.
    pub deploys_per_minute: u32,
    /// Attenuated tokens first seen per hour.
    pub attenuations_per_hour: u32,
    /// Services in one topology.
    pub services_per_topology: u32,
    /// Replicas of one service.
    pub replicas_per_service: u32,
    /// Pushed images kept for the tenant, MiB.
    pub image_mebibytes: u32,
}

impl TenantLimits {
    /// The defaults: generous for a team's CI and people, small against a flood.
    pub const DEFAULT: Effective = Effective {
        requests_per_second: 100,
        deploys_per_minute: 60,
        attenuations_per_hour: 100,
        services_per_topology: 200,
        replicas_per_service: 1_000,
        image_mebibytes: 10 * 1024,
    };

    /// These limits with the defaults filled in.
    pub fn effective(&self) -> Effective {
        let d = Self::DEFAULT;
        Effective {
            requests_per_second: self.requests_per_second.unwrap_or(d.requests_per_second),
            deploys_per_minute: self.deploys_per_minute.unwrap_or(d.deploys_per_minute),
            attenuations_per_hour: self
                .attenuations_per_hour
                .unwrap_or(d.attenuations_per_hour),
            services_per_topology: self
                .services_per_topology
                .unwrap_or(d.services_per_topology),
            replicas_per_service: self.replicas_per_service.unwrap_or(d.replicas_per_service),
            image_mebibytes: self.image_mebibytes.unwrap_or(d.image_mebibytes),
        }
    }

    /// The first field out of `1..=MOST`, by name, with its value.
    pub fn out_of_range(&self) -> Option<(&'static str, u32)> {
        [
            ("requests_per_second", self.requests_per_second),
            ("deploys_per_minute", self.deploys_per_minute),
            ("attenuations_per_hour", self.attenuations_per_hour),
            ("services_per_topology", self.services_per_topology),
            ("replicas_per_service", self.replicas_per_service),
            ("image_mebibytes", self.image_mebibytes),
        ]
        .into_iter()
        .find_map(|(name, v)| v.filter(|v| !(1..=MOST).contains(v)).map(|v| (name, v)))
    }
}

/// A token bucket: `per_period` tokens a period, up to `burst` saved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last_ms: i64,
}

/// A rate: so many per period, so many at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens a period.
    pub per_period: u32,
    /// The period, milliseconds.
    pub period_ms: i64,
    /// Tokens that may be saved up and spent at once.
    pub burst: u32,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: i64) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            last_ms: now_ms,
        }
    }

    /// A bucket holding `tokens` as of `last_ms`, as stored.
    pub fn at(tokens: f64, last_ms: i64) -> Self {
        Self { tokens, last_ms }
    }

    /// The tokens it held at [`Self::last_ms`].
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// When it was last filled or taken from, Unix milliseconds.
    pub fn last_ms(&self) -> i64 {
        self.last_ms
    }

    /// Returns a token taken for something that turned out not to count.
    pub fn give_back(&mut self, rate: Rate) {
        self.tokens = (self.tokens + 1.0).min(f64::from(rate.burst.max(1)));
    }

    /// Takes one token at `now_ms`, or says how many milliseconds until one is there.
    pub fn take(&mut self, rate: Rate, now_ms: i64) -> Result<(), i64> {
        let burst = f64::from(rate.burst.max(1));
        let per_ms = f64::from(rate.per_period.max(1)) / rate.period_ms.max(1) as f64;
        let elapsed = (now_ms - self.last_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * per_ms).min(burst);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / per_ms).ceil().max(1.0) as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let rate = Rate {
            per_period: 10,
            period_ms: 1_000,
            burst: 3,
        };
        let mut bucket = Bucket::full(rate, 0);
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, 0), Ok(()));
        }
        assert_eq!(bucket.take(rate, 0), Err(100));
        assert_eq!(bucket.take(rate, 50), Err(50));
        assert_eq!(bucket.take(rate, 100), Ok(()));
        // A long pause saves up no more than the burst.
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, 60_000), Ok(()));
        }
        assert!(bucket.take(rate, 60_000).is_err());
        // A clock that goes back refills nothing and breaks nothing.
        assert!(bucket.take(rate, 0).is_err());
    }

    #[test]
    fn defaults_fill_what_is_left_out_and_bounds_are_named() {
        let limits = TenantLimits {
            deploys_per_minute: Some(5),
            ..TenantLimits::default()
        };
        assert_eq!(limits.effective().deploys_per_minute, 5);
        assert_eq!(
            limits.effective().requests_per_second,
            TenantLimits::DEFAULT.requests_per_second
        );
        assert_eq!(limits.out_of_range(), None);
        let zero = TenantLimits {
            replicas_per_service: Some(0),
            ..TenantLimits::default()
        };
        assert_eq!(zero.out_of_range(), Some(("replicas_per_service", 0)));
    }
}
