//! Per-tenant rates: API requests, deploys, and attenuated tokens first seen (each a
//! ledger entry), each a token bucket per tenant, sized by the limits an admin set
//! (`PUT /v1/tenants/{tenant}/limits`) or the defaults. A request over its rate is
//! answered 429 with `Retry-After`, and counted in `berth_rate_limited_total`.
//!
//! The buckets are in each gateway process's memory: with several servers a tenant
//! gets each server's rate, a bound the admin can size. The limits themselves are in
//! the database, reread every few seconds, so every server applies what was set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_protocol::capability::Operation;
use berth_protocol::limits::{Bucket, Effective, Rate, TenantLimits};

use berth_api::{ErrorBody, ErrorCode};

use crate::contract::valid_tenant;
use crate::{ApiError, Gateway, now_ms};

/// How often each process rereads the limits admins set.
const REFRESH_MS: i64 = 5_000;

/// What a rate counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Any API request.
    Request,
    /// A deploy, scale or removal.
    Deploy,
    /// An attenuated token first seen (a ledger entry).
    Attenuation,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Deploy => "deploy",
            Self::Attenuation => "attenuation",
        }
    }

    fn rate(self, limits: &Effective) -> Rate {
        match self {
            Self::Request => Rate {
                per_period: limits.requests_per_second,
                period_ms: 1_000,
                burst: limits.requests_per_second.saturating_mul(2),
            },
            Self::Deploy => Rate {
                per_period: limits.deploys_per_minute,
                period_ms: 60_000,
                burst: limits.deploys_per_minute,
            },
            Self::Attenuation => Rate {
                per_period: limits.attenuations_per_hour,
                period_ms: 3_600_000,
                burst: limits.attenuations_per_hour,
            },
        }
    }
}

/// The buckets of one process, and the limits they are sized by.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    buckets: Mutex<HashMap<(String, Kind), Bucket>>,
    limits: RwLock<HashMap<String, TenantLimits>>,
    /// When the limits were last read from the database (0: never).
    refreshed_ms: AtomicI64,
}

impl Rates {
    /// Takes one of `tenant`'s `kind` at `now_ms`, or the milliseconds until one is
    /// there.
    fn take(&self, tenant: &str, kind: Kind, now_ms: i64) -> Result<(), i64> {
        let limits = self
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or_default()
            .effective();
        let rate = kind.rate(&limits);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry((tenant.to_owned(), kind))
            .or_insert_with(|| Bucket::full(rate, now_ms))
            .take(rate, now_ms)
    }

    /// Whether this caller should reread the limits now (one caller at a time does).
    fn refresh_due(&self, now_ms: i64) -> bool {
        let last = self.refreshed_ms.load(Ordering::Relaxed);
        now_ms - last >= REFRESH_MS
            && self
                .refreshed_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    fn replace(&self, all: Vec<(String, TenantLimits)>) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = all.into_iter().collect();
    }

    fn set(&self, tenant: &str, limits: TenantLimits) {
        self.limits
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_owned(), limits);
    }
}

/// Login attempts one source may make, before the database counts them: looser than
/// the throttle's own rate (see `berth_tenant_service::throttle`), it only keeps a
/// flood from one address from costing a transaction each.
const LOGIN_SOURCE_RATE: Rate = Rate {
    per_period: 2,
    period_ms: 1_000,
    burst: 40,
};
/// Sources remembered before the oldest are forgotten all at once.
const LOGIN_SOURCES_KEPT: usize = 100_000;

/// Login attempts per source, in memory.
#[derive(Debug, Default)]
pub(crate) struct LoginSources(Mutex<HashMap<String, Bucket>>);

impl LoginSources {
    /// Takes an attempt for `source` at `now_ms`, or refuses with 429 and
    /// `Retry-After`.
    pub(crate) fn take(&self, source: &str, now_ms: i64) -> Result<(), ApiError> {
        let mut sources = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() >= LOGIN_SOURCES_KEPT && !sources.contains_key(source) {
            // Many addresses at once: what they spent is forgotten, so memory stays
            // bounded; the database's throttle still counts every attempt.
            sources.clear();
        }
        sources
            .entry(source.to_owned())
            .or_insert_with(|| Bucket::full(LOGIN_SOURCE_RATE, now_ms))
            .take(LOGIN_SOURCE_RATE, now_ms)
            .map_err(|retry_ms| {
                let retry_s = ApiError::seconds_of(retry_ms);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::Throttled,
                    format!("too many logins from {source}; try again in {retry_s} s"),
                )
                .retry_after(retry_s)
            })
    }
}

impl Gateway {
    /// Takes one of `tenant`'s `kind` from its rate, or refuses with 429 and
    /// `Retry-After`.
    pub(crate) async fn limit(
        &self,
        tenant: &str,
        kind: Kind,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        if self.rates.refresh_due(now_ms) {
            match self.allocator.all_limits().await {
                Ok(all) => self.rates.replace(all),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reread tenants' limits; keeping the last")
                }
            }
        }
        self.rates.take(tenant, kind, now_ms).map_err(|retry_ms| {
            self.metrics.rate_limited(tenant, kind.as_str());
            let retry_s = ApiError::seconds_of(retry_ms);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!(
                    "tenant {tenant:?} is over its {} rate; try again in {retry_s} s (an admin sets it with `berth limits set`)",
                    kind.as_str()
                ),
            )
            .retry_after(retry_s)
        })
    }
}

/// `PUT /v1/tenants/{tenant}/limits` (admin): how much of the control plane the tenant
/// may use; a field left out takes its default.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/limits",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = TenantLimits,
    responses(
        (status = 200, description = "The limits now in force, defaults filled in", body = Effective),
        (status = 400, description = "A limit out of range, or a malformed body", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 429, description = "Over the caller's request rate", body = ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "tenants"
)]
pub(crate) async fn set_limits(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
    body: crate::contract::Body<TenantLimits>,
) -> Result<HttpResponse, ApiError> {
    valid_tenant(&tenant)?;
    gw.authorize(&request, Operation::Administer, &tenant, None)
        .await?;
    if let Some((field, value)) = body.out_of_range() {
        return Err(ApiError::bad_request(format!(
            "{field} is {value}: it must lie between 1 and {}",
            berth_protocol::limits::MOST
        )));
    }
    gw.tenants.ensure_known(&tenant).await?;
    gw.allocator.set_limits(&tenant, &body, now_ms()).await?;
    gw.rates.set(&tenant, *body);
    Ok(HttpResponse::Ok().json(body.effective()))
}

/// `GET /v1/tenants/{tenant}/limits`: the limits in force for the tenant.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/limits",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "The limits in force, defaults filled in", body = Effective),
        (status = 400, description = "A malformed tenant name", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to read this tenant", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 429, description = "Over the caller's request rate", body = ErrorBody),
    ),
    security(("bearer" = [])),
    tag = "tenants"
)]
pub(crate) async fn get_limits(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    valid_tenant(&tenant)?;
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    gw.tenants.ensure_known(&tenant).await?;
    let limits = gw.allocator.limits(&tenant).await?;
    Ok(HttpResponse::Ok().json(limits.effective()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_buckets_sized_by_its_limits() {
        let rates = Rates::default();
        rates.set(
            "small",
            TenantLimits {
                deploys_per_minute: Some(2),
                ..TenantLimits::default()
            },
        );
        assert!(rates.take("small", Kind::Deploy, 0).is_ok());
        assert!(rates.take("small", Kind::Deploy, 0).is_ok());
        let retry = rates.take("small", Kind::Deploy, 0).unwrap_err();
        assert_eq!(retry, 30_000);
        // Another tenant, and another kind, are untouched.
        assert!(rates.take("other", Kind::Deploy, 0).is_ok());
        assert!(rates.take("small", Kind::Request, 0).is_ok());
    }

    #[test]
    fn one_caller_at_a_time_rereads_the_limits() {
        let rates = Rates::default();
        assert!(rates.refresh_due(REFRESH_MS));
        assert!(!rates.refresh_due(REFRESH_MS + 1));
        assert!(rates.refresh_due(2 * REFRESH_MS));
    }
}
