//! The node API other nodes call, end to end: a `berth server`, two `berth-node`
//! processes serving their node API, and a service on node 2. The test speaks as node
//! 1 (with node 1's own key, from its identity file) and mints delegation tokens with
//! the server's root key, as the allocator does. A granted tunnel reaches the service;
//! each attack is refused, each in its own test, and each refusal reaches the audit
//! ledger as a decision that node 2 reported and signed.

use std::time::{Duration, SystemTime};

use berth_node_runtime::agent::{NodeIdentity, Signer};
use berth_protocol::delegation::{self, Grant, NodeOperation};
use berth_protocol::node_api::node_peer_client::NodePeerClient;
use berth_protocol::node_api::{PeerCallBody, TunnelFrame, tunnel_frame};
use berth_tests::plane::{Node, Server};
use berth_tests::{ensure_images, free_port};
use biscuit_auth::{Algorithm, KeyPair, PrivateKey};

/// A server and two nodes serving their node API; node 2 runs `db`.
struct Pool {
    server: Server,
    root: KeyPair,
    n1: NodeIdentity,
    n1_name: String,
    n2_name: String,
    n2_peer: String,
    _nodes: Vec<Node>,
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
    let root_hex = std::fs::read_to_string(server.state.path().join("root-key")).expect("root key");
    let root = KeyPair::from(
        &PrivateKey::from_bytes_hex(root_hex.trim(), Algorithm::Ed25519).expect("key"),
    );
    let n1 = NodeIdentity::load(nodes[0].dir.path()).expect("node 1's identity");
    Pool {
        server,
        root,
        n1,
        n1_name,
        n2_name,
        n2_peer: peers[1].clone(),
        _nodes: nodes,
    }
}

impl Pool {
    /// What the allocator would grant node 1 to reach `db` on node 2.
    fn grant(&self, operation: NodeOperation) -> Grant {
        Grant {
            caller: self.n1_name.clone(),
            caller_key: Signer::new(&self.n1).expect("signer").public_key(),
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
        }
    }

    /// Opens a tunnel to `db:8080` on node 2 as `signer` with `token`, sends an HTTP
    /// request through it and returns the answer, or the refusal.
    async fn tunnel_get(&self, signer: &Signer, token: Vec<u8>) -> Result<String, tonic::Status> {
        let call = signer.peer_call("Tunnel", token, &self.body(8080));
        let request = "GET /rows HTTP/1.0\r\n\r\n".as_bytes().to_vec();
        let frames = tokio_stream::iter([
            TunnelFrame {
                frame: Some(tunnel_frame::Frame::Open(call)),
            },
            TunnelFrame {
                frame: Some(tunnel_frame::Frame::Data(request)),
            },
        ]);
        let mut client = NodePeerClient::connect(self.n2_peer.clone())
            .await
            .expect("node 2's API answers");
        let mut answer = client.tunnel(frames).await?.into_inner();
        let mut text = Vec::new();
        while let Some(frame) = answer.message().await? {
            if let Some(tunnel_frame::Frame::Data(bytes)) = frame.frame {
                text.extend(bytes);
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    async fn health(&self, signer: &Signer, token: Vec<u8>) -> Result<usize, tonic::Status> {
        let call = signer.peer_call("Health", token, &self.body(0));
        let mut client = NodePeerClient::connect(self.n2_peer.clone())
            .await
            .expect("node 2's API answers");
        Ok(client.health(call).await?.into_inner().replicas.len())
    }

    /// Waits for node 2's decision with `reason` to reach the ledger.
    async fn in_ledger(&self, reason: &str) {
        let mut entries = serde_json::Value::Null;
        for _ in 0..100 {
            entries = self
                .server
                .http
                .get(format!(
                    "{}/v1/audit/entries?kind=decision",
                    self.server.api
                ))
                .bearer_auth(self.server.admin)
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
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

    fn n1_signer(&self) -> Signer {
        Signer::new(&self.n1).expect("signer")
    }
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
    pool.in_ledger("does not grant tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reaches_a_service_on_another_node_by_name_through_a_tunnel() {
    let pool = pool("plink").await;
    // `web` runs on node 1 only; `db` on node 2 only. web reaches db:8080 by name.
    let topology = serde_json::json!({
        "name": "shop",
        "services": {
            "db": {
                "image": "berth/busybox:latest", "replicas": 1, "init": true,
                "command": ["sh", "-c", "mkdir -p /www && echo secret-rows > /www/rows && httpd -f -p 8080 -h /www"],
                "networks": { "default": {} },
                "expose": [{ "port": 8080 }],
                "constraints": [{ "attribute": "hostname", "equal": true, "value": pool.n2_name }]
            },
            "web": {
                "image": "berth/busybox:latest", "replicas": 1, "init": true,
                "command": ["sleep", "3600"],
                "networks": { "default": {} },
                "constraints": [{ "attribute": "hostname", "equal": true, "value": pool.n1_name }]
            }
        },
        "networks": { "default": {} }
    });
    let deployed = pool
        .server
        .http
        .put(format!(
            "{}/v1/tenants/default/topologies/shop",
            pool.server.api
        ))
        .bearer_auth(pool.server.admin)
        .json(&topology)
        .send()
        .await
        .expect("request");
    assert!(
        deployed.status().is_success(),
        "{:?}",
        deployed.text().await
    );
    let web = format!("{}.default.shop.web.1", pool.n1_name);
    let mut answer = String::new();
    for _ in 0..150 {
        let run = std::process::Command::new("docker")
            .args([
                "exec",
                &web,
                "sh",
                "-c",
                r#"printf 'GET /rows HTTP/1.0\r\n\r\n' | nc -w 3 db 8080"#,
            ])
            .output()
            .expect("docker exec runs");
        answer = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        if answer.contains("secret-rows") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.trim_end().ends_with("secret-rows"),
        "web could not reach db: {answer}"
    );
    // The delegation was minted for exactly this link, and node 2 allowed the call.
    let minted: serde_json::Value = pool
        .server
        .http
        .get(format!("{}/v1/audit/entries?kind=minted", pool.server.api))
        .bearer_auth(pool.server.admin)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert!(
        minted.as_array().into_iter().flatten().any(|e| e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"right("tunnel", "default", "shop", "db", 8080)"#)),
        "{minted}"
    );
    pool.in_ledger("allowed").await;
    // Nothing of db is published on the host.
    let ports = std::process::Command::new("docker")
        .args(["port", &format!("{}.default.shop.db.1", pool.n2_name)])
        .output()
        .expect("docker port runs");
    assert!(ports.stdout.is_empty(), "{ports:?}");
}
