//! The node API other nodes call, end to end: a `berth server`, two `berth-node`
//! processes serving their node API, and a service on node 2. The test speaks as node
//! 1 (with node 1's own key, from its identity file) and mints delegation tokens with
//! the server's root key, as the allocator does. A granted tunnel reaches the service;
//! each attack is refused, each in its own test, and each refusal reaches the audit
//! ledger as a decision that node 2 reported and signed.

use std::time::{Duration, SystemTime};

use berth_node_runtime::agent::{NodeIdentity, Signer};
use berth_node_runtime::tunnel;
use berth_protocol::delegation::{self, Grant, NodeOperation};
use berth_protocol::node_api::PeerCallBody;
use berth_protocol::node_api::node_peer_client::NodePeerClient;
use berth_tests::plane::{Node, Server};
use berth_tests::{ensure_images, free_port};
use biscuit_auth::KeyPair;
use tokio::io::AsyncReadExt;

/// A server and two nodes serving their node API; node 2 runs `db`.
struct Pool {
    server: Server,
    root: KeyPair,
    n1: NodeIdentity,
    n1_name: String,
    n2_name: String,
    n2_peer: String,
    /// Node 2's public key, the only one a caller accepts at the other end.
    n2_key: Vec<u8>,
    nodes: Vec<Node>,
}

async fn pool(test: &str) -> Pool {
    ensure_images();
    let server = Server::start(&[]).await;
    let prefix = format!("{test}{}", std::process::id());
    let (n1_name, n2_name) = (format!("{prefix}-n1"), format!("{prefix}-n2"));
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for name in [&n1_name, &n2_name] {
        let listen = format!("127.0.0.1:{}", free_port());
        nodes.push(server.join(name, &["--peer-listen", &listen], &[]).await);
        peers.push(format!("http://{listen}"));
    }
    let (api, admin, http) = (&server.api, server.admin, &server.http);
    // `db` serves a file over HTTP, on node 2 only.
    let topology = serde_json::json!({
        "name": "shop",
        "services": { "db": {
            "image": "berth/busybox:latest", "replicas": 1, "init": true,
            "command": ["sh", "-c", "mkdir -p /www && echo secret-rows > /www/rows && httpd -f -p 8080 -h /www"],
            "networks": { "default": {} },
            "expose": [{ "port": 8080 }],
            "constraints": [{ "attribute": "hostname", "equal": true, "value": n2_name }]
        } },
        "networks": { "default": {} }
    });
    let mut running = false;
    for _ in 0..150 {
        let response = http
            .put(format!("{api}/v1/tenants/default/topologies/shop"))
            .bearer_auth(admin)
            .json(&topology)
            .send()
            .await
            .expect("request");
        if response.status().is_success() {
            let status: serde_json::Value = http
                .get(format!("{api}/v1/tenants/default/topologies/shop"))
                .bearer_auth(admin)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            if status["replicas"][0]["state"] == "running" {
                running = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(running, "db never ran on node 2");
    let root = server.root_key();
    let n1 = NodeIdentity::load(nodes[0].dir.path()).expect("node 1's identity");
    let n2_key = NodeIdentity::load(nodes[1].dir.path())
        .and_then(|n2| n2.public_key())
        .expect("node 2's key");
    Pool {
        server,
        root,
        n1,
        n1_name,
        n2_name,
        n2_peer: peers[1].clone(),
        n2_key,
        nodes,
    }
}

impl Pool {
    /// What the allocator would grant node 1 to reach `db` on node 2.
    fn grant(&self, operation: NodeOperation) -> Grant {
        Grant {
            caller: self.n1_name.clone(),
            caller_key: self.n1.signer().expect("signer").public_key(),
            target: self.n2_name.clone(),
            operation,
            tenant: "default".into(),
            topology: "shop".into(),
            service: "db".into(),
            port: if operation == NodeOperation::Tunnel {
                8080
            } else {
                0
            },
            expires: SystemTime::now() + Duration::from_secs(60),
        }
    }

    fn mint(&self, grant: &Grant) -> Vec<u8> {
        delegation::mint(&self.root, 1, grant)
            .expect("mint")
            .to_vec()
            .expect("encode")
    }

    fn body(&self, port: u32) -> PeerCallBody {
        let mut nonce = vec![0u8; 16];
        nonce[..8].copy_from_slice(
            &SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_le_bytes()[..8],
        );
        PeerCallBody {
            target: self.n2_name.clone(),
            tenant: "default".into(),
            topology: "shop".into(),
            service: "db".into(),
            port,
            timestamp_ms: i64::try_from(
                SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(0),
            nonce,
            digest: String::new(),
        }
    }

    /// Opens a tunnel to `db:8080` on node 2 as `signer` with `token`, sends an HTTP
    /// request through it and returns the answer, or the refusal.
    async fn tunnel_get(&self, signer: &Signer, token: Vec<u8>) -> Result<String, tonic::Status> {
        self.tunnel_get_over(signer, signer, token).await
    }

    /// A client of node 2's API over TLS with `connection`'s key.
    fn client(&self, connection: &Signer) -> NodePeerClient<tonic::transport::Channel> {
        NodePeerClient::new(
            connection
                .tls()
                .channel(&self.n2_peer, &self.n2_key)
                .expect("a channel to node 2"),
        )
    }

    /// [`Self::tunnel_get`] with the call signed by `signer` but sent over a connection
    /// made with `connection`'s key: a tunnel connection of its own, as nodes open them.
    async fn tunnel_get_over(
        &self,
        connection: &Signer,
        signer: &Signer,
        token: Vec<u8>,
    ) -> Result<String, tonic::Status> {
        let call = signer.peer_call("Tunnel", token, &self.body(8080));
        let dialed = connection
            .tls()
            .dial_tunnel(&self.n2_peer, &self.n2_key)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        // The request travels right behind the call, as a node sends what its client
        // had already sent.
        let mut opened = tunnel::open(dialed, &call, b"GET /rows HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| match e {
                tunnel::NotOpened::Refused(status) => status,
                tunnel::NotOpened::Connection(e) => tonic::Status::unavailable(e.to_string()),
            })?;
        let mut text = Vec::new();
        opened
            .read_to_end(&mut text)
            .await
            .expect("the answer comes back");
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    async fn health(&self, signer: &Signer, token: Vec<u8>) -> Result<usize, tonic::Status> {
        let call = signer.peer_call("Health", token, &self.body(0));
        Ok(self
            .client(signer)
            .health(call)
            .await?
            .into_inner()
            .replicas
            .len())
    }

    /// The ledger's entries of `kind`, newest first.
    async fn entries(&self, kind: &str) -> serde_json::Value {
        self.server
            .http
            .get(format!("{}/v1/audit/entries?kind={kind}", self.server.api))
            .bearer_auth(self.server.admin)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// Waits for node 2's decision with `reason` to reach the ledger.
    async fn in_ledger(&self, reason: &str) {
        let mut entries = serde_json::Value::Null;
        for _ in 0..100 {
            entries = self.entries("decision").await;
            if entries.as_array().into_iter().flatten().any(|e| {
                e["actor"] == self.n2_name.as_str()
                    && e["detail"].as_str().unwrap_or_default().contains(reason)
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no decision {reason:?} by {} in the ledger: {entries}",
            self.n2_name
        );
    }

    /// Runs `berth ARGS` as the admin against the server; panics unless it succeeds.
    fn berth(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(berth_tests::berth_bin())
            .args(args)
            .env("BERTH_ENDPOINT", &self.server.api)
            .env("BERTH_TOKEN", self.server.admin)
            .output()
            .expect("berth runs");
        assert!(
            output.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The ledger entry number of node 2's latest decision with `reason`.
    async fn decision_seq(&self, reason: &str) -> u64 {
        self.in_ledger(reason).await;
        let listed: serde_json::Value =
            serde_json::from_str(&self.berth(&["--json", "audit", "list", "--kind", "decision"]))
                .expect("json");
        listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["detail"].as_str().unwrap_or_default().contains(reason))
            .and_then(|e| e["seq"].as_u64())
            .expect("the decision is listed")
    }

    /// Deploys `web` on node 1 and `db` on node 2, and waits until web reaches
    /// db:8080 by name. Returns web's container.
    async fn deploy_link(&self) -> String {
        self.deploy_link_as("shop", "secret-rows").await
    }

    /// Deploys topology `name`: `web` on node 1 only, `db` on node 2 only, serving
    /// `rows`; web reaches db:8080 by name. The web container, once it got `rows`.
    async fn deploy_link_as(&self, name: &str, rows: &str) -> String {
        let topology = serde_json::json!({
            "name": name,
            "services": {
                "db": {
                    "image": "berth/busybox:latest", "replicas": 1, "init": true,
                    "command": ["sh", "-c", format!("mkdir -p /www && echo {rows} > /www/rows && httpd -f -p 8080 -h /www")],
                    "networks": { "default": {} },
                    "expose": [{ "port": 8080 }],
                    "constraints": [{ "attribute": "hostname", "equal": true, "value": self.n2_name }]
                },
                "web": {
                    "image": "berth/busybox:latest", "replicas": 1, "init": true,
                    "command": ["sleep", "3600"],
                    "networks": { "default": {} },
                    "constraints": [{ "attribute": "hostname", "equal": true, "value": self.n1_name }]
                }
            },
            "networks": { "default": {} }
        });
        self.server.deploy(&topology).await;
        let web = format!("{}.default.{name}.web.1", self.nodes[0].prefix());
        let mut answer = String::new();
        for _ in 0..150 {
            answer = web_get(&web);
            if answer.contains(rows) {
                return web;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("web could not reach db: {answer}");
    }

    fn n1_signer(&self) -> Signer {
        self.n1.signer().expect("signer")
    }
}

/// One request from `web` to db:8080 by name; what came back, or the error.
fn web_get(web: &str) -> String {
    let run = std::process::Command::new("docker")
        .args([
            "exec",
            web,
            "sh",
            "-c",
            r#"printf 'GET /rows HTTP/1.0\r\n\r\n' | nc -w 10 db 8080"#,
        ])
        .output()
        .expect("docker exec runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    )
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, reason: &str) {
    let status = result.expect_err("the call was allowed");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(reason), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_tunnel_reaches_the_service_on_the_other_node() {
    let pool = pool("pok").await;
    let token = pool.mint(&pool.grant(NodeOperation::Tunnel));
    let answer = pool
        .tunnel_get(&pool.n1_signer(), token)
        .await
        .expect("tunnel");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("secret-rows"), "{answer}");
    let health = pool.mint(&pool.grant(NodeOperation::Health));
    assert_eq!(
        pool.health(&pool.n1_signer(), health)
            .await
            .expect("health"),
        1
    );
    pool.in_ledger("allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_token_is_refused() {
    let pool = pool("pnone").await;
    refused(
        pool.tunnel_get(&pool.n1_signer(), Vec::new()).await,
        "not valid",
    );
    pool.in_ledger("refused: the token is not valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_token_is_refused() {
    let pool = pool("pother").await;
    // A token bound to a third node's key, presented by node 1.
    let mut grant = pool.grant(NodeOperation::Tunnel);
    grant.caller = "n3".into();
    grant.caller_key = vec![7u8; 32];
    let token = pool.mint(&grant);
    refused(
        pool.tunnel_get(&pool.n1_signer(), token).await,
        "bound to node \"n3\"",
    );
    pool.in_ledger("presented by another key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_relayed_over_another_nodes_connection_is_refused() {
    let pool = pool("prelay").await;
    // Node 1's call and token are good; the connection they arrive on was made with
    // another node's key.
    let stranger = NodeIdentity::generate("stranger", "http://127.0.0.1:1").expect("identity");
    let stranger = stranger.signer().expect("signer");
    let token = pool.mint(&pool.grant(NodeOperation::Tunnel));
    refused(
        pool.tunnel_get_over(&stranger, &pool.n1_signer(), token)
            .await,
        "another key than its connection's",
    );
    pool.in_ledger("another key than its connection's").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_api_that_is_not_the_expected_node_is_not_called() {
    let pool = pool("pimpostor").await;
    // Node 1 expects node 2's key; the node API at that address presents it, so a
    // caller told another key (an impostor's, say) refuses the connection before
    // sending anything.
    let impostor_key = NodeIdentity::generate("impostor", "http://127.0.0.1:1")
        .expect("identity")
        .signer()
        .expect("signer")
        .public_key();
    let signer = pool.n1_signer();
    let call = signer.peer_call(
        "Health",
        pool.mint(&pool.grant(NodeOperation::Health)),
        &pool.body(0),
    );
    let mut client = NodePeerClient::new(
        signer
            .tls()
            .channel(&pool.n2_peer, &impostor_key)
            .expect("channel"),
    );
    let status = client
        .health(call)
        .await
        .expect_err("the call went through");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let pool = pool("pexp").await;
    let mut grant = pool.grant(NodeOperation::Tunnel);
    grant.expires = SystemTime::now() - Duration::from_secs(1);
    refused(
        pool.tunnel_get(&pool.n1_signer(), pool.mint(&grant)).await,
        "expired",
    );
    pool.in_ledger("the token has expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_a_heartbeat() {
    let pool = pool("prev").await;
    let grant = pool.grant(NodeOperation::Health);
    let token = delegation::mint(&pool.root, 1, &grant).expect("mint");
    let id = berth_protocol::capability::revocation_ids(&token.revocation_identifiers())[0].clone();
    let bytes = token.to_vec().expect("encode");
    assert_eq!(
        pool.health(&pool.n1_signer(), bytes.clone())
            .await
            .expect("health"),
        1
    );
    let revoked = pool
        .server
        .http
        .post(format!("{}/v1/audit/revocations", pool.server.api))
        .bearer_auth(pool.server.admin)
        .json(&serde_json::json!({ "ids": [id], "reason": "node 1 compromised" }))
        .send()
        .await
        .expect("request");
    assert!(revoked.status().is_success());
    // The revocation reaches node 2 over its stream; it refuses within a few seconds.
    let mut last = Ok(1);
    for _ in 0..100 {
        last = pool.health(&pool.n1_signer(), bytes.clone()).await;
        if last.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(last, "revoked");
    pool.in_ledger("the token has been revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_token_is_refused() {
    let pool = pool("ptamp").await;
    let mut token = pool.mint(&pool.grant(NodeOperation::Tunnel));
    let at = token.len() / 2;
    token[at] ^= 0x01;
    refused(pool.tunnel_get(&pool.n1_signer(), token).await, "not valid");
    pool.in_ledger("refused: the token is not valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_forged_root_is_refused() {
    let pool = pool("pforge").await;
    let token = delegation::mint(&KeyPair::new(), 1, &pool.grant(NodeOperation::Tunnel))
        .expect("mint")
        .to_vec()
        .expect("encode");
    refused(pool.tunnel_get(&pool.n1_signer(), token).await, "not valid");
    pool.in_ledger("refused: the token is not valid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_operation_is_refused() {
    let pool = pool("pop").await;
    let token = pool.mint(&pool.grant(NodeOperation::Health));
    refused(
        pool.tunnel_get(&pool.n1_signer(), token).await,
        "does not grant tunnel",
    );
    pool.in_ledger("does not grant tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_target_is_refused() {
    let pool = pool("ptgt").await;
    let mut grant = pool.grant(NodeOperation::Tunnel);
    grant.target = "n3".into();
    refused(
        pool.tunnel_get(&pool.n1_signer(), pool.mint(&grant)).await,
        "for node \"n3\"",
    );
    pool.in_ledger(r#"is for node "n3""#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attenuated_then_widened_token_is_refused() {
    let pool = pool("pwide").await;
    // A health-only token, to which its holder appends a tunnel right.
    let token = delegation::mint(&pool.root, 1, &pool.grant(NodeOperation::Health))
        .expect("mint")
        .append(
            biscuit_auth::BlockBuilder::new()
                .code(r#"right("tunnel", "default", "shop", "db", 8080);"#)
                .expect("block"),
        )
        .expect("append")
        .to_vec()
        .expect("encode");
    refused(
        pool.tunnel_get(&pool.n1_signer(), token).await,
        "does not grant tunnel",
    );
    // Explained: who decided, why, and that the widening block was never Berth's.
    let seq = pool.decision_seq("does not grant tunnel").await;
    let explained = pool.berth(&["audit", "explain", &seq.to_string()]);
    assert!(
        explained.contains(&format!("refused by node {}", pool.n2_name)),
        "{explained}"
    );
    assert!(explained.contains("does not grant tunnel"), "{explained}");
    assert!(
        explained.contains("token    never minted by Berth"),
        "the test minted it, not the platform: {explained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reaches_a_service_on_another_node_by_name_through_a_tunnel() {
    let pool = pool("plink").await;
    let web = pool.deploy_link().await;
    let answer = web_get(&web);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.trim_end().ends_with("secret-rows"),
        "web could not reach db: {answer}"
    );
    // The delegation was minted for exactly this link, and node 2 allowed the call.
    let minted = pool.entries("minted").await;
    assert!(
        minted.as_array().into_iter().flatten().any(|e| e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"right("tunnel", "default", "shop", "db", 8080)"#)),
        "{minted}"
    );
    // The allowed call, explained, names the platform's token and its grant.
    let seq = pool.decision_seq("allowed").await;
    let explained = pool.berth(&["audit", "explain", &seq.to_string()]);
    assert!(
        explained.contains(&format!("allowed by node {}", pool.n2_name))
            && explained.contains(r#"right("tunnel", "default", "shop", "db", 8080)"#)
            && !explained.contains("appended by the holder"),
        "{explained}"
    );
    // Who can call what: node 1 may tunnel to db:8080 on node 2, and nothing else.
    let graph: serde_json::Value =
        serde_json::from_str(&pool.berth(&["audit", "graph", "--format", "json"])).expect("json");
    let edges = graph["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{graph}");
    assert_eq!(edges[0]["caller"], pool.n1_name.as_str(), "{graph}");
    assert_eq!(edges[0]["target"], pool.n2_name.as_str(), "{graph}");
    assert_eq!(edges[0]["operation"], "tunnel", "{graph}");
    assert_eq!(edges[0]["service"], "db", "{graph}");
    assert_eq!(edges[0]["port"], 8080, "{graph}");
    let dot = pool.berth(&["audit", "graph", "--format", "dot"]);
    assert!(
        dot.starts_with("digraph")
            && dot.contains(&format!(
                "\"node:{}\" -> \"default/shop/db:8080@{}\" [label=\"tunnel\"];",
                pool.n1_name, pool.n2_name
            )),
        "{dot}"
    );
    // Every delegation of node 1 revoked: the graph is empty, the link is cut and
    // stays cut (the allocator withholds it until the topology changes).
    let revoked = pool.berth(&[
        "audit",
        "revoke",
        "--node",
        &pool.n1_name,
        "--reason",
        "node 1 is suspect",
    ]);
    assert!(revoked.starts_with("revoked 1 id(s)"), "{revoked}");
    let after: serde_json::Value =
        serde_json::from_str(&pool.berth(&["audit", "graph", "--format", "json"])).expect("json");
    assert_eq!(after["edges"], serde_json::json!([]), "{after}");
    let mut cut = String::new();
    for _ in 0..100 {
        cut = web_get(&web);
        if !cut.contains("secret-rows") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!cut.contains("secret-rows"), "db is still reachable: {cut}");
    // Not even a rotation, which renews every other link under the new key, mints
    // it again.
    pool.berth(&["root-key", "rotate"]);
    tokio::time::sleep(berth_allocator::root_keys::PROPAGATION + Duration::from_secs(3)).await;
    assert!(
        !web_get(&web).contains("secret-rows"),
        "the link came back after its token was revoked"
    );
    let renewed = pool.entries("renewed").await;
    assert_eq!(renewed, serde_json::json!([]), "{renewed}");
    assert_eq!(
        pool.entries("minted").await.as_array().map(|m| m
            .iter()
            .filter(|e| e["detail"].as_str().unwrap_or_default().contains("caller("))
            .count()),
        Some(1),
        "only the first delegation was ever minted"
    );
    // Nothing of db is published on the host.
    let ports = std::process::Command::new("docker")
        .args([
            "port",
            &format!("{}.default.shop.db.1", pool.nodes[1].prefix()),
        ])
        .output()
        .expect("docker port runs");
    assert!(ports.stdout.is_empty(), "{ports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topologies_on_one_node_reach_remote_services_on_the_same_port() {
    // Both topologies run web on node 1 reaching their own db:8080 on node 2: each
    // link listens on the host's address on its own topology's network, so neither
    // takes the other's port and each web gets its own db's rows.
    let pool = pool("ptwo").await;
    let shop = pool.deploy_link_as("shop", "shop-rows").await;
    let depot = pool.deploy_link_as("depot", "depot-rows").await;
    for _ in 0..3 {
        let (a, b) = (web_get(&shop), web_get(&depot));
        assert!(a.trim_end().ends_with("shop-rows"), "shop reached {a}");
        assert!(b.trim_end().ends_with("depot-rows"), "depot reached {b}");
    }
    // Removing one topology leaves the other's link in place.
    pool.server
        .api(reqwest::Method::DELETE, "/tenants/default/topologies/shop")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(web_get(&depot).trim_end().ends_with("depot-rows"));
}

/// The reference biscuit tooling (`biscuit-cli`): `BERTH_BISCUIT_CLI`, else `biscuit` on
/// the PATH (`.ci/run` installs it).
fn biscuit(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let program = std::env::var("BERTH_BISCUIT_CLI").unwrap_or_else(|_| "biscuit".to_owned());
    let mut child = std::process::Command::new(&program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} (biscuit-cli, `cargo install biscuit-cli`) does not run: {e}")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write the token");
    let output = child.wait_with_output().expect("biscuit runs");
    assert!(
        output.status.success(),
        "biscuit {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_standard_biscuits_the_reference_tooling_reads_and_narrows() {
    let pool = pool("pcli").await;
    let token = delegation::mint(&pool.root, 1, &pool.grant(NodeOperation::Tunnel))
        .expect("mint")
        .to_base64()
        .expect("encode");
    let root = format!("ed25519/{}", hex(&pool.root.public().to_bytes()));

    // Inspected and verified against the platform's root public key.
    let inspected = String::from_utf8_lossy(&biscuit(
        &["inspect", "--public-key", &root, "-"],
        token.as_bytes(),
    ))
    .into_owned();
    assert!(
        inspected.contains("root key identifier: 1")
            && inspected.contains(&format!("caller(\"{}\")", pool.n1_name))
            && inspected.contains(r#"right("tunnel", "default", "shop", "db", 8080)"#)
            && inspected.contains("Public key check succeeded"),
        "{inspected}"
    );

    // Narrowed by its holder with the reference tool: a shorter life and a check that
    // still allows the call. The node accepts it.
    let narrower = biscuit(
        &[
            "attenuate",
            "-",
            "--raw-output",
            "--add-ttl",
            "5m",
            "--block",
            r#"check if operation("tunnel"), resource("default", "shop", "db", 8080);"#,
        ],
        token.as_bytes(),
    );
    let answer = pool
        .tunnel_get(&pool.n1_signer(), narrower)
        .await
        .expect("the narrower token is accepted");
    assert!(answer.contains("secret-rows"), "{answer}");

    // Narrowed to another service, it no longer opens db.
    let elsewhere = biscuit(
        &[
            "attenuate",
            "-",
            "--raw-output",
            "--block",
            r#"check if resource($tenant, $topology, "cache", $port);"#,
        ],
        token.as_bytes(),
    );
    refused(
        pool.tunnel_get(&pool.n1_signer(), elsewhere).await,
        "does not grant tunnel",
    );

    // Anything wider is refused: a health-only token given a tunnel right, and a token
    // given another caller's key, by blocks appended with the same tool.
    let health = delegation::mint(&pool.root, 1, &pool.grant(NodeOperation::Health))
        .expect("mint")
        .to_base64()
        .expect("encode");
    let widened = biscuit(
        &[
            "attenuate",
            "-",
            "--raw-output",
            "--block",
            r#"right("tunnel", "default", "shop", "db", 8080);"#,
        ],
        health.as_bytes(),
    );
    refused(
        pool.tunnel_get(&pool.n1_signer(), widened).await,
        "does not grant tunnel",
    );
    // A thief (same name, its own key) appends its key as the caller's: policies read
    // the authority block only, so the token stays node 1's.
    let thief = NodeIdentity::generate(&pool.n1_name, "http://127.0.0.1:1")
        .expect("identity")
        .signer()
        .expect("signer");
    let stolen = biscuit(
        &[
            "attenuate",
            "-",
            "--raw-output",
            "--block",
            &format!("caller_key(hex:{});", hex(&thief.public_key())),
        ],
        token.as_bytes(),
    );
    refused(
        pool.tunnel_get(&thief, stolen).await,
        "presented by another key",
    );
    pool.in_ledger("does not grant tunnel").await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Requests from `web` to db through the link, one after another, in the background.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answers: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(web: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (web, flag, log) = (web.to_owned(), stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = web_get(&web);
                log.lock().expect("log").push(answer);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.answers.lock().expect("log").len()
    }

    /// Waits for `n` more requests to be answered.
    async fn more(&self, n: usize) {
        let target = self.count() + n;
        for _ in 0..300 {
            if self.count() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the traffic stalled at {} requests", self.count());
    }

    /// Stops, and returns every answer.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the traffic thread");
        }
        std::mem::take(&mut *self.answers.lock().expect("log"))
    }
}

/// The root key id a token names.
fn key_id(token: &str) -> Option<u32> {
    biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .expect("a biscuit")
        .root_key_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_keys_rotate_under_traffic_without_a_refused_call() {
    let pool = pool("prot").await;
    let web = pool.deploy_link().await;
    let (api, http) = (&pool.server.api, &pool.server.http);
    let created = http
        .post(format!("{api}/v1/tenants/default/users"))
        .bearer_auth(pool.server.admin)
        .json(&serde_json::json!({ "name": "dev", "password": "rotation-pass-1", "role": "developer" }))
        .send()
        .await
        .expect("request");
    assert!(created.status().is_success(), "{:?}", created.text().await);
    let login = || async {
        let answer: serde_json::Value = http
            .post(format!("{api}/v1/login"))
            .json(&serde_json::json!({ "tenant": "default", "user": "dev", "password": "rotation-pass-1" }))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        answer["token"].as_str().expect("a session").to_owned()
    };
    let status = |token: String| async move {
        http.get(format!("{api}/v1/tenants/default/topologies/shop"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    };
    let traffic = Traffic::start(&web);
    traffic.more(3).await;
    let old_session = login().await;
    assert_eq!(key_id(&old_session), Some(1));

    // A new key: new sessions use it, old ones keep working.
    let rotated = pool.berth(&["root-key", "rotate"]);
    assert!(rotated.contains("root key 2 signs"), "{rotated}");
    let new_session = login().await;
    assert_eq!(key_id(&new_session), Some(2));
    assert_eq!(status(old_session.clone()).await, 200);
    assert_eq!(status(new_session.clone()).await, 200);

    // The link's token is renewed under key 2, and node 2 accepts it from node 1.
    let renewed = loop_until(|| async {
        let entries = pool.entries("renewed").await;
        entries.as_array().into_iter().flatten().find_map(|e| {
            let detail = e["detail"].as_str().unwrap_or_default();
            (detail.starts_with("// root key 2") && detail.contains(r#""db", 8080)"#))
                .then(|| e["subject"].as_str().unwrap_or_default().to_owned())
        })
    })
    .await
    .expect("the link's token was renewed under key 2");
    loop_until(|| async {
        let decisions = pool.entries("decision").await;
        decisions
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("allowed")
                    && e["revocation_ids"][0] == renewed.as_str()
            })
            .then_some(())
    })
    .await
    .expect("node 2 allowed a call with the token under key 2");

    // Key 1 is retired: early, so it must be forced; its sessions stop working.
    let early = std::process::Command::new(berth_tests::berth_bin())
        .args(["root-key", "retire", "1"])
        .env("BERTH_ENDPOINT", api)
        .env("BERTH_TOKEN", pool.server.admin)
        .output()
        .expect("berth runs");
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(
        !early.status.success() && said.contains("may be valid until"),
        "{said}"
    );
    pool.berth(&["root-key", "retire", "1", "--force"]);
    let listed = pool.berth(&["root-key", "list"]);
    assert!(
        listed.contains("(signing)") && listed.lines().count() == 1,
        "{listed}"
    );
    assert_eq!(status(old_session).await, 401);
    assert_eq!(status(new_session).await, 200);

    // Traffic goes on under key 2 alone, and no request failed at any point.
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic.more(5).await;
    let answers = traffic.finish();
    let failed: Vec<&String> = answers
        .iter()
        .filter(|a| !a.trim_end().ends_with("secret-rows"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    // Both key events are in the ledger.
    let keys = pool.entries("root-key").await;
    let subjects: Vec<&str> = keys
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    assert_eq!(subjects, ["root key 1", "root key 2"], "{keys}");
}

/// Polls `f` every 200 ms for up to 30 s until it gives something.
async fn loop_until<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..150 {
        if let Some(found) = f().await {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_spreads_connections_over_the_nodes_of_a_service_and_skips_one_that_is_gone() {
    ensure_images();
    let server = Server::start(&[]).await;
    let prefix = format!("pspread{}", std::process::id());
    let names: Vec<String> = (1..=3).map(|i| format!("{prefix}-n{i}")).collect();
    let mut nodes = Vec::new();
    for name in &names {
        let listen = format!("127.0.0.1:{}", free_port());
        nodes.push(server.join(name, &["--peer-listen", &listen], &[]).await);
    }
    // Every node in the pool before the deploy, or both replicas of db could land on
    // node 2 alone.
    server.wait_active(&names).await;
    // web on node 1; two replicas of db, kept off node 1, so on nodes 2 and 3, each
    // answering with its own container's name.
    let topology = serde_json::json!({
        "name": "spread",
        "services": {
            "db": {
                "image": "berth/busybox:latest", "replicas": 2, "init": true,
                "command": ["sh", "-c", "mkdir -p /www && hostname > /www/rows && httpd -f -p 8080 -h /www"],
                "networks": { "default": {} },
                "expose": [{ "port": 8080 }],
                "constraints": [{ "attribute": "hostname", "equal": false, "value": names[0] }]
            },
            "web": {
                "image": "berth/busybox:latest", "replicas": 1, "init": true,
                "command": ["sleep", "3600"],
                "networks": { "default": {} },
                "constraints": [{ "attribute": "hostname", "equal": true, "value": names[0] }]
            }
        },
        "networks": { "default": {} }
    });
    server.deploy_when_placeable("default", &topology).await;
    let web = format!("{}.default.spread.web.1", nodes[0].prefix());
    let body = |answer: &str| {
        answer.starts_with("HTTP/1.1 200 OK").then(|| {
            answer
                .trim_end()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned()
        })
    };
    // Both replicas answer, in turn, through one listener.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        if let Some(answer) = body(&web_get(&web)) {
            seen.insert(answer);
        }
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.len(),
        2,
        "connections did not reach both replicas: {seen:?}"
    );

    // Node 2's agent dies, its node API with it: every connection is carried to node
    // 3 at once, long before the allocator declares node 2 dead.
    nodes[1].kill();
    let on_node_3 = docker_hostname(&format!("{}.default.spread.db", nodes[2].prefix()));
    for attempt in 0..10 {
        let answer = web_get(&web);
        assert_eq!(
            body(&answer).as_deref(),
            Some(on_node_3.as_str()),
            "connection {attempt} after node 2 went: {answer}"
        );
    }
}

/// The hostname of the one container whose name starts with `prefix`.
fn docker_hostname(prefix: &str) -> String {
    let names = berth_tests::docker_lines(&[
        "ps",
        "--filter",
        &format!("name=^{prefix}"),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(names.len(), 1, "{prefix}: {names:?}");
    let run = std::process::Command::new("docker")
        .args(["exec", &names[0], "hostname"])
        .output()
        .expect("docker exec runs");
    String::from_utf8_lossy(&run.stdout).trim().to_owned()
}
