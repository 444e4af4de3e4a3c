//! Placement throughput: many tenants' replicas placed onto a large simulated pool by
//! the real allocator, quotas enforced and every assignment committed to the database
//! (SQLite, then PostgreSQL), one deploy after another.
//!
//! `cargo bench -p berth-tests --bench placement`. Settings (environment):
//! `BENCH_NODES` (10000), `BENCH_REPLICAS` (1000000), `BENCH_TENANTS` (100),
//! `BENCH_PER_DEPLOY` (replicas per topology, 100), `BENCH_DB` (`sqlite,postgres`).
//!
//! Reports placements per second overall and for the last tenth of the deploys against
//! the first (flat means placement does not slow down as the pool fills), checks that
//! each tenant's next deploy beyond its quota is refused, and measures in the same run
//! the baseline of looking at every node for each deploy (what a constrained topology
//! does) on the full pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_allocator::{Allocator, AllocatorError, DefaultRequest, Limit};
use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn topology(name: &str, replicas: u64, constraint: Option<&str>) -> Topology {
    let placement = constraint
        .map(|c| format!("      placement:\n        constraints: [\"{c}\"]\n"))
        .unwrap_or_default();
    let yaml = format!(
        "name: {name}\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: {replicas}\n      resources: {{limits: {{cpus: '0.01', memory: 16m}}}}\n{placement}"
    );
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "bench.yaml",
        dir: Path::new("."),
        default_name: name,
        vars: &vars,
        files: &LocalFiles,
    };
    load(&yaml, &options).expect("valid topology").topology
}

fn rate(replicas: u64, took: Duration) -> f64 {
    replicas as f64 / took.as_secs_f64().max(1e-9)
}

async fn run(db_name: &str, url: &str) {
    let nodes = setting("BENCH_NODES", 10_000);
    let replicas = setting("BENCH_REPLICAS", 1_000_000);
    let tenants = setting("BENCH_TENANTS", 100);
    let per_deploy = setting("BENCH_PER_DEPLOY", 100);
    let db = berth_allocator::database::connect(url)
        .await
        .expect("database");
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    let started = Instant::now();
    // Twice the room the replicas need, so the pool fills to half.
    let per_node = (2 * replicas).div_ceil(nodes);
    for i in 0..nodes {
        let capacity = Limit {
            cpu_millis: Some(per_node * 10 * 2),
            memory_bytes: Some(per_node * (16 << 20) * 2),
            containers: Some(per_node),
        };
        allocator
            .upsert_node(&format!("node{i:05}"), capacity, &BTreeMap::new())
            .await
            .expect("node");
    }
    let per_tenant = replicas / tenants;
    for t in 0..tenants {
        let quota = Limit {
            cpu_millis: None,
            memory_bytes: None,
            containers: Some(per_tenant),
        };
        allocator
            .set_quota(&format!("tenant{t:03}"), quota)
            .await
            .expect("quota");
    }
    eprintln!(
        "{db_name}: {nodes} nodes and {tenants} tenants ready in {:.1} s; placing {replicas} replicas, {per_deploy} per deploy",
        started.elapsed().as_secs_f64()
    );

    let deploys = replicas / per_deploy;
    // Each tenant deploys app0, app1, ...: the specs are parsed before the clock starts.
    let specs: Vec<Topology> = (0..deploys.div_ceil(tenants))
        .map(|i| topology(&format!("app{i}"), per_deploy, None))
        .collect();
    let mut took = Vec::with_capacity(usize::try_from(deploys).unwrap_or(0));
    let all = Instant::now();
    for k in 0..deploys {
        let tenant = format!("tenant{:03}", k % tenants);
        let spec = &specs[usize::try_from(k / tenants).expect("fits")];
        let one = Instant::now();
        allocator
            .deploy(&tenant, 1, spec)
            .await
            .expect("the deploy fits its quota and the pool");
        took.push(one.elapsed());
        if (k + 1) % (deploys / 10).max(1) == 0 {
            eprintln!(
                "  {} replicas placed, {:.0}/s so far",
                (k + 1) * per_deploy,
                rate((k + 1) * per_deploy, all.elapsed())
            );
        }
    }
    let total = all.elapsed();
    let tenth = took.len() / 10;
    let first: Duration = took[..tenth].iter().sum();
    let last: Duration = took[took.len() - tenth..].iter().sum();
    let tenth_replicas = tenth as u64 * per_deploy;

    // Every tenant is at its quota: one more replica each is refused.
    let mut refused = 0;
    for t in 0..tenants {
        match allocator
            .deploy(&format!("tenant{t:03}"), 1, &topology("one-more", 1, None))
            .await
        {
            Err(AllocatorError::Quota(_)) => refused += 1,
            other => panic!("tenant{t:03} went over its quota: {other:?}"),
        }
    }

    // The baseline, same pool, same run: a deploy that looks at every node.
    let baseline_deploys = 20u64.min(deploys);
    let mut baseline = Duration::ZERO;
    for k in 0..baseline_deploys {
        let tenant = format!("tenant{:03}", k % tenants);
        // Make room within the quota by replacing one of the tenant's topologies.
        let spec = topology(
            &format!("app{}", k / tenants),
            per_deploy,
            Some("node.hostname != none"),
        );
        let one = Instant::now();
        allocator
            .deploy(&tenant, 2, &spec)
            .await
            .expect("the deploy fits");
        baseline += one.elapsed();
    }
    let indexed_rate = rate(replicas, total);
    let baseline_rate = rate(baseline_deploys * per_deploy, baseline);
    println!(
        "{db_name}: {replicas} replicas onto {nodes} nodes for {tenants} tenants, {deploys} deploys"
    );
    println!(
        "  overall            {:>9.0} placements/s ({:.1} s)",
        indexed_rate,
        total.as_secs_f64()
    );
    println!(
        "  first tenth        {:>9.0} placements/s",
        rate(tenth_replicas, first)
    );
    println!(
        "  last tenth         {:>9.0} placements/s",
        rate(tenth_replicas, last)
    );
    println!(
        "  last / first       {:>9.2}",
        first.as_secs_f64() / last.as_secs_f64().max(1e-9)
    );
    println!("  over-quota deploys refused: {refused} of {tenants}");
    println!(
        "  baseline, every node looked at ({baseline_deploys} deploys on the full pool): {baseline_rate:.0} placements/s; indexed / baseline {:.1}x",
        rate(tenth_replicas, last) / baseline_rate.max(1e-9)
    );
}

#[tokio::main]
async fn main() {
    let which = std::env::var("BENCH_DB").unwrap_or_else(|_| "sqlite,postgres".to_owned());
    for db in which.split(',') {
        match db.trim() {
            "sqlite" => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("bench.db").display()
                );
                run("SQLite", &url).await;
            }
            "postgres" => {
                let url = berth_tests::postgres::fresh_database("placement_bench").await;
                run("PostgreSQL", &url).await;
            }
            other => panic!("BENCH_DB: unknown database {other:?} (sqlite, postgres)"),
        }
    }
}
