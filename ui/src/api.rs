//! The UI's client of the REST API: the same routes, the same JSON and the same bearer
//! token as the CLI, so a page can show or do nothing the API would not allow its user.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why an API call failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The API answered with an error.
    Api {
        /// The HTTP status.
        status: u16,
        /// The message, for the user.
        message: String,
    },
    /// The API could not be reached or answered with something unreadable.
    Unreachable(String),
}

impl Failure {
    /// The status a page showing this failure answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Failure::Api { status, .. } => *status,
            Failure::Unreachable(_) => 502,
        }
    }

    /// What the user reads.
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Api { message, .. } | Failure::Unreachable(message) => message,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

/// A client acting with one session token.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(http: reqwest::Client, base: String, token: String) -> Self {
        Self { base, token, http }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Failure> {
        let unreachable =
            |e: reqwest::Error| Failure::Unreachable(format!("the API cannot be reached: {e}"));
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(unreachable);
        }
        let body: ErrorBody = response.json().await.unwrap_or(ErrorBody {
            message: format!("the API answered {status}"),
        });
        Err(Failure::Api {
            status: status.as_u16(),
            message: body.message,
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        match self.send(self.http.get(&url)).await {
            // A read is safe to send again when the connection failed under it.
            Err(Failure::Unreachable(_)) => self.send(self.http.get(&url)).await,
            done => done,
        }
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub(crate) async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, Failure> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }
}

/// Logs in for a browser at `browser`; the session token and role on success. The
/// browser's address is forwarded, so that the gateway's throttle counts it and not
/// the UI.
pub(crate) async fn login(
    http: &reqwest::Client,
    base: &str,
    browser: Option<std::net::IpAddr>,
    tenant: &str,
    user: &str,
    password: &str,
) -> Result<LoggedIn, Failure> {
    let anonymous = Api::new(http.clone(), base.to_owned(), String::new());
    let body = serde_json::json!({ "tenant": tenant, "user": user, "password": password });
    let mut post = http.post(format!("{base}/v1/login")).json(&body);
    if let Some(browser) = browser {
        post = post.header("x-forwarded-for", browser.to_string());
    }
    anonymous.send(post).await
}

/// The answer to a login.
#[derive(Debug, Deserialize)]
pub(crate) struct LoggedIn {
    pub(crate) token: String,
    pub(crate) expires_at: u64,
}

/// Who a session speaks for.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Session {
    pub(crate) tenant: String,
    pub(crate) user: String,
    pub(crate) role: String,
}

impl Session {
    pub(crate) fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    pub(crate) fn audits(&self) -> bool {
        self.role == "admin" || self.role == "auditor"
    }

    /// The tenant whose pages are this user's own (the default one for the admin).
    pub(crate) fn home_tenant(&self) -> &str {
        if self.tenant == "*" {
            "default"
        } else {
            &self.tenant
        }
    }
}

/// A topology's replicas.
#[derive(Debug, Deserialize)]
pub(crate) struct Deployed {
    pub(crate) revision: u64,
    pub(crate) replicas: Vec<Replica>,
}

/// One replica, where it runs and what its node says.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Replica {
    pub(crate) service: String,
    pub(crate) replica: u32,
    pub(crate) node: String,
    pub(crate) generation: u64,
    pub(crate) state: String,
    pub(crate) detail: String,
}

/// A quota: unset dimensions are unlimited.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize)]
pub(crate) struct Limit {
    pub(crate) cpu_millis: Option<u64>,
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) containers: Option<u64>,
}

/// What is reserved.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct Resources {
    pub(crate) cpu_millis: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) containers: u64,
}

/// A tenant and its quota.
#[derive(Debug, Deserialize)]
pub(crate) struct Tenant {
    pub(crate) name: String,
    pub(crate) limit: Limit,
    pub(crate) used: Resources,
}

/// A node of the pool.
#[derive(Debug, Deserialize)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) capacity: Limit,
    pub(crate) used: Resources,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) state: String,
    /// Whether it enforces its firewall: "enforced", "off", or empty (not said).
    #[serde(default)]
    pub(crate) firewall: String,
}

/// A one-time join token.
#[derive(Debug, Deserialize)]
pub(crate) struct JoinToken {
    pub(crate) join_command: String,
    pub(crate) ttl_seconds: u32,
}

/// An entry of the audit ledger.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) at_ms: i64,
    pub(crate) kind: String,
    pub(crate) actor: String,
    pub(crate) tenant: String,
    pub(crate) subject: String,
    pub(crate) detail: String,
    pub(crate) revocation_ids: Vec<String>,
}

/// The ledger's hash chain, checked.
#[derive(Debug, Deserialize)]
pub(crate) struct Verification {
    pub(crate) intact: bool,
    pub(crate) entries: u64,
    pub(crate) head: String,
    pub(crate) problem: Option<String>,
    #[serde(default)]
    pub(crate) anchor: String,
    /// The witness's anchor it was checked against, if any.
    #[serde(default)]
    pub(crate) witnessed: Option<Witnessed>,
}

/// An anchor the server's witness took.
#[derive(Debug, Deserialize)]
pub(crate) struct Witnessed {
    pub(crate) anchor: String,
    pub(crate) at_ms: i64,
}

/// A token's entry, state and history.
#[derive(Debug, Deserialize)]
pub(crate) struct Explained {
    pub(crate) minted: Entry,
    pub(crate) revoked: bool,
    pub(crate) history: Vec<Entry>,
}

/// A node's decision, explained.
#[derive(Debug, Deserialize)]
pub(crate) struct Decision {
    pub(crate) decision: Entry,
    pub(crate) allowed: bool,
    pub(crate) reason: String,
    pub(crate) token: Option<Explained>,
    pub(crate) unknown_blocks: Vec<String>,
}

/// Who can call what.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Reach {
    pub(crate) nodes: Vec<String>,
    pub(crate) edges: Vec<Edge>,
}

/// One delegation in force.
#[derive(Debug, Deserialize)]
pub(crate) struct Edge {
    pub(crate) caller: String,
    pub(crate) operation: String,
    pub(crate) target: String,
    pub(crate) tenant: String,
    pub(crate) topology: String,
    pub(crate) service: String,
    pub(crate) port: u16,
    pub(crate) token: String,
}

/// A replica's output.
#[derive(Debug, Deserialize)]
pub(crate) struct Logs {
    pub(crate) service: String,
    pub(crate) replica: u32,
    pub(crate) node: String,
    pub(crate) lines: Vec<String>,
    pub(crate) error: Option<String>,
}

/// Something that happened to a replica.
#[derive(Debug, Deserialize)]
pub(crate) struct Event {
    pub(crate) at_ms: i64,
    pub(crate) kind: String,
    pub(crate) service: String,
    pub(crate) replica: u32,
    pub(crate) generation: u64,
    pub(crate) node: String,
    pub(crate) detail: String,
}
