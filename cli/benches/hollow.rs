//! The control plane at scale, with hollow nodes (the real node agent over a simulated
//! engine, many to this process, each with its own identity and gRPC connection) and a
//! real `berth server` process on SQLite, default failure-detection thresholds.
//!
//! - `recovery`: `BENCH_NODES` (1,000) hollow nodes run `BENCH_NODES` replicas; in each
//!   of `BENCH_ROUNDS` (3) rounds `BENCH_KILLS` (5) agents are killed at once, and each
//!   dead node's recovery is timed, from the kill to every replica it ran being reported
//!   running on another node. Median and p99 over all kills.
//! - `heartbeat`: `BENCH_NODES` hollow nodes heartbeat for `BENCH_SECONDS` (60): the
//!   server's CPU and memory, and how many nodes the detector ever suspected.
//!
//! - `leader`: how many nodes one leader holds before its p99 heartbeat handling
//!   passes 100 ms. Hollow nodes are added in steps up to `BENCH_NODES` (12,000), each
//!   heartbeating every second (the server's heartbeat budget lifted, so heartbeats do
//!   not stretch); at each step 8 probe nodes send signed heartbeats for
//!   `BENCH_SECONDS` (10) and time each answer. The hollow agents run in this process,
//!   on the same cores as the server: the figures are a floor for a dedicated leader.
//!
//! Run: `BENCH=recovery cargo bench -p berth-cli --bench hollow` (or `BENCH=heartbeat`,
//! `BENCH=leader`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_node_runtime::agent::Capacity;
use berth_tests::hollow::HollowPool;
use berth_tests::plane::Server;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let which = std::env::var("BENCH").unwrap_or_else(|_| "recovery".to_owned());
    let nodes = usize::try_from(env(
        "BENCH_NODES",
        match which.as_str() {
            "heartbeat" => 10_000,
            "leader" => 12_000,
            _ => 1_000,
        },
    ))
    .unwrap_or(1_000);
    // Each hollow node holds a connection (its stream and its heartbeats share it),
    // and the server as many: a limit on open files below that fails joins with bare
    // transport errors, so say it first.
    if let Some(limit) = open_files_limit()
        && nodes + 1_000 > limit
    {
        panic!(
            "{nodes} hollow nodes need about {} open files in this process and in the server; the limit here is {limit} (raise it with `ulimit -n`, or set BENCH_NODES)",
            nodes + 1_000
        );
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    if which == "leader" {
        let server =
            Server::start_with(bin, None, &["--heartbeats-per-second", "1000000"], &[]).await;
        return leader(&server, nodes).await;
    }
    let server = Server::start_bin(bin, &[]).await;
    let capacity = Capacity {
        cpu_millis: Some(4_000),
        memory_bytes: None,
        containers: Some(100),
        labels: BTreeMap::new(),
    };
    let started = Instant::now();
    let mut pool = HollowPool::join(&server, "hollow", nodes, &capacity, 32).await;
    println!(
        "{nodes} hollow nodes joined in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match which.as_str() {
        "heartbeat" => heartbeat(&server, &pool).await,
        _ => recovery(&server, &mut pool).await,
    }
}

/// This process's soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The server's CPU time so far (user + system) and resident memory.
fn usage(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (Duration::from_millis(ticks * 10), rss_kb * 1024)
}

/// A value of the server's failure-detector metric.
async fn detector(server: &Server, outcome: &str) -> u64 {
    server
        .metric(&format!("berth_failure_detector{{outcome=\"{outcome}\"}}"))
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn heartbeat(server: &Server, pool: &HollowPool) {
    let seconds = env("BENCH_SECONDS", 60);
    // Let every node settle (its first set, its first heartbeats).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let suspected_before = detector(server, "suspected").await;
    let beats_before = detector(server, "heartbeats").await;
    let (cpu_before, _) = usage(server.pid());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let wall = started.elapsed();
    let (cpu_after, rss) = usage(server.pid());
    let beats = detector(server, "heartbeats").await - beats_before;
    let suspected = detector(server, "suspected").await;
    let late = detector(server, "late_ticks").await;
    println!(
        "{} hollow nodes heartbeating for {:.0} s against one berth server (SQLite):",
        pool.nodes.len(),
        wall.as_secs_f64()
    );
    println!(
        "  heartbeats accepted {:>9} ({:.0}/s)",
        beats,
        beats as f64 / wall.as_secs_f64()
    );
    println!(
        "  server CPU          {:>8.1}% of one core",
        (cpu_after - cpu_before).as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    println!("  server memory (RSS) {:>8.1} MiB", rss as f64 / 1048576.0);
    println!(
        "  nodes suspected     {:>9} (before the run: {suspected_before}); late detector ticks {late}",
        suspected
    );
}

/// Adds hollow nodes in steps and, at each, times heartbeats of probe nodes; stops
/// after the step whose p99 passes 100 ms, or at `most` nodes.
async fn leader(server: &Server, most: usize) {
    let seconds = env("BENCH_SECONDS", 10);
    let capacity = Capacity {
        cpu_millis: Some(4_000),
        memory_bytes: None,
        containers: Some(100),
        labels: BTreeMap::new(),
    };
    let probes = Probes::join(server, 8).await;
    println!(
        "one leader (berth server on SQLite), every node heartbeating each second; {} probe nodes, {seconds} s per step",
        probes.count
    );
    println!(
        "{:>7} {:>13} {:>9} {:>9} {:>9} {:>11} {:>9}",
        "nodes", "heartbeats/s", "p50", "p99", "max", "server CPU", "suspected"
    );
    let mut pools = Vec::new();
    let mut held = 0;
    for step in [
        500, 1_000, 2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 16_000, 20_000,
    ] {
        let step = step.min(most);
        if step <= held {
            break;
        }
        pools.push(HollowPool::join(server, &format!("h{step}"), step - held, &capacity, 32).await);
        held = step;
        // Every new node's first set and first heartbeats.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let beats_before = detector(server, "heartbeats").await;
        let (cpu_before, _) = usage(server.pid());
        let started = Instant::now();
        let mut times = probes.heartbeat_for(Duration::from_secs(seconds)).await;
        let wall = started.elapsed();
        let (cpu_after, _) = usage(server.pid());
        let beats = detector(server, "heartbeats").await - beats_before;
        times.sort();
        let at = |q: f64| {
            times
                .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
        println!(
            "{held:>7} {:>13.0} {:>9} {:>9} {:>9} {:>10.0}% {:>9}",
            beats as f64 / wall.as_secs_f64(),
            ms(at(0.50)),
            ms(at(0.99)),
            ms(times.last().copied().unwrap_or_default()),
            (cpu_after - cpu_before).as_secs_f64() / wall.as_secs_f64() * 100.0,
            detector(server, "suspected").await,
        );
        if at(0.99) > Duration::from_millis(100) || held >= most {
            break;
        }
    }
}

/// Nodes that only heartbeat, every 100 ms from when they join (so that the detector
/// never suspects them), timing each answer while a measurement runs.
struct Probes {
    count: usize,
    /// The answers' times, while `measuring` is set.
    times: std::sync::Arc<std::sync::Mutex<Vec<Duration>>>,
    measuring: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _beating: tokio::task::JoinSet<()>,
    _state: tempfile::TempDir,
}

impl Probes {
    async fn join(server: &Server, count: usize) -> Self {
        use berth_protocol::node_api::{HeartbeatBody, methods};
        let state = tempfile::tempdir().expect("tempdir");
        let url = format!("http://127.0.0.1:{}", server.node_port);
        let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let measuring = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut beating = tokio::task::JoinSet::new();
        for i in 0..count {
            let name = format!("probe-{i}");
            let dir = state.path().join(&name);
            let identity = berth_node_runtime::agent::join(
                &url,
                None,
                &server.join_token().await,
                &name,
                Capacity::default(),
                &dir,
            )
            .await
            .expect("a probe joins");
            let mut client =
                berth_protocol::node_api::node_control_client::NodeControlClient::connect(
                    url.clone(),
                )
                .await
                .expect("a probe connects");
            let signer = identity.signer().expect("signer");
            let (times, measuring) = (times.clone(), measuring.clone());
            beating.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let (sequence, timestamp_ms) = signer.next_sequence();
                    let request = signer.sign(
                        methods::HEARTBEAT,
                        &HeartbeatBody {
                            sequence,
                            timestamp_ms,
                        },
                    );
                    let started = Instant::now();
                    let answered = client.heartbeat(request).await.is_ok();
                    if answered && measuring.load(std::sync::atomic::Ordering::Relaxed) {
                        let took = started.elapsed();
                        times.lock().unwrap_or_else(|p| p.into_inner()).push(took);
                    }
                }
            });
        }
        Self {
            count,
            times,
            measuring,
            _beating: beating,
            _state: state,
        }
    }

    /// The time of every answer the probes had during `run`.
    async fn heartbeat_for(&self, run: Duration) -> Vec<Duration> {
        self.times.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.measuring
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(run).await;
        self.measuring
            .store(false, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut *self.times.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn recovery(server: &Server, pool: &mut HollowPool) {
    let rounds = env("BENCH_ROUNDS", 3);
    let kills = usize::try_from(env("BENCH_KILLS", 5)).unwrap_or(5);
    let http = &server.http;
    // One topology of 10 replicas per 10 nodes: as many replicas as nodes.
    let topologies = pool.nodes.len() / 10;
    for t in 0..topologies {
        let topology = serde_json::json!({
            "name": format!("app{t}"),
            "services": { "web": { "image": "sim", "replicas": 10, "networks": { "default": {} } } },
            "networks": { "default": {} }
        });
        server.deploy(&topology).await;
    }
    let wanted = topologies * 10;
    let started = Instant::now();
    while pool.running() < wanted {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "replicas never all ran: {} of {wanted}",
            pool.running()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{wanted} replicas running on {} hollow nodes",
        pool.nodes.len()
    );
    let status = |t: String| async move {
        let s: serde_json::Value = http
            .get(format!("{}/v1/tenants/default/topologies/{t}", server.api))
            .bearer_auth(server.admin)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        s
    };
    let mut samples = Vec::new();
    let mut next = 0;
    let (suspected_before, dead_before) = (
        detector(server, "suspected").await,
        detector(server, "declared_dead").await,
    );
    for round in 0..rounds {
        // Kill `kills` live nodes that run something.
        let mut victims = Vec::new();
        while victims.len() < kills && next < pool.nodes.len() {
            let node = &pool.nodes[next];
            next += 1;
            if node.alive() && node.engine.running() > 0 {
                victims.push(next - 1);
            }
        }
        // What each ran, by topology and replica.
        let mut ran: Vec<(String, BTreeSet<(String, u64)>)> = Vec::new();
        for &v in &victims {
            let name = pool.nodes[v].name.clone();
            let mut slots = BTreeSet::new();
            for t in 0..topologies {
                let s = status(format!("app{t}")).await;
                for r in s["replicas"].as_array().into_iter().flatten() {
                    if r["node"] == name.as_str() {
                        slots.insert((format!("app{t}"), r["replica"].as_u64().unwrap_or(0)));
                    }
                }
            }
            ran.push((name, slots));
        }
        let killed_at = Instant::now();
        for &v in &victims {
            pool.nodes[v].kill();
        }
        let mut pending: BTreeMap<String, BTreeSet<(String, u64)>> = ran.into_iter().collect();
        while !pending.is_empty() {
            if killed_at.elapsed() > Duration::from_secs(300) {
                let mut left = String::new();
                for t in pending.values().flatten().map(|(t, _)| t) {
                    left.push_str(&format!("{t}: {}\n", status(t.clone()).await));
                }
                panic!(
                    "no recovery: {pending:?}\n{left}server output:\n{}",
                    server.printed()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let topologies_left: BTreeSet<String> =
                pending.values().flatten().map(|(t, _)| t.clone()).collect();
            let mut now_running: BTreeMap<(String, u64), String> = BTreeMap::new();
            for t in topologies_left {
                let s = status(t.clone()).await;
                for r in s["replicas"].as_array().into_iter().flatten() {
                    if r["state"] == "running" {
                        now_running.insert(
                            (t.clone(), r["replica"].as_u64().unwrap_or(0)),
                            r["node"].as_str().unwrap_or_default().to_owned(),
                        );
                    }
                }
            }
            pending.retain(|dead, slots| {
                let recovered = slots
                    .iter()
                    .all(|slot| now_running.get(slot).is_some_and(|n| n != dead));
                if recovered {
                    samples.push(killed_at.elapsed());
                }
                !recovered
            });
        }
        println!(
            "round {}: {} nodes killed and recovered",
            round + 1,
            victims.len()
        );
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let killed = samples.len() as u64;
    let suspected = detector(server, "suspected").await - suspected_before;
    let dead = detector(server, "declared_dead").await - dead_before;
    println!(
        "recovery of a dead node's replicas at {} hollow nodes ({killed} kills, the server's default thresholds):",
        pool.nodes.len(),
    );
    println!(
        "  live nodes suspected {}   live nodes declared dead {}",
        suspected.saturating_sub(killed),
        dead.saturating_sub(killed)
    );
    println!(
        "  median {:.2} s   p99 {:.2} s",
        at(0.5).as_secs_f64(),
        at(0.99).as_secs_f64()
    );
    println!(
        "  against Kubernetes' default (about 5.7 min) {:.0}× faster; Nomad's detection alone (about 20 s) {:.2}×",
        342.0 / at(0.5).as_secs_f64(),
        20.0 / at(0.5).as_secs_f64()
    );
}
