//! `/v1/tenants/{tenant}/blobs` and `/images`: the images a tenant pushes, and their
//! resolution when a topology is deployed.
//!
//! A push asks which blobs are missing, sends those (each checked against its digest
//! as it arrives, and against the tenant's `image_mebibytes` before and while it
//! does), then names the image. A deploy then runs the tenant's own image by its id:
//! the revision records the id, so a tag pushed again changes nothing that runs until
//! the topology is deployed again.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_allocator::images::{ImageError, ImageStore};
use berth_api::ErrorCode;
use berth_api::images::{
    BlobStored, BlobsAsked, BlobsMissing, ImageList, ImageView, MOST_DIGESTS, NewImage, normalized,
};
use berth_protocol::capability::Operation;
use berth_protocol::image::Digest;
use berth_protocol::time::now_ms;
use berth_protocol::topology::Topology;

use crate::{ApiError, Gateway};

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Mismatch(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::DigestMismatch,
                e.to_string(),
            ),
            ImageError::NotAConfig { .. } | ImageError::Cut { .. } => {
                ApiError::bad_request(e.to_string())
            }
            ImageError::QuotaFull { .. } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::QuotaExceeded,
                e.to_string(),
            ),
            ImageError::UnknownBlob { .. } | ImageError::UnknownImage { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
            }
            ImageError::Database(_) | ImageError::Io { .. } => {
                tracing::error!(error = %e, "the image store failed");
                ApiError::internal(e.to_string())
            }
        }
    }
}

fn store(gw: &Gateway) -> Result<&ImageStore, ApiError> {
    gw.nodes.images().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this control plane keeps no images",
        )
    })
}

/// The most bytes `tenant` may keep.
async fn limit_bytes(gw: &Gateway, tenant: &str) -> Result<u64, ApiError> {
    let limits = gw.allocator.limits(tenant).await?.effective();
    Ok(u64::from(limits.image_mebibytes) * 1024 * 1024)
}

fn digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/blobs/missing",
    tag = "images",
    request_body = BlobsAsked,
    params(crate::docs::TenantPath),
    responses(
        (status = 200, description = "The blobs, of those asked, the tenant has not pushed", body = BlobsMissing),
        (status = 400, description = "The request is malformed", body = berth_api::ErrorBody),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn missing(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
    body: crate::contract::Body<BlobsAsked>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Deploy, &tenant, None)
        .await?;
    let asked = body.into_inner();
    if asked.digests.len() > MOST_DIGESTS {
        return Err(ApiError::bad_request(format!(
            "{} digests asked; at most {MOST_DIGESTS} at once",
            asked.digests.len()
        )));
    }
    let missing = store(&gw)?.missing(&tenant, &asked.digests).await?;
    Ok(HttpResponse::Ok().json(BlobsMissing { missing }))
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/blobs/{digest}",
    tag = "images",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The blob's bytes: an image config or an uncompressed layer tar"),
    params(
        crate::docs::TenantPath,
        ("digest" = String, Path, description = "`sha256:` and the 64 hex digits of the bytes' SHA-256", pattern = "^sha256:[0-9a-f]{64}$"),
    ),
    responses(
        (status = 201, description = "The blob is kept for the tenant", body = BlobStored),
        (status = 400, description = "The digest is malformed, or the upload was cut short", body = berth_api::ErrorBody),
        crate::docs::Denied,
        (status = 409, description = "The tenant's images would pass its image_mebibytes limit", body = berth_api::ErrorBody),
        (status = 422, description = "The bytes do not hash to the digest: nothing was kept", body = berth_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put_blob(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (tenant, digest_text) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, None)
        .await?;
    let digest = digest(&digest_text)?;
    let store = store(&gw)?;
    let limit = limit_bytes(&gw, &tenant).await?;
    // What the client announces is refused before a byte is read.
    let announced = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = announced {
        let used = store.used(&tenant).await?;
        if used.saturating_add(size) > limit {
            return Err(ImageError::QuotaFull {
                tenant: tenant.clone(),
                digest,
                size,
                used,
                limit,
            }
            .into());
        }
    }
    let size = store
        .receive(&tenant, &digest, limit, payload, now_ms())
        .await?;
    Ok(HttpResponse::Created().json(BlobStored { digest, size }))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/images",
    tag = "images",
    request_body = NewImage,
    params(crate::docs::TenantPath),
    responses(
        (status = 200, description = "The image is recorded under its reference", body = ImageView),
        (status = 400, description = "The config is not an image config", body = berth_api::ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "The tenant has not pushed the config or one of its layers", body = berth_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn record(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
    body: crate::contract::Body<NewImage>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Deploy, &tenant, None)
        .await?;
    let asked = body.into_inner();
    let reference = normalized(&asked.reference);
    if reference.is_empty()
        || reference.len() > 255
        || reference.starts_with("sha256:")
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad_request(format!(
            "{:?} is not an image reference: name[:tag], at most 255 characters",
            asked.reference
        )));
    }
    let now = now_ms();
    let image = store(&gw)?
        .record(&tenant, &reference, &asked.config, now)
        .await?;
    let size = store(&gw)?
        .list(&tenant)
        .await?
        .into_iter()
        .find(|(i, _, _)| i.reference == reference)
        .map_or(0, |(_, size, _)| size);
    Ok(HttpResponse::Ok().json(ImageView {
        reference: image.reference,
        id: image.config,
        layers: image.layers,
        size,
        pushed_at_ms: now,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/images",
    tag = "images",
    params(crate::docs::TenantPath),
    responses(
        (status = 200, description = "The tenant's pushed images and the room they take", body = ImageList),
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
    let store = store(&gw)?;
    let images = store
        .list(&tenant)
        .await?
        .into_iter()
        .map(|(image, size, at)| ImageView {
            reference: image.reference,
            id: image.config,
            layers: image.layers,
            size,
            pushed_at_ms: at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ImageList {
        images,
        used_bytes: store.used(&tenant).await?,
        limit_bytes: limit_bytes(&gw, &tenant).await?,
    }))
}

/// `topology` with each service that names one of `tenant`'s pushed images (by
/// reference, or by id) bound to that image's id. An id the tenant did not push is
/// refused, and an id the client wrote into the body is never taken as it is: only
/// what the tenant pushed runs by id.
pub(crate) async fn resolve(
    gw: &Gateway,
    tenant: &str,
    mut topology: Topology,
) -> Result<Topology, ApiError> {
    let store = gw.nodes.images();
    for (name, service) in &mut topology.services {
        service.digest = None;
        let Some(store) = store else { continue };
        if let Ok(id) = Digest::parse(&service.image) {
            if store.by_id(tenant, &id).await?.is_none() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidTopology,
                    format!(
                        "service {name:?}: image {id} is not one of tenant {tenant:?}'s pushed images; push it first (`berth push`)"
                    ),
                ));
            }
            service.digest = Some(id);
        } else if let Some(image) = store
            .by_reference(tenant, &normalized(&service.image))
            .await?
        {
            service.digest = Some(image.config);
        }
    }
    crate::registries::pin_tags(gw, tenant, &mut topology).await?;
    Ok(topology)
}
