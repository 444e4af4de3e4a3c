//! A pool of a few machines in two commands: `berth server`, then `berth-node join` on
//! each node; then `berth up --endpoint` deploys the same file as locally. All real
//! processes, real gRPC, real Docker.

use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::plane::{Dev, Node, Server};
use berth_tests::{Project, berth_bin, docker_lines, ensure_images};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_two_nodes_run_what_berth_up_sends() {
    ensure_images();
    let server = Server::start(&[]).await;
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
        nodes.push(server.join(&format!("{prefix}-n{i}"), &[], &[]).await);
    }

    let yaml = "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 4}\n";
    let mut project = Project::new("pooled", yaml);
    project.set_env("BERTH_ENDPOINT", &api);
    project.set_env("BERTH_TOKEN", admin);
    // The nodes may still be joining; `up` is retried until both are in the pool.
    let placed = project.up_across(2).await;
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
    // Well-formed JSON whose content is not a topology is judged as a file is.
    assert_eq!(bad.status(), 422);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert_eq!(body["code"], "invalid_topology");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("services.a.replicas"),
        "{body}"
    );

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
    let server = Server::start(&[]).await;
    let admin = server.admin;
    let node = server
        .join(&format!("i{}-n1", std::process::id()), &[], &[])
        .await;
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
        if project.berth(&["up", "-d"]).code == 0 {
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
    probe.berth(&["up", "-d"]).ok();
    let probe_container = format!("{}.globex.{}.probe.1", node.prefix(), probe.name);
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
    let acme_container = format!("{}.acme.{}.secret.1", node.prefix(), project.name);
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

    project.set_env("BERTH_TOKEN", &acme);
    project.berth(&["down"]).ok();
    probe.berth(&["down"]).ok();
    drop(node);
}

fn running_on(node: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "--filter",
        &format!("label=berth.node={node}"),
        "--filter",
        "status=running",
        "--format",
        "{{.Names}}",
    ])
}

/// Waits until the containers running on each node, by service name, are `want`.
async fn wait_for_spread(nodes: &[&str], want: &[&[&str]]) -> Vec<Vec<String>> {
    let services = |node: &str| -> Vec<String> {
        let mut s: Vec<String> = running_on(node)
            .iter()
            // NODE.POOL.TENANT.TOPOLOGY.SERVICE.REPLICA
            .filter_map(|c| c.split('.').nth(4).map(str::to_owned))
            .collect();
        s.sort();
        s
    };
    let mut seen = Vec::new();
    for _ in 0..150 {
        seen = nodes.iter().map(|n| services(n)).collect();
        if seen
            .iter()
            .zip(want)
            .all(|(have, want)| have.iter().map(String::as_str).eq(want.iter().copied()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_cordon_and_drain_decide_where_replicas_run() {
    ensure_images();
    let server = Server::start(&[]).await;
    let prefix = format!("c{}", std::process::id());
    let (ssd, plain) = (format!("{prefix}-ssd"), format!("{prefix}-plain"));
    let _nodes = [
        server
            .join(&ssd, &["--label", "disk=ssd", "--label", "zone=east"], &[])
            .await,
        server.join(&plain, &["--label", "zone=east"], &[]).await,
    ];
    let mut joined = serde_json::Value::Null;
    for _ in 0..100 {
        (_, joined) = status_of(
            &server,
            server.admin,
            reqwest::Method::GET,
            "/v1/nodes",
            None,
        )
        .await;
        if joined.as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node = |nodes: &serde_json::Value, name: &str| -> serde_json::Value {
        nodes
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(node(&joined, &ssd)["labels"]["disk"], "ssd", "{joined}");
    assert_eq!(node(&joined, &ssd)["state"], "active", "{joined}");

    // `db` may only run where the disk is an SSD; `web` anywhere, spread.
    let yaml = "name: NAME\nservices:\n  db:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy:\n      placement:\n        constraints: [\"node.labels.disk == ssd\"]\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 2}\n";
    let mut project = Project::new("placed", yaml);
    project.set_env("BERTH_ENDPOINT", &server.api);
    project.set_env("BERTH_TOKEN", server.admin);
    let up = project.berth(&["--json", "up", "-d"]).ok();
    let up: serde_json::Value = serde_json::from_str(&up.stdout).expect("json");
    let seen = wait_for_spread(&[&ssd, &plain], &[&["db", "web"], &["web"]]).await;
    assert_eq!(seen, [vec!["db", "web"], vec!["web"]]);

    // Cordoned, the SSD node keeps what it runs and takes nothing new. Scaling two
    // services is one revision.
    project.berth(&["node", "cordon", &ssd]).ok();
    let scaled = project.berth(&["--json", "scale", "web=3", "db=1"]).ok();
    let scaled: serde_json::Value = serde_json::from_str(&scaled.stdout).expect("json");
    assert_eq!(
        scaled["revision"].as_u64(),
        up["revision"].as_u64().map(|r| r + 1),
        "{up} then {scaled}"
    );
    let unknown = project.berth(&["scale", "nosuch=2"]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("has no service \"nosuch\" (it has db, web)"),
        "{}",
        unknown.stderr
    );
    let seen = wait_for_spread(&[&ssd, &plain], &[&["db", "web"], &["web", "web"]]).await;
    assert_eq!(seen, [vec!["db", "web"], vec!["web", "web"]]);

    // Draining the plain node cannot move its replicas while the other is cordoned:
    // nothing changes, and the drain says why.
    let drained = project.berth(&["--json", "node", "drain", &plain]).ok();
    let drained: serde_json::Value = serde_json::from_str(&drained.stdout).expect("json");
    assert_eq!(drained["moved"], serde_json::json!([]), "{drained}");
    assert!(
        drained["stuck"][0]
            .as_str()
            .unwrap_or_default()
            .contains("no schedulable node"),
        "{drained}"
    );
    // Once the SSD node takes replicas again, a drain moves everything off the plain one.
    project.berth(&["node", "uncordon", &ssd]).ok();
    project.berth(&["node", "drain", &plain]).ok();
    let seen = wait_for_spread(&[&ssd, &plain], &[&["db", "web", "web", "web"], &[]]).await;
    assert_eq!(seen, [vec!["db", "web", "web", "web"], Vec::<&str>::new()]);
    let (_, nodes) = status_of(
        &server,
        server.admin,
        reqwest::Method::GET,
        "/v1/nodes",
        None,
    )
    .await;
    assert_eq!(node(&nodes, &ssd)["used"]["containers"], 4, "{nodes}");
    assert_eq!(node(&nodes, &plain)["used"]["containers"], 0, "{nodes}");
    assert_eq!(node(&nodes, &plain)["state"], "draining", "{nodes}");

    // A constraint no node satisfies is refused whole, with the reason; nothing moves.
    project.write(&yaml.replace("disk == ssd", "gpu == yes"));
    let run = project.berth(&["up", "-d"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains(
            "no schedulable node satisfies the constraints of db (node.labels.gpu == yes)"
        ),
        "{}",
        run.stderr
    );
    let seen = wait_for_spread(&[&ssd, &plain], &[&["db", "web", "web", "web"], &[]]).await;
    assert_eq!(seen, [vec!["db", "web", "web", "web"], Vec::<&str>::new()]);
    project.write(yaml);
    project.berth(&["down"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_dev_runs_the_platform_and_a_local_node_in_one_command() {
    ensure_images();
    let dev = Dev::start();
    let api = dev.api.clone();
    // Enough replicas that reconciling them takes longer than a lease: the node
    // heartbeats meanwhile.
    let yaml = "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 30}\n";
    let project = dev.project("dev", yaml);
    // Deployed the moment the URL is printed, once: the local node has joined by then.
    let up = project.berth(&["up", "--json"]);
    assert_eq!(up.code, 0, "{up:?}");
    let placed: serde_json::Value = serde_json::from_str(&up.stdout).expect("json");
    let replicas = placed["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 30, "{placed}");
    assert!(
        replicas
            .iter()
            .all(|r| r["node"] == "local" && r["state"] == "running"),
        "{placed}"
    );
    project.berth(&["down"]).ok();
    // The node of `berth dev` removes what the pool no longer assigns it.
    let filter = format!("label=berth.topology={}", project.name);
    let mut left = docker_lines(&["ps", "-aq", "--filter", &filter]);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = docker_lines(&["ps", "-aq", "--filter", &filter]);
    }
    assert!(left.is_empty(), "containers left after down: {left:?}");
    // Its node, alive throughout, was never suspected nor declared dead.
    let metrics = reqwest::get(format!("{api}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for outcome in ["suspected", "declared_dead"] {
        let series = format!("berth_failure_detector{{outcome=\"{outcome}\"}} ");
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()));
        assert_eq!(value.map(str::trim), Some("0"), "{outcome}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_replicas_on_several_nodes_come_through_the_endpoint() {
    ensure_images();
    let server = Server::start(&[]).await;
    let prefix = format!("l{}", std::process::id());
    let names = [format!("{prefix}-n1"), format!("{prefix}-n2")];
    let _nodes = [
        server.join(&names[0], &[], &[]).await,
        server.join(&names[1], &[], &[]).await,
    ];
    let yaml = "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sh\", \"-c\", \"echo hello from $$(hostname); echo second line; sleep 3600\"]\n    deploy: {replicas: 2}\n";
    let mut project = Project::new("logs", yaml);
    project.set_env("BERTH_ENDPOINT", &server.api);
    project.set_env("BERTH_TOKEN", server.admin);
    let placed = project.up_across(2).await;
    let spread = placed["replicas"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["node"].as_str().unwrap_or_default())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .unwrap_or(0);
    assert_eq!(spread, 2, "the replicas did not land on both nodes");
    // Each node sends the output of its own replica; the CLI prints it as locally.
    let mut logs = project.berth(&["logs"]);
    for _ in 0..50 {
        if logs
            .stdout
            .lines()
            .filter(|l| l.contains("second line"))
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        logs = project.berth(&["logs"]);
    }
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert!(lines.contains(&"web.1 | second line"), "{logs:?}");
    assert!(lines.contains(&"web.2 | second line"), "{logs:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("web.1 | hello from ")),
        "{logs:?}"
    );
    let tail = project.berth(&["logs", "--tail", "1", "web"]).ok();
    assert_eq!(
        tail.stdout.lines().collect::<Vec<_>>(),
        ["web.1 | second line", "web.2 | second line"]
    );
    let missing = project.berth(&["logs", "nope"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("service \"nope\""), "{missing:?}");

    // `logs -f` against the pool: what each replica writes next comes through, and no
    // line twice.
    let mut follow = Command::new(berth_bin())
        .args(["logs", "-f"])
        .current_dir(project.dir())
        .env("BERTH_ENDPOINT", &server.api)
        .env("BERTH_TOKEN", server.admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth logs -f runs");
    let followed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (stdout, followed) = (follow.stdout.take().expect("stdout"), followed.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut all = followed.lock().unwrap_or_else(|p| p.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
    let seen = |needle: &str| {
        followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines()
            .filter(|l| *l == needle)
            .count()
    };
    for _ in 0..100 {
        if seen("web.1 | second line") == 1 && seen("web.2 | second line") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each replica writes a new line to its own output (PID 1's standard output).
    for (replica, word) in [(1, "tick-one"), (2, "tick-two")] {
        let container = docker_lines(&[
            "ps",
            "--filter",
            &format!("name=\\.{}\\.web\\.{replica}$", project.name),
            "--format",
            "{{.Names}}",
        ]);
        assert_eq!(container.len(), 1, "{container:?}");
        let wrote = Command::new("docker")
            .args(["exec", &container[0], "sh", "-c"])
            .arg(format!("echo {word} > /proc/1/fd/1"))
            .status()
            .expect("docker exec runs");
        assert!(wrote.success());
    }
    for _ in 0..100 {
        if seen("web.1 | tick-one") == 1 && seen("web.2 | tick-two") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more rounds of asking, to show nothing comes twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = follow.kill();
    let _ = follow.wait();
    let all = followed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for line in [
        "web.1 | second line",
        "web.2 | second line",
        "web.1 | tick-one",
        "web.2 | tick-two",
    ] {
        assert_eq!(seen(line), 1, "{line:?} in:\n{all}");
    }
    project.berth(&["down"]).ok();
}

/// Runs `berth ARGS` against `server` for tenant `acme`, with `token` and, when
/// given, `password`.
fn berth_as(
    server: &Server,
    args: &[&str],
    token: &str,
    password: Option<&str>,
) -> std::process::Output {
    let mut command = Command::new(berth_bin());
    command
        .args(args)
        .env("BERTH_ENDPOINT", &server.api)
        .env("BERTH_TOKEN", token)
        .env("BERTH_TENANT", "acme");
    if let Some(p) = password {
        command.env("BERTH_PASSWORD", p);
    }
    command.output().expect("berth runs")
}

/// Creates tenant `acme` with a developer `dev` (password `acme-password-123`).
fn create_acme_dev(server: &Server) {
    succeeded(berth_as(
        server,
        &["tenant", "create", "acme"],
        server.admin,
        None,
    ));
    succeeded(berth_as(
        server,
        &["user", "create", "acme", "dev", "--role", "developer"],
        server.admin,
        Some("acme-password-123"),
    ));
}

/// The standard output of a run that must have succeeded.
fn succeeded(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_teams_list_explain_revoke_and_verify_with_berth_audit() {
    let server = Server::start(&[]).await;
    let berth = |args: &[&str], token: &str, password: Option<&str>| {
        berth_as(&server, args, token, password)
    };
    let ok = succeeded;
    create_acme_dev(&server);
    let session = ok(berth(
        &["login", "--user", "dev"],
        "",
        Some("acme-password-123"),
    ))
    .trim()
    .to_owned();

    // The login is in the ledger, with its datalog and revocation id.
    let listed: serde_json::Value = serde_json::from_str(&ok(berth(
        &["--json", "audit", "list", "--kind", "minted"],
        server.admin,
        None,
    )))
    .expect("json");
    let id = listed[0]["subject"].as_str().expect("an id").to_owned();
    let explained = ok(berth(&["audit", "explain", &id], server.admin, None));
    assert!(explained.contains(r#"user("dev")"#), "{explained}");
    assert!(explained.contains("revoked  false"), "{explained}");

    // Revoked, the session no longer opens anything.
    ok(berth(
        &["audit", "revoke", &id, "--reason", "left the company"],
        server.admin,
        None,
    ));
    let refused = berth(
        &["--json", "audit", "list", "--of-tenant", "acme"],
        &session,
        None,
    );
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("revoked"),
        "{refused:?}"
    );
    let explained = ok(berth(&["audit", "explain", &id], server.admin, None));
    assert!(explained.contains("revoked  true"), "{explained}");
    assert!(explained.contains("left the company"), "{explained}");

    let verified = ok(berth(&["audit", "verify"], server.admin, None));
    assert!(
        verified.starts_with("the ledger is intact: 2 entries"),
        "{verified}"
    );
    // The anchor it prints, kept elsewhere, is checked by a later verify; a made-up
    // one is refused as not matching, and a malformed one as not an anchor.
    let anchor = verified
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "anchor (keep it outside the database, then `berth audit verify --anchor ",
            )
        })
        .and_then(|l| l.split('`').next())
        .unwrap_or_else(|| panic!("no anchor printed: {verified}"))
        .to_owned();
    assert!(anchor.starts_with("2:"), "{anchor}");
    let held = ok(berth(
        &["audit", "verify", "--anchor", &anchor],
        server.admin,
        None,
    ));
    assert!(held.contains("entry 2 is the one anchored"), "{held}");
    let forged = format!("2:{}", "0".repeat(64));
    let mismatch = berth(
        &["audit", "verify", "--anchor", &forged],
        server.admin,
        None,
    );
    assert!(
        String::from_utf8_lossy(&mismatch.stderr).contains("entry 2 is not the one anchored"),
        "{mismatch:?}"
    );
    let malformed = berth(&["audit", "verify", "--anchor", "2"], server.admin, None);
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("is not an anchor"),
        "{malformed:?}"
    );

    // Every token of the tenant at once: the new session too.
    let again = ok(berth(
        &["login", "--user", "dev"],
        "",
        Some("acme-password-123"),
    ))
    .trim()
    .to_owned();
    let revoked = ok(berth(
        &[
            "audit",
            "revoke",
            "--of-tenant",
            "acme",
            "--reason",
            "incident 7",
        ],
        server.admin,
        None,
    ));
    assert!(revoked.starts_with("revoked 2 id(s)"), "{revoked}");
    let refused = berth(
        &["--json", "audit", "list", "--of-tenant", "acme"],
        &again,
        None,
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("revoked"),
        "{refused:?}"
    );
}

/// The server anchors the ledger's head in its witness file on its own; someone who
/// then writes the whole history again in the database, every hash recomputed, is
/// caught by a plain `berth audit verify`, and the witness anchors nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_witness_catches_a_ledger_rewritten_in_the_database() {
    let server = Server::start(&[("BERTH_WITNESS_EVERY", "1s")]).await;
    let witness = server.state.path().join("ledger-witness");
    let berth = |args: &[&str], token: &str, password: Option<&str>| {
        berth_as(&server, args, token, password)
    };
    let ok = succeeded;
    create_acme_dev(&server);
    for _ in 0..2 {
        ok(berth(
            &["login", "--user", "dev"],
            "",
            Some("acme-password-123"),
        ));
    }
    // Two sessions minted: the witness anchors entry 2 within a round or two.
    let mut anchored = String::new();
    for _ in 0..100 {
        anchored = std::fs::read_to_string(&witness).unwrap_or_default();
        if anchored.lines().last().is_some_and(|l| l.starts_with("2:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = anchored.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("2:"), "never anchored: {anchored:?}");
    // The gauges follow the round that wrote the line.
    let want = (Some("1".to_owned()), Some("2".to_owned()));
    let mut gauges = witness_gauges(&server).await;
    for _ in 0..30 {
        if gauges == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        gauges = witness_gauges(&server).await;
    }
    assert_eq!(gauges, want, "the witness's metrics");
    let verified = ok(berth(&["audit", "verify"], server.admin, None));
    let anchor = last.split(' ').next().unwrap_or_default();
    assert!(
        verified.contains(&format!(
            "it holds the server witness's last anchor: {anchor}"
        )),
        "{verified}"
    );

    // Written again whole through the database, one session's user changed, every
    // hash recomputed by the ledger's own code: the chain checks out by itself.
    let url = format!(
        "sqlite://{}?mode=rw",
        server.state.path().join("server.db").display()
    );
    let db = berth_allocator::database::connect(&url)
        .await
        .expect("the server's database");
    let forger = berth_allocator::ledger::Ledger::new(db.clone());
    let entries = forger
        .list(&berth_allocator::ledger::Filter::default())
        .await
        .expect("entries");
    {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("DELETE FROM audit_entries")
            .await
            .expect("delete");
    }
    for e in entries.iter().rev() {
        forger
            .append(
                berth_allocator::ledger::NewEntry {
                    kind: match e.kind.as_str() {
                        "minted" => berth_allocator::ledger::EntryKind::Minted,
                        other => panic!("a login recorded a {other:?} entry"),
                    },
                    actor: e.actor.clone(),
                    tenant: e.tenant.clone(),
                    subject: e.subject.clone(),
                    detail: e.detail.replace(r#"user("dev")"#, r#"user("mallory")"#),
                    revocation_ids: e.revocation_ids.clone(),
                },
                e.at_ms,
            )
            .await
            .expect("forge");
    }
    assert!(forger.verify().await.expect("verify").intact);
    let refused = berth(&["audit", "verify"], server.admin, None);
    assert!(!refused.status.success(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("entry 2 is not the one anchored: the history up to it was rewritten")
            && said.contains(&format!("the server witness's last anchor {anchor}")),
        "{said}"
    );
    // A few more rounds: the witness does not anchor the forged head, and its gauge,
    // what an alert watches, says the chain is broken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read_to_string(&witness).expect("the witness"),
        anchored
    );
    assert_eq!(witness_gauges(&server).await.0.as_deref(), Some("0"));
}

/// The witness's gauges in `server`'s metrics: (intact, anchored entry).
async fn witness_gauges(server: &Server) -> (Option<String>, Option<String>) {
    (
        server.metric("berth_ledger_witness_intact").await,
        server.metric("berth_ledger_witness_anchored_entry").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_address_leads_to_the_sign_in_page() {
    let server = Server::start(&[]).await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let root = plain
        .get(format!("{}/", server.api))
        .send()
        .await
        .expect("request");
    assert_eq!(root.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/ui/");
    // Followed, it ends at the sign-in form.
    let page = server
        .http
        .get(format!("{}/", server.api))
        .send()
        .await
        .expect("request");
    assert!(page.status().is_success(), "{}", page.status());
    let body = page.text().await.expect("body");
    assert!(
        body.contains("<form") && body.contains("password"),
        "{body}"
    );
}

/// Two pools on one engine, each with a node of the same name, deploy the same tenant
/// and topology: each node labels what it makes with its pool, owns only that, and
/// neither ever removes the other's containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_on_one_engine_never_touch_each_others_containers() {
    ensure_images();
    let name = format!("twin{}", std::process::id());
    let (first, second) = (Server::start(&[]).await, Server::start(&[]).await);
    let _nodes = (
        first.join(&name, &[], &[]).await,
        second.join(&name, &[], &[]).await,
    );
    let topology = serde_json::json!({
        "name": "app",
        "services": { "web": {
            "image": "berth/busybox:latest",
            "command": ["sleep", "3600"],
            "init": true,
            "replicas": 1,
            "networks": { "default": {} },
        } },
        "networks": { "default": {} },
    });
    first.deploy_when_placeable("default", &topology).await;
    second.deploy_when_placeable("default", &topology).await;
    let running = || {
        docker_lines(&[
            "ps",
            "--filter",
            &format!("label=berth.node={name}"),
            "--format",
            "{{.Label \"berth.pool\"}}",
        ])
    };
    // Both replicas come up, one per pool.
    let mut pools = Vec::new();
    for _ in 0..150 {
        pools = running();
        pools.sort();
        pools.dedup();
        if pools.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pools.len(), 2, "one replica of each pool runs: {pools:?}");
    assert!(pools.iter().all(|p| !p.is_empty()), "{pools:?}");
    // And stay up through many reconcile passes of both nodes.
    let ids = || {
        let mut ids = docker_lines(&["ps", "-q", "--filter", &format!("label=berth.node={name}")]);
        ids.sort();
        ids
    };
    let before = ids();
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            ids(),
            before,
            "a node removed or replaced the other pool's container"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_berth_dev_servers_on_one_engine_run_side_by_side_for_a_minute() {
    ensure_images();
    // Two `berth dev`, each with its node "local" on this engine, each with the same
    // topology in the same tenant.
    let yaml = "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 2}\n";
    let (a, b) = (Dev::start(), Dev::start());
    let first = a.project("side", yaml);
    let second = b.project("side", yaml);
    assert_eq!(first.name, second.name);
    first.berth(&["up", "-d"]).ok();
    second.berth(&["up", "-d"]).ok();
    let filter = format!("label=berth.topology={}", first.name);
    let ids = || {
        let mut ids = docker_lines(&["ps", "-q", "--filter", &filter]);
        ids.sort();
        ids
    };
    let mut before = ids();
    for _ in 0..150 {
        if before.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = ids();
    }
    assert_eq!(
        before.len(),
        4,
        "two replicas of each server's topology run"
    );
    // A minute of both nodes reconciling: nothing of either is removed or replaced.
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            ids(),
            before,
            "a server's node touched the other's containers"
        );
    }
    // Each server's status is what the engine shows now: one of a's containers
    // removed behind its back is reported gone (or made again), never running as it
    // was, and b's are untouched.
    let a_pool = docker_lines(&[
        "ps",
        "--filter",
        &filter,
        "--format",
        "{{.ID}} {{.Label \"berth.pool\"}}",
    ]);
    let pools: std::collections::BTreeSet<&str> =
        a_pool.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(
        pools.len(),
        2,
        "each server labels with its own pool: {a_pool:?}"
    );
    let prefix = a.prefix();
    let victim = format!("{prefix}.default.{}.web.1", first.name);
    let engine_id = || {
        let out = Command::new("docker")
            .args(["inspect", "--format", "{{.Id}} {{.State.Running}}", &victim])
            .output()
            .expect("docker runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let old = engine_id();
    assert!(old.ends_with(" true"), "{victim}: {old:?}");
    docker_lines(&["rm", "-f", &victim]);
    // Converges to what the engine shows: web.1 reported running only once a new
    // container runs under its name (the node makes it again), else not running.
    let reported_running = || {
        let now: serde_json::Value =
            serde_json::from_str(&first.berth(&["ps", "--json"]).stdout).unwrap_or_default();
        now["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["service"] == "web" && r["replica"] == 1 && r["state"] == "running")
    };
    let mut agrees = false;
    for _ in 0..150 {
        let engine = engine_id();
        let fresh = engine.ends_with(" true") && engine != old;
        if reported_running() == fresh && fresh {
            agrees = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        agrees,
        "web.1 of the first server never ran again as reported: {:?}",
        engine_id()
    );
    let theirs = second.berth(&["ps", "--json"]).ok();
    let theirs: serde_json::Value = serde_json::from_str(&theirs.stdout).expect("json");
    assert_eq!(
        theirs["replicas"].as_array().map(Vec::len),
        Some(2),
        "{theirs}"
    );
    first.berth(&["down"]).ok();
    second.berth(&["down"]).ok();
}
