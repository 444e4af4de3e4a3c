//! Who asks, decided before what they ask is read.
//!
//! Every request under `/v1` but the login passes [`authenticated`] first, in this
//! order, cheapest first: the bearer token's size, signature and shape (cached by the
//! token's digest, so a repeat costs a hash), its revocation (decided every time), then
//! its tenant's request rate. Only then is the body read, and the handler asks
//! [`Gateway::authorize`] whether the token allows its operation: the datalog, bounded
//! by the shape, run off the workers that serve requests, once per session and request
//! until the token expires (a session not attenuated cannot be allowed one moment and
//! refused the next but by its expiry or its revocation, and revocation is decided on
//! every request).

use std::sync::Arc;
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, web};
use berth_protocol::capability::{self, Denied, Operation, Role, Verified};

use crate::limits::Kind;
use berth_api::ErrorCode;

use crate::{ApiError, Gateway, now_ms};

/// How many verified session tokens a gateway keeps.
pub(crate) const CACHED_SESSIONS: usize = 10_000;
/// How many refused tokens a gateway remembers.
const REMEMBERED_REFUSALS: usize = 10_000;

/// Tokens refused, by digest, with why: forgotten all at once when full.
#[derive(Debug, Default)]
pub(crate) struct Refused(std::sync::Mutex<std::collections::HashMap<[u8; 32], String>>);

impl Refused {
    fn lookup(&self, digest: &[u8; 32]) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    fn keep(&self, digest: [u8; 32], why: String) {
        let mut refused = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= REMEMBERED_REFUSALS {
            refused.clear();
        }
        refused.insert(digest, why);
    }
}

/// Who a request's bearer token speaks for, once it verified.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// The bootstrap admin token.
    AdminToken,
    /// A biscuit whose signature and shape verified and that is not revoked.
    Token(Arc<Verified>),
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthenticated,
        message,
    )
}

impl Gateway {
    /// The caller `token` speaks for: the admin token, or a token whose signature and
    /// shape verify (from the cache when it verified before under a key still
    /// trusted) and that is not revoked. What it may do is [`Self::authorize`]'s.
    pub(crate) async fn caller(&self, token: &str) -> Result<Caller, ApiError> {
        // Hashed once: the admin token, the refusals and the verified tokens are all
        // known by this digest.
        let digest = berth_protocol::token_cache::digest(token.as_bytes());
        if self.is_admin_digest(&digest) {
            return Ok(Caller::AdminToken);
        }
        // A token refused once is refused again for a hash: its bytes cannot change,
        // and a signature or shape that failed fails again.
        if let Some(refusal) = self.refused.lookup(&digest) {
            return Err(unauthenticated(refusal));
        }
        let keys = self.keys.keyring();
        let verified = self
            .sessions
            .verified_by_digest(
                digest,
                Verified::root_key_id,
                |id| keys.key(id).ok().map(|k| k.to_bytes().to_vec()),
                || capability::verify(token, |id| keys.key(id)),
            )
            .map_err(|e| {
                let refusal = e.to_string();
                // Kept only when the token names a key this server knows: a key it
                // does not may be one another server has just made.
                let known_key = biscuit_auth::UnverifiedBiscuit::from_base64(token)
                    .ok()
                    .and_then(|u| u.root_key_id())
                    .is_some_and(|id| keys.key(Some(id)).is_ok());
                if known_key {
                    self.refused.keep(digest, refusal.clone());
                }
                unauthenticated(refusal)
            })?;
        self.check_revocation(&verified.revocation_ids).await?;
        Ok(Caller::Token(verified))
    }

    /// Whether the token of `presented` (its digest) is the bootstrap admin token
    /// (compared in constant time).
    fn is_admin_digest(&self, presented: &[u8; 32]) -> bool {
        presented
            .iter()
            .zip(&self.admin_token_sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Authorizes `operation` on `tenant` (and `topology`) for the request's caller
    /// (as [`authenticated`] found it, else from its bearer token now): 401 for a
    /// missing, invalid, revoked or expired token, 403 for a valid one that does not
    /// allow this.
    pub(crate) async fn authorize(
        &self,
        request: &HttpRequest,
        operation: Operation,
        tenant: &str,
        topology: Option<&str>,
    ) -> Result<capability::Authorized, ApiError> {
        let known = request.extensions().get::<Caller>().cloned();
        let caller = match known {
            Some(caller) => caller,
            None => self.caller(bearer(request)?).await?,
        };
        let verified = match caller {
            Caller::AdminToken => {
                return Ok(capability::Authorized {
                    session: capability::Session {
                        user: "admin-token".to_owned(),
                        tenant: "*".to_owned(),
                        role: Role::Admin,
                    },
                    revocation_ids: Vec::new(),
                    blocks: 0,
                });
            }
            Caller::Token(verified) => verified,
        };
        // A request this session was allowed before is allowed again until the token
        // expires (its revocation was checked above, as on every request).
        let now = SystemTime::now();
        let asked = capability::Request {
            operation,
            tenant,
            topology,
            now,
        };
        if let Some(authorized) = verified.allowed_before(&asked) {
            return Ok(authorized);
        }
        let (tenant_owned, topology_owned) = (tenant.to_owned(), topology.map(str::to_owned));
        let decided = {
            let verified = verified.clone();
            web::block(move || {
                let asked = capability::Request {
                    operation,
                    tenant: &tenant_owned,
                    topology: topology_owned.as_deref(),
                    now,
                };
                let decided = capability::authorize_verified(&verified, &asked);
                if let Ok(authorized) = &decided {
                    verified.remember_allowed(&asked, authorized);
                }
                decided
            })
            .await
            .map_err(|e| ApiError::internal(format!("the authorization was not run: {e}")))?
        };
        match decided {
            Ok(authorized) => {
                self.record_attenuation(&verified, &authorized).await?;
                Ok(authorized)
            }
            Err(e @ (Denied::Invalid(_) | Denied::Expired)) => Err(unauthenticated(e.to_string())),
            Err(e @ Denied::Forbidden { .. }) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                e.to_string(),
            )),
        }
    }
}

/// Refuses a request under `/v1` whose path names a tenant, node or topology no name
/// could be, or (but the login) whose bearer token is missing, does not verify or is
/// revoked, or whose tenant has used up its request rate, before its body is read. The caller it found is left in the request for the handler.
pub(crate) async fn authenticated(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    let open = request.path() == "/v1/login";
    let gateway = request.app_data::<web::Data<Gateway>>().cloned();
    let refused = match (open, gateway) {
        _ if let Err(e) = crate::contract::valid_names(request.path(), request.query_string()) => {
            Some(e)
        }
        (true, _) | (false, None) => None,
        (false, Some(gw)) => match admit(&gw, request.request()).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                None
            }
            Err(e) => Some(e),
        },
    };
    match refused {
        Some(e) => Ok(request.error_response(e).map_into_right_body()),
        None => Ok(next.call(request).await?.map_into_left_body()),
    }
}

/// The caller of `request`, once its tenant's request rate allows one more, and, for
/// a deploy, a scale or a removal, its deploy rate: charged to the caller's own tenant
/// (whatever tenant the path names, so that no one spends another's), before the body
/// is read.
async fn admit(gw: &Gateway, request: &HttpRequest) -> Result<Caller, ApiError> {
    let caller = gw.caller(bearer(request)?).await?;
    if let Caller::Token(verified) = &caller
        && let Some(tenant) = &verified.tenant
    {
        gw.limit(tenant, Kind::Request, now_ms()).await?;
        if changes_a_deployment(request) {
            gw.limit(tenant, Kind::Deploy, now_ms()).await?;
        }
    }
    Ok(caller)
}

/// Whether `request` deploys, scales or removes a topology (a dry run does not).
fn changes_a_deployment(request: &HttpRequest) -> bool {
    use actix_web::http::Method;
    let segments: Vec<&str> = request.path().trim_end_matches('/').split('/').collect();
    let dry_run = request
        .query_string()
        .split('&')
        .any(|p| p == "dry_run=true" || p == "dry_run=1");
    match (request.method(), segments.as_slice()) {
        (&Method::PUT, ["", "v1", "tenants", _, "topologies", _]) => !dry_run,
        (&Method::DELETE, ["", "v1", "tenants", _, "topologies", _]) => true,
        (&Method::POST, ["", "v1", "tenants", _, "topologies", _, "scale"]) => true,
        _ => false,
    }
}

/// The bearer token of `request`.
pub(crate) fn bearer(request: &HttpRequest) -> Result<&str, ApiError> {
    let header = request.headers().get("authorization").ok_or_else(|| {
        unauthenticated("send `Authorization: Bearer TOKEN` (from `berth login`, or the admin token `berth server` keeps)")
    })?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer TOKEN`"))
}
