//! The multi-node demo in `infra/compose/pool.yaml` runs as its README section says:
//! the image is built locally from the binaries this test run built, the control plane
//! and three node agents start as containers, every agent joins with a token it asks
//! for, and a topology deployed through the API runs on all three.

use std::process::Command;
use std::time::Duration;

use berth_tests::{berth_bin, ensure_images, free_port, remove_node_objects, workspace};

struct Demo {
    project: String,
    env: Vec<(&'static str, String)>,
    prefix: String,
}

impl Demo {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .current_dir(workspace())
            .args(["-p", &self.project, "-f", "infra/compose/pool.yaml"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("docker-compose runs")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--timeout", "2"]);
        for i in 1..=3 {
            remove_node_objects(&format!("{}-node{i}", self.prefix));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_demo_runs_a_pool_of_three_nodes() {
    ensure_images();
    let built = Command::new(workspace().join("infra/build-platform-image.sh"))
        .env(
            "BERTH_BIN_DIR",
            berth_bin().parent().expect("the binaries' directory"),
        )
        .output()
        .expect("the image script runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let port = free_port();
    let token = format!("bat_demo_{}_{port}", std::process::id());
    let prefix = format!("d{}", std::process::id());
    let demo = Demo {
        project: format!("berthdemo{}", std::process::id()),
        env: vec![
            ("BERTH_ADMIN_TOKEN", token.clone()),
            ("BERTH_DEMO_PORT", port.to_string()),
            ("BERTH_DEMO_PREFIX", prefix.clone()),
        ],
        prefix: prefix.clone(),
    };
    let up = demo.compose(&["up", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut nodes = serde_json::Value::Null;
    for _ in 0..200 {
        if let Ok(r) = http
            .get(format!("{api}/v1/nodes"))
            .bearer_auth(&token)
            .send()
            .await
            && r.status().is_success()
        {
            nodes = r.json().await.expect("json");
            if nodes.as_array().is_some_and(|n| n.len() == 3) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap_or_else(|| panic!("the nodes never joined: {nodes}"))
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            format!("{prefix}-node1"),
            format!("{prefix}-node2"),
            format!("{prefix}-node3")
        ],
        "{nodes}"
    );
    assert_eq!(nodes[2]["labels"]["zone"], "west", "{nodes}");

    let topology = serde_json::json!({
        "name": "demo",
        "services": { "web": {
            "image": "berth/busybox:latest", "replicas": 3, "init": true,
            "command": ["sleep", "3600"], "networks": { "default": {} }
        } },
        "networks": { "default": {} }
    });
    let deployed = http
        .put(format!("{api}/v1/tenants/default/topologies/demo"))
        .bearer_auth(&token)
        .json(&topology)
        .send()
        .await
        .expect("request");
    assert!(
        deployed.status().is_success(),
        "{:?}",
        deployed.text().await
    );
    // Up to two minutes: three agents in containers start their replicas on an
    // engine the rest of the suite may be keeping busy.
    let mut status = serde_json::Value::Null;
    for _ in 0..600 {
        status = http
            .get(format!("{api}/v1/tenants/default/topologies/demo"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        if status["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["state"] == "running"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let on: std::collections::BTreeSet<&str> = status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .inspect(|r| assert_eq!(r["state"], "running", "{status}"))
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(on.len(), 3, "{status}");
    drop(demo);
}
