//! A pool of a few machines in two commands: `berth server`, then `berth-node join` on
//! each node; then `berth up --endpoint` deploys the same file as locally. All real
//! processes, real gRPC, real Docker.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_tests::{Project, berth_bin, docker_lines, ensure_images, free_port};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> std::path::PathBuf {
    berth_bin().with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn remove_node_objects(node: &str) {
    let ids = docker_lines(&["ps", "-aq", "--filter", &format!("label=berth.node={node}")]);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
    for network in docker_lines(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=berth.node={node}"),
    ]) {
        let _ = Command::new("docker")
            .args(["network", "rm", &network])
            .output();
    }
}

/// A running `berth server`: its API URL, node API port and admin token.
struct Server {
    _process: Process,
    _state: tempfile::TempDir,
    api: String,
    node_port: u16,
    admin: &'static str,
    http: reqwest::Client,
}

async fn start_server() -> Server {
    let state = tempfile::tempdir().expect("tempdir");
    let (api_port, node_port) = (free_port(), free_port());
    let admin = "bat_test_admin_token";
    let process = Process(
        Command::new(berth_bin())
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{api_port}"),
                "--node-listen",
                &format!("127.0.0.1:{node_port}"),
            ])
            .env("BERTH_DATA_DIR", state.path())
            .env("BERTH_ADMIN_TOKEN", admin)
            .stdout(Stdio::null())
            .spawn()
            .expect("berth server starts"),
    );
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "berth server never became ready");
    Server {
        _process: process,
        _state: state,
        api,
        node_port,
        admin,
        http,
    }
}

/// A joined `berth-node` process; dropping it stops the agent and removes every Docker
/// object it made, whether the test passed or not.
struct Node {
    name: String,
    process: Option<Process>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.process.take());
        remove_node_objects(&self.name);
    }
}

/// Joins a `berth-node` process to `server` under `name`.
async fn join_node(server: &Server, name: &str) -> Node {
    let token: serde_json::Value = server
        .http
        .post(format!("{}/v1/join-tokens", server.api))
        .bearer_auth(server.admin)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(sibling("berth-node"))
        .args([
            "join",
            "--allocator",
            &format!("http://127.0.0.1:{}", server.node_port),
            "--token",
            token["token"].as_str().expect("token"),
            "--name",
            name,
        ])
        .env("BERTH_NODE_DIR", dir.path())
        .env("BERTH_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("berth-node starts");
    Node {
        name: name.to_owned(),
        process: Some(Process(child)),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_two_nodes_run_what_berth_up_sends() {
    ensure_images();
    let server = start_server().await;
    let (api, http, admin) = (server.api.clone(), server.http.clone(), server.admin);

    // The API refuses requests without a token.
    let refused = http
        .post(format!("{api}/v1/join-tokens"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);

    let prefix = format!("s{}", std::process::id());
    let mut nodes = Vec::new();
    for i in 1..=2 {
        nodes.push(join_node(&server, &format!("{prefix}-n{i}")).await);
    }

    let yaml = "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 4}\n";
    let mut project = Project::new("pooled", yaml);
    project.set_env("BERTH_ENDPOINT", &api);
    project.set_env("BERTH_TOKEN", admin);
    // The nodes may still be joining; `up` is retried until both are in the pool.
    let mut placed = serde_json::Value::Null;
    for _ in 0..50 {
        let run = project.berth(&["up", "--json"]);
        if run.code == 0 {
            placed = serde_json::from_str(&run.stdout).expect("json");
            let on: std::collections::BTreeSet<String> = placed["replicas"]
                .as_array()
                .expect("replicas")
                .iter()
                .map(|r| r["node"].as_str().unwrap_or_default().to_owned())
                .collect();
            if on.len() == 2 {
                break;
            }
            project.berth(&["down"]).ok();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let replicas = placed["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("never deployed: {placed}"));
    assert_eq!(replicas.len(), 4);
    assert!(replicas.iter().all(|r| r["state"] == "running"), "{placed}");
    for Node { name, .. } in &nodes {
        let running = docker_lines(&[
            "ps",
            "--filter",
            &format!("label=berth.node={name}"),
            "--format",
            "{{.Names}}",
        ]);
        assert_eq!(running.len(), 2, "{name} runs {running:?}");
    }

    // An admin lowers the quota: the next deploy that would exceed it is refused, and
    // what runs is untouched.
    let quota = http
        .put(format!("{api}/v1/tenants/default/quota"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "containers": 4 }))
        .send()
        .await
        .expect("request");
    assert!(quota.status().is_success());
    project.write(&yaml.replace("replicas: 4", "replicas: 6"));
    let run = project.berth(&["up"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr
            .contains("containers would be 6 of 4 (over by 2)"),
        "{}",
        run.stderr
    );
    let still: usize = nodes
        .iter()
        .map(|Node { name: n, .. }| {
            docker_lines(&[
                "ps",
                "--filter",
                &format!("label=berth.node={n}"),
                "--format",
                "{{.Names}}",
            ])
            .len()
        })
        .sum();
    assert_eq!(
        still, 4,
        "running workloads were touched by a refused deploy"
    );

    // A bad topology gets a 4xx with a message, not a 500.
    let bad = http
        .put(format!("{api}/v1/tenants/default/topologies/x"))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(
            "{\"name\": \"x\", \"services\": {\"a\": {\"image\": \"i\", \"replicas\": \"many\"}}}",
        )
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert_eq!(body["code"], "bad_request");

    // `down` through the endpoint removes the containers from both nodes.
    project.berth(&["down"]).ok();
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = nodes
            .iter()
            .map(|Node { name: n, .. }| {
                docker_lines(&["ps", "-q", "--filter", &format!("label=berth.node={n}")]).len()
            })
            .sum();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left, 0, "containers left after down");
    drop(nodes);
}

async fn status_of(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.api))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_every_token_is_checked() {
    ensure_images();
    let server = start_server().await;
    let admin = server.admin;
    let node = join_node(&server, &format!("i{}-n1", std::process::id())).await;
    // An admin creates the tenants and their developers with the CLI.
    let admin_cli = |args: &[&str], password: Option<&str>| {
        let mut command = Command::new(berth_bin());
        command
            .args(args)
            .env("BERTH_ENDPOINT", &server.api)
            .env("BERTH_TOKEN", admin);
        if let Some(p) = password {
            command.env("BERTH_PASSWORD", p);
        }
        let output = command.output().expect("berth runs");
        assert!(
            output.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for tenant in ["acme", "globex"] {
        admin_cli(
            &[
                "tenant",
                "create",
                tenant,
                "--containers",
                "10",
                "--memory",
                "1g",
            ],
            None,
        );
        admin_cli(
            &["user", "create", tenant, "dev", "--role", "developer"],
            Some(&format!("{tenant}-password-123")),
        );
    }
    let quota: serde_json::Value =
        serde_json::from_str(&admin_cli(&["quota", "show", "acme"], None)).expect("json");
    assert_eq!(quota["limit"]["containers"], 10);
    assert_eq!(quota["limit"]["memory_bytes"], 1u64 << 30);
    assert!(
        admin_cli(&["node", "join-token"], None)
            .starts_with("berth-node join --allocator http://127.0.0.1:")
    );
    // A password too short to store is refused with a message, not a 500.
    let weak = serde_json::json!({ "name": "weak", "password": "short", "role": "developer" });
    assert_eq!(
        status_of(
            &server,
            admin,
            reqwest::Method::POST,
            "/v1/tenants/acme/users",
            Some(weak)
        )
        .await
        .0,
        400
    );

    // Each developer logs in with `berth login`; the session token is a biscuit.
    let login = |tenant: &str| {
        let output = Command::new(berth_bin())
            .args(["login", "--user", "dev"])
            .env("BERTH_ENDPOINT", &server.api)
            .env("BERTH_TENANT", tenant)
            .env("BERTH_PASSWORD", format!("{tenant}-password-123"))
            .output()
            .expect("berth login runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let (acme, globex) = (login("acme"), login("globex"));

    // acme deploys through the CLI with its own session.
    let yaml = "name: NAME\nservices:\n  secret:\n    image: berth/busybox:latest\n    init: true\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\"]\n";
    let mut project = Project::new("isolated", yaml);
    project.set_env("BERTH_ENDPOINT", &server.api);
    project.set_env("BERTH_TOKEN", &acme);
    project.set_env("BERTH_TENANT", "acme");
    let mut deployed = false;
    for _ in 0..50 {
        if project.berth(&["up"]).code == 0 {
            deployed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(deployed, "acme could not deploy");
    let acme_path = format!("/v1/tenants/acme/topologies/{}", project.name);

    // globex can neither see, change nor delete anything of acme's.
    use reqwest::Method;
    assert_eq!(
        status_of(&server, &globex, Method::GET, &acme_path, None)
            .await
            .0,
        403
    );
    assert_eq!(
        status_of(&server, &globex, Method::DELETE, &acme_path, None)
            .await
            .0,
        403
    );
    assert_eq!(
        status_of(
            &server,
            &globex,
            Method::GET,
            "/v1/tenants/acme/topologies",
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        status_of(
            &server,
            &globex,
            Method::GET,
            "/v1/tenants/acme/quota",
            None
        )
        .await
        .0,
        403
    );
    let takeover = serde_json::json!({ "name": project.name, "services": {} });
    assert_eq!(
        status_of(&server, &globex, Method::PUT, &acme_path, Some(takeover))
            .await
            .0,
        403
    );
    let (code, own) = status_of(
        &server,
        &globex,
        Method::GET,
        "/v1/tenants/globex/topologies",
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(own, serde_json::json!([]));
    // ...nor administer the platform.
    assert_eq!(
        status_of(&server, &globex, Method::POST, "/v1/join-tokens", None)
            .await
            .0,
        403
    );
    assert_eq!(
        status_of(
            &server,
            &globex,
            Method::PUT,
            "/v1/tenants/globex/quota",
            Some(serde_json::json!({}))
        )
        .await
        .0,
        403
    );
    // acme's topology still runs.
    assert_eq!(
        status_of(&server, &acme, Method::GET, &acme_path, None)
            .await
            .0,
        200
    );

    // Nor reach it over the network: globex's container is on other networks.
    let mut probe = Project::new(
        "probe",
        "name: NAME\nservices:\n  probe:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n",
    );
    probe.set_env("BERTH_ENDPOINT", &server.api);
    probe.set_env("BERTH_TOKEN", &globex);
    probe.set_env("BERTH_TENANT", "globex");
    probe.berth(&["up"]).ok();
    let probe_container = format!("{}.globex.{}.probe.1", node.name, probe.name);
    let reach = Command::new("docker")
        .args([
            "exec",
            &probe_container,
            "wget",
            "-q",
            "-T",
            "2",
            "-O",
            "-",
            "http://secret:8080/",
        ])
        .output()
        .expect("docker exec");
    assert!(
        !reach.status.success(),
        "globex reached acme's service: {}",
        String::from_utf8_lossy(&reach.stdout)
    );
    let acme_container = format!("{}.acme.{}.secret.1", node.name, project.name);
    let acme_networks = docker_lines(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        &acme_container,
    ]);
    let globex_networks = docker_lines(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        &probe_container,
    ]);
    let shared: Vec<&str> = acme_networks[0]
        .split_whitespace()
        .filter(|n| globex_networks[0].split_whitespace().any(|g| g == *n))
        .collect();
    assert!(shared.is_empty(), "the tenants share networks {shared:?}");

    // A token signed by another root key, or garbage, is not a session at all.
    let other_root = biscuit_auth::KeyPair::new();
    let session = berth_protocol::capability::Session {
        user: "dev".into(),
        tenant: "acme".into(),
        role: berth_protocol::capability::Role::Admin,
    };
    let forged = berth_protocol::capability::mint_session(
        &other_root,
        1,
        &session,
        std::time::SystemTime::now() + Duration::from_secs(600),
    )
    .expect("mint");
    assert_eq!(
        status_of(&server, &forged, Method::GET, &acme_path, None)
            .await
            .0,
        401
    );
    assert_eq!(
        status_of(&server, "not-a-token", Method::GET, &acme_path, None)
            .await
            .0,
        401
    );

    // acme attenuates its own token offline into a CI token that may only deploy this
    // topology: it deploys, and may do nothing else.
    let parsed = biscuit_auth::UnverifiedBiscuit::from_base64(&acme).expect("parse");
    let ci = parsed
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(format!(
                    "check if operation(\"deploy\"), topology(\"{}\")",
                    project.name
                ))
                .expect("block"),
        )
        .expect("append")
        .to_base64()
        .expect("encode");
    project.set_env("BERTH_TOKEN", &ci);
    project.berth(&["up", "-d"]).ok();
    assert_eq!(
        status_of(&server, &ci, Method::GET, &acme_path, None)
            .await
            .0,
        403,
        "the CI token read status"
    );
    assert_eq!(
        status_of(&server, &ci, Method::DELETE, &acme_path, None)
            .await
            .0,
        403,
        "the CI token deleted"
    );
    let other = serde_json::json!({ "name": "other", "services": { "x": { "image": "berth/busybox:latest", "replicas": 1, "networks": { "default": {} } } }, "networks": { "default": {} } });
    assert_eq!(
        status_of(
            &server,
            &ci,
            Method::PUT,
            "/v1/tenants/acme/topologies/other",
            Some(other)
        )
        .await
        .0,
        403,
        "the CI token deployed another topology"
    );

    // Wrong passwords, many times: the login is throttled, even with the right one.
    let wrong =
        serde_json::json!({ "tenant": "acme", "user": "dev", "password": "wrong-password-0000" });
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(
            server
                .http
                .post(format!("{}/v1/login", server.api))
                .json(&wrong)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes[..5], [401, 401, 401, 401, 401], "{codes:?}");
    assert_eq!(codes[5], 429, "{codes:?}");
    let right =
        serde_json::json!({ "tenant": "acme", "user": "dev", "password": "acme-password-123" });
    assert_eq!(
        server
            .http
            .post(format!("{}/v1/login", server.api))
            .json(&right)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16(),
        429
    );
    // An unknown user gets the same answer as a wrong password.
    let ghost =
        serde_json::json!({ "tenant": "acme", "user": "ghost", "password": "whatever-password" });
    let response = server
        .http
        .post(format!("{}/v1/login", server.api))
        .json(&ghost)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);

    project.set_env("BERTH_TOKEN", &acme);
    project.berth(&["down"]).ok();
    probe.berth(&["down"]).ok();
    drop(node);
}
