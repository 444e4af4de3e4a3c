//! Logins and sessions: a password checked (throttled) for a biscuit session token.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_api::users::{LoggedIn, Login, SessionView};
use berth_api::{ErrorBody, ErrorCode};
use berth_protocol::capability::{self, Operation};

use crate::contract::{MOST_PASSWORD_BYTES, valid_tenant};
use crate::{ApiError, Gateway, SESSION_TTL, auth, now_ms};

/// Where a login comes from, as the throttle counts it: the peer's address, or, when
/// the peer is this host itself (the UI, or a proxy beside the gateway), the address
/// it forwarded in the last `X-Forwarded-For` entry.
pub(crate) fn login_source(request: &HttpRequest) -> String {
    let peer = request.peer_addr().map(|a| a.ip());
    let local = request.app_config().local_addr().ip();
    let forwarded = || {
        request
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .and_then(|a| a.trim().parse::<std::net::IpAddr>().ok())
    };
    let address = match peer {
        Some(peer) if peer.is_loopback() || peer == local => forwarded().unwrap_or(peer),
        Some(peer) => peer,
        None => std::net::IpAddr::from([0, 0, 0, 0]),
    };
    berth_tenant_service::throttle::source_of(address)
}

#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "users",
    request_body = Login,
    responses(
        (status = 200, description = "A session token", body = LoggedIn),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "Wrong user or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins from this source or at this name, or too many attempts from this source: wait as `Retry-After` says", body = ErrorBody),
        (status = 503, description = "Too many logins at once: wait as `Retry-After` says", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    body: crate::contract::Body<Login>,
) -> Result<HttpResponse, ApiError> {
    valid_tenant(&body.tenant)?;
    if !berth_allocator::identity::valid_node_name(&body.user) {
        return Err(ApiError::bad_request(format!(
            "{:?} cannot name a user: use lower-case letters, digits and '-' (at most 63)",
            body.user
        )));
    }
    if body.password.len() > MOST_PASSWORD_BYTES {
        return Err(ApiError::bad_request(format!(
            "a password has at most {MOST_PASSWORD_BYTES} bytes"
        )));
    }
    let source = login_source(&request);
    gw.login_sources.take(&source, now_ms())?;
    let role = gw
        .tenants
        .login(&body.tenant, &body.user, &body.password, &source, now_ms())
        .await?;
    let expires = SystemTime::now() + SESSION_TTL;
    let session = capability::Session {
        user: body.user.clone(),
        tenant: body.tenant.clone(),
        role,
    };
    let (key_id, key) = gw.keys.signing();
    let token = capability::mint_session(&key, key_id, &session, expires).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("cannot mint a session: {e}"),
        )
    })?;
    // No token leaves without its entry in the ledger.
    gw.record_minted(&token, &session).await?;
    let expires_at = expires
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(HttpResponse::Ok().json(LoggedIn {
        token,
        expires_at,
        role,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/session",
    tag = "users",
    responses(
        (status = 200, description = "Who the token speaks for", body = SessionView),
        (status = 401, description = "No valid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn session(
    gw: web::Data<Gateway>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // The admin token is no biscuit; every session is, and names its tenant.
    let tenant = match gw.caller(auth::bearer(&request)?).await? {
        auth::Caller::Token(verified) => verified.tenant.clone().unwrap_or_else(|| "*".to_owned()),
        auth::Caller::AdminToken => "*".to_owned(),
    };
    let who = gw
        .authorize(&request, Operation::Read, &tenant, None)
        .await?;
    Ok(HttpResponse::Ok().json(SessionView {
        tenant: who.session.tenant,
        user: who.session.user,
        role: who.session.role,
    }))
}
