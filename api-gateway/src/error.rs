//! Errors as the API answers them: every failure of a service below becomes one
//! status, one [`ErrorCode`] and a message, here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use berth_allocator::AllocatorError;
use berth_api::{ErrorBody, ErrorCode};
use berth_deployments::DeployError;
use berth_protocol::topology::Refusal;
use berth_tenant_service::{LoginError, TenantError};

/// An API error: an HTTP status, a stable code and a message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    refusals: Vec<Refusal>,
    /// Seconds a client should wait before it tries again (`Retry-After`).
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            refusals: Vec::new(),
            retry_after_s: None,
        }
    }

    /// This error, telling the client to try again after `seconds`.
    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// Whole seconds, at least one, for a wait of `ms` milliseconds (`Retry-After`
    /// counts in seconds).
    pub(crate) fn seconds_of(ms: i64) -> u64 {
        u64::try_from(ms).unwrap_or(1).div_ceil(1_000).max(1)
    }

    /// 422 `refused_by_policy`: each setting the tenant's policy refuses.
    pub(crate) fn refused(refusals: Vec<Refusal>) -> Self {
        let message = refusals
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            refusals,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::RefusedByPolicy,
                message,
            )
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after_s {
            response.insert_header(("retry-after", seconds.to_string()));
        }
        response.json(ErrorBody {
            code: self.code,
            message: self.message.clone(),
            refusals: self.refusals.clone(),
        })
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::UnknownTenant(_) | TenantError::UnknownTopology { .. } => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "tenant service failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    other.to_string(),
                )
            }
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Invalid(problems) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidTopology,
                problems.join("; "),
            ),
            DeployError::Refused(refusals) => Self::refused(refusals),
            e @ DeployError::TooLarge { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::TooLarge,
                e.to_string(),
            ),
            e @ DeployError::UnknownService { .. } => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
            }
            DeployError::Tenant(e) => e.into(),
            DeployError::Allocator(e) => e.into(),
        }
    }
}

impl From<AllocatorError> for ApiError {
    fn from(e: AllocatorError) -> Self {
        match e {
            AllocatorError::Quota(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::QuotaExceeded,
                e.to_string(),
            ),
            AllocatorError::Placement(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::NoCapacity, e.to_string())
            }
            AllocatorError::Contended(_) | AllocatorError::Stale { .. } => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            AllocatorError::UnknownTenant(_) | AllocatorError::UnknownNode(_) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "allocator failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    other.to_string(),
                )
            }
        }
    }
}

/// 405, with the methods the resource answers in `Allow`.
pub(crate) fn method_not_allowed(methods: &[&str]) -> HttpResponse {
    let allowed = methods
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    HttpResponse::MethodNotAllowed()
        .insert_header(("allow", allowed.clone()))
        .json(ErrorBody {
            code: ErrorCode::MethodNotAllowed,
            message: format!("this resource answers {allowed} only"),
            refusals: Vec::new(),
        })
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::BadCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                e.to_string(),
            ),
            LoginError::Throttled { retry_after_ms } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Throttled,
                e.to_string(),
            )
            .retry_after(Self::seconds_of(retry_after_ms)),
            LoginError::Busy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Busy,
                e.to_string(),
            )
            .retry_after(1),
            LoginError::WeakPassword => Self::bad_request(e.to_string()),
            LoginError::Exists(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "login failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    other.to_string(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;
    use berth_allocator::resources::QuotaExceeded;

    use super::*;

    /// The status, the `Retry-After` header and the body a client would read.
    fn answer(e: impl Into<ApiError>) -> (u16, Option<String>, ErrorBody) {
        let response = e.into().error_response();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .try_into_bytes()
            .expect("a body in one piece");
        let body: ErrorBody = serde_json::from_slice(&bytes).expect("a JSON error body");
        (status, retry, body)
    }

    #[test]
    fn a_topology_that_breaks_a_rule_is_a_422_naming_each_problem() {
        let (status, _, body) = answer(DeployError::Invalid(vec![
            "services.web.image: missing".into(),
            "services.db.ports[0]: not a port".into(),
        ]));
        assert_eq!(status, 422);
        assert_eq!(body.code, ErrorCode::InvalidTopology);
        assert!(body.message.contains("services.web.image") && body.message.contains("ports[0]"));
    }

    #[test]
    fn a_policy_refusal_carries_every_refused_setting_by_path() {
        let refusal = Refusal {
            path: "services.web.privileged".into(),
            key: "privileged".into(),
            allow: "privileged".into(),
            policy: "pool (tenant acme)".into(),
            reason: "it gives the container the host".into(),
            instead: "drop it".into(),
        };
        let (status, _, body) = answer(DeployError::Refused(vec![refusal.clone()]));
        assert_eq!(status, 422);
        assert_eq!(body.code, ErrorCode::RefusedByPolicy);
        assert_eq!(body.refusals, vec![refusal]);
    }

    #[test]
    fn over_quota_and_no_room_are_conflicts_a_client_can_tell_apart() {
        let over = QuotaExceeded {
            tenant: "acme".into(),
            over: vec![("containers", 2, 3)],
        };
        let (status, _, body) = answer(AllocatorError::Quota(over));
        assert_eq!((status, body.code), (409, ErrorCode::QuotaExceeded));
        let (status, _, body) = answer(DeployError::Allocator(AllocatorError::UnknownNode(
            "n9".into(),
        )));
        assert_eq!((status, body.code), (404, ErrorCode::NotFound));
    }

    #[test]
    fn a_throttled_login_says_when_to_try_again_in_whole_seconds() {
        let (status, retry, body) = answer(LoginError::Throttled {
            retry_after_ms: 1_500,
        });
        assert_eq!(status, 429);
        assert_eq!(body.code, ErrorCode::Throttled);
        assert_eq!(retry.as_deref(), Some("2"));
        let (status, _, body) = answer(LoginError::BadCredentials);
        assert_eq!((status, body.code), (401, ErrorCode::Unauthenticated));
    }

    #[test]
    fn a_wrong_method_names_the_ones_allowed() {
        let response = method_not_allowed(&["get", "put"]);
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some("GET, PUT")
        );
    }

    #[test]
    fn waits_round_up_to_whole_seconds_of_at_least_one() {
        assert_eq!(ApiError::seconds_of(0), 1);
        assert_eq!(ApiError::seconds_of(1), 1);
        assert_eq!(ApiError::seconds_of(1_000), 1);
        assert_eq!(ApiError::seconds_of(1_001), 2);
        assert_eq!(ApiError::seconds_of(-5), 1);
    }
}
