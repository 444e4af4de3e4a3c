//! The allocator and the tenant service over a real SQLite database file.

use std::path::Path;

use berth_allocator::{Allocator, AllocatorError, DefaultRequest, Limit, Resources};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

async fn database(dir: &Path) -> DatabaseConnection {
    let mut options = ConnectOptions::new(format!(
        "sqlite://{}?mode=rwc",
        dir.join("state.db").display()
    ));
    options.sqlx_logging(false);
    Database::connect(options).await.expect("open SQLite")
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

fn app(replicas: u32) -> Topology {
    topology(&format!(
        "name: app\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: {replicas}\n      resources: {{limits: {{cpus: '0.5', memory: 64m}}}}\n  db:\n    image: y\n"
    ))
}

async fn allocator(dir: &Path) -> Allocator {
    let allocator = Allocator::open(
        database(dir).await,
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
                    cpu_millis: Some(4000),
                    memory_bytes: None,
                    containers: Some(100),
                },
            )
            .await
            .expect("node");
    }
    allocator
}

#[tokio::test]
async fn a_deploy_reserves_quota_and_spreads_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allocator = allocator(dir.path()).await;
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
    let deployment = allocator.deploy("acme", 1, &app(3)).await.expect("fits");
    assert_eq!(
        deployment.by_node.len(),
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

#[tokio::test]
async fn a_deploy_over_quota_is_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allocator = allocator(dir.path()).await;
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
    allocator.deploy("acme", 1, &app(1)).await.expect("fits");
    let before = allocator.quota("acme").await.expect("quota");
    let id = TopologyRef {
        tenant: "acme".into(),
        topology: "app".into(),
    };
    let placed_before = allocator.assignment_for("n1", &id).await.expect("read");

    let err = allocator
        .deploy("acme", 2, &app(3))
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
        allocator.assignment_for("n1", &id).await.expect("read"),
        placed_before,
        "assignments changed"
    );
}

#[tokio::test]
async fn scaling_down_below_a_lowered_quota_is_allowed_and_remove_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allocator = allocator(dir.path()).await;
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    allocator.deploy("acme", 1, &app(3)).await.expect("fits");
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
        .deploy("acme", 2, &app(2))
        .await
        .expect("shrinking is never refused");
    let id = TopologyRef {
        tenant: "acme".into(),
        topology: "app".into(),
    };
    let nodes = allocator.remove(&id).await.expect("remove");
    assert!(!nodes.is_empty());
    let (_, used) = allocator.quota("acme").await.expect("quota");
    assert_eq!(used, Resources::default());
}

#[tokio::test]
async fn a_node_sees_only_its_own_slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allocator = allocator(dir.path()).await;
    allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    let deployment = allocator.deploy("acme", 1, &app(3)).await.expect("fits");
    let id = TopologyRef {
        tenant: "acme".into(),
        topology: "app".into(),
    };
    for (node, expected) in &deployment.by_node {
        let seen = allocator
            .assignment_for(node, &id)
            .await
            .expect("read")
            .expect("placed");
        assert_eq!(&seen, expected);
        assert!(seen.slots.len() < 4, "{node} sees every slot");
        for slot in &seen.slots {
            assert!(seen.services.contains_key(&slot.service));
        }
        assert!(
            seen.services
                .keys()
                .all(|s| seen.slots.iter().any(|slot| &slot.service == s)),
            "{node} sees services it does not run"
        );
    }
}

#[tokio::test]
async fn the_tenant_service_stores_a_revision_only_when_the_spec_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenants = berth_tenant_service::TenantService::open(database(dir.path()).await)
        .await
        .expect("migrate");
    tenants.ensure_tenant("acme", 1).await.expect("tenant");
    let first = tenants
        .put_revision("acme", &app(1), 2)
        .await
        .expect("store");
    assert_eq!((first.revision, first.is_new), (1, true));
    let again = tenants
        .put_revision("acme", &app(1), 3)
        .await
        .expect("store");
    assert_eq!((again.revision, again.is_new), (1, false));
    let changed = tenants
        .put_revision("acme", &app(2), 4)
        .await
        .expect("store");
    assert_eq!((changed.revision, changed.is_new), (2, true));
    assert_eq!(
        tenants.current("acme", "app").await.expect("read").topology,
        app(2)
    );
    assert!(tenants.delete("acme", "app").await.expect("delete"));
    let after_delete = tenants
        .put_revision("acme", &app(1), 5)
        .await
        .expect("store");
    assert_eq!(after_delete.revision, 3, "revision numbers never repeat");
    assert!(matches!(
        tenants.put_revision("ghost", &app(1), 6).await,
        Err(berth_tenant_service::TenantError::UnknownTenant(_))
    ));
}
