//! Liveness and readiness of the process, for supervisors and load balancers.

use actix_web::{HttpResponse, web};
use berth_api::ErrorBody;

use crate::{ApiError, Gateway};

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "The process is up"),
    )
)]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The database answers"),
        (status = 500, description = "The database does not answer", body = ErrorBody),
    )
)]
pub(crate) async fn readyz(gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    gw.tenants.list("-").await?;
    Ok(HttpResponse::Ok().body("ready"))
}
