//! The OpenAPI document, generated from the handlers' annotations.

use actix_web::HttpResponse;
use berth_api::nodes::{Drained, NodeInfo};
use berth_api::topologies::DryRun;

use crate::{
    audit, contract, health, images, limits, logs, nodes, registries, sessions, tenants, topologies,
};

/// The OpenAPI document of the REST API, generated from the handlers.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Berth",
        description = "The REST API of the Berth control plane: the operations the `berth` command performs locally, for a pool."
    ),
    paths(
        health::healthz, health::readyz, sessions::login, sessions::session,
        tenants::create_tenant, tenants::list_tenants, tenants::create_user,
        tenants::set_quota, tenants::get_quota, tenants::set_policy, tenants::get_policy,
        limits::set_limits, limits::get_limits, nodes::create_join_token, nodes::list_nodes,
        nodes::cordon, nodes::uncordon, nodes::drain, topologies::list_topologies,
        topologies::deploy, topologies::status, topologies::spec, topologies::events,
        topologies::remove, topologies::scale, logs::logs, audit::entries, audit::verify, audit::explain,
        audit::revoke, audit::graph, audit::decision, audit::root_keys,
        audit::rotate_root_key, audit::retire_root_key, images::missing, images::put_blob,
        images::record, images::list, registries::login, registries::list, registries::logout,
    ),
    components(schemas(topologies::TopologyBody, NodeInfo, Drained, DryRun)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token from `POST /v1/login` (a biscuit), or the admin token `berth server` keeps in its data directory.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as served at `/openapi.json` and checked in as
/// `api-gateway/openapi.json`.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    let generated = serde_json::to_value(ApiDoc::openapi()).map(contract::kept);
    match generated.and_then(|document| serde_json::to_string_pretty(&document)) {
        Ok(mut text) => {
            text.push('\n');
            text
        }
        Err(e) => format!("{{\"error\": \"cannot render the OpenAPI document: {e}\"}}\n"),
    }
}

pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(openapi_json())
}
