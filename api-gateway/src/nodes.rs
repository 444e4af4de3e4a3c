//! The pool's nodes as admins manage them: join tokens, listing, cordon and drain.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_api::nodes::{Drained, JoinToken, NewJoinToken, NodeInfo, NodeState, NodeStateChanged};
use berth_api::{ErrorBody, ErrorCode};
use berth_protocol::capability::Operation;

use crate::{ApiError, Gateway, contract, now_ms};

/// The longest a join token lives: a week, enough to join machines being set up.
pub(crate) const MOST_JOIN_TOKEN_SECONDS: u32 = 7 * 24 * 3600;

#[utoipa::path(
    post,
    path = "/v1/join-tokens",
    tag = "nodes",
    request_body(content = Option<NewJoinToken>, description = "How long the token lives; left out, an hour"),
    responses(
        (status = 201, description = "A one-time token and the command that joins a machine", body = JoinToken),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_join_token(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, "*", None)
        .await?;
    // The body may be left out: a token of an hour.
    let asked: NewJoinToken = if body.trim_ascii().is_empty() || body.trim_ascii() == b"null" {
        NewJoinToken::default()
    } else {
        contract::parse(&body)?
    };
    let ttl_seconds = asked.ttl_seconds.unwrap_or(3600);
    if !(1..=MOST_JOIN_TOKEN_SECONDS).contains(&ttl_seconds) {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds: {ttl_seconds} is out of range; a join token lives from 1 second to {MOST_JOIN_TOKEN_SECONDS} (7 days)"
        )));
    }
    let token = gw
        .nodes
        .identities()
        .create_join_token(now_ms(), i64::from(ttl_seconds) * 1000)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
        })?;
    let ca = gw
        .authority_file
        .as_ref()
        .map(|path| format!(" --ca {path}"))
        .unwrap_or_default();
    let command = format!(
        "berth-node join --allocator {} --token {token}{ca} --name NODE_NAME",
        gw.node_api_url
    );
    Ok(HttpResponse::Created().json(JoinToken {
        token,
        join_command: command,
        ttl_seconds,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    responses(
        (status = 200, description = "Every node", body = Vec<NodeInfo>),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_nodes(
    gw: web::Data<Gateway>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, "*", None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.allocator.nodes().await?))
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{node}/cordon",
    tag = "nodes",
    params(
        crate::docs::NodePath,
    ),
    responses(
        (status = 200, description = "The node is cordoned", body = NodeStateChanged),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cordon(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    node: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_cordoned(&gw, &request, node.into_inner(), true).await
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{node}/uncordon",
    tag = "nodes",
    params(
        crate::docs::NodePath,
    ),
    responses(
        (status = 200, description = "The node is active", body = NodeStateChanged),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn uncordon(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    node: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_cordoned(&gw, &request, node.into_inner(), false).await
}

/// Cordons `node`, or with `false` makes it active again; answers its new state.
pub(crate) async fn set_cordoned(
    gw: &Gateway,
    request: &HttpRequest,
    node: String,
    cordoned: bool,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(request, Operation::Administer, "*", None)
        .await?;
    gw.allocator.cordon(&node, cordoned).await?;
    let state = if cordoned {
        NodeState::Cordoned
    } else {
        NodeState::Active
    };
    Ok(HttpResponse::Ok().json(NodeStateChanged { node, state }))
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{node}/drain",
    tag = "nodes",
    params(
        crate::docs::NodePath,
    ),
    responses(
        (status = 200, description = "The node is draining; what moved and what could not", body = Drained),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn drain(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    node: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, "*", None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.allocator.drain(&node).await?))
}
