//! Failure detection and fencing, end to end: a `berth server` with short thresholds,
//! two `berth-node` agents on real Docker, and a replica on node 1. When node 1's
//! agent dies, or is cut off from the allocator, the replica comes back on node 2;
//! the node that returns stops what it no longer owns; a cut-off node stops its
//! replica before the replacement starts.

use std::time::Duration;

use berth_tests::ensure_images;
use berth_tests::plane::{Node, Server};
use berth_tests::proxy::Proxy;

/// Suspect after 2 s, fence after 3 s, dead after 5 s.
const FAST: &[(&str, &str)] = &[
    ("BERTH_SUSPECT_AFTER", "2s"),
    ("BERTH_FENCE_AFTER", "3s"),
    ("BERTH_DEAD_AFTER", "5s"),
];

/// What `docker inspect` says of a container: running, and when it started and
/// finished (RFC 3339, as Docker writes them), or None when there is no such container.
fn inspect(name: &str) -> Option<(bool, String, String)> {
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.StartedAt}} {{.State.FinishedAt}}",
            name,
        ])
        .output()
        .expect("docker runs");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut parts = text.split(' ');
    Some((
        parts.next() == Some("true"),
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    ))
}

/// The state of node `name` in `berth node list`.
async fn node_state(server: &Server, name: &str) -> String {
    let nodes = server.api(reqwest::Method::GET, "/nodes").await;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .and_then(|n| n["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Polls `check` every 200 ms for up to 60 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never happened: {what}");
}

/// Deploys `svc` (one replica of `web`) so that it lands on `on`: the other node is
/// cordoned meanwhile. Returns when it runs.
async fn deploy_on(server: &Server, on: &Node, other: &Node) {
    eventually("both nodes joined", async || {
        node_state(server, &on.name).await == "active"
            && node_state(server, &other.name).await == "active"
    })
    .await;
    let post = reqwest::Method::POST;
    server
        .api(post.clone(), &format!("/nodes/{}/cordon", other.name))
        .await;
    let topology = serde_json::json!({
        "name": "svc",
        "services": { "web": {
            "image": "berth/busybox:latest", "replicas": 1, "init": true,
            "command": ["sleep", "3600"],
            "networks": { "default": {} }
        } },
        "networks": { "default": {} }
    });
    server.deploy(&topology).await;
    eventually("web runs on the first node", async || {
        runs_on(server).await.as_deref() == Some(on.name.as_str())
    })
    .await;
    server
        .api(post, &format!("/nodes/{}/uncordon", other.name))
        .await;
}

/// The node web's replica runs on, by the nodes' reports.
async fn runs_on(server: &Server) -> Option<String> {
    let status = server
        .api(reqwest::Method::GET, "/tenants/default/topologies/svc")
        .await;
    let replica = &status["replicas"][0];
    (replica["state"] == "running").then(|| replica["node"].as_str().unwrap_or_default().to_owned())
}

/// A Docker timestamp (RFC 3339, UTC, with as many fraction digits as it needs) in a
/// form that sorts as time does: the fraction padded to nanoseconds.
fn comparable(stamp: &str) -> String {
    let stamp = stamp.trim_end_matches('Z');
    let (seconds, fraction) = stamp.split_once('.').unwrap_or((stamp, ""));
    format!("{seconds}.{fraction:0<9}")
}

/// Waits until `returned` is active again with its stale replica removed, while the
/// replica runs on `other` only.
async fn back_and_clean(server: &Server, returned: &Node, other: &Node) {
    eventually("the returning node removes its stale replica", async || {
        inspect(&container(returned)).is_none()
    })
    .await;
    eventually("the returning node is active again", async || {
        node_state(server, &returned.name).await == "active"
    })
    .await;
    assert_eq!(runs_on(server).await.as_deref(), Some(other.name.as_str()));
    assert!(inspect(&container(other)).is_some_and(|c| c.0));
}

fn container(node: &Node) -> String {
    format!("{}.default.svc.web.1", node.prefix())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agents_replica_runs_elsewhere_and_it_stops_its_own_when_it_returns() {
    ensure_images();
    let server = Server::start(FAST).await;
    let prefix = format!("fkill{}", std::process::id());
    let mut n1 = server.join(&format!("{prefix}-n1"), &[], &[]).await;
    let n2 = server.join(&format!("{prefix}-n2"), &[], &[]).await;
    deploy_on(&server, &n1, &n2).await;

    // The agent dies; its container keeps running, as after a crash.
    n1.kill();
    eventually("node 1 is declared dead", async || {
        node_state(&server, &n1.name).await == "down"
    })
    .await;
    eventually("web runs on node 2", async || {
        runs_on(&server).await.as_deref() == Some(n2.name.as_str())
    })
    .await;
    assert!(inspect(&container(&n2)).is_some_and(|c| c.0));
    // The topology's events tell the story, newest first.
    let events = server
        .api(
            reqwest::Method::GET,
            "/tenants/default/topologies/svc/events",
        )
        .await;
    let told: Vec<(String, String)> = events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (field("kind"), field("node"))
        })
        .collect();
    let (n1_name, n2_name) = (n1.name.clone(), n2.name.clone());
    let at = |kind: &str, node: &str| told.iter().position(|(k, n)| k == kind && n == node);
    let placed = at("placed", &n1_name).expect("placed on node 1");
    let rescheduled = at("rescheduled", &n2_name).expect("rescheduled to node 2");
    assert!(rescheduled < placed, "{events}");
    assert!(
        events[rescheduled]["detail"]
            .as_str()
            .is_some_and(|d| d == format!("moved from {n1_name} to {n2_name}")),
        "{events}"
    );

    // Back, node 1 learns it no longer owns the replica and removes it.
    n1.restart();
    back_and_clean(&server, &n1, &n2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_stops_its_replica_before_the_replacement_starts() {
    ensure_images();
    let server = Server::start(FAST).await;
    let proxy = Proxy::start(
        format!("127.0.0.1:{}", server.node_port)
            .parse()
            .expect("address"),
    )
    .await;
    let prefix = format!("fcut{}", std::process::id());
    let n1 = server
        .join_through(proxy.port, &format!("{prefix}-n1"), &[], &[])
        .await;
    let n2 = server.join(&format!("{prefix}-n2"), &[], &[]).await;
    deploy_on(&server, &n1, &n2).await;

    // A partition: node 1's agent runs, but cannot reach the allocator.
    proxy.cut();
    eventually("node 1 fences its replica", async || {
        inspect(&container(&n1)).is_some_and(|c| !c.0)
    })
    .await;
    eventually("web runs on node 2", async || {
        runs_on(&server).await.as_deref() == Some(n2.name.as_str())
    })
    .await;
    // Docker's own clock: the old replica stopped before the new one started.
    let (_, _, stopped) = inspect(&container(&n1)).expect("node 1's container");
    let (running, started, _) = inspect(&container(&n2)).expect("node 2's container");
    assert!(running);
    assert!(
        comparable(&stopped) < comparable(&started),
        "two live replicas: node 1's stopped at {stopped}, node 2's started at {started}"
    );
    assert_eq!(node_state(&server, &n1.name).await, "down");

    // The partition heals: node 1 is active again and removes what it no longer owns.
    proxy.restore();
    back_and_clean(&server, &n1, &n2).await;
}
