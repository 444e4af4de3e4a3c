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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_two_nodes_run_what_berth_up_sends() {
    ensure_images();
    let state = tempfile::tempdir().expect("tempdir");
    let (api_port, node_port) = (free_port(), free_port());
    let admin = "bat_test_admin_token";
    let _server = Process(
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

    // The API refuses requests without the admin token.
    let refused = http
        .post(format!("{api}/v1/join-tokens"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);

    let prefix = format!("s{}", std::process::id());
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let token: serde_json::Value = http
            .post(format!("{api}/v1/join-tokens"))
            .bearer_auth(admin)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        let name = format!("{prefix}-n{i}");
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(sibling("berth-node"))
            .args([
                "join",
                "--allocator",
                &format!("http://127.0.0.1:{node_port}"),
                "--token",
                token["token"].as_str().expect("token"),
                "--name",
                &name,
            ])
            .env("BERTH_NODE_DIR", dir.path())
            .env("BERTH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("berth-node starts");
        nodes.push((name, Process(child), dir));
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
    for (name, _, _) in &nodes {
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
        .map(|(n, _, _)| {
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
            .map(|(n, _, _)| {
                docker_lines(&["ps", "-q", "--filter", &format!("label=berth.node={n}")]).len()
            })
            .sum();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left, 0, "containers left after down");
    for (name, process, _) in nodes {
        drop(process);
        remove_node_objects(&name);
    }
}
