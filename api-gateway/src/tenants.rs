//! Tenants, their quotas, their policies and their users: the admin's resources.

use std::collections::BTreeSet;

use actix_web::{HttpRequest, HttpResponse, web};
use berth_allocator::Limit;
use berth_api::ErrorBody;
use berth_api::quota::{NewTenant, PolicyBody, PolicyView, QuotaView, TenantCreated, TenantView};
use berth_api::users::{NewUser, UserCreated};
use berth_protocol::capability::Operation;

use crate::contract::{MOST_PASSWORD_BYTES, valid_tenant};
use crate::{ApiError, Gateway, now_ms};

/// The largest quota in any dimension: 2^53, far beyond any pool, and a number every
/// JSON client reads exactly.
pub(crate) const MOST_QUOTA: u64 = 1 << 53;

/// Refuses a quota above [`MOST_QUOTA`], rather than clamping it silently.
pub(crate) fn representable(limit: &Limit) -> Result<(), ApiError> {
    for (field, value) in [
        ("cpu_millis", limit.cpu_millis),
        ("memory_bytes", limit.memory_bytes),
        ("containers", limit.containers),
    ] {
        if let Some(v) = value
            && v > MOST_QUOTA
        {
            return Err(ApiError::bad_request(format!(
                "{field}: {v} is larger than a quota can be ({MOST_QUOTA}); leave it out for no limit"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = NewTenant,
    responses(
        (status = 201, description = "The tenant exists", body = TenantCreated),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_tenant(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    body: crate::contract::Body<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, &body.name, None)
        .await?;
    valid_tenant(&body.name)?;
    if let Some(quota) = &body.quota {
        representable(quota)?;
    }
    gw.tenants.ensure_tenant(&body.name, now_ms()).await?;
    gw.allocator
        .ensure_quota(&body.name, body.quota.unwrap_or_default())
        .await?;
    if let Some(quota) = body.quota {
        gw.allocator.set_quota(&body.name, quota).await?;
    }
    Ok(HttpResponse::Created().json(TenantCreated {
        name: body.into_inner().name,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "Every tenant with its quota and usage", body = Vec<TenantView>),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_tenants(
    gw: web::Data<Gateway>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, "*", None)
        .await?;
    let mut views = Vec::new();
    for name in gw.tenants.tenants().await? {
        let (limit, used) = gw.allocator.quota(&name).await?;
        views.push(TenantView { name, limit, used });
    }
    Ok(HttpResponse::Ok().json(views))
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/quota",
    tag = "tenants",
    request_body = Limit,
    params(
        crate::docs::TenantPath,
    ),
    responses(
        (status = 200, description = "The quota now", body = QuotaView),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn set_quota(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
    body: crate::contract::Body<Limit>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, &tenant, None)
        .await?;
    let limit = body.into_inner();
    representable(&limit)?;
    gw.allocator.quota(&tenant).await?;
    gw.allocator.set_quota(&tenant, limit).await?;
    get_quota(gw, request, tenant).await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/quota",
    tag = "tenants",
    params(
        crate::docs::TenantPath,
    ),
    responses(
        (status = 200, description = "The quota and what is used of it", body = QuotaView),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_quota(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    let (limit, used) = gw.allocator.quota(&tenant).await?;
    Ok(HttpResponse::Ok().json(QuotaView { limit, used }))
}

/// The most allowances one tenant's policy holds.
pub(crate) const MOST_ALLOWANCES: usize = 256;

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/policy",
    tag = "tenants",
    request_body = PolicyBody,
    params(
        crate::docs::TenantPath,
    ),
    responses(
        (status = 200, description = "The policy now in force; the change is in the audit ledger", body = PolicyView),
        (status = 400, description = "An allowance names no setting a policy governs", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn set_policy(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
    body: crate::contract::Body<PolicyBody>,
) -> Result<HttpResponse, ApiError> {
    let authorized = gw
        .authorize(&request, Operation::Administer, &tenant, None)
        .await?;
    let body = body.into_inner();
    if body.allow.len() > MOST_ALLOWANCES {
        return Err(ApiError::bad_request(format!(
            "{} allowances given; a policy holds at most {MOST_ALLOWANCES}",
            body.allow.len()
        )));
    }
    let allow = body
        .allow
        .iter()
        .enumerate()
        .map(|(i, a)| {
            berth_protocol::topology::policy::parse_allowance(a)
                .map_err(|e| ApiError::bad_request(format!("allow[{i}]: {e}")))
        })
        .collect::<Result<BTreeSet<String>, _>>()?;
    gw.tenants.ensure_known(&tenant).await?;
    let before = gw.allocator.allowances(&tenant).await?;
    if before != allow {
        let list = |set: &BTreeSet<String>| {
            if set.is_empty() {
                "(the default)".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        // Recorded first: a change the ledger cannot hold is not made.
        gw.ledger
            .append(
                berth_allocator::ledger::NewEntry {
                    kind: berth_allocator::ledger::EntryKind::Policy,
                    actor: format!("{}/{}", authorized.session.tenant, authorized.session.user),
                    tenant: tenant.to_string(),
                    subject: "policy".to_owned(),
                    detail: format!("allow: {}\nwas: {}", list(&allow), list(&before)),
                    revocation_ids: Vec::new(),
                },
                now_ms(),
            )
            .await?;
        gw.allocator
            .set_allowances(&tenant, &allow, now_ms())
            .await?;
    }
    get_policy(gw, request, tenant).await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/policy",
    tag = "tenants",
    params(
        crate::docs::TenantPath,
    ),
    responses(
        (status = 200, description = "The tenant's policy", body = PolicyView),
        crate::docs::Denied,
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_policy(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    gw.tenants.ensure_known(&tenant).await?;
    let policy = gw.allocator.policy(&tenant).await?;
    Ok(HttpResponse::Ok().json(PolicyView {
        name: policy.name,
        allow: policy.allow.into_iter().collect(),
        governed: berth_protocol::topology::policy::GOVERNED
            .iter()
            .map(|k| (*k).to_owned())
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/users",
    tag = "users",
    request_body = NewUser,
    params(
        crate::docs::TenantPath,
    ),
    responses(
        (status = 201, description = "The user exists", body = UserCreated),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
        (status = 409, description = "The user exists already", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_user(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
    body: crate::contract::Body<NewUser>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, &tenant, None)
        .await?;
    if !berth_allocator::identity::valid_node_name(&body.name) {
        return Err(ApiError::bad_request(format!(
            "{:?} cannot name a user: use lower-case letters, digits and '-'",
            body.name
        )));
    }
    if body.password.len() > MOST_PASSWORD_BYTES {
        return Err(ApiError::bad_request(format!(
            "password: at most {MOST_PASSWORD_BYTES} bytes"
        )));
    }
    gw.tenants.ensure_known(&tenant).await?;
    gw.tenants
        .create_user(&tenant, &body.name, &body.password, body.role, now_ms())
        .await?;
    let body = body.into_inner();
    Ok(HttpResponse::Created().json(UserCreated {
        tenant: tenant.into_inner(),
        name: body.name,
        role: body.role,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_past_what_json_holds_exactly_is_refused_not_clamped() {
        let fits = Limit {
            containers: Some(MOST_QUOTA),
            ..Limit::default()
        };
        assert!(representable(&fits).is_ok());
        let past = Limit {
            memory_bytes: Some(MOST_QUOTA + 1),
            ..Limit::default()
        };
        let e = representable(&past).expect_err("refused");
        assert!(e.to_string().starts_with("memory_bytes:"), "{e}");
        assert!(representable(&Limit::default()).is_ok(), "unlimited");
    }
}
