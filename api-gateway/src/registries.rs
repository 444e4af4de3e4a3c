//! `/v1/tenants/{tenant}/registries`: a tenant's registry logins (kept sealed, shown
//! without their passwords), and the resolution of registry tags to digests when a
//! topology is deployed, so that every node runs the same bits and a tag pushed again
//! changes nothing that runs until the topology is deployed again.
//!
//! The control plane asks a registry only when the tenant has a login for it or the
//! pool names it in `BERTH_REGISTRIES` (comma-separated `host[:port]`): a tenant cannot
//! make the control plane call an address of its choosing. `BERTH_INSECURE_REGISTRIES`
//! lists those spoken to over plain HTTP.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_allocator::registries::{RegistryError, RegistryLogins};
use berth_api::ErrorCode;
use berth_api::registries::{RegistryLogin, RegistryView};
use berth_protocol::assignment::RegistryCredential;
use berth_protocol::capability::Operation;
use berth_protocol::image::{is_pinned, registry_of};
use berth_protocol::time::now_ms;
use berth_protocol::topology::Topology;

use crate::{ApiError, Gateway};

/// How long a registry has to answer what a tag names.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        tracing::error!(error = %e, "the registry logins failed");
        ApiError::internal(e.to_string())
    }
}

fn logins(gw: &Gateway) -> Result<&RegistryLogins, ApiError> {
    gw.nodes.registries().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this control plane keeps no registry logins",
        )
    })
}

fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn checked_registry(registry: &str) -> Result<(), ApiError> {
    let valid = !registry.is_empty()
        && registry.len() <= 255
        && registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{registry:?} is not a registry: host[:port]"
        )))
    }
}

async fn views(gw: &Gateway, tenant: &str) -> Result<Vec<RegistryView>, ApiError> {
    Ok(logins(gw)?
        .list(tenant)
        .await?
        .into_iter()
        .map(|(registry, username)| RegistryView { registry, username })
        .collect())
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/registries/{registry}",
    tag = "images",
    request_body = RegistryLogin,
    params(crate::docs::TenantPath, ("registry" = String, Path, description = "`host[:port]`", pattern = "^[A-Za-z0-9.:\\[\\]-]{1,255}$")),
    responses(
        (status = 200, description = "The login is kept, sealed; the password is not shown again", body = RegistryView),
        (status = 400, description = "The request is malformed", body = berth_api::ErrorBody),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn login(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: crate::contract::Body<RegistryLogin>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, registry) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, None)
        .await?;
    checked_registry(&registry)?;
    let login = body.into_inner();
    if login.username.is_empty() || login.username.len() > 255 || login.password.len() > 4096 {
        return Err(ApiError::bad_request(
            "a login is a user name of 1 to 255 bytes and a password of at most 4096",
        ));
    }
    let credential = RegistryCredential {
        registry: registry.clone(),
        username: login.username,
        password: login.password,
    };
    logins(&gw)?.set(&tenant, &credential, now_ms()).await?;
    Ok(HttpResponse::Ok().json(RegistryView {
        registry,
        username: credential.username,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/registries",
    tag = "images",
    params(crate::docs::TenantPath),
    responses(
        (status = 200, description = "The registries the tenant has a login for, without passwords", body = Vec<RegistryView>),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    Ok(HttpResponse::Ok().json(views(&gw, &tenant).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/registries/{registry}",
    tag = "images",
    params(crate::docs::TenantPath, ("registry" = String, Path, description = "`host[:port]`", pattern = "^[A-Za-z0-9.:\\[\\]-]{1,255}$")),
    responses(
        (status = 200, description = "The login is forgotten; the logins left", body = Vec<RegistryView>),
        crate::docs::Denied,
        (status = 404, description = "The tenant has no login for the registry", body = berth_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn logout(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, registry) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, None)
        .await?;
    if !logins(&gw)?.remove(&tenant, &registry).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("tenant {tenant:?} has no login for {registry}"),
        ));
    }
    Ok(HttpResponse::Ok().json(views(&gw, &tenant).await?))
}

/// Pins every registry image of `topology` that names a registry the control plane
/// may ask (see the module) to the digest its tag names now: `name:tag@sha256:…`.
pub(crate) async fn pin_tags(
    gw: &Gateway,
    tenant: &str,
    topology: &mut Topology,
) -> Result<(), ApiError> {
    let Some(logins) = gw.nodes.registries() else {
        return Ok(());
    };
    let allowed = env_list("BERTH_REGISTRIES");
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(env_list(
            "BERTH_INSECURE_REGISTRIES",
        )),
        ..Default::default()
    });
    for (name, service) in &mut topology.services {
        if service.digest.is_some() || is_pinned(&service.image) {
            continue;
        }
        let Some(registry) = registry_of(&service.image).map(str::to_owned) else {
            continue;
        };
        let login = logins.get(tenant, &registry).await?;
        if login.is_none() && !allowed.contains(&registry) {
            continue;
        }
        let refused = |reason: String| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidTopology,
                format!("service {name:?}: image {}: {reason}", service.image),
            )
        };
        let reference: oci_client::Reference = service
            .image
            .parse()
            .map_err(|e| refused(format!("not an image reference: {e}")))?;
        let auth = match &login {
            Some(l) => {
                oci_client::secrets::RegistryAuth::Basic(l.username.clone(), l.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let asked = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            client.fetch_manifest_digest(&reference, &auth),
        )
        .await;
        let digest = match asked {
            Err(_) => {
                return Err(refused(format!(
                    "{registry} did not answer within {} s",
                    RESOLVE_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => {
                let hint = match &login {
                    Some(_) => format!("with tenant {tenant:?}'s login"),
                    None => format!("without a login (`berth registry login {registry}`)"),
                };
                return Err(refused(format!("{registry} refused it {hint}: {e}")));
            }
            Ok(Ok(digest)) => digest,
        };
        if !digest.starts_with("sha256:") {
            return Err(refused(format!(
                "{registry} named it by {digest:?}, not a sha256 digest"
            )));
        }
        service.image = format!("{}@{digest}", service.image);
    }
    Ok(())
}
