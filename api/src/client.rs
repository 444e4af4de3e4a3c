//! One typed client of the REST API, for the CLI and the UI alike: a method per route,
//! the vocabulary's types in and out, and the API's errors as [`ClientError`].
//!
//! Reads are sent a second time when the connection failed under them (a pooled
//! connection the server closed); changes are sent once.

use std::net::IpAddr;

use berth_protocol::topology::{Refusal, Topology};
use reqwest::{Method, RequestBuilder, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::audit::{
    DecisionExplained, Entry, Explained, Filter, Reach, Revoke, RootKeyInfo, Verification,
    VerifyQuery,
};
use crate::error::{ErrorBody, ErrorCode};
use crate::images::{BlobStored, BlobsAsked, BlobsMissing, ImageList, ImageView, NewImage};
use crate::nodes::{Drained, JoinToken, NewJoinToken, NodeInfo, NodeStateChanged};
use crate::quota::{
    Limit, NewTenant, PolicyBody, PolicyView, QuotaView, TenantCreated, TenantView,
};
use crate::topologies::{Deployed, DryRun, Event, LogsQuery, Removed, ReplicaLogs, Scale};
use crate::users::{LoggedIn, Login, NewUser, SessionView, UserCreated};
use berth_protocol::image::Digest;
use berth_protocol::limits::{Effective, TenantLimits};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint cannot be reached, or its answer cannot be read; the source says
    /// why (a refused certificate, a connection refused, ...), so show the chain.
    #[error("cannot reach the control plane at {endpoint}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint is not a URL.
    #[error("{endpoint:?} is not an endpoint: {reason}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is no URL.
        reason: String,
    },
    /// The certificate authority to trust cannot be used.
    #[error("cannot use the certificate authority {path}: {reason}")]
    Trust {
        /// The file given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable code, when the answer carried one (a proxy's page does not).
        code: Option<ErrorCode>,
        /// What is wrong, for the user.
        message: String,
        /// With `refused_by_policy`: each refused setting.
        refusals: Vec<Refusal>,
    },
}

impl ClientError {
    /// What went wrong with every cause, for people: `cannot reach the control plane
    /// at URL: error sending request: invalid peer certificate: UnknownIssuer`.
    pub fn described(&self) -> String {
        berth_protocol::error_chain(self)
    }

    /// The HTTP status of an answered error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's code of an answered error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => *code,
            _ => None,
        }
    }
}

/// An HTTP client that trusts the public authorities and the PEM bundle at `ca`.
pub fn http_trusting(ca: Option<&std::path::Path>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca {
        let trust = |reason: String| ClientError::Trust {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| trust(e.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| trust(format!("not a PEM certificate: {e}")))?;
        if certificates.is_empty() {
            return Err(trust("it holds no PEM certificate".into()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| ClientError::Trust {
        path: ca.map(|p| p.display().to_string()).unwrap_or_default(),
        reason: e.to_string(),
    })
}

/// A client of one control plane, acting with one token (or none, to log in).
#[derive(Clone, Debug)]
pub struct Client {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `endpoint` (`https://host:port`), sending `token`.
    pub fn new(http: reqwest::Client, endpoint: &str, token: &str) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let base = Url::parse(endpoint.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(bad("use http:// or https://".to_owned()));
        }
        Ok(Self {
            base,
            token: token.to_owned(),
            http,
        })
    }

    /// The same endpoint, acting with `token`.
    #[must_use]
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// The endpoint, as given.
    pub fn endpoint(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of `segments` under `/v1`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let request = self.http.request(method, self.url(segments));
        if self.token.is_empty() {
            request
        } else {
            request.bearer_auth(&self.token)
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint().to_owned(),
            source,
        }
    }

    /// Sends `request`; the answer's body as `T`, or the API's error.
    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| self.unreachable(e));
        }
        Err(match response.json::<ErrorBody>().await {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: Some(body.code),
                message: body.message,
                refusals: body.refusals,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: None,
                message: format!("the control plane answered {status}"),
                refusals: Vec::new(),
            },
        })
    }

    /// A read of `segments` with `query`, sent again once if the connection failed.
    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let build = || self.request(Method::GET, segments).query(query);
        match self.send(build()).await {
            Err(ClientError::Unreachable { .. }) => self.send(build()).await,
            done => done,
        }
    }

    async fn change<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let mut request = self.request(method, segments);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// `POST /v1/login`. `browser` is the address a front end logs in for, forwarded
    /// so that the gateway's throttle counts it rather than the front end.
    pub async fn login(
        &self,
        login: &Login,
        browser: Option<IpAddr>,
    ) -> Result<LoggedIn, ClientError> {
        let mut request = self.request(Method::POST, &["login"]).json(login);
        if let Some(browser) = browser {
            request = request.header("x-forwarded-for", browser.to_string());
        }
        self.send(request).await
    }

    /// `GET /v1/session`: who the token speaks for.
    pub async fn session(&self) -> Result<SessionView, ClientError> {
        self.get(&["session"], &()).await
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(&self, tenant: &NewTenant) -> Result<TenantCreated, ClientError> {
        self.change(Method::POST, &["tenants"], Some(tenant)).await
    }

    /// `GET /v1/tenants`.
    pub async fn tenants(&self) -> Result<Vec<TenantView>, ClientError> {
        self.get(&["tenants"], &()).await
    }

    /// `PUT /v1/tenants/{tenant}/quota`.
    pub async fn set_quota(&self, tenant: &str, limit: &Limit) -> Result<QuotaView, ClientError> {
        self.change(Method::PUT, &["tenants", tenant, "quota"], Some(limit))
            .await
    }

    /// `GET /v1/tenants/{tenant}/quota`.
    pub async fn quota(&self, tenant: &str) -> Result<QuotaView, ClientError> {
        self.get(&["tenants", tenant, "quota"], &()).await
    }

    /// `PUT /v1/tenants/{tenant}/policy`.
    pub async fn set_policy(
        &self,
        tenant: &str,
        policy: &PolicyBody,
    ) -> Result<PolicyView, ClientError> {
        self.change(Method::PUT, &["tenants", tenant, "policy"], Some(policy))
            .await
    }

    /// `GET /v1/tenants/{tenant}/policy`.
    pub async fn policy(&self, tenant: &str) -> Result<PolicyView, ClientError> {
        self.get(&["tenants", tenant, "policy"], &()).await
    }

    /// `PUT /v1/tenants/{tenant}/limits`.
    pub async fn set_limits(
        &self,
        tenant: &str,
        limits: &TenantLimits,
    ) -> Result<Effective, ClientError> {
        self.change(Method::PUT, &["tenants", tenant, "limits"], Some(limits))
            .await
    }

    /// `GET /v1/tenants/{tenant}/limits`.
    pub async fn limits(&self, tenant: &str) -> Result<Effective, ClientError> {
        self.get(&["tenants", tenant, "limits"], &()).await
    }

    /// `POST /v1/tenants/{tenant}/blobs/missing`.
    pub async fn missing_blobs(
        &self,
        tenant: &str,
        digests: &[Digest],
    ) -> Result<Vec<Digest>, ClientError> {
        let asked = BlobsAsked {
            digests: digests.to_vec(),
        };
        let answer: BlobsMissing = self
            .change(
                Method::POST,
                &["tenants", tenant, "blobs", "missing"],
                Some(&asked),
            )
            .await?;
        Ok(answer.missing)
    }

    /// `PUT /v1/tenants/{tenant}/blobs/{digest}`, sending `size` bytes from `parts`.
    pub async fn push_blob<S>(
        &self,
        tenant: &str,
        digest: &Digest,
        size: u64,
        parts: S,
    ) -> Result<BlobStored, ClientError>
    where
        S: futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static,
    {
        let request = self
            .request(Method::PUT, &["tenants", tenant, "blobs", digest.as_str()])
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(parts));
        self.send(request).await
    }

    /// `POST /v1/tenants/{tenant}/images`.
    pub async fn record_image(
        &self,
        tenant: &str,
        image: &NewImage,
    ) -> Result<ImageView, ClientError> {
        self.change(Method::POST, &["tenants", tenant, "images"], Some(image))
            .await
    }

    /// `GET /v1/tenants/{tenant}/images`.
    pub async fn images(&self, tenant: &str) -> Result<ImageList, ClientError> {
        self.get(&["tenants", tenant, "images"], &()).await
    }

    /// `PUT /v1/tenants/{tenant}/registries/{registry}`.
    pub async fn registry_login(
        &self,
        tenant: &str,
        registry: &str,
        login: &crate::registries::RegistryLogin,
    ) -> Result<crate::registries::RegistryView, ClientError> {
        self.change(
            Method::PUT,
            &["tenants", tenant, "registries", registry],
            Some(login),
        )
        .await
    }

    /// `GET /v1/tenants/{tenant}/registries`.
    pub async fn registries(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::registries::RegistryView>, ClientError> {
        self.get(&["tenants", tenant, "registries"], &()).await
    }

    /// `DELETE /v1/tenants/{tenant}/registries/{registry}`; the logins left.
    pub async fn registry_logout(
        &self,
        tenant: &str,
        registry: &str,
    ) -> Result<Vec<crate::registries::RegistryView>, ClientError> {
        self.change(
            Method::DELETE,
            &["tenants", tenant, "registries", registry],
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/users`.
    pub async fn create_user(
        &self,
        tenant: &str,
        user: &NewUser,
    ) -> Result<UserCreated, ClientError> {
        self.change(Method::POST, &["tenants", tenant, "users"], Some(user))
            .await
    }

    /// `POST /v1/join-tokens`.
    pub async fn join_token(&self, asked: &NewJoinToken) -> Result<JoinToken, ClientError> {
        self.change(Method::POST, &["join-tokens"], Some(asked))
            .await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get(&["nodes"], &()).await
    }

    /// `POST /v1/nodes/{node}/cordon`.
    pub async fn cordon(&self, node: &str) -> Result<NodeStateChanged, ClientError> {
        self.change(Method::POST, &["nodes", node, "cordon"], None::<&()>)
            .await
    }

    /// `POST /v1/nodes/{node}/uncordon`.
    pub async fn uncordon(&self, node: &str) -> Result<NodeStateChanged, ClientError> {
        self.change(Method::POST, &["nodes", node, "uncordon"], None::<&()>)
            .await
    }

    /// `POST /v1/nodes/{node}/drain`.
    pub async fn drain(&self, node: &str) -> Result<Drained, ClientError> {
        self.change(Method::POST, &["nodes", node, "drain"], None::<&()>)
            .await
    }

    /// `GET /v1/tenants/{tenant}/topologies`: their names.
    pub async fn topologies(&self, tenant: &str) -> Result<Vec<String>, ClientError> {
        self.get(&["tenants", tenant, "topologies"], &()).await
    }

    /// `PUT /v1/tenants/{tenant}/topologies/{name}`.
    pub async fn deploy(&self, tenant: &str, topology: &Topology) -> Result<Deployed, ClientError> {
        self.change(
            Method::PUT,
            &["tenants", tenant, "topologies", &topology.name],
            Some(topology),
        )
        .await
    }

    /// `PUT /v1/tenants/{tenant}/topologies/{name}?dry_run=true`.
    pub async fn dry_run(&self, tenant: &str, topology: &Topology) -> Result<DryRun, ClientError> {
        let request = self
            .request(
                Method::PUT,
                &["tenants", tenant, "topologies", &topology.name],
            )
            .query(&[("dry_run", "true")])
            .json(topology);
        self.send(request).await
    }

    /// `GET /v1/tenants/{tenant}/topologies/{name}`.
    pub async fn status(&self, tenant: &str, name: &str) -> Result<Deployed, ClientError> {
        self.get(&["tenants", tenant, "topologies", name], &())
            .await
    }

    /// `GET /v1/tenants/{tenant}/topologies/{name}/spec`.
    pub async fn spec(&self, tenant: &str, name: &str) -> Result<Topology, ClientError> {
        self.get(&["tenants", tenant, "topologies", name, "spec"], &())
            .await
    }

    /// `GET /v1/tenants/{tenant}/topologies/{name}/events`.
    pub async fn events(
        &self,
        tenant: &str,
        name: &str,
        limit: u64,
    ) -> Result<Vec<Event>, ClientError> {
        self.get(
            &["tenants", tenant, "topologies", name, "events"],
            &[("limit", limit)],
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/topologies/{name}/scale`.
    pub async fn scale(
        &self,
        tenant: &str,
        name: &str,
        scale: &Scale,
    ) -> Result<Deployed, ClientError> {
        self.change(
            Method::POST,
            &["tenants", tenant, "topologies", name, "scale"],
            Some(scale),
        )
        .await
    }

    /// `DELETE /v1/tenants/{tenant}/topologies/{name}`.
    pub async fn remove(&self, tenant: &str, name: &str) -> Result<Removed, ClientError> {
        self.change(
            Method::DELETE,
            &["tenants", tenant, "topologies", name],
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/tenants/{tenant}/topologies/{name}/logs`.
    pub async fn logs(
        &self,
        tenant: &str,
        name: &str,
        query: &LogsQuery,
    ) -> Result<Vec<ReplicaLogs>, ClientError> {
        self.get(&["tenants", tenant, "topologies", name, "logs"], query)
            .await
    }

    /// `GET /v1/audit/entries`.
    pub async fn audit_entries(&self, filter: &Filter) -> Result<Vec<Entry>, ClientError> {
        self.get(&["audit", "entries"], filter).await
    }

    /// `GET /v1/audit/verify`: the chain checked (against the query's anchor, when
    /// it names one), as the query's tenant's auditor or as an admin.
    pub async fn verify(&self, query: &VerifyQuery) -> Result<Verification, ClientError> {
        self.get(&["audit", "verify"], query).await
    }

    /// `GET /v1/audit/tokens/{id}`.
    pub async fn explain_token(&self, id: &str) -> Result<Explained, ClientError> {
        self.get(&["audit", "tokens", id], &()).await
    }

    /// `GET /v1/audit/decisions/{seq}`.
    pub async fn decision(&self, seq: u64) -> Result<DecisionExplained, ClientError> {
        self.get(&["audit", "decisions", &seq.to_string()], &())
            .await
    }

    /// `POST /v1/audit/revocations`.
    pub async fn revoke(&self, revoke: &Revoke) -> Result<Entry, ClientError> {
        self.change(Method::POST, &["audit", "revocations"], Some(revoke))
            .await
    }

    /// `GET /v1/audit/graph`, of `tenant`'s services or all.
    pub async fn graph(&self, tenant: Option<&str>) -> Result<Reach, ClientError> {
        self.get(&["audit", "graph"], &[("tenant", tenant)]).await
    }

    /// `GET /v1/root-keys`.
    pub async fn root_keys(&self) -> Result<Vec<RootKeyInfo>, ClientError> {
        self.get(&["root-keys"], &()).await
    }

    /// `POST /v1/root-keys`: a new key signs from now on.
    pub async fn rotate_root_key(&self) -> Result<RootKeyInfo, ClientError> {
        self.change(Method::POST, &["root-keys"], None::<&()>).await
    }

    /// `DELETE /v1/root-keys/{id}`; the keys left.
    pub async fn retire_root_key(
        &self,
        id: u32,
        force: bool,
    ) -> Result<Vec<RootKeyInfo>, ClientError> {
        let request = self
            .request(Method::DELETE, &["root-keys", &id.to_string()])
            .query(&[("force", force)]);
        self.send(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: &str) -> Client {
        Client::new(reqwest::Client::new(), endpoint, "t").expect("a valid endpoint")
    }

    #[test]
    fn paths_are_escaped_segment_by_segment() {
        let c = client("http://127.0.0.1:7440/");
        assert_eq!(
            c.url(&["tenants", "acme", "topologies", "a/b?c"]).as_str(),
            "http://127.0.0.1:7440/v1/tenants/acme/topologies/a%2Fb%3Fc"
        );
    }

    #[test]
    fn an_endpoint_under_a_prefix_keeps_it() {
        let c = client("https://example.test/berth");
        assert_eq!(
            c.url(&["nodes"]).as_str(),
            "https://example.test/berth/v1/nodes"
        );
    }

    #[test]
    fn an_endpoint_that_is_no_url_is_refused() {
        for bad in ["localhost:7440", "ftp://x", ""] {
            assert!(
                matches!(
                    Client::new(reqwest::Client::new(), bad, ""),
                    Err(ClientError::Endpoint { .. })
                ),
                "{bad}"
            );
        }
    }
}
