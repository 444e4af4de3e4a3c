//! Image distribution on test hosts with their own engines: the time until one pushed
//! image runs on every host, each new host fetching it from hosts that run it (under
//! `image.fetch` delegations) against every host fetching it from one source (the
//! control plane: `BERTH_IMAGE_PEER_SOURCES=0`), in one run; and `berth push` of an
//! image whose big layer the pool has against one it lacks.
//!
//! `cargo build --release -p berth-cli -p berth-node-runtime --bins && cargo bench -p
//! berth-tests --bench images`. Settings (environment): `BENCH_HOSTS` (4),
//! `BENCH_MEBIBYTES` (128, the image's own layer).
//!
//! Each mode gets fresh hosts and a fresh control plane: one replica is deployed and
//! runs (fetched from the control plane either way), then the service is scaled to
//! one replica per host and timed until every replica runs.

use std::time::{Duration, Instant};

use berth_tests::hosts::{HostNode, Hosts};
use berth_tests::images::{LocalImages, build_local_image, build_on, payload_app};
use berth_tests::plane::Server;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `berth push IMAGE` against `server`; how long it took.
fn push(server: &Server, image: &str) -> Duration {
    let started = Instant::now();
    let out = std::process::Command::new(berth_tests::berth_bin())
        .args(["--endpoint", &server.api, "--token", server.admin, "--json"])
        .args(["push", image])
        .output()
        .expect("berth runs");
    assert!(
        out.status.success(),
        "push {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened within 600 s: {what}");
}

/// A server on `hosts`' bridge with `envs` and a node on each host, all active.
async fn pool(hosts: &Hosts, envs: &[(&str, &str)]) -> (Server, Vec<HostNode>) {
    let server = hosts.server(envs).await;
    let mut nodes = Vec::new();
    for i in 0..hosts.hosts.len() {
        nodes.push(hosts.join(&server, i, &format!("host{}", i + 1), &[]).await);
    }
    let count = hosts.hosts.len();
    until("every node active", async || {
        let listed = server.api(reqwest::Method::GET, "/nodes").await;
        listed
            .as_array()
            .is_some_and(|n| n.len() == count && n.iter().all(|n| n["state"] == "active"))
    })
    .await;
    (server, nodes)
}

async fn deploy(server: &Server, image: &str, replicas: usize) {
    server
        .deploy(&payload_app(
            "spread",
            image,
            replicas,
            serde_json::json!([]),
        ))
        .await;
}

async fn running(server: &Server, count: usize) -> bool {
    let status = server
        .api(reqwest::Method::GET, "/tenants/default/topologies/spread")
        .await;
    status["replicas"]
        .as_array()
        .is_some_and(|r| r.len() == count && r.iter().all(|r| r["state"] == "running"))
}

/// What one mode measured.
struct Spread {
    /// The first replica, from the control plane.
    seed: Duration,
    /// The other hosts' replicas, from the first scale to all running.
    rest: Duration,
}

async fn spread(hosts: usize, image: &str, peer_sources: &str) -> (Spread, Server, Hosts) {
    let set = Hosts::up(hosts);
    let (server, nodes) = pool(&set, &[("BERTH_IMAGE_PEER_SOURCES", peer_sources)]).await;
    push(&server, image);
    let started = Instant::now();
    deploy(&server, image, 1).await;
    until("the first replica runs", async || running(&server, 1).await).await;
    let seed = started.elapsed();
    let started = Instant::now();
    deploy(&server, image, hosts).await;
    until("a replica runs on every host", async || {
        running(&server, hosts).await
    })
    .await;
    let rest = started.elapsed();
    drop(nodes);
    (Spread { seed, rest }, server, set)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hosts = setting("BENCH_HOSTS", 4);
    let mebibytes = setting("BENCH_MEBIBYTES", 128);
    let pid = std::process::id();
    let names = ["peers", "one-source", "on-top"].map(|n| format!("berth-bench/{n}:{pid}"));
    let _built = LocalImages(names.to_vec());
    // Two images of the same size (different bytes, so neither mode finds the other's
    // layers anywhere).
    build_local_image(&names[0], mebibytes);
    build_local_image(&names[1], mebibytes);
    build_on(&names[0], &names[2], 4);

    let (peers, server, set) = spread(hosts, &names[0], "3").await;
    // Push, on the first pool: an image whose big layer the pool has (pushed above),
    // against one it lacks.
    let lacks = push(&server, &names[1]);
    let has = push(&server, &names[2]);
    drop(server);
    drop(set);
    let (one, _server, _set) = spread(hosts, &names[1], "0").await;

    println!(
        "image: {mebibytes} MiB of its own layer on the test image; {hosts} hosts, each its own engine"
    );
    println!(
        "| mode | first replica | the other {} hosts | ratio |",
        hosts - 1
    );
    println!("|---|---|---|---|");
    println!(
        "| from peers (up to 3 sources, delegated) | {:.2} s | {:.2} s | {:.2}× |",
        peers.seed.as_secs_f64(),
        peers.rest.as_secs_f64(),
        one.rest.as_secs_f64() / peers.rest.as_secs_f64()
    );
    println!(
        "| from one source (the control plane) | {:.2} s | {:.2} s | 1.00× |",
        one.seed.as_secs_f64(),
        one.rest.as_secs_f64()
    );
    println!("| push | time |");
    println!("|---|---|");
    println!(
        "| an image the pool lacks ({mebibytes} MiB layer) | {:.2} s |",
        lacks.as_secs_f64()
    );
    println!(
        "| an image whose {mebibytes} MiB layer the pool has (4 KiB new layer) | {:.2} s ({:.1}× faster) |",
        has.as_secs_f64(),
        lacks.as_secs_f64() / has.as_secs_f64()
    );
}
