//! The placement and quota core under random pools, topologies, quotas and node
//! failures, over a real SQLite database: after every step no node is over capacity,
//! no tenant is over quota, what is reserved equals what is placed, nothing new lands
//! on a dead node, and a deploy is refused only when it truly does not fit.

use std::collections::BTreeMap;
use std::path::Path;

use berth_allocator::pool::NodeState;
use berth_allocator::{Allocator, AllocatorError, DefaultRequest, Limit};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};
use proptest::prelude::*;

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    /// Tenant `tenant` deploys topology `name` with `replicas` replicas of `cpu` millis.
    Deploy {
        tenant: usize,
        name: usize,
        replicas: u32,
        cpu: u64,
    },
    /// Node `node` dies.
    Die { node: usize },
    /// Node `node` comes back.
    Return { node: usize },
    /// Every node reports what it runs as running, and the load is evened with a
    /// disruption budget of `budget`; then, if `settle`, the new copies run too.
    Rebalance { budget: u32, settle: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, 0usize..4, 0u32..6, 1u64..1200).prop_map(|(tenant, name, replicas, cpu)| Step::Deploy { tenant, name, replicas, cpu }),
        1 => (0usize..6).prop_map(|node| Step::Die { node }),
        1 => (0usize..6).prop_map(|node| Step::Return { node }),
        1 => (1u32..3, any::<bool>()).prop_map(|(budget, settle)| Step::Rebalance { budget, settle }),
    ]
}

fn topology(name: &str, replicas: u32, cpu: u64) -> Topology {
    let yaml = format!(
        "name: {name}\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: {replicas}\n      resources: {{limits: {{cpus: '{}'}}}}\n",
        cpu as f64 / 1000.0
    );
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "t.yaml",
        dir: Path::new("."),
        default_name: "t",
        vars: &vars,
        files: &LocalFiles,
    };
    load(&yaml, &options).expect("valid topology").topology
}

async fn check(
    allocator: &Allocator,
    tenants: &[String],
    topologies: &BTreeMap<(usize, usize), u64>,
) -> Result<(), TestCaseError> {
    let nodes = allocator.nodes().await.expect("nodes");
    let mut placed_on: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut per_tenant: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (tenant, name) in topologies.keys() {
        let id = TopologyRef {
            tenant: tenants[*tenant].clone(),
            topology: format!("app{name}"),
        };
        for slot in allocator.placed(&id).await.expect("placed") {
            let on = placed_on.entry(slot.node.clone()).or_default();
            on.0 += slot.cost.cpu_millis;
            on.1 += 1;
            let t = per_tenant.entry(&tenants[*tenant]).or_default();
            t.0 += slot.cost.cpu_millis;
            t.1 += 1;
        }
    }
    for node in &nodes {
        let (cpu, containers) = placed_on.get(&node.name).copied().unwrap_or_default();
        // What is reserved is exactly what is placed, and within capacity.
        prop_assert_eq!(node.used.cpu_millis, cpu, "node {} cpu", node.name);
        prop_assert_eq!(
            node.used.containers,
            containers,
            "node {} containers",
            node.name
        );
        prop_assert!(
            node.capacity.cpu_millis.is_none_or(|c| cpu <= c),
            "{} over cpu",
            node.name
        );
        prop_assert!(
            node.capacity.containers.is_none_or(|c| containers <= c),
            "{} over containers",
            node.name
        );
    }
    for tenant in tenants {
        let (limit, used) = allocator.quota(tenant).await.expect("quota");
        let (cpu, containers) = per_tenant.get(tenant.as_str()).copied().unwrap_or_default();
        prop_assert_eq!(used.cpu_millis, cpu, "tenant {} used cpu", tenant);
        prop_assert_eq!(
            used.containers,
            containers,
            "tenant {} used containers",
            tenant
        );
        prop_assert!(
            limit.cpu_millis.is_none_or(|l| cpu <= l),
            "{tenant} over its cpu quota"
        );
        prop_assert!(
            limit.containers.is_none_or(|l| containers <= l),
            "{tenant} over its container quota"
        );
    }
    Ok(())
}

/// Every node reports every slot of its set running.
async fn report_running(allocator: &Allocator, names: &[String]) {
    let now = berth_allocator::liveness::now_ms();
    for node in names {
        berth_tests::reports::report_running(allocator, node, now).await;
    }
}

async fn run(
    capacities: Vec<(u64, u64)>,
    quotas: Vec<(u64, u64)>,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    let names: Vec<String> = (0..capacities.len()).map(|i| format!("n{i}")).collect();
    for (name, (cpu, containers)) in names.iter().zip(&capacities) {
        let capacity = Limit {
            cpu_millis: Some(*cpu),
            memory_bytes: None,
            containers: Some(*containers),
        };
        allocator
            .upsert_node(name, capacity, &BTreeMap::new())
            .await
            .expect("node");
    }
    let tenants: Vec<String> = (0..quotas.len()).map(|i| format!("t{i}")).collect();
    for (tenant, (cpu, containers)) in tenants.iter().zip(&quotas) {
        let quota = Limit {
            cpu_millis: Some(*cpu),
            memory_bytes: None,
            containers: Some(*containers),
        };
        allocator.set_quota(tenant, quota).await.expect("quota");
    }
    let mut deployed: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut revision = 0;
    for step in steps {
        match step {
            Step::Deploy {
                tenant,
                name,
                replicas,
                cpu,
            } => {
                let tenant = tenant % tenants.len();
                revision += 1;
                let spec = topology(&format!("app{name}"), replicas, cpu);
                let id = TopologyRef {
                    tenant: tenants[tenant].clone(),
                    topology: format!("app{name}"),
                };
                let before = allocator.placed(&id).await.expect("placed");
                let (limit, used) = allocator.quota(&tenants[tenant]).await.expect("quota");
                let nodes = allocator.nodes().await.expect("nodes");
                match allocator.deploy(&tenants[tenant], revision, &spec).await {
                    Ok(_) => {
                        deployed.insert((tenant, name), cpu);
                        // Nothing new on a node that takes nothing.
                        let after = allocator.placed(&id).await.expect("placed");
                        for slot in &after {
                            let was_there = before.iter().any(|b| {
                                b.node == slot.node
                                    && b.service == slot.service
                                    && b.replica == slot.replica
                            });
                            let state = nodes.iter().find(|n| n.name == slot.node).map(|n| n.state);
                            prop_assert!(
                                was_there || state == Some(NodeState::Active),
                                "a replica went to {} ({state:?})",
                                slot.node
                            );
                        }
                    }
                    Err(AllocatorError::Quota(_)) => {
                        // Refused for quota only when it really exceeds it.
                        let kept: u64 = before.iter().map(|p| p.cost.cpu_millis).sum();
                        let want_cpu = cpu * u64::from(replicas);
                        let over_cpu = limit
                            .cpu_millis
                            .is_some_and(|l| used.cpu_millis - kept + want_cpu > l);
                        let over_count = limit.containers.is_some_and(|l| {
                            used.containers - before.len() as u64 + u64::from(replicas) > l
                        });
                        prop_assert!(over_cpu || over_count, "a deploy within quota was refused");
                    }
                    Err(AllocatorError::Placement(e)) => {
                        // Refused for room only when no single active node could hold
                        // the whole topology (besides what it holds of it already).
                        for n in nodes.iter().filter(|n| n.state == NodeState::Active) {
                            let mine: Vec<_> = before.iter().filter(|p| p.node == n.name).collect();
                            let free_cpu = n.capacity.cpu_millis.unwrap_or(u64::MAX)
                                - n.used.cpu_millis
                                + mine.iter().map(|p| p.cost.cpu_millis).sum::<u64>();
                            let free_count = n.capacity.containers.unwrap_or(u64::MAX)
                                - n.used.containers
                                + mine.len() as u64;
                            let fits = cpu * u64::from(replicas) <= free_cpu
                                && u64::from(replicas) <= free_count;
                            prop_assert!(!fits, "{} could hold it all, yet: {e}", n.name);
                        }
                    }
                    Err(e) => prop_assert!(false, "unexpected: {e}"),
                }
            }
            Step::Die { node } => {
                let node = &names[node % names.len()];
                allocator.declare_dead(node, 1).await.expect("declare dead");
                // Every replica that can move has moved: one still on the dead node
                // belongs to a topology that cannot be placed now.
                for ((tenant, name), cpu) in &deployed {
                    let id = TopologyRef {
                        tenant: tenants[*tenant].clone(),
                        topology: format!("app{name}"),
                    };
                    let slots = allocator.placed(&id).await.expect("placed");
                    if slots.iter().any(|s| &s.node == node) {
                        revision += 1;
                        let spec = topology(&id.topology, slots.len() as u32, *cpu);
                        let again = allocator.deploy(&id.tenant, revision, &spec).await;
                        prop_assert!(
                            again.is_err(),
                            "{id} could move off dead {node} but did not"
                        );
                    }
                }
            }
            Step::Return { node } => {
                let node = &names[node % names.len()];
                allocator.declare_alive(node).await.expect("alive");
            }
            Step::Rebalance { budget, settle } => {
                report_running(&allocator, &names).await;
                let now = berth_allocator::liveness::now_ms();
                let moved = allocator.rebalance(budget, now).await.expect("rebalance");
                // No service has more replicas moving than the budget.
                let mut per_service: BTreeMap<(String, String), u32> = BTreeMap::new();
                for m in &moved {
                    *per_service
                        .entry((m.id.to_string(), m.service.clone()))
                        .or_default() += 1;
                }
                prop_assert!(per_service.values().all(|n| *n <= budget), "{moved:?}");
                for m in &moved {
                    let nodes = allocator.nodes().await.expect("nodes");
                    let to = nodes.iter().find(|n| n.name == m.to).expect("target");
                    prop_assert_eq!(
                        to.state,
                        NodeState::Active,
                        "moved onto a node that is not open"
                    );
                }
                if settle {
                    report_running(&allocator, &names).await;
                }
            }
        }
        check(&allocator, &tenants, &deployed).await?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_node_over_capacity_no_tenant_over_quota_no_refusal_that_fits(
        capacities in prop::collection::vec((500u64..6000, 1u64..10), 1..6),
        quotas in prop::collection::vec((500u64..8000, 1u64..12), 1..3),
        steps in prop::collection::vec(step(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run(capacities, quotas, steps))?;
    }
}

/// A large pool whose least-loaded nodes (by containers) cannot take a replica: the
/// deploy looks further rather than being refused, and lands on the one node that fits.
#[tokio::test]
async fn a_deploy_is_never_refused_for_what_the_least_loaded_nodes_cannot_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    // 200 empty nodes with a tenth of a core each, and one busier node with two cores.
    for i in 0..200 {
        let small = Limit {
            cpu_millis: Some(100),
            memory_bytes: None,
            containers: Some(10),
        };
        allocator
            .upsert_node(&format!("small{i:03}"), small, &BTreeMap::new())
            .await
            .expect("node");
    }
    let big = Limit {
        cpu_millis: Some(2000),
        memory_bytes: None,
        containers: Some(10),
    };
    allocator
        .upsert_node("big", big, &BTreeMap::new())
        .await
        .expect("node");
    allocator
        .set_quota("t", Limit::default())
        .await
        .expect("quota");
    // One replica on the big node puts it last among the least-loaded.
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "filler.yaml",
        dir: Path::new("."),
        default_name: "filler",
        vars: &vars,
        files: &LocalFiles,
    };
    let filler = load(
        "services:\n  a:\n    image: x\n    deploy:\n      resources: {limits: {cpus: '0.1'}}\n      placement:\n        constraints: [\"node.hostname == big\"]\n",
        &options,
    )
    .expect("valid")
    .topology;
    allocator
        .deploy("t", 1, &filler)
        .await
        .expect("placed on big");
    allocator
        .deploy("t", 2, &topology("heavy", 1, 1500))
        .await
        .expect("one node can hold it, so it is placed");
    let heavy = TopologyRef {
        tenant: "t".into(),
        topology: "heavy".into(),
    };
    assert_eq!(
        allocator.placed(&heavy).await.expect("placed")[0].node,
        "big"
    );
}
