//! What only the leading server can answer, asked of it by any other: a standby
//! holds no node streams, so it forwards the request (with its caller's own token, so
//! the leader authorizes it again) to the REST address the leader recorded when it
//! took the lead. Any gateway process thus answers any request alike.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use berth_api::ErrorCode;

use crate::{ApiError, Gateway};

/// The header a forwarded request carries, so that it is forwarded at most once.
const FORWARDED: &str = "x-berth-forwarded";

/// How long the leader may take (it waits for nodes itself).
const TIMEOUT: Duration = Duration::from_secs(20);

/// The leader's answer to `request`, passed through as it came.
pub(crate) async fn to_leader(
    gw: &Gateway,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let unavailable = |message: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
        .retry_after(1)
    };
    if request.headers().contains_key(FORWARDED) {
        return Err(unavailable(
            "this server was asked as the leader but stands by: the lead is changing hands; try again"
                .to_owned(),
        ));
    }
    let Some(leader) = gw.allocator.leader_api().await? else {
        return Err(unavailable(
            "no server leads the pool yet; try again".to_owned(),
        ));
    };
    let mut url = format!("{}{}", leader.trim_end_matches('/'), request.path());
    if !request.query_string().is_empty() {
        url = format!("{url}?{}", request.query_string());
    }
    let mut forwarded = gw
        .to_leader
        .get(&url)
        .header(FORWARDED, "1")
        .timeout(TIMEOUT);
    if let Some(authorization) = request.headers().get("authorization") {
        forwarded = forwarded.header("authorization", authorization.as_bytes());
    }
    let answer = forwarded.send().await.map_err(|e| {
        unavailable(format!(
            "the leading server at {leader} cannot be reached: {e}"
        ))
    })?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = answer.bytes().await.map_err(|e| {
        unavailable(format!(
            "the leading server at {leader} broke off its answer: {e}"
        ))
    })?;
    Ok(HttpResponse::build(status)
        .content_type(content_type)
        .body(body))
}
