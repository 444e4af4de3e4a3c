//! The CLI against a remote control plane (`--endpoint URL`): the same commands as
//! locally, through the gateway's REST API.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_api_gateway::{Deployed, ErrorBody, ReplicaView};
use berth_protocol::topology::Topology;

/// Why a remote call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteError {
    /// The endpoint cannot be reached.
    #[error("cannot reach the control plane at {endpoint}: {message}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The certificate authority to trust cannot be read.
    #[error("cannot use the certificate authority {path}: {message}")]
    Trust {
        /// The file given with --ca.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The tenant's policy refuses settings of the topology; nothing was changed.
    #[error("{} setting(s) refused by the {} policy; nothing was changed", refusals.len(),
        refusals.first().map_or("pool", |r| r.policy.as_str()))]
    Refused {
        /// Each refused setting, by field path.
        refusals: Vec<berth_protocol::topology::Refusal>,
    },
    /// The control plane answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable error code.
        code: String,
        /// The message.
        message: String,
    },
}

/// A client of one control plane, acting for one tenant.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    endpoint: String,
    token: String,
    tenant: String,
    http: reqwest::Client,
}

/// An HTTP client that trusts the public authorities and `ca` (a PEM file), if given.
fn client(ca: Option<&std::path::Path>) -> Result<reqwest::Client, RemoteError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca {
        let trust = |message: String| RemoteError::Trust {
            path: path.display().to_string(),
            message,
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
    builder.build().map_err(|e| RemoteError::Trust {
        path: ca.map(|p| p.display().to_string()).unwrap_or_default(),
        message: berth_telemetry::error_chain(&e),
    })
}

impl Remote {
    pub(crate) fn new(
        endpoint: &str,
        token: &str,
        tenant: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, RemoteError> {
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            tenant: tenant.to_owned(),
            http: client(ca)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/tenants/{}/topologies{path}",
            self.endpoint, self.tenant
        )
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RemoteError> {
        let unreachable = |e: reqwest::Error| RemoteError::Unreachable {
            endpoint: self.endpoint.clone(),
            message: berth_telemetry::error_chain(&e),
        };
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
            code: "unknown".into(),
            message: format!("HTTP {status}"),
            refusals: Vec::new(),
        });
        if !body.refusals.is_empty() {
            return Err(RemoteError::Refused {
                refusals: body.refusals,
            });
        }
        Err(RemoteError::Api {
            status: status.as_u16(),
            code: body.code,
            message: body.message,
        })
    }

    /// An admin call: `method` on `path` under `/v1` with an optional JSON body.
    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RemoteError> {
        let mut request = self
            .http
            .request(method, format!("{}/v1{path}", self.endpoint));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// Deploys `topology` into the tenant.
    pub(crate) async fn deploy(&self, topology: &Topology) -> Result<Deployed, RemoteError> {
        self.send(
            self.http
                .put(self.url(&format!("/{}", topology.name)))
                .json(topology),
        )
        .await
    }

    /// Asks whether the pool would accept `topology` for the tenant, changing nothing.
    pub(crate) async fn dry_run(
        &self,
        topology: &Topology,
    ) -> Result<berth_api_gateway::DryRun, RemoteError> {
        self.send(
            self.http
                .put(self.url(&format!("/{}", topology.name)))
                .query(&[("dry_run", "true")])
                .json(topology),
        )
        .await
    }

    /// The topology's replicas and their reported state.
    pub(crate) async fn status(&self, name: &str) -> Result<Deployed, RemoteError> {
        self.send(self.http.get(self.url(&format!("/{name}"))))
            .await
    }

    /// Sets the replicas of services of a deployed topology, in one revision.
    pub(crate) async fn scale(
        &self,
        name: &str,
        replicas: &BTreeMap<String, u32>,
    ) -> Result<Deployed, RemoteError> {
        self.send(self.http.post(self.url(&format!("/{name}/scale"))).json(
            &berth_api_gateway::Scale {
                replicas: replicas.clone(),
            },
        ))
        .await
    }

    /// The last `tail` lines of each replica (of `service`, or all).
    pub(crate) async fn logs(
        &self,
        name: &str,
        service: Option<&str>,
        tail: u64,
        since_ns: Option<i64>,
    ) -> Result<serde_json::Value, RemoteError> {
        let mut query = vec![("tail", tail.to_string())];
        if let Some(service) = service {
            query.push(("service", service.to_owned()));
        }
        if let Some(since) = since_ns {
            query.push(("since_ns", since.to_string()));
        }
        self.send(
            self.http
                .get(self.url(&format!("/{name}/logs")))
                .query(&query),
        )
        .await
    }

    /// Removes the topology.
    pub(crate) async fn remove(&self, name: &str) -> Result<serde_json::Value, RemoteError> {
        self.send(self.http.delete(self.url(&format!("/{name}"))))
            .await
    }

    /// Deploys, then follows the nodes' reports until every replica runs, one fails,
    /// or `timeout` passes. Prints each replica's state as it changes unless `quiet`.
    pub(crate) async fn up(
        &self,
        topology: &Topology,
        timeout: Duration,
        quiet: bool,
    ) -> Result<Deployed, RemoteError> {
        let deployed = self.deploy(topology).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen: BTreeMap<(String, u32), String> = BTreeMap::new();
        loop {
            let status = match self.status(&topology.name).await {
                Ok(status) => status,
                // A deploy-only token cannot watch: the deploy is placed, and that is
                // what it learns.
                Err(RemoteError::Api { status: 403, .. }) => return Ok(deployed),
                Err(e) => return Err(e),
            };
            for r in &status.replicas {
                let key = (r.service.clone(), r.replica);
                if seen.get(&key) != Some(&r.state) {
                    if !quiet {
                        eprintln!(
                            "{:<24} {} on {}",
                            format!("{}.{}", r.service, r.replica),
                            r.state,
                            r.node
                        );
                    }
                    seen.insert(key, r.state.clone());
                }
            }
            if let Some(failed) = status
                .replicas
                .iter()
                .find(|r| r.state == "failed" || r.state == "exited")
            {
                return Err(RemoteError::Api {
                    status: 0,
                    code: "replica_failed".into(),
                    message: format!(
                        "{}.{} on {} {}: {}",
                        failed.service, failed.replica, failed.node, failed.state, failed.detail
                    ),
                });
            }
            if status.replicas.iter().all(|r| r.state == "running") {
                return Ok(Deployed {
                    revision: deployed.revision,
                    changed: deployed.changed,
                    replicas: status.replicas,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let waiting: Vec<String> = status
                    .replicas
                    .iter()
                    .filter(|r| r.state != "running")
                    .map(|r| format!("{}.{} ({})", r.service, r.replica, r.state))
                    .collect();
                return Err(RemoteError::Api {
                    status: 0,
                    code: "timeout".into(),
                    message: format!(
                        "deployed revision {}, but not every replica runs after {timeout:?}: {}",
                        deployed.revision,
                        waiting.join(", ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Logs in and returns the session.
pub(crate) async fn login(
    endpoint: &str,
    ca: Option<&std::path::Path>,
    tenant: &str,
    user: &str,
    password: &str,
) -> Result<berth_api_gateway::LoggedIn, RemoteError> {
    let endpoint = endpoint.trim_end_matches('/');
    let unreachable = |e: reqwest::Error| RemoteError::Unreachable {
        endpoint: endpoint.to_owned(),
        message: berth_telemetry::error_chain(&e),
    };
    let body = berth_api_gateway::Login {
        tenant: tenant.to_owned(),
        user: user.to_owned(),
        password: password.to_owned(),
    };
    let response = client(ca)?
        .post(format!("{endpoint}/v1/login"))
        .json(&body)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(unreachable);
    }
    let body: ErrorBody = response.json().await.unwrap_or(ErrorBody {
        code: "unknown".into(),
        message: format!("HTTP {status}"),
        refusals: Vec::new(),
    });
    Err(RemoteError::Api {
        status: status.as_u16(),
        code: body.code,
        message: body.message,
    })
}

/// Prints replicas as a table.
pub(crate) fn print_replicas(replicas: &[ReplicaView]) {
    println!("{:<24} {:<20} {:<10} DETAIL", "REPLICA", "NODE", "STATE");
    for r in replicas {
        println!(
            "{:<24} {:<20} {:<10} {}",
            format!("{}.{}", r.service, r.replica),
            r.node,
            r.state,
            r.detail
        );
    }
}
