//! Autoscaling, end to end: a `berth server` whose autoscaler runs every two seconds, a
//! `berth-node` agent on real Docker reporting its containers' CPU, and a topology
//! with two autoscaled services in a tenant allowed four containers. `burn` spins at
//! its whole CPU limit, twice its target, so it grows; `idle` sleeps, so it shrinks to
//! its minimum. The quota stops `burn` before its maximum, and the topology's events
//! say so.

use std::time::Duration;

use berth_tests::ensure_images;
use berth_tests::plane::Server;

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut request = server
        .http
        .request(method, format!("{}/v1{path}", server.api))
        .bearer_auth(server.admin);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).expect("json")
}

/// Replicas of each service, by state: (service, running count, all count).
fn counts(status: &serde_json::Value, service: &str) -> (usize, usize) {
    let replicas: Vec<&serde_json::Value> = status["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["service"] == service)
        .collect();
    let running = replicas.iter().filter(|r| r["state"] == "running").count();
    (running, replicas.len())
}

fn service(command: &str, replicas: u32, max: u32) -> serde_json::Value {
    serde_json::json!({
        "image": "berth/busybox:latest", "replicas": replicas, "init": true,
        "command": ["sh", "-c", command],
        "limits": { "cpu_millis": 100 },
        "autoscale": { "min": 1, "max": max, "cpu_percent": 50 },
        "networks": { "default": {} }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_services_grow_within_the_quota_and_idle_ones_shrink() {
    ensure_images();
    let server = Server::start(&[("BERTH_AUTOSCALE_EVERY", "2s")]).await;
    let node = server
        .join(&format!("auto{}-n1", std::process::id()), &[], &[])
        .await;
    let put = reqwest::Method::PUT;
    call(
        &server,
        put.clone(),
        "/tenants/default/quota",
        Some(serde_json::json!({ "containers": 4 })),
    )
    .await;
    // Wait for the node, then deploy.
    let mut active = false;
    for _ in 0..150 {
        let nodes = call(&server, reqwest::Method::GET, "/nodes", None).await;
        if nodes.as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["name"] == node.name && n["state"] == "active")
        }) {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(active, "the node never became active");
    let topology = serde_json::json!({
        "name": "auto",
        "services": {
            "burn": service("while :; do :; done", 1, 6),
            "idle": service("sleep 3600", 2, 2),
        },
        "networks": { "default": {} }
    });
    call(
        &server,
        put,
        "/tenants/default/topologies/auto",
        Some(topology),
    )
    .await;

    // burn: 1 → 2 while idle holds 2 (the quota of 4 stops it there), then 3 once
    // idle has shrunk to 1; its maximum of 6 is never reached.
    let path = "/tenants/default/topologies/auto";
    let mut last = serde_json::Value::Null;
    let mut settled = false;
    for _ in 0..120 {
        last = call(&server, reqwest::Method::GET, path, None).await;
        if counts(&last, "burn") == (3, 3) && counts(&last, "idle") == (1, 1) {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(settled, "burn never reached 3 and idle 1: {last}");
    // The running replicas of burn carry the CPU their node reported.
    let burning: Vec<u64> = last["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["service"] == "burn")
        .filter_map(|r| r["cpu_millis"].as_u64())
        .collect();
    assert!(!burning.is_empty(), "no CPU figure for burn: {last}");

    let events = call(
        &server,
        reqwest::Method::GET,
        &format!("{path}/events"),
        None,
    )
    .await;
    let said: Vec<String> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "autoscaled")
        .map(|e| {
            format!(
                "{}: {}",
                e["service"].as_str().unwrap_or_default(),
                e["detail"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        said.iter()
            .any(|s| s.starts_with("idle: scaled from 2 to 1 replicas")),
        "{said:#?}"
    );
    assert!(
        said.iter()
            .any(|s| s.starts_with("burn: ") && s.contains("the tenant's quota stops it")),
        "{said:#?}"
    );
    // Each change is a revision of the topology, as a manual scale would be: the
    // current one holds the counts the autoscaler chose.
    let spec = call(&server, reqwest::Method::GET, &format!("{path}/spec"), None).await;
    assert_eq!(spec["services"]["burn"]["replicas"], 3, "{spec}");
    assert_eq!(spec["services"]["idle"]["replicas"], 1, "{spec}");
    // And the quota held throughout: never more than four containers at once is what
    // the allocator admits; now it uses exactly four.
    let quota = call(
        &server,
        reqwest::Method::GET,
        "/tenants/default/quota",
        None,
    )
    .await;
    assert_eq!(quota["used"]["containers"], 4, "{quota}");
}
