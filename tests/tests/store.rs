//! The allocator and the tenant service over real databases: every test runs on SQLite
//! and on PostgreSQL.

use std::path::Path;
use std::sync::Arc;

use berth_allocator::{Allocator, AllocatorError, DefaultRequest, Limit, Resources};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};
use berth_tests::postgres::fresh_database;
use sea_orm::DatabaseConnection;

/// Runs an async test body once on SQLite and once on PostgreSQL.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("state.db").display());
                super::$name(super::connect(&url).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let url = berth_tests::postgres::fresh_database(stringify!($name)).await;
                super::$name(super::connect(&url).await).await;
            }
        }
    )*};
}

on_both_databases!(
    a_deploy_reserves_quota_and_spreads_replicas,
    a_deploy_over_quota_is_refused_whole,
    scaling_down_below_a_lowered_quota_is_allowed_and_remove_releases,
    a_node_sees_only_its_own_slots,
    the_tenant_service_stores_a_revision_only_when_the_spec_changes,
    concurrent_deploys_at_the_quota_edge_never_exceed_it,
    concurrent_deploys_of_many_tenants_never_overfill_a_node,
    the_ledger_detects_an_edited_row,
    the_ledger_detects_a_removed_row,
    the_ledger_detects_reordered_rows,
    an_anchor_kept_elsewhere_catches_a_history_rewritten_whole_or_cut_short,
    the_witness_anchors_each_new_head_and_stops_at_a_broken_chain,
    concurrent_appends_keep_one_unbroken_chain,
    concurrent_wrong_passwords_each_count_and_the_right_one_waits,
    root_keys_in_the_database_are_sealed_and_shared_by_the_servers,
    a_status_is_stamped_anew_by_every_change_it_is_built_from,
    a_node_another_server_cordoned_gets_no_new_replica_from_an_older_view,
    a_topology_keeps_its_newest_events_in_order,
    a_deploy_that_waited_for_the_tenant_sees_what_was_placed_meanwhile,
);

async fn connect(url: &str) -> DatabaseConnection {
    berth_allocator::database::connect(url)
        .await
        .expect("connect")
}

fn topology(yaml: &str) -> Topology {
    let vars = Variables::default();
    let options = LoadOptions {
        file_name: "t.yaml",
        dir: Path::new("."),
        default_name: "t",
        vars: &vars,
        files: &LocalFiles,
    };
    load(yaml, &options).expect("valid topology").topology
}

fn app(name: &str, replicas: u32) -> Topology {
    topology(&format!(
        "name: {name}\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: {replicas}\n      resources: {{limits: {{cpus: '0.5', memory: 64m}}}}\n  db:\n    image: y\n"
    ))
}

async fn allocator(db: DatabaseConnection) -> Allocator {
    let allocator = Allocator::open(
        db,
        DefaultRequest {
            cpu_millis: 100,
            memory_bytes: 0,
        },
    )
    .await
    .expect("migrate");
    for node in ["n1", "n2", "n3"] {
        allocator
            .upsert_node(
                node,
                Limit {
                    cpu_millis: Some(40_000),
                    memory_bytes: None,
                    containers: Some(100),
                },
                &Default::default(),
            )
            .await
            .expect("node");
    }
    allocator
}

fn id(topology: &str) -> TopologyRef {
    TopologyRef {
        tenant: "acme".into(),
        topology: topology.into(),
    }
}

async fn a_deploy_reserves_quota_and_spreads_replicas(db: DatabaseConnection) {
    let allocator = allocator(db).await;
    allocator
        .set_quota(
            "acme",
            Limit {
                cpu_millis: Some(2000),
                memory_bytes: None,
                containers: Some(10),
            },
        )
        .await
        .expect("quota");
    let deployment = allocator
        .deploy("acme", 1, &app("app", 3))
        .await
        .expect("fits");
    assert_eq!(
        deployment.nodes().count(),
        3,
        "three web replicas spread over three nodes"
    );
    let (_, used) = allocator.quota("acme").await.expect("quota");
    assert_eq!(
        used,
        Resources {
            cpu_millis: 3 * 500 + 100,
            memory_bytes: (3 * 64) << 20,
            containers: 4
        }
    );
}

async fn a_deploy_over_quota_is_refused_whole(db: DatabaseConnection) {
    let allocator = allocator(db).await;
    allocator
        .set_quota(
            "acme",
            Limit {
                cpu_millis: Some(1000),
                memory_bytes: None,
                containers: Some(10),
            },
        )
        .await
        .expect("quota");
    allocator
        .deploy("acme", 1, &app("app", 1))
        .await
        .expect("fits");
    let before = allocator.quota("acme").await.expect("quota");
    let placed_before = allocator
        .assignment_for("n1", &id("app"))
        .await
        .expect("read");

    let err = allocator
        .deploy("acme", 2, &app("app", 3))
        .await
        .expect_err("over quota");
    assert!(matches!(err, AllocatorError::Quota(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("CPU would be 1.6 of 1 cores (over by 0.6)"),
        "{text}"
    );
    assert_eq!(
        allocator.quota("acme").await.expect("quota"),
        before,
        "usage changed"
    );
    assert_eq!(
        allocator
            .assignment_for("n1", &id("app"))
            .await
            .expect("read"),
        placed_before,
        "assignments changed"
    );
    // An older revision arriving after a newer one was placed is refused, so the
    // allocator never takes a topology back to what its owner already changed.
    allocator
        .deploy("acme", 3, &app("app", 1))
        .await
        .expect("fits");
    let err = allocator
        .deploy("acme", 2, &app("app", 0))
        .await
        .expect_err("stale");
    assert!(
        matches!(
            err,
            AllocatorError::Stale {
                placed: 3,
                offered: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(allocator.placed(&id("app")).await.expect("placed").len(), 2);
}

async fn scaling_down_below_a_lowered_quota_is_allowed_and_remove_releases(db: DatabaseConnection) {
    let allocator = allocator(db).await;
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    allocator
        .deploy("acme", 1, &app("app", 3))
        .await
        .expect("fits");
    allocator
        .set_quota(
            "acme",
            Limit {
                cpu_millis: None,
                memory_bytes: None,
                containers: Some(2),
            },
        )
        .await
        .expect("lower");
    allocator
        .deploy("acme", 2, &app("app", 2))
        .await
        .expect("shrinking is never refused");
    assert!(matches!(
        allocator.deploy("acme", 3, &app("app", 3)).await,
        Err(AllocatorError::Quota(_))
    ));
    let nodes = allocator.remove(&id("app")).await.expect("remove");
    assert!(!nodes.is_empty());
    let (_, used) = allocator.quota("acme").await.expect("quota");
    assert_eq!(used, Resources::default());
}

async fn a_node_sees_only_its_own_slots(db: DatabaseConnection) {
    let allocator = allocator(db).await;
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    let deployment = allocator
        .deploy("acme", 1, &app("app", 3))
        .await
        .expect("fits");
    for (node, expected) in &deployment.by_node() {
        let seen = allocator
            .assignment_for(node, &id("app"))
            .await
            .expect("read")
            .expect("placed");
        assert_eq!(&seen, expected);
        assert!(seen.slots.len() < 4, "{node} sees every slot");
        assert!(
            seen.services
                .keys()
                .all(|s| seen.slots.iter().any(|slot| &slot.service == s)),
            "{node} sees services it does not run"
        );
    }
}

async fn the_tenant_service_stores_a_revision_only_when_the_spec_changes(db: DatabaseConnection) {
    let tenants = berth_tenant_service::TenantService::open(db)
        .await
        .expect("migrate");
    tenants.ensure_tenant("acme", 1).await.expect("tenant");
    let first = tenants
        .propose_revision("acme", &app("app", 1), 2)
        .await
        .expect("store");
    assert_eq!((first.revision, first.is_new), (1, true));
    // Proposed is not current: nothing reads it until it is settled.
    assert!(matches!(
        tenants.current("acme", "app").await,
        Err(berth_tenant_service::TenantError::UnknownTopology { .. })
    ));
    tenants
        .settle_revision("acme", "app", 1, 2)
        .await
        .expect("settle");
    let again = tenants
        .propose_revision("acme", &app("app", 1), 3)
        .await
        .expect("store");
    assert_eq!((again.revision, again.is_new), (1, false));
    let changed = tenants
        .propose_revision("acme", &app("app", 2), 4)
        .await
        .expect("store");
    assert_eq!((changed.revision, changed.is_new), (2, true));
    assert_eq!(
        tenants.current("acme", "app").await.expect("read").topology,
        app("app", 1),
        "a proposal is not visible before it is placed"
    );
    // A proposal refused and forgotten leaves the current revision as it was.
    tenants
        .discard_revision("acme", "app", 2)
        .await
        .expect("discard");
    let refused_then = tenants
        .propose_revision("acme", &app("app", 3), 5)
        .await
        .expect("store");
    assert_eq!(refused_then.revision, 2, "a discarded number is free again");
    tenants
        .settle_revision("acme", "app", 2, 5)
        .await
        .expect("settle");
    // Settling an older revision after a newer one keeps the newer one.
    tenants
        .settle_revision("acme", "app", 1, 6)
        .await
        .expect("settle");
    assert_eq!(
        tenants.current("acme", "app").await.expect("read").topology,
        app("app", 3)
    );
    assert!(tenants.delete("acme", "app").await.expect("delete"));
    let after_delete = tenants
        .propose_revision("acme", &app("app", 1), 7)
        .await
        .expect("store");
    assert_eq!(after_delete.revision, 3, "revision numbers never repeat");
    assert!(matches!(
        tenants.propose_revision("ghost", &app("app", 1), 8).await,
        Err(berth_tenant_service::TenantError::UnknownTenant(_))
    ));
}

/// Many clients deploy at once for one tenant whose quota admits only some of them:
/// exactly the quota is admitted, every other deploy is refused for the quota, and the
/// recorded usage matches the recorded assignments.
async fn concurrent_deploys_at_the_quota_edge_never_exceed_it(db: DatabaseConnection) {
    const QUOTA: u64 = 10;
    const CLIENTS: usize = 32;
    let allocator = Arc::new(allocator(db).await);
    allocator
        .set_quota(
            "acme",
            Limit {
                cpu_millis: None,
                memory_bytes: None,
                containers: Some(QUOTA),
            },
        )
        .await
        .expect("quota");
    let single = |name: String| topology(&format!("name: {name}\nservices:\n  s:\n    image: x\n"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let allocator = Arc::clone(&allocator);
        let topology = single(format!("app{i}"));
        tasks.spawn(async move { allocator.deploy("acme", 1, &topology).await });
    }
    let (mut admitted, mut refused) = (0u64, 0usize);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            Ok(_) => admitted += 1,
            Err(AllocatorError::Quota(_)) => refused += 1,
            Err(other) => panic!("a deploy failed for another reason than the quota: {other}"),
        }
    }
    assert_eq!(
        admitted, QUOTA,
        "admitted {admitted} deploys against a quota of {QUOTA}"
    );
    assert_eq!(refused, CLIENTS - QUOTA as usize);
    let (_, used) = allocator.quota("acme").await.expect("quota");
    assert_eq!(used.containers, QUOTA);
    let mut placed = 0;
    for i in 0..CLIENTS {
        for node in ["n1", "n2", "n3"] {
            if let Some(a) = allocator
                .assignment_for(node, &id(&format!("app{i}")))
                .await
                .expect("read")
            {
                placed += a.slots.len() as u64;
            }
        }
    }
    assert_eq!(
        placed, QUOTA,
        "recorded assignments disagree with recorded usage"
    );
}

/// Many tenants deploy at once into a pool with room for only some of their replicas,
/// each deploy spreading over the same least-loaded nodes: no deploy fails for another
/// reason than the room (concurrent reservations take node rows in one order, so none
/// deadlocks), no node holds more than its capacity, and what each node has reserved
/// is what its slots add up to.
async fn concurrent_deploys_of_many_tenants_never_overfill_a_node(db: DatabaseConnection) {
    const NODES: usize = 6;
    const ROOM: u64 = 10;
    const TENANTS: usize = 8;
    const EACH: usize = 4;
    const REPLICAS: u32 = 5;
    let allocator = Arc::new(
        Allocator::open(db, DefaultRequest::default())
            .await
            .expect("migrate"),
    );
    let nodes: Vec<String> = (1..=NODES).map(|i| format!("p{i}")).collect();
    for node in &nodes {
        let room = Limit {
            cpu_millis: None,
            memory_bytes: None,
            containers: Some(ROOM),
        };
        allocator
            .upsert_node(node, room, &Default::default())
            .await
            .expect("node");
    }
    let unlimited = Limit {
        cpu_millis: None,
        memory_bytes: None,
        containers: None,
    };
    for t in 0..TENANTS {
        allocator
            .set_quota(&format!("t{t}"), unlimited)
            .await
            .expect("quota");
    }
    let spread = |name: String| {
        topology(&format!(
            "name: {name}\nservices:\n  s:\n    image: x\n    deploy:\n      replicas: {REPLICAS}\n"
        ))
    };
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TENANTS {
        for k in 0..EACH {
            let allocator = Arc::clone(&allocator);
            let topology = spread(format!("app{k}"));
            tasks.spawn(async move {
                let tenant = format!("t{t}");
                let outcome = allocator.deploy(&tenant, 1, &topology).await;
                (tenant, topology.name, outcome)
            });
        }
    }
    let (mut placed, mut refused) = (Vec::new(), 0);
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            (tenant, topology, Ok(_)) => placed.push(TopologyRef { tenant, topology }),
            (_, _, Err(AllocatorError::Placement(_) | AllocatorError::Contended(_))) => {
                refused += 1
            }
            (_, _, Err(other)) => panic!("a deploy failed for another reason than room: {other}"),
        }
    }
    assert!(
        !placed.is_empty() && refused > 0,
        "the pool should admit some deploys and refuse others: {} placed, {refused} refused",
        placed.len()
    );
    let mut slots_on = std::collections::BTreeMap::<String, u64>::new();
    for id in &placed {
        for node in &nodes {
            if let Some(a) = allocator.assignment_for(node, id).await.expect("read") {
                *slots_on.entry(node.clone()).or_default() += a.slots.len() as u64;
            }
        }
    }
    assert_eq!(
        slots_on.values().sum::<u64>(),
        placed.len() as u64 * u64::from(REPLICAS),
        "every admitted deploy has all its slots"
    );
    for node in allocator.nodes().await.expect("nodes") {
        let slots = slots_on.get(&node.name).copied().unwrap_or(0);
        assert!(
            slots <= ROOM,
            "{} holds {slots} replicas, room for {ROOM}",
            node.name
        );
        assert_eq!(
            node.used.containers, slots,
            "{} reserves {} containers for {slots} slots",
            node.name, node.used.containers
        );
    }
}

#[tokio::test]
async fn the_harness_gives_each_test_its_own_postgres_database() {
    let a = fresh_database("isolation").await;
    let b = fresh_database("isolation").await;
    assert_ne!(a, b);
}

/// A ledger over `db` holding five entries, and the raw connection to tamper with it.
async fn ledger_of_five(
    db: DatabaseConnection,
) -> (berth_allocator::ledger::Ledger, DatabaseConnection) {
    use berth_allocator::ledger::Ledger;
    allocator(db.clone()).await; // migrates
    let ledger = Ledger::new(db.clone());
    for i in 1..=5 {
        mint_entry(&ledger, i, &format!("dev{i}")).await;
    }
    let intact = ledger.verify().await.expect("verify");
    assert!(intact.intact, "{intact:?}");
    assert_eq!(intact.entries, 5);
    (ledger, db)
}

/// Appends the `i`th entry of a test ledger: a session minted for `user`.
async fn mint_entry(ledger: &berth_allocator::ledger::Ledger, i: i64, user: &str) {
    use berth_allocator::ledger::{EntryKind, NewEntry};
    ledger
        .append(
            NewEntry {
                kind: EntryKind::Minted,
                actor: "platform".into(),
                tenant: "acme".into(),
                subject: format!("token-{i}"),
                detail: format!("user(\"{user}\");"),
                revocation_ids: vec![format!("{i:02x}")],
            },
            1_000 + i,
        )
        .await
        .expect("append");
}

async fn tamper(db: &DatabaseConnection, sql: &str) {
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(sql).await.expect("tamper");
}

async fn the_ledger_detects_an_edited_row(db: DatabaseConnection) {
    let (ledger, db) = ledger_of_five(db).await;
    tamper(
        &db,
        "UPDATE audit_entries SET detail = 'user(\"mallory\");' WHERE seq = 3",
    )
    .await;
    let found = ledger.verify().await.expect("verify");
    assert!(!found.intact);
    assert_eq!(
        found.problem.as_deref(),
        Some("entry 3 was changed after it was written")
    );
    assert_eq!(found.entries, 2);
}

async fn the_ledger_detects_a_removed_row(db: DatabaseConnection) {
    let (ledger, db) = ledger_of_five(db).await;
    tamper(&db, "DELETE FROM audit_entries WHERE seq = 2").await;
    let found = ledger.verify().await.expect("verify");
    assert!(!found.intact);
    assert_eq!(
        found.problem.as_deref(),
        Some("entry 2 is missing (the next entry is 3)")
    );
    // Renumbering the rest to close the gap does not hide it either.
    tamper(&db, "UPDATE audit_entries SET seq = seq - 1 WHERE seq > 2").await;
    assert_broken(&ledger, "entry 2 does not follow entry 1").await;
}

async fn the_ledger_detects_reordered_rows(db: DatabaseConnection) {
    let (ledger, db) = ledger_of_five(db).await;
    tamper(&db, "UPDATE audit_entries SET seq = 100 WHERE seq = 3").await;
    tamper(&db, "UPDATE audit_entries SET seq = 3 WHERE seq = 4").await;
    tamper(&db, "UPDATE audit_entries SET seq = 4 WHERE seq = 100").await;
    assert_broken(&ledger, "entry 3 does not follow entry 2").await;
}

async fn an_anchor_kept_elsewhere_catches_a_history_rewritten_whole_or_cut_short(
    db: DatabaseConnection,
) {
    use berth_allocator::ledger::{Anchor, Ledger};
    let (ledger, db) = ledger_of_five(db).await;
    let kept: Anchor = ledger
        .verify()
        .await
        .expect("verify")
        .anchor
        .parse()
        .expect("an anchor");
    assert_eq!(kept.seq, 5);
    let held = ledger.verify_against(Some(&kept)).await.expect("verify");
    assert!(held.intact, "{held:?}");

    // Cut short: the last two entries removed. The chain left checks out alone.
    tamper(&db, "DELETE FROM audit_entries WHERE seq > 3").await;
    assert!(ledger.verify().await.expect("verify").intact);
    let cut = ledger.verify_against(Some(&kept)).await.expect("verify");
    assert!(!cut.intact, "{cut:?}");
    assert_eq!(
        cut.problem.as_deref(),
        Some(
            "the ledger ends at entry 3, before the anchored entry 5: entries were removed from its end"
        )
    );

    // Rewritten whole: every entry written again, one of them changed, each hash
    // recomputed by the ledger's own code, as someone with the database and the code
    // could. The chain checks out alone; not against the anchor.
    tamper(&db, "DELETE FROM audit_entries").await;
    let forger = Ledger::new(db.clone());
    for i in 1..=5 {
        let who = if i == 3 {
            "mallory".to_owned()
        } else {
            format!("dev{i}")
        };
        mint_entry(&forger, i, &who).await;
    }
    assert!(forger.verify().await.expect("verify").intact);
    let rewritten = forger.verify_against(Some(&kept)).await.expect("verify");
    assert!(!rewritten.intact, "{rewritten:?}");
    assert_eq!(
        rewritten.problem.as_deref(),
        Some("entry 5 is not the one anchored: the history up to it was rewritten")
    );
    assert!("5:nothex".parse::<Anchor>().is_err());
    assert!("0:".parse::<Anchor>().is_err());
}

async fn the_witness_anchors_each_new_head_and_stops_at_a_broken_chain(db: DatabaseConnection) {
    use berth_allocator::ledger::Ledger;
    use berth_allocator::witness::{Round, Witness};
    let dir = tempfile::tempdir().expect("tempdir");
    let witness = Witness::new(dir.path().join("ledger-witness"));
    let (ledger, db) = ledger_of_five(db).await;
    let round = |n: i64| {
        let (witness, ledger) = (witness.clone(), ledger.clone());
        async move { witness.round(&ledger, n).await.expect("a round") }
    };
    let anchored = |round: Round| match round {
        Round::Anchored(a) => a,
        other => panic!("not anchored: {other:?}"),
    };
    let five = anchored(round(1).await);
    assert_eq!(five.seq, 5);
    assert_eq!(round(2).await, Round::Unchanged(five.clone()));
    mint_entry(&ledger, 6, "dev6").await;
    let six = anchored(round(3).await);
    assert_eq!(six.seq, 6);
    let lines = std::fs::read_to_string(witness.path()).expect("the file");
    assert_eq!(lines, format!("{five} 1\n{six} 3\n"));

    // An entry after the anchor changed: found, and nothing more is anchored.
    mint_entry(&ledger, 7, "dev7").await;
    tamper(
        &db,
        "UPDATE audit_entries SET detail = 'user(\"mallory\");' WHERE seq = 7",
    )
    .await;
    let Round::Broken(found) = round(4).await else {
        panic!("an edited entry went unseen");
    };
    assert_eq!(
        found.problem.as_deref(),
        Some("entry 7 was changed after it was written")
    );

    // Rewritten whole, each hash recomputed: the chain checks out alone, but not
    // against the witness, which keeps its last anchor.
    tamper(&db, "DELETE FROM audit_entries").await;
    let forger = Ledger::new(db.clone());
    for i in 1..=7 {
        let who = if i == 2 {
            "mallory".to_owned()
        } else {
            format!("dev{i}")
        };
        mint_entry(&forger, i, &who).await;
    }
    assert!(forger.verify().await.expect("verify").intact);
    let Round::Broken(found) = round(5).await else {
        panic!("a rewritten history went unseen");
    };
    assert_eq!(
        found.problem.as_deref(),
        Some("entry 6 is not the one anchored: the history up to it was rewritten")
    );
    // Cut short before the anchor: found too.
    tamper(&db, "DELETE FROM audit_entries WHERE seq > 4").await;
    let Round::Broken(found) = round(6).await else {
        panic!("a history cut short went unseen");
    };
    assert_eq!(
        found.problem.as_deref(),
        Some(
            "the ledger ends at entry 4, before the anchored entry 6: entries were removed from its end"
        )
    );
    assert_eq!(
        std::fs::read_to_string(witness.path()).expect("the file"),
        lines,
        "a broken chain was anchored"
    );
}

async fn concurrent_appends_keep_one_unbroken_chain(db: DatabaseConnection) {
    use berth_allocator::ledger::{EntryKind, Ledger, NewEntry};
    allocator(db.clone()).await;
    // Two ledgers over one database stand for two gateway processes.
    let (a, b) = (Ledger::new(db.clone()), Ledger::new(db));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let ledger = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            ledger
                .append(
                    NewEntry {
                        kind: EntryKind::Decision,
                        actor: format!("node-{i}"),
                        tenant: "*".into(),
                        subject: format!("call-{i}"),
                        detail: "allowed".into(),
                        revocation_ids: Vec::new(),
                    },
                    i,
                )
                .await
                .expect("append")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let found = a.verify().await.expect("verify");
    assert!(found.intact, "{found:?}");
    assert_eq!(found.entries, 40);
}

/// Asserts that verifying `ledger` fails with a problem starting with `problem`.
async fn assert_broken(ledger: &berth_allocator::ledger::Ledger, problem: &str) {
    let found = ledger.verify().await.expect("verify");
    assert!(!found.intact, "{found:?}");
    assert!(
        found
            .problem
            .as_deref()
            .unwrap_or_default()
            .starts_with(problem),
        "{found:?}"
    );
}

/// The login throttle cannot be raced: concurrent wrong passwords are each counted,
/// only those up to the limit have their password checked, and the right password
/// from the same source then waits for the lock like any other. The owner still logs in from
/// a source that has not failed; one source cannot try name after name; a name
/// without a user is throttled as a user's is.
async fn concurrent_wrong_passwords_each_count_and_the_right_one_waits(db: DatabaseConnection) {
    use berth_protocol::capability::Role;
    use berth_tenant_service::entity::login_throttle;
    use berth_tenant_service::throttle::{FREE_FAILURES, Key, MAX_LOCKOUT_MS, SOURCE_RATE};
    use berth_tenant_service::{LoginError, TenantService};
    use sea_orm::EntityTrait;

    const PASSWORD: &str = "the-right-password-1";
    const GUESSES: usize = 40;
    const ATTACKER: &str = "192.0.2.66";
    let tenants = TenantService::open(db.clone()).await.expect("open");
    tenants.ensure_tenant("acme", 0).await.expect("tenant");
    tenants
        .create_user("acme", "dev", PASSWORD, Role::Developer, 0)
        .await
        .expect("user");
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..GUESSES {
        let tenants = tenants.clone();
        guesses.spawn(async move {
            tenants
                .login("acme", "dev", &format!("guess-{i:04}"), ATTACKER, 0)
                .await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = guesses.join_next().await {
        outcomes.push(outcome.expect("task"));
    }
    let checked = outcomes
        .iter()
        .filter(|o| matches!(o, Err(LoginError::BadCredentials)))
        .count();
    let throttled = outcomes
        .iter()
        .filter(|o| matches!(o, Err(LoginError::Throttled { .. })))
        .count();
    assert_eq!(checked, FREE_FAILURES as usize, "{outcomes:?}");
    assert_eq!(throttled, GUESSES - FREE_FAILURES as usize);
    let pair = |source: &'static str| Key::Pair {
        tenant: "acme",
        name: "dev",
        source,
    };
    let counted = |db: DatabaseConnection, key: Key<'static>| async move {
        login_throttle::Entity::find_by_id(key.stored())
            .one(&db)
            .await
            .expect("read")
            .map_or(0, |row| row.attempts)
    };
    // Every attempt was counted, the refused ones too.
    assert_eq!(counted(db.clone(), pair(ATTACKER)).await, GUESSES as i32);
    // The attacker's source stays locked, even for the right password...
    assert!(matches!(
        tenants.login("acme", "dev", PASSWORD, ATTACKER, 1).await,
        Err(LoginError::Throttled { .. })
    ));
    // ...while the owner, from an address that has not failed, logs in.
    assert_eq!(
        tenants
            .login("acme", "dev", PASSWORD, "198.51.100.7", 1)
            .await
            .ok(),
        Some(Role::Developer)
    );
    let later = MAX_LOCKOUT_MS + 1;
    assert_eq!(
        tenants
            .login("acme", "dev", PASSWORD, ATTACKER, later)
            .await
            .ok(),
        Some(Role::Developer)
    );
    assert_eq!(counted(db.clone(), pair(ATTACKER)).await, 0);
    // One source trying name after name is held to its rate: a name known or not,
    // the answers are the same.
    let mut answers = Vec::new();
    for i in 0..60 {
        let name = if i == 45 {
            "dev".to_owned()
        } else {
            format!("user-{i}")
        };
        answers.push(
            tenants
                .login("acme", &name, "guess", "203.0.113.9", 0)
                .await,
        );
    }
    let tried = answers
        .iter()
        .filter(|a| matches!(a, Err(LoginError::BadCredentials)))
        .count();
    assert_eq!(tried, SOURCE_RATE.burst as usize, "{answers:?}");
    assert!(
        answers[tried..]
            .iter()
            .all(|a| matches!(a, Err(LoginError::Throttled { .. }))),
        "{answers:?}"
    );
    // A name without a user is throttled as a user's is.
    let mut answers = Vec::new();
    for _ in 0..=FREE_FAILURES {
        answers.push(
            tenants
                .login("acme", "nobody", "guess", "192.0.2.1", 0)
                .await,
        );
    }
    assert!(
        answers[..FREE_FAILURES as usize]
            .iter()
            .all(|a| matches!(a, Err(LoginError::BadCredentials))),
        "{answers:?}"
    );
    assert!(
        matches!(answers.last(), Some(Err(LoginError::Throttled { .. }))),
        "{answers:?}"
    );
}

/// Servers that share only the database: the root keys and the admin token are there,
/// sealed under the secrets key each server is given; what one rotates or retires the
/// others take; a dump of the rows holds no private key; another key opens nothing.
async fn root_keys_in_the_database_are_sealed_and_shared_by_the_servers(db: DatabaseConnection) {
    use berth_allocator::entity::root_key;
    use berth_allocator::root_keys::RootKeys;
    use berth_allocator::sealing::{SealingKey, shared_secret};
    use sea_orm::EntityTrait;
    Allocator::open(db.clone(), DefaultRequest::default())
        .await
        .expect("migrations");
    let hex = SealingKey::generate_hex();
    let seal = || SealingKey::from_hex(&hex).expect("key");
    // Two servers starting at once agree on one first key.
    let (a, b) = tokio::join!(
        RootKeys::open_in_database(db.clone(), seal(), None),
        RootKeys::open_in_database(db.clone(), seal(), None)
    );
    let (a, b) = (a.expect("server a"), b.expect("server b"));
    assert_eq!(a.keyring().ids(), vec![1]);
    assert_eq!(b.keyring().ids(), vec![1]);
    assert_eq!(a.signing().1.public(), b.signing().1.public());
    assert!(!b.reload().await.expect("reload"), "nothing changed yet");

    let second = a.rotate(1_000).await.expect("rotate");
    assert_eq!(second.id, 2);
    assert!(b.reload().await.expect("reload"));
    assert_eq!(b.keyring().ids(), vec![1, 2]);
    assert_eq!(b.signing().1.public(), a.signing().1.public());

    // Rotations through both at once are both kept, under distinct ids.
    let (x, y) = tokio::join!(a.rotate(2_000), b.rotate(2_000));
    let mut ids = vec![x.expect("a rotates").id, y.expect("b rotates").id];
    ids.sort_unstable();
    assert_eq!(ids, vec![3, 4]);
    a.reload().await.expect("reload");
    assert_eq!(a.keyring().ids(), vec![1, 2, 3, 4]);

    // A retirement through b reaches a.
    b.retire(1, i64::MAX, std::time::Duration::ZERO, false)
        .await
        .expect("retire");
    assert!(a.reload().await.expect("reload"));
    assert_eq!(a.keyring().ids(), vec![2, 3, 4]);

    // The rows hold no private key in the clear.
    let signing = a.signing().1.private().to_bytes_hex();
    let rows = root_key::Entity::find().all(&db).await.expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| !r.sealed.contains(&signing)),
        "{rows:?}"
    );

    // A reload running beside a rotation on the same server (each server follows the
    // others on a timer) never brings back the key the rotation superseded, not even
    // for a moment.
    let reloading = {
        let a = a.clone();
        tokio::spawn(async move {
            loop {
                a.reload().await.expect("reload");
            }
        })
    };
    for at in 0..20 {
        let made = a.rotate(3_000 + at).await.expect("rotate");
        for _ in 0..5 {
            assert_eq!(a.signing().0, made.id, "rotation {at}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    reloading.abort();

    // A server given another secrets key opens nothing, and says why.
    let other = SealingKey::from_hex(&SealingKey::generate_hex()).expect("key");
    let refused = RootKeys::open_in_database(db.clone(), other, None)
        .await
        .expect_err("another key opened the root keys");
    let said = berth_protocol::error_chain(&refused);
    assert!(said.contains("same key"), "{said}");

    // The admin token: the first stored is every server's.
    let first = shared_secret(&db, &seal(), "admin-token", || "bat_first".to_owned())
        .await
        .expect("stored");
    let again = shared_secret(&db, &seal(), "admin-token", || "bat_second".to_owned())
        .await
        .expect("read");
    assert_eq!((first.as_str(), again.as_str()), ("bat_first", "bat_first"));
}

/// A replica of `id`'s service `web`, reported in `state`.
fn reported(id: &TopologyRef, state: &str) -> berth_protocol::node_api::ReplicaStatus {
    berth_protocol::node_api::ReplicaStatus {
        cpu_millis: None,
        tenant: id.tenant.clone(),
        topology: id.topology.clone(),
        service: "web".into(),
        replica: 1,
        generation: 1,
        state: state.into(),
        detail: String::new(),
    }
}

async fn a_status_is_stamped_anew_by_every_change_it_is_built_from(db: DatabaseConnection) {
    let allocator = allocator(db).await;
    let (shop, other) = (id("shop"), id("other"));
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("tenant");
    let before = allocator.view_stamp(&shop);
    allocator
        .deploy("acme", 1, &app("shop", 1))
        .await
        .expect("fits");
    let placed = allocator.view_stamp(&shop);
    assert_ne!(placed, before, "a placement restamps");
    assert_eq!(allocator.view_stamp(&shop), placed, "nothing changed since");

    let others = allocator.view_stamp(&other);
    allocator
        .record_statuses("n1", &[reported(&shop, "running")], 1)
        .await
        .expect("report");
    let running = allocator.view_stamp(&shop);
    assert_ne!(running, placed, "a report about its replicas restamps");
    assert_eq!(
        allocator.view_stamp(&other),
        others,
        "a report about another topology does not"
    );
    allocator.remove(&shop).await.expect("remove");
    assert_ne!(allocator.view_stamp(&shop), running, "a removal restamps");
}

/// Placement picks its candidates from a view of the nodes kept in memory; one server's
/// view does not see what another server just did, and the commit must catch it.
async fn a_node_another_server_cordoned_gets_no_new_replica_from_an_older_view(
    db: DatabaseConnection,
) {
    let first = allocator(db.clone()).await;
    let second = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("open");
    first
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    // The first server reads its view of the nodes: all three open.
    first
        .deploy("acme", 1, &app("warm", 1))
        .await
        .expect("fits");
    second.cordon("n1", true).await.expect("cordon");
    second.cordon("n2", true).await.expect("cordon");
    // Its view still has n1 and n2 open, and spreading prefers them for two of three
    // web replicas; the commit refuses them, and the deploy places again from the
    // nodes as they are.
    first
        .deploy("acme", 1, &app("fresh", 3))
        .await
        .expect("fits on n3");
    let placed = first.placed(&id("fresh")).await.expect("placed");
    assert_eq!(placed.len(), 4, "{placed:?}");
    assert!(
        placed.iter().all(|p| p.node == "n3"),
        "a replica went to a cordoned node: {placed:?}"
    );
}

fn light(replicas: u32) -> Topology {
    topology(&format!(
        "name: light\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: {replicas}\n      resources: {{limits: {{cpus: '0.01', memory: 8m}}}}\n"
    ))
}

/// Placement events are written a deploy at a time (as arrays on PostgreSQL): every
/// replica's, in the order placement made them, and only the newest are kept.
async fn a_topology_keeps_its_newest_events_in_order(db: DatabaseConnection) {
    use berth_allocator::events::{EventKind, KEPT};
    let allocator = allocator(db.clone()).await;
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    allocator.deploy("acme", 1, &light(3)).await.expect("fits");
    let events = allocator.events(&id("light"), 10).await.expect("events");
    let placed: Vec<(EventKind, u32)> = events.iter().map(|e| (e.kind, e.replica)).collect();
    assert_eq!(
        placed,
        [
            (EventKind::Placed, 3),
            (EventKind::Placed, 2),
            (EventKind::Placed, 1)
        ],
        "newest first: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.service == "web" && e.detail == format!("on {}", e.node)),
        "{events:?}"
    );

    // 3 + 247 placed, 249 removed, 249 placed again: more than are kept.
    allocator
        .deploy("acme", 2, &light(250))
        .await
        .expect("fits");
    allocator.deploy("acme", 3, &light(1)).await.expect("fits");
    allocator
        .deploy("acme", 4, &light(250))
        .await
        .expect("fits");
    let events = allocator.events(&id("light"), 1_000).await.expect("events");
    assert_eq!(events.len() as u64, KEPT);
    assert_eq!(
        (events[0].kind, events[0].replica),
        (EventKind::Placed, 250)
    );
    let removed = events
        .iter()
        .filter(|e| e.kind == EventKind::Removed)
        .count();
    assert_eq!(removed, 249, "every removal of the third deploy is kept");
    let oldest = events.last().expect("kept");
    assert_eq!((oldest.kind, oldest.replica), (EventKind::Placed, 249));

    // One deploy with more events than are kept: its newest are.
    for node in ["n4", "n5", "n6", "n7", "n8", "n9"] {
        let room = Limit {
            cpu_millis: None,
            memory_bytes: None,
            containers: Some(100),
        };
        allocator
            .upsert_node(node, room, &Default::default())
            .await
            .expect("node");
    }
    let big = topology(
        "name: big\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: 600\n      resources: {limits: {cpus: '0.01'}}\n",
    );
    allocator.deploy("acme", 1, &big).await.expect("fits");
    let events = allocator.events(&id("big"), 1_000).await.expect("events");
    let replicas: Vec<u32> = events.iter().map(|e| e.replica).collect();
    assert_eq!(replicas, (101..=600).rev().collect::<Vec<u32>>());
    assert!(events.iter().all(|e| e.kind == EventKind::Placed));
    let stored = sea_orm::ConnectionTrait::query_one_raw(
        &db,
        sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM replica_events WHERE topology = 'big'",
        ),
    )
    .await
    .expect("count")
    .and_then(|row| row.try_get::<i64>("", "n").ok());
    assert_eq!(
        stored,
        Some(KEPT as i64),
        "no more than are kept are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_committed_by_one_server_restamps_the_status_in_another() {
    let url = fresh_database("status_stamps_across_servers").await;
    let leader = allocator(connect(&url).await).await;
    let other = allocator(connect(&url).await).await;
    other.hear_others(&url).await.expect("listen");
    let app = id("app");
    let before = other.view_stamp(&app);
    leader
        .record_statuses("n1", &[reported(&app, "running")], 1)
        .await
        .expect("report");
    let started = std::time::Instant::now();
    while other.view_stamp(&app) == before {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the other server never heard of the report"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Another server's deploy of the same topology commits while this one waits for the
/// tenant's lock: this one then sees that deploy's revision, and an older revision is
/// refused rather than placed over a newer one. (On PostgreSQL a statement that waited
/// for a row lock sees other rows as they were when it began; the placement is read by
/// a statement after the lock.)
async fn a_deploy_that_waited_for_the_tenant_sees_what_was_placed_meanwhile(
    db: DatabaseConnection,
) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let allocator = allocator(db.clone()).await;
    allocator
        .set_quota(
            "acme",
            Limit {
                cpu_millis: Some(10_000),
                memory_bytes: None,
                containers: Some(20),
            },
        )
        .await
        .expect("quota");
    allocator
        .deploy("acme", 5, &app("app", 1))
        .await
        .expect("fits");
    let postgres = db.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    // The other server: holds the tenant's lock, places revision 7, commits later.
    let other = db.begin().await.expect("begin");
    let lock = match postgres {
        true => "SELECT tenant FROM quotas WHERE tenant = 'acme' FOR UPDATE",
        false => "UPDATE quotas SET containers_used = containers_used WHERE tenant = 'acme'",
    };
    other.execute_unprepared(lock).await.expect("lock");
    other
        .execute_unprepared(
            "UPDATE placements SET revision = 7 WHERE tenant = 'acme' AND topology = 'app'",
        )
        .await
        .expect("place revision 7");
    let waiting = {
        let allocator = allocator.clone();
        tokio::spawn(async move { allocator.deploy("acme", 6, &app("app", 2)).await })
    };
    // Until the deploy waits for the lock (PostgreSQL says so; SQLite's wait is a
    // busy handler, not visible from outside, so a pause stands for it there).
    if postgres {
        berth_tests::postgres::until_one_waits_for_a_lock(&db, "the deploy").await;
    } else {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    other.commit().await.expect("commit");
    let err = waiting
        .await
        .expect("the deploy task")
        .expect_err("revision 6 over revision 7");
    assert!(
        matches!(
            err,
            AllocatorError::Stale {
                placed: 7,
                offered: 6,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(allocator.placed(&id("app")).await.expect("placed").len(), 2);
}
