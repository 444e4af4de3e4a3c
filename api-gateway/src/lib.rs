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
mod contract;
mod docs;
mod error;
mod forward;
mod health;
mod images;
mod limits;
mod logs;
mod metrics;
mod nodes;
mod openapi;
mod registries;
mod sessions;
mod tenants;
mod topologies;

use actix_web::{HttpResponse, ResponseError, web};
use berth_allocator::Allocator;
use berth_allocator::node_api::NodeApi;
use berth_deployments::{Deployments, Target};
use berth_protocol::capability;
use berth_protocol::time::now_ms;
use berth_tenant_service::TenantService;
use sha2::{Digest, Sha256};

pub use error::ApiError;
pub use openapi::{ApiDoc, openapi_json};

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
    /// Topologies' statuses as last answered, while what they were built from holds.
    statuses: std::sync::Arc<topologies::StatusCache>,
    /// Attenuated tokens found recorded in the ledger, by last revocation id: a cache
    /// of the ledger, never consulted instead of it for a token not in it.
    attenuations_seen: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The certificate the server presents when it serves TLS.
    own_certificate: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The authority nodes trust the node API by (`--ca` in join commands), when the
    /// server made one.
    authority_file: Option<String>,
    /// The file the ledger's head is anchored in, when the server keeps one.
    witness: Option<berth_allocator::witness::Witness>,
    /// The client that forwards to the leading server what only it can answer.
    to_leader: reqwest::Client,
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
            statuses: std::sync::Arc::default(),
            own_certificate: None,
            authority_file: None,
            witness: None,
            to_leader: reqwest::Client::new(),
        }
    }

    /// The gateway of a server that reaches the leading server with `client` (which
    /// trusts the certificate the servers present).
    #[must_use]
    pub fn with_leader_client(mut self, client: reqwest::Client) -> Self {
        self.to_leader = client;
        self
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

/// One resource of the API: its handlers by method, and a 405 that names the allowed
/// methods for any other.
macro_rules! resource {
    ($path:expr, $($method:ident => $handler:expr),+ $(,)?) => {
        web::resource($path)
            $(.route(web::$method().to($handler)))+
            .default_service(web::to(|| async {
                $crate::error::method_not_allowed(&[$(stringify!($method)),+])
            }))
    };
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
            .service(resource!("/healthz", get => health::healthz))
            .service(resource!("/readyz", get => health::readyz))
            .service(resource!("/openapi.json", get => openapi::openapi))
            .service(resource!("/metrics", get => metrics::metrics))
            // The pages call the API below over loopback with the user's own token.
            .configure(berth_ui::configure(own_certificate))
            .service(
                web::scope("/v1")
                    .wrap(actix_web::middleware::from_fn(auth::authenticated))
                    .wrap(actix_web::middleware::from_fn(metrics::track))
                    .service(resource!("/login", post => sessions::login))
                    .service(resource!("/session", get => sessions::session))
                    .service(resource!("/tenants", post => tenants::create_tenant, get => tenants::list_tenants))
                    .service(resource!("/tenants/{tenant}/users", post => tenants::create_user))
                    .service(resource!("/tenants/{tenant}/quota", put => tenants::set_quota, get => tenants::get_quota))
                    .service(resource!("/tenants/{tenant}/policy", put => tenants::set_policy, get => tenants::get_policy))
                    .service(resource!("/tenants/{tenant}/limits", put => limits::set_limits, get => limits::get_limits))
                    .service(resource!("/tenants/{tenant}/blobs/missing", post => images::missing))
                    .service(resource!("/tenants/{tenant}/blobs/{digest}", put => images::put_blob))
                    .service(resource!("/tenants/{tenant}/images", post => images::record, get => images::list))
                    .service(resource!("/tenants/{tenant}/registries", get => registries::list))
                    .service(resource!("/tenants/{tenant}/registries/{registry}", put => registries::login, delete => registries::logout))
                    .service(resource!("/join-tokens", post => nodes::create_join_token))
                    .service(resource!("/nodes", get => nodes::list_nodes))
                    .service(resource!("/audit/entries", get => audit::entries))
                    .service(resource!("/audit/verify", get => audit::verify))
                    .service(resource!("/audit/tokens/{id}", get => audit::explain))
                    .service(resource!("/audit/revocations", post => audit::revoke))
                    .service(resource!("/audit/graph", get => audit::graph))
                    .service(resource!("/audit/decisions/{seq}", get => audit::decision))
                    .service(resource!("/root-keys", get => audit::root_keys, post => audit::rotate_root_key))
                    .service(resource!("/root-keys/{id}", delete => audit::retire_root_key))
                    .service(resource!("/nodes/{node}/cordon", post => nodes::cordon))
                    .service(resource!("/nodes/{node}/uncordon", post => nodes::uncordon))
                    .service(resource!("/nodes/{node}/drain", post => nodes::drain))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/scale", post => topologies::scale))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/events", get => topologies::events))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/spec", get => topologies::spec))
                    .service(resource!("/tenants/{tenant}/topologies/{name}/logs", get => logs::logs))
                    .service(resource!("/tenants/{tenant}/topologies", get => topologies::list_topologies))
                    .service(resource!(
                        "/tenants/{tenant}/topologies/{name}",
                        put => topologies::deploy,
                        get => topologies::status,
                        delete => topologies::remove,
                    )),
            )
            .default_service(web::to(|| async {
                ApiError::new(
                    actix_web::http::StatusCode::NOT_FOUND,
                    berth_api::ErrorCode::NotFound,
                    "no such route",
                )
                .error_response()
            }));
    }
}
