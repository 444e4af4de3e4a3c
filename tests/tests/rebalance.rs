//! Rebalancing. Over real SQLite and PostgreSQL databases: a move gives the slot to the emptier node
//! and keeps the old copy in the old node's set until the new copy runs; the
//! disruption budget holds; an old copy goes when its wait runs out or the topology is
//! deployed again. End to end on two test hosts, each with its own engine: a node joins
//! an uneven pool and the replicas spread over both, never fewer running than wanted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_allocator::rebalance::LINGER;
use berth_allocator::{Allocator, DefaultRequest, Limit};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};
use berth_tests::reports::report_running;

fn topology(replicas: u32) -> Topology {
    let yaml = format!(
        "name: web\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: {replicas}\n"
    );
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "web.yaml",
        dir: Path::new("."),
        default_name: "web",
        vars: &vars,
        files: &LocalFiles,
    };
    load(&yaml, &options).expect("valid").topology
}

fn id() -> TopologyRef {
    TopologyRef {
        tenant: "acme".into(),
        topology: "web".into(),
    }
}

/// What `node` must run: (replica, generation), sorted.
async fn set_of(allocator: &Allocator, node: &str) -> Vec<(u32, u64)> {
    let mut slots: Vec<(u32, u64)> = allocator
        .assignments_for_node(node)
        .await
        .expect("assignments")
        .into_iter()
        .flat_map(|a| a.slots)
        .map(|s| (s.replica, s.generation))
        .collect();
    slots.sort_unstable();
    slots
}

#[tokio::test]
async fn a_move_starts_the_new_copy_before_the_old_one_stops_within_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    a_move_starts_the_new_copy_before_the_old_one_stops(&url).await;
}

/// The same on PostgreSQL, where a deploy ends its topology's moves in the statement
/// that writes its slots.
#[tokio::test]
async fn a_move_starts_the_new_copy_before_the_old_one_stops_on_postgres() {
    let url = berth_tests::postgres::fresh_database("move").await;
    a_move_starts_the_new_copy_before_the_old_one_stops(&url).await;
}

/// An allocator over `db` with nodes n1 and n2 and acme's four replicas all on n1.
async fn everything_on_n1(db: sea_orm::DatabaseConnection) -> Allocator {
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    let room = Limit {
        cpu_millis: None,
        memory_bytes: None,
        containers: Some(10),
    };
    for n in ["n1", "n2"] {
        allocator
            .upsert_node(n, room, &BTreeMap::new())
            .await
            .expect("node");
    }
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    allocator.cordon("n2", true).await.expect("cordon");
    allocator
        .deploy("acme", 1, &topology(4))
        .await
        .expect("deploy");
    allocator.cordon("n2", false).await.expect("uncordon");
    allocator
}

async fn a_move_starts_the_new_copy_before_the_old_one_stops(url: &str) {
    let db = berth_allocator::database::connect(url).await.expect("db");
    // Everything on n1, then n2 opens.
    let allocator = everything_on_n1(db).await;
    let now = berth_allocator::liveness::now_ms();

    // Nothing moves while the replicas are not known to run: they count as down.
    assert!(allocator.rebalance(1, now).await.expect("round").is_empty());
    report_running(&allocator, "n1", now).await;

    // One move (the budget is one): n2 gets the slot under a new generation, and n1
    // keeps the old copy.
    let moved = allocator.rebalance(1, now).await.expect("round");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!((moved[0].from.as_str(), moved[0].to.as_str()), ("n1", "n2"));
    let r = moved[0].replica;
    let on_n2 = set_of(&allocator, "n2").await;
    assert_eq!(on_n2.len(), 1);
    assert_eq!(on_n2[0].0, r);
    assert!(on_n2[0].1 > 1, "a new generation: {on_n2:?}");
    let on_n1 = set_of(&allocator, "n1").await;
    assert_eq!(on_n1.len(), 4, "the old copy still runs on n1: {on_n1:?}");
    let placed = allocator.placed(&id()).await.expect("placed");
    assert_eq!(placed.len(), 4, "four slots, not five");
    assert_eq!(placed.iter().filter(|p| p.node == "n2").count(), 1);

    // While it moves, nothing else of the service moves.
    assert!(allocator.rebalance(1, now).await.expect("round").is_empty());
    // n1 reporting its old copy does not count as the replica's status.
    let counted = report_running(&allocator, "n1", now).await;
    assert_eq!(counted.len(), 3, "{counted:?}");

    // The new copy runs: the old one leaves n1's set.
    report_running(&allocator, "n2", now).await;
    assert_eq!(set_of(&allocator, "n1").await.len(), 3);

    // Then the next, and then the load is even: 2 and 2.
    let moved = allocator.rebalance(1, now).await.expect("round");
    assert_eq!(moved.len(), 1, "{moved:?}");
    report_running(&allocator, "n2", now).await;
    assert!(allocator.rebalance(1, now).await.expect("round").is_empty());
    assert_eq!(set_of(&allocator, "n1").await.len(), 2);
    assert_eq!(set_of(&allocator, "n2").await.len(), 2);
    let nodes = allocator.nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.used.containers == 2), "{nodes:?}");

    // A new copy that never runs: the old one goes when the wait runs out.
    allocator.cordon("n2", true).await.expect("cordon");
    allocator
        .deploy("acme", 2, &topology(6))
        .await
        .expect("grow");
    allocator.cordon("n2", false).await.expect("uncordon");
    report_running(&allocator, "n1", now).await;
    report_running(&allocator, "n2", now).await;
    let moved = allocator.rebalance(1, now).await.expect("round");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(set_of(&allocator, "n1").await.len(), 4, "old copy kept");
    let later = now + i64::try_from(LINGER.as_millis()).expect("ms") + 1;
    allocator.rebalance(1, later).await.expect("round");
    assert_eq!(set_of(&allocator, "n1").await.len(), 3, "old copy gone");

    // A deploy ends the moves of its topology.
    allocator.cordon("n2", true).await.expect("cordon");
    allocator
        .deploy("acme", 3, &topology(8))
        .await
        .expect("grow");
    allocator.cordon("n2", false).await.expect("uncordon");
    report_running(&allocator, "n2", later).await;
    report_running(&allocator, "n1", later).await;
    let moved = allocator.rebalance(1, later).await.expect("round");
    assert_eq!(moved.len(), 1, "{moved:?}");
    allocator
        .deploy("acme", 4, &topology(5))
        .await
        .expect("deploy");
    let (a, b) = (
        set_of(&allocator, "n1").await,
        set_of(&allocator, "n2").await,
    );
    assert_eq!(
        a.len() + b.len(),
        5,
        "no old copies after a deploy: {a:?} {b:?}"
    );
}

/// A move takes its two nodes' rows in name order, as every deploy does: a deploy of
/// another tenant that holds n1 and then wants n2 waits for the move or the move for
/// it, and neither is aborted as a deadlock. (Taken destination first, the move held n2
/// while it waited for n1, and one of the two was aborted a second later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_and_a_deploy_take_their_nodes_in_one_order() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let url = berth_tests::postgres::fresh_database("moveorder").await;
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let allocator = everything_on_n1(db.clone()).await;
    let now = berth_allocator::liveness::now_ms();
    report_running(&allocator, "n1", now).await;
    // The other deploy, in name order: n1 now, n2 once the move waits.
    let other = db.begin().await.expect("begin");
    other
        .execute_unprepared("SELECT name FROM nodes WHERE name = 'n1' FOR UPDATE")
        .await
        .expect("lock n1");
    let moving = {
        let allocator = allocator.clone();
        tokio::spawn(async move { allocator.rebalance(1, now).await })
    };
    berth_tests::postgres::until_one_waits_for_a_lock(&db, "the move").await;
    // While the move waits for n1 it holds nothing of n2 (`NOWAIT`: a row another
    // transaction holds is an error at once, not a wait that ends in a deadlock).
    other
        .execute_unprepared("SELECT name FROM nodes WHERE name = 'n2' FOR UPDATE NOWAIT")
        .await
        .expect("n2 is free while the move waits for n1");
    other.commit().await.expect("commit");
    let moved = moving.await.expect("the move's task");
    let moved = moved.expect("the round");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!((moved[0].from.as_str(), moved[0].to.as_str()), ("n1", "n2"));
}

/// The replicas of `spread` each host's engine runs, by the node that runs them.
fn running_per_node(engines: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (node, docker_host) in engines {
        let listed = std::process::Command::new("docker")
            .args(["ps", "--format", "{{.Names}}"])
            .env("DOCKER_HOST", docker_host)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for name in listed.lines() {
            let parts: Vec<&str> = name.split('.').collect();
            // NODE.POOL.TENANT.TOPOLOGY.SERVICE.REPLICA
            if let [on, _, "default", "spread", "web", _] = parts[..]
                && on == node
            {
                *out.entry(node.clone()).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_onto_a_node_that_joins_and_never_fewer_run() {
    // Two test hosts, each with its own engine and node.
    let hosts = berth_tests::hosts::Hosts::up(2);
    let server = hosts.server(&[("BERTH_REBALANCE_EVERY", "1s")]).await;
    let n1 = hosts.join(&server, 0, "host1", &[]).await;
    let n2 = hosts.join(&server, 1, "host2", &[]).await;
    let engines: Vec<(String, String)> = [&n1, &n2]
        .iter()
        .map(|n| (n.name.clone(), n.host.docker_host.clone()))
        .collect();
    let post = reqwest::Method::POST;
    for _ in 0..150 {
        let nodes = server.api(reqwest::Method::GET, "/nodes").await;
        let active = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"] == "active")
            .count();
        if active == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server
        .api(post.clone(), &format!("/nodes/{}/cordon", n2.name))
        .await;
    server
        .deploy(&serde_json::json!({
            "name": "spread",
            "services": { "web": {
                "image": "berth/busybox:latest", "replicas": 4, "init": true,
                "command": ["sleep", "3600"],
                "networks": { "default": {} }
            } },
            "networks": { "default": {} }
        }))
        .await;
    let mut all_on_n1 = false;
    for _ in 0..300 {
        if running_per_node(&engines).get(&n1.name) == Some(&4) {
            all_on_n1 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(all_on_n1, "the four replicas never ran on n1");

    // Watch the running count while n2 opens and the load evens out.
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let watching = {
        let (fewest, engines) = (fewest.clone(), engines.clone());
        std::thread::spawn(move || {
            for _ in 0..600 {
                let running: usize = running_per_node(&engines).values().sum();
                fewest.fetch_min(running, Ordering::Relaxed);
                let per_node = running_per_node(&engines);
                if per_node.len() == 2 && per_node.values().all(|n| *n == 2) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
    };
    server
        .api(post, &format!("/nodes/{}/uncordon", n2.name))
        .await;
    let even = tokio::task::spawn_blocking(move || watching.join().expect("watcher"))
        .await
        .expect("join");
    assert!(
        even,
        "the replicas never spread 2 and 2: {:?}",
        running_per_node(&engines)
    );
    assert!(
        fewest.load(Ordering::Relaxed) >= 4,
        "a replica stopped before its new copy ran: {} running at one point",
        fewest.load(Ordering::Relaxed)
    );
    let events = server
        .api(
            reqwest::Method::GET,
            "/tenants/default/topologies/spread/events",
        )
        .await;
    let moves = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["kind"] == "rescheduled"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("to even the load"))
        })
        .count();
    assert_eq!(moves, 2, "{events}");
    drop((n1, n2, hosts));
}
