//! The REST API of the control plane: the operations the CLI performs locally,
//! served over HTTP so that `berth --endpoint URL` works against a pool.
//!
//! Handlers are thin: they authenticate, parse into typed values, call the tenant
//! service and the allocator, and map errors to a JSON body with a stable `code` and a
//! message a person can act on. A client mistake is a 4xx, never a 500. The gateway
//! holds no state of its own.
//!
//! Authentication: `POST /v1/login` checks a user's password (argon2id, throttled) and
//! returns a biscuit session token; every request presents it as a bearer token and is
//! authorized by the policies of `berth_protocol::capability` against its operation,
//! tenant and topology. The bootstrap admin token that `berth server` keeps in its data
//! directory is accepted as an admin session (its SHA-256 is compared in constant time).

pub mod audit;
mod auth;
pub mod autoscale;
mod contract;
mod limits;
mod metrics;

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, AllocatorError, Drained, Limit, NodeInfo, NodeState, Resources};
use berth_deployments::{DeployError, Deployments, Target};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::capability::{self, Operation, Role};
use berth_protocol::topology::{Refusal, Topology};
use berth_tenant_service::{LoginError, TenantError, TenantService};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An API error: an HTTP status, a stable code and a message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    refusals: Vec<Refusal>,
    /// Seconds a client should wait before it tries again (`Retry-After`).
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            refusals: Vec::new(),
            retry_after_s: None,
        }
    }

    /// This error, telling the client to try again after `seconds`.
    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// Whole seconds, at least one, for a wait of `ms` milliseconds (`Retry-After`
    /// counts in seconds).
    fn seconds_of(ms: i64) -> u64 {
        u64::try_from(ms).unwrap_or(1).div_ceil(1_000).max(1)
    }

    /// 422 `refused_by_policy`: each setting the tenant's policy refuses.
    fn refused(refusals: Vec<Refusal>) -> Self {
        let message = refusals
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            refusals,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused_by_policy",
                message,
            )
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `invalid_topology`, `refused_by_policy`,
    /// `unauthenticated`, `not_found`, `quota_exceeded`, `no_capacity`, `conflict`,
    /// `internal`.
    pub code: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
    /// With `refused_by_policy`: each refused setting, by field path, so that a client
    /// can name the line of its own file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
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
            code: self.code.to_owned(),
            message: self.message.clone(),
            refusals: self.refusals.clone(),
        })
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::UnknownTenant(_) | TenantError::UnknownTopology { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "tenant service failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
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
                "invalid_topology",
                problems.join("; "),
            ),
            DeployError::Refused(refusals) => Self::refused(refusals),
            e @ DeployError::TooLarge { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "too_large", e.to_string())
            }
            e @ DeployError::UnknownService { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            DeployError::Tenant(e) => e.into(),
            DeployError::Allocator(e) => e.into(),
        }
    }
}

impl From<AllocatorError> for ApiError {
    fn from(e: AllocatorError) -> Self {
        match e {
            AllocatorError::Quota(_) => {
                Self::new(StatusCode::CONFLICT, "quota_exceeded", e.to_string())
            }
            AllocatorError::Placement(_) => {
                Self::new(StatusCode::CONFLICT, "no_capacity", e.to_string())
            }
            AllocatorError::Contended(_) | AllocatorError::Stale { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            AllocatorError::UnknownTenant(_) | AllocatorError::UnknownNode(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "allocator failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}

/// How long a session token lives.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the gateway serves from.
#[derive(Clone)]
pub struct Gateway {
    tenants: TenantService,
    allocator: Allocator,
    /// The deploy path (shared with the local plane and the autoscaler).
    deployments: Deployments,
    nodes: NodeApi,
    admin_token_sha256: [u8; 32],
    node_api_url: String,
    keys: berth_allocator::root_keys::RootKeys,
    metrics: std::sync::Arc<metrics::Metrics>,
    ledger: berth_allocator::ledger::Ledger,
    /// Session tokens whose signatures and shape verified, by digest.
    sessions: std::sync::Arc<berth_protocol::token_cache::TokenCache<capability::Verified>>,
    /// Each tenant's rates.
    rates: std::sync::Arc<limits::Rates>,
    /// Login attempts per source.
    login_sources: std::sync::Arc<limits::LoginSources>,
    /// Tokens refused, so that a repeat costs a hash.
    refused: std::sync::Arc<auth::Refused>,
    /// Attenuated tokens already recorded in the ledger, by last revocation id.
    attenuations_seen: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The certificate the server presents when it serves TLS.
    own_certificate: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The authority nodes trust the node API by (`--ca` in join commands), when the
    /// server made one.
    authority_file: Option<String>,
    /// The file the ledger's head is anchored in, when the server keeps one.
    witness: Option<berth_allocator::witness::Witness>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node_api_url", &self.node_api_url)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over the services, accepting `admin_token` as an admin session and
    /// minting sessions with the signing key of `keys`; `node_api_url` is the address
    /// node agents use, printed in join commands.
    pub fn new(
        tenants: TenantService,
        allocator: Allocator,
        nodes: NodeApi,
        admin_token: &str,
        node_api_url: &str,
        keys: berth_allocator::root_keys::RootKeys,
    ) -> Self {
        // One ledger with the node API, so a revocation reaches nodes at once.
        let ledger = nodes.ledger().clone();
        Self {
            deployments: Deployments::new(tenants.clone(), allocator.clone(), Target::Pool),
            tenants,
            allocator,
            nodes,
            admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            node_api_url: node_api_url.to_owned(),
            keys,
            metrics: metrics::Metrics::new(),
            ledger,
            sessions: std::sync::Arc::new(berth_protocol::token_cache::TokenCache::new(
                auth::CACHED_SESSIONS,
            )),
            rates: std::sync::Arc::default(),
            login_sources: std::sync::Arc::default(),
            refused: std::sync::Arc::default(),
            attenuations_seen: std::sync::Arc::default(),
            own_certificate: None,
            authority_file: None,
            witness: None,
        }
    }

    /// The gateway of a server that anchors the ledger's head in `witness`:
    /// verifications not given an anchor check against its last one.
    #[must_use]
    pub fn with_witness(mut self, witness: berth_allocator::witness::Witness) -> Self {
        self.witness = Some(witness);
        self
    }

    /// The gateway of a server that serves TLS with `certificate` (its pages, which
    /// call the API, trust exactly it), signed by the authority in `authority_file`
    /// when the server made one (join commands name it).
    #[must_use]
    pub fn with_tls(
        mut self,
        certificate: rustls::pki_types::CertificateDer<'static>,
        authority_file: Option<&std::path::Path>,
    ) -> Self {
        self.own_certificate = Some(certificate);
        self.authority_file = authority_file.map(|p| p.display().to_string());
        self
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One resource of the API: its handlers by method, and a 405 that names the allowed
/// methods for any other.
macro_rules! resource {
    ($path:expr, $($method:ident => $handler:expr),+ $(,)?) => {
        web::resource($path)
            $(.route(web::$method().to($handler)))+
            .default_service(web::to(|| async {
                method_not_allowed(&[$(stringify!($method)),+])
            }))
    };
}

/// 405, with the methods the resource answers in `Allow`.
fn method_not_allowed(methods: &[&str]) -> HttpResponse {
    let allowed = methods
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    HttpResponse::MethodNotAllowed()
        .insert_header(("allow", allowed.clone()))
        .json(ErrorBody {
            code: "method_not_allowed".to_owned(),
            message: format!("this resource answers {allowed} only"),
            refusals: Vec::new(),
        })
}

/// The largest request body read: a topology of the most services a tenant may be
/// allowed, with room to spare (a large real Compose file is tens of KiB).
pub const MOST_BODY_BYTES: usize = 1024 * 1024;

/// Registers every route under `/v1`, plus health checks.
pub fn configure(gateway: Gateway) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let json = web::JsonConfig::default()
            .limit(MOST_BODY_BYTES)
            .error_handler(|err, _| {
                ApiError::bad_request(format!("the request body is not valid: {err}")).into()
            });
        let path = web::PathConfig::default().error_handler(|err, _| {
            ApiError::bad_request(format!("the path is not valid: {err}")).into()
        });
        let query = web::QueryConfig::default().error_handler(|err, _| {
            ApiError::bad_request(format!("the query is not valid: {err}")).into()
        });
        let own_certificate = gateway.own_certificate.clone();
        cfg.app_data(web::Data::new(gateway))
            .app_data(web::PayloadConfig::new(MOST_BODY_BYTES))
            .app_data(json)
            .app_data(path)
            .app_data(query)
            // A person who opens the server's address finds the pages.
            .route(
                "/",
                web::get().to(|| async {
                    HttpResponse::SeeOther()
                        .insert_header(("location", "/ui/"))
                        .finish()
                }),
            )
            .service(resource!("/healthz", get => healthz))
            .service(resource!("/readyz", get => readyz))
            .service(resource!("/openapi.json", get => openapi))
            .service(resource!("/metrics", get => metrics::metrics))
            // The pages call the API below over loopback with the user's own token.
            .configure(berth_ui::configure(own_certificate))
            .service(
                web::scope("/v1")
                    .wrap(actix_web::middleware::from_fn(auth::authenticated))
                    .wrap(actix_web::middleware::from_fn(metrics::track))
                    .service(resource!("/login", post => login))
                    .service(resource!("/session", get => session))
                    .service(resource!("/tenants", post => create_tenant, get => list_tenants))
                    .service(resource!("/tenants/{tenant}/users", post => create_user))
                    .service(resource!("/tenants/{tenant}/quota", put => set_quota, get => get_quota))
                    .service(resource!("/tenants/{tenant}/policy", put => set_policy, get => get_policy))
                    .service(resource!("/tenants/{tenant}/limits", put => limits::set_limits, get => limits::get_limits))
                    .service(resource!("/join-tokens", post => create_join_token))
                    .service(resource!("/nodes", get => list_nodes))
                    .service(resource!("/audit/entries", get => audit::entries))
                    .service(resource!("/audit/verify", get => audit::verify))
                    .service(resource!("/audit/tokens/{id}", get => audit::explain))
                    .service(resource!("/audit/revocations", post => audit::revoke))
                    .service(resource!("/audit/graph", get => audit::graph))
                    .service(resource!("/audit/decisions/{seq}", get => audit::decision))
                    .service(resource!("/root-keys", get => audit::root_keys, post => audit::rotate_root_key))
                    .service(resource!("/root-keys/{id}", delete => audit::retire_root_key))
                    .service(resource!("/nodes/{node}/cordon", post => cordon))
                    .service(resource!("/nodes/{node}/uncordon", post => uncordon))
                    .service(resource!("/nodes/{node}/drain", post => drain))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/scale", post => scale))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/events", get => events))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/spec", get => spec))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/logs", get => logs))
                    .service(resource!("/tenants/{tenant}/topologies", get => list_topologies))
                    .service(resource!(
                        "/tenants/{tenant}/topologies/{name}",
                        put => deploy,
                        get => status,
                        delete => remove,
                    )),
            )
            .default_service(web::to(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").error_response()
            }));
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "The process is up"),
    )
)]
async fn healthz() -> HttpResponse {
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
async fn readyz(gw: web::Data<Gateway>) -> Result<HttpResponse, ApiError> {
    gw.tenants.list("-").await?;
    Ok(HttpResponse::Ok().body("ready"))
}

/// The largest quota in any dimension: 2^53, far beyond any pool, and a number every
/// JSON client reads exactly.
const MOST_QUOTA: u64 = 1 << 53;

/// Refuses a quota above [`MOST_QUOTA`], rather than clamping it silently.
fn representable(limit: &Limit) -> Result<(), ApiError> {
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

/// `POST /v1/tenants`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// The tenant's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    /// Its quota; unlimited when left out.
    #[serde(default)]
    pub quota: Option<Limit>,
}

fn valid_tenant(name: &str) -> Result<(), ApiError> {
    if berth_allocator::identity::valid_node_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{name:?} cannot name a tenant: use lower-case letters, digits and '-', starting with a letter or digit (at most 63)"
        )))
    }
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = NewTenant,
    responses(
        (status = 201, description = "The tenant exists", body = TenantCreated),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_tenant(
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

/// A tenant with its quota and what is used of it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantView {
    /// The tenant.
    pub name: String,
    /// Its quota (unset dimensions: unlimited).
    pub limit: Limit,
    /// What its placed replicas reserve.
    pub used: Resources,
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "Every tenant with its quota and usage", body = Vec<TenantView>),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_tenants(
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
        ("tenant" = String, Path, description = "The tenant"),
    ),
    responses(
        (status = 200, description = "The quota now", body = QuotaView),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn set_quota(
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
        ("tenant" = String, Path, description = "The tenant"),
    ),
    responses(
        (status = 200, description = "The quota and what is used of it", body = QuotaView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_quota(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    let (limit, used) = gw.allocator.quota(&tenant).await?;
    Ok(HttpResponse::Ok().json(QuotaView { limit, used }))
}

/// A tenant's policy: what its topologies may use beyond the pool's default.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// Allowances, `KEY` (every value) or `KEY:VALUE`: `cap_add:NET_ADMIN`,
    /// `privileged`, `bind_mount:/srv/shared`. An empty list is the default policy.
    pub allow: Vec<String>,
}

/// A tenant's policy as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// The policy's name, as refusals print it.
    pub name: String,
    /// The allowances beyond the default, sorted.
    pub allow: Vec<String>,
    /// Every setting an allowance may name.
    pub governed: Vec<String>,
}

/// The most allowances one tenant's policy holds.
const MOST_ALLOWANCES: usize = 256;

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/policy",
    tag = "tenants",
    request_body = PolicyBody,
    params(
        ("tenant" = String, Path, description = "The tenant"),
    ),
    responses(
        (status = 200, description = "The policy now in force; the change is in the audit ledger", body = PolicyView),
        (status = 400, description = "An allowance names no setting a policy governs", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn set_policy(
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
        .collect::<Result<std::collections::BTreeSet<String>, _>>()?;
    gw.tenants.ensure_known(&tenant).await?;
    let before = gw.allocator.allowances(&tenant).await?;
    if before != allow {
        let list = |set: &std::collections::BTreeSet<String>| {
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
        ("tenant" = String, Path, description = "The tenant"),
    ),
    responses(
        (status = 200, description = "The tenant's policy", body = PolicyView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_policy(
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

/// The longest a join token lives: a week, enough to join machines being set up.
const MOST_JOIN_TOKEN_SECONDS: u32 = 7 * 24 * 3600;

/// `POST /v1/join-tokens`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// How long the token is valid, in seconds (default one hour, at most a week).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub ttl_seconds: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/v1/join-tokens",
    tag = "nodes",
    request_body(content = Option<NewJoinToken>, description = "How long the token lives; left out, an hour"),
    responses(
        (status = 201, description = "A one-time token and the command that joins a machine", body = JoinToken),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_join_token(
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
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
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
    path = "/v1/tenants/{tenant}/topologies",
    tag = "topologies",
    params(
        ("tenant" = String, Path, description = "The tenant"),
    ),
    responses(
        (status = 200, description = "The names of the tenant's topologies", body = Vec<String>),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_topologies(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.tenants.list(&tenant).await?))
}

/// The answer to a deploy: the revision and where each replica went.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployed {
    /// The revision now in force.
    pub revision: u64,
    /// Whether this deploy stored a new revision.
    pub changed: bool,
    /// Every replica and its node.
    pub replicas: Vec<ReplicaView>,
}

/// One replica as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// The service.
    pub service: String,
    /// The replica number.
    pub replica: u32,
    /// The node it is placed on.
    pub node: String,
    /// Its placement generation.
    pub generation: u64,
    /// What the node last reported (`pending` before any report).
    pub state: String,
    /// The node's detail (status sentence or error).
    pub detail: String,
    /// The CPU it used lately, in thousandths of a core, as its node reported (only
    /// for services that autoscale, and only on the leading server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/topologies/{name}",
    tag = "topologies",
    request_body = TopologyBody,
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
        DeployQuery,
    ),
    responses(
        (status = 200, description = "Placed: the revision and where each replica went (with `dry_run`: a `DryRun`, and nothing changed)", body = Deployed),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
        (status = 409, description = "Over quota or no room in the pool; nothing changed", body = ErrorBody),
        (status = 422, description = "The topology breaks a rule; nothing changed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn deploy(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<DeployQuery>,
    body: crate::contract::Body<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, Some(&name))
        .await?;
    // The body is a JSON object; what it holds is judged as a topology file is.
    let topology: Topology = contract::from_value(body.into_inner()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_topology",
            format!("the topology {e}"),
        )
    })?;
    if topology.name != name {
        return Err(ApiError::bad_request(format!(
            "the path names topology {name:?} but the body is {:?}",
            topology.name
        )));
    }
    if query.dry_run {
        let answer = gw.deployments.dry_run(&tenant, &topology).await?;
        return Ok(HttpResponse::Ok().json(DryRun {
            policy: answer.policy,
            current_revision: answer.current_revision,
            changed: answer.changed,
        }));
    }
    let applied = gw.deployments.apply(&tenant, &topology).await?;
    deployed(&gw, tenant, &topology.name, &applied).await
}

/// The query of a deploy.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Check the topology against the rules and the tenant's policy and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a deploy with `dry_run`: it would be accepted.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DryRun {
    /// The policy it was checked against (`pool (tenant acme)`).
    pub policy: String,
    /// The revision in force now, if the topology is deployed.
    pub current_revision: Option<u64>,
    /// Whether the deploy would store a new revision.
    pub changed: bool,
}

/// The answer to a change that was made: the revision and where its replicas went.
async fn deployed(
    gw: &Gateway,
    tenant: String,
    name: &str,
    applied: &berth_deployments::Applied,
) -> Result<HttpResponse, ApiError> {
    let replicas = replica_views(
        gw,
        &TopologyRef {
            tenant,
            topology: name.to_owned(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(Deployed {
        revision: applied.revision,
        changed: applied.changed,
        replicas,
    }))
}

async fn replica_views(gw: &Gateway, id: &TopologyRef) -> Result<Vec<ReplicaView>, ApiError> {
    let reported = gw.allocator.statuses(id).await?;
    let cpu = gw.nodes.cpu_figures(id);
    let mut views: Vec<ReplicaView> = gw
        .allocator
        .placed(id)
        .await?
        .into_iter()
        .map(|p| {
            let report = reported.iter().find(|r| {
                r.status.service == p.service
                    && r.status.replica == p.replica
                    && r.status.generation == p.generation
            });
            ReplicaView {
                state: report.map_or_else(|| "pending".to_owned(), |r| r.status.state.clone()),
                detail: report.map(|r| r.status.detail.clone()).unwrap_or_default(),
                cpu_millis: cpu.get(&(p.service.clone(), p.replica)).copied(),
                service: p.service,
                replica: p.replica,
                node: p.node,
                generation: p.generation,
            }
        })
        .collect();
    views.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    Ok(views)
}

/// The most events one request reads.
const MOST_EVENTS: u64 = 500;

/// How many events.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// At most this many, newest first (default 100, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}/events",
    tag = "topologies",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "What happened to its replicas, newest first", body = Vec<berth_allocator::events::Event>),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn events(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    let id = TopologyRef {
        tenant,
        topology: name,
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MOST_EVENTS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range; ask for 1 to {MOST_EVENTS} events"
        )));
    }
    let events = gw.allocator.events(&id, limit).await?;
    Ok(HttpResponse::Ok().json(events))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}/spec",
    tag = "topologies",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
    ),
    responses(
        (status = 200, description = "The current revision, in the normalised form a deploy sends", body = TopologyBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant or topology", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn spec(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    let current = gw.tenants.current(&tenant, &name).await?;
    Ok(HttpResponse::Ok().json(current.topology))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}",
    tag = "topologies",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
    ),
    responses(
        (status = 200, description = "Each replica, its node and what the node reports", body = Deployed),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn status(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    let id = TopologyRef {
        tenant,
        topology: name,
    };
    let Some(revision) = gw.allocator.placed_revision(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "topology {:?} is not deployed in tenant {:?}",
                id.topology, id.tenant
            ),
        ));
    };
    let replicas = replica_views(&gw, &id).await?;
    Ok(HttpResponse::Ok().json(Deployed {
        revision,
        changed: false,
        replicas,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/topologies/{name}",
    tag = "topologies",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
    ),
    responses(
        (status = 200, description = "Removed, with the nodes that ran it", body = Removed),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn remove(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Delete, &tenant, Some(&name))
        .await?;
    let id = TopologyRef {
        tenant: tenant.clone(),
        topology: name.clone(),
    };
    let Some(nodes) = gw.deployments.remove(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("topology {name:?} does not exist in tenant {tenant:?}"),
        ));
    };
    Ok(HttpResponse::Ok().json(Removed {
        removed: name,
        nodes,
    }))
}

/// The longest password a login or a new user may offer.
const MOST_PASSWORD_BYTES: usize = 1024;

/// Where a login comes from, as the throttle counts it: the peer's address, or, when
/// the peer is this host itself (the UI, or a proxy beside the gateway), the address
/// it forwarded in the last `X-Forwarded-For` entry.
fn login_source(request: &HttpRequest) -> String {
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

/// `POST /v1/login`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user's tenant.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub tenant: String,
    /// The user's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub user: String,
    /// The password.
    #[schema(max_length = 1024)]
    pub password: String,
}

/// The answer to a login.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoggedIn {
    /// The session token, to send as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// The user's role.
    pub role: Role,
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::BadCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            LoginError::Throttled { retry_after_ms } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "throttled", e.to_string())
                    .retry_after(Self::seconds_of(retry_after_ms))
            }
            LoginError::Busy => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()).retry_after(1)
            }
            LoginError::WeakPassword => Self::bad_request(e.to_string()),
            LoginError::Exists(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            other => {
                tracing::error!(error = %other, "login failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
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
async fn login(
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
            "internal",
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
async fn session(gw: web::Data<Gateway>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
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

/// Who a session token speaks for.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The tenant (`*` for the admin token).
    pub tenant: String,
    /// The user.
    pub user: String,
    /// The role.
    pub role: Role,
}

/// `POST /v1/tenants/{tenant}/users`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The user's name.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: String,
    /// The password (at least 12 characters); only its argon2id hash is stored.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
    /// The role.
    pub role: Role,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/users",
    tag = "users",
    request_body = NewUser,
    params(
        ("tenant" = String, Path, description = "The tenant"),
    ),
    responses(
        (status = 201, description = "The user exists", body = UserCreated),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
        (status = 409, description = "The user exists already", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_user(
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

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    responses(
        (status = 200, description = "Every node", body = Vec<NodeInfo>),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_nodes(
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
        ("node" = String, Path, description = "The node"),
    ),
    responses(
        (status = 200, description = "The node is cordoned", body = NodeStateChanged),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cordon(
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
        ("node" = String, Path, description = "The node"),
    ),
    responses(
        (status = 200, description = "The node is active", body = NodeStateChanged),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn uncordon(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    node: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_cordoned(&gw, &request, node.into_inner(), false).await
}

/// Cordons `node`, or with `false` makes it active again; answers its new state.
async fn set_cordoned(
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
        ("node" = String, Path, description = "The node"),
    ),
    responses(
        (status = 200, description = "The node is draining; what moved and what could not", body = Drained),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn drain(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    node: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Administer, "*", None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.allocator.drain(&node).await?))
}

/// `POST /v1/tenants/{tenant}/topologies/{name}/scale`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// The replicas each named service should have; the services left out keep
    /// theirs. All change in one revision.
    pub replicas: std::collections::BTreeMap<String, u32>,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topologies/{name}/scale",
    tag = "topologies",
    request_body = Scale,
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
    ),
    responses(
        (status = 200, description = "Placed with the new count", body = Deployed),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
        (status = 409, description = "Over quota or no room in the pool; nothing changed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn scale(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: crate::contract::Body<Scale>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, Some(&name))
        .await?;
    let applied = gw.deployments.scale(&tenant, &name, &body.replicas).await?;
    deployed(&gw, tenant, &name, &applied).await
}

/// A tenant's quota and what it uses.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaView {
    /// The limits (unset: unlimited).
    pub limit: Limit,
    /// What the tenant's placed replicas reserve.
    pub used: Resources,
}

/// A tenant was created.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantCreated {
    /// Its name.
    pub name: String,
}

/// A user was created.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserCreated {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub name: String,
    /// The role.
    pub role: Role,
}

/// A one-time join token.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinToken {
    /// The token; only its hash is stored.
    pub token: String,
    /// The command that joins a machine with it.
    pub join_command: String,
    /// How long it is valid.
    pub ttl_seconds: u32,
}

/// A node's new state.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStateChanged {
    /// The node.
    pub node: String,
    /// Its state now.
    pub state: NodeState,
}

/// A topology was removed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    /// The topology.
    pub removed: String,
    /// The nodes that ran some of it.
    pub nodes: Vec<String>,
}

/// The body of a deploy: a topology in Berth's normalised form, as `berth config
/// --json` prints it (the CLI sends it after reading and checking the file).
#[derive(Debug)]
pub struct TopologyBody;

impl utoipa::PartialSchema for TopologyBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .description(Some(
                "A topology in Berth's normalised form, as `berth config --model` prints it: `name`, `services`, `networks`, `volumes`. It is checked by the same rules as a topology file.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for TopologyBody {}

/// The OpenAPI document of the REST API, generated from the handlers.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Berth",
        description = "The REST API of the Berth control plane: the operations the `berth` command performs locally, for a pool."
    ),
    paths(
        healthz, readyz, login, session, create_tenant, list_tenants, create_user, set_quota, get_quota,
        set_policy, get_policy, limits::set_limits, limits::get_limits,
        create_join_token, list_nodes, cordon, uncordon, drain, list_topologies, deploy,
        status, spec, events, remove, scale, logs, audit::entries, audit::verify, audit::explain,
        audit::revoke, audit::graph, audit::decision, audit::root_keys,
        audit::rotate_root_key, audit::retire_root_key,
    ),
    components(schemas(TopologyBody, NodeInfo, Drained, DryRun)),
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

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(openapi_json())
}

/// `GET /v1/tenants/{tenant}/topologies/{name}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only this service.
    pub service: Option<String>,
    /// How many lines from the end of each replica's output (default 100, at most
    /// 10000).
    #[param(minimum = 0, maximum = 10000)]
    pub tail: Option<u64>,
    /// Only lines written after this time, Unix nanoseconds as `at_ns` gives them:
    /// what a client that follows the output asks for next.
    pub since_ns: Option<i64>,
}

/// The output of one replica.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaLogs {
    /// The service.
    pub service: String,
    /// The replica number.
    pub replica: u32,
    /// The node that runs it.
    pub node: String,
    /// Its last lines, oldest first.
    pub lines: Vec<String>,
    /// When each line was written, Unix nanoseconds as the node's engine stamped it
    /// (0 where it did not).
    #[serde(default)]
    pub at_ns: Vec<i64>,
    /// Why its output could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How long the gateway waits for a node to send a replica's output.
const LOGS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}/logs",
    tag = "topologies",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("name" = String, Path, description = "The topology"),
        LogsQuery,
    ),
    responses(
        (status = 200, description = "The last lines of each replica, asked of the node that runs it", body = Vec<ReplicaLogs>),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 404, description = "No such tenant, topology or service", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn logs(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    contract::within("tail", query.tail, 0, 10_000)?;
    let tail = query.tail.unwrap_or(100);
    let id = TopologyRef {
        tenant,
        topology: name,
    };
    let placed: Vec<_> = gw
        .allocator
        .placed(&id)
        .await?
        .into_iter()
        .filter(|p| query.service.as_ref().is_none_or(|s| &p.service == s))
        .collect();
    if placed.is_empty() {
        let what = match &query.service {
            Some(s) => format!("service {s:?} of topology {:?}", id.topology),
            None => format!("topology {:?}", id.topology),
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} has no replicas placed in tenant {:?}", id.tenant),
        ));
    }
    // Ask every node at once; each answers for its own replicas only.
    let since_ns = query.since_ns.unwrap_or(0);
    let asks = placed.into_iter().map(|p| {
        let gw = gw.clone();
        let id = id.clone();
        async move {
            let ask = berth_protocol::node_api::LogRequest {
                request_id: 0,
                tenant: id.tenant.clone(),
                topology: id.topology.clone(),
                service: p.service.clone(),
                replica: p.replica,
                tail,
                since_ns,
            };
            let mut view = ReplicaLogs {
                service: p.service,
                replica: p.replica,
                node: p.node.clone(),
                lines: Vec::new(),
                at_ns: Vec::new(),
                error: None,
            };
            let mut answers = match gw.nodes.request_logs(&p.node, ask) {
                Ok(rx) => rx,
                Err(e) => {
                    view.error = Some(e.to_string());
                    return view;
                }
            };
            let collect = async {
                while let Some(part) = answers.recv().await {
                    // A node that sends no stamps gets zeros, one per line.
                    let stamps = part.at_ns.iter().copied().chain(std::iter::repeat(0));
                    view.at_ns.extend(stamps.take(part.lines.len()));
                    view.lines.extend(part.lines);
                    if !part.error.is_empty() {
                        view.error = Some(part.error);
                    }
                    if part.done {
                        return true;
                    }
                }
                false
            };
            let finished = matches!(tokio::time::timeout(LOGS_TIMEOUT, collect).await, Ok(true));
            if !finished && view.error.is_none() {
                view.error = Some(format!(
                    "node {:?} did not send the output within {} s",
                    p.node,
                    LOGS_TIMEOUT.as_secs()
                ));
            }
            view
        }
    });
    let mut views = futures_util::future::join_all(asks).await;
    views.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    Ok(HttpResponse::Ok().json(views))
}
