//! The pool: an allocator serving node agents over gRPC. Nodes join with one-time
//! tokens, pull only their own assignments, and report signed status. The security
//! tests act as nodes (honest and not) over real gRPC; the end-to-end test runs three
//! `berth-node` processes against real Docker.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, DefaultRequest, Limit};
use berth_node_runtime::agent::{NodeIdentity, Signer};
use berth_protocol::assignment::{TopologyAssignment, TopologyRef};
use berth_protocol::node_api::node_control_client::NodeControlClient;
use berth_protocol::node_api::node_control_server::NodeControlServer;
use berth_protocol::node_api::{JoinRequest, ReplicaStatus, ReportBody, WatchBody, methods};
use berth_protocol::topology::{LoadOptions, LocalFiles, Topology, Variables, load};
use berth_tests::{docker_lines, ensure_images, remove_node_objects};
use tonic::Code;
use tonic::transport::Channel;

/// An allocator with its node API on a loopback port, over a fresh SQLite file.
struct ControlPlane {
    allocator: Allocator,
    api: NodeApi,
    url: String,
    _dir: tempfile::TempDir,
}

async fn control_plane() -> ControlPlane {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    );
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    let api = NodeApi::new(allocator.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder()
        .add_service(NodeControlServer::new(api.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    ControlPlane {
        allocator,
        api,
        url: format!("http://{addr}"),
        _dir: dir,
    }
}

impl ControlPlane {
    async fn client(&self) -> NodeControlClient<Channel> {
        NodeControlClient::connect(self.url.clone())
            .await
            .expect("connect")
    }

    async fn token(&self) -> String {
        self.api
            .identities()
            .create_join_token(now_ms(), 60_000)
            .await
            .expect("token")
    }

    /// Joins a node the way `berth-node join` does, returning its identity.
    async fn join(&self, name: &str) -> NodeIdentity {
        let identity = NodeIdentity::generate(name, &self.url).expect("identity");
        let request = JoinRequest {
            token: self.token().await,
            node_name: name.into(),
            public_key: identity.public_key().expect("key"),
            containers: Some(50),
            ..Default::default()
        };
        self.client().await.join(request).await.expect("join");
        identity
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
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
    load(yaml, &options).expect("valid").topology
}

fn watch_request(signer: &Signer) -> berth_protocol::node_api::SignedRequest {
    let (sequence, timestamp_ms) = signer.next_sequence();
    signer.sign(
        methods::WATCH,
        &WatchBody {
            sequence,
            timestamp_ms,
            peer_address: String::new(),
            firewall: String::new(),
        },
    )
}

/// The first assignment set the stream sends, decoded.
async fn first_set(plane: &ControlPlane, signer: &Signer) -> (u64, Vec<TopologyAssignment>) {
    let mut stream = plane
        .client()
        .await
        .watch(watch_request(signer))
        .await
        .expect("watch")
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an event");
    let Some(berth_protocol::node_api::watch_event::Event::Assignments(set)) = event.event else {
        panic!("the stream began with {event:?}, not an assignment set");
    };
    (
        set.version,
        serde_json::from_slice(&set.assignments_json).expect("json"),
    )
}

#[tokio::test]
async fn a_join_token_works_once() {
    let plane = control_plane().await;
    let token = plane.token().await;
    let first = NodeIdentity::generate("n1", &plane.url).expect("identity");
    let second = NodeIdentity::generate("n2", &plane.url).expect("identity");
    let join = |identity: &NodeIdentity, name: &str| JoinRequest {
        token: token.clone(),
        node_name: name.into(),
        public_key: identity.public_key().expect("key"),
        ..Default::default()
    };
    plane
        .client()
        .await
        .join(join(&first, "n1"))
        .await
        .expect("first use joins");
    let reused = plane
        .client()
        .await
        .join(join(&second, "n2"))
        .await
        .expect_err("second use is refused");
    assert_eq!(reused.code(), Code::PermissionDenied);
    assert!(
        reused.message().contains("used already"),
        "{}",
        reused.message()
    );
}

#[tokio::test]
async fn expired_and_unknown_join_tokens_are_refused() {
    let plane = control_plane().await;
    let expired = plane
        .api
        .identities()
        .create_join_token(now_ms() - 10_000, 1_000)
        .await
        .expect("token");
    let identity = NodeIdentity::generate("n1", &plane.url).expect("identity");
    for (token, why) in [
        (expired, "expired"),
        ("bjt_made_up".to_owned(), "not valid"),
    ] {
        let request = JoinRequest {
            token,
            node_name: "n1".into(),
            public_key: identity.public_key().expect("key"),
            ..Default::default()
        };
        let err = plane
            .client()
            .await
            .join(request)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains(why), "{}", err.message());
    }
}

#[tokio::test]
async fn a_node_sees_only_its_own_assignments_and_cannot_ask_for_another_nodes() {
    let plane = control_plane().await;
    let n1 = plane.join("n1").await;
    let n2 = plane.join("n2").await;
    plane
        .allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    plane
        .allocator
        .deploy(
            "acme",
            1,
            &topology("name: app\nservices:\n  web:\n    image: x\n    deploy: {replicas: 2}\n"),
        )
        .await
        .expect("deploy");

    let (_, mine) = first_set(&plane, &n1.signer().expect("signer")).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(
        mine[0].slots.len(),
        1,
        "n1 sees slots that are not its own: {:?}",
        mine[0].slots
    );

    // n2's key cannot open n1's stream: identity comes from the signature, not the name.
    let mut forged = watch_request(&n2.signer().expect("signer"));
    forged.node = "n1".into();
    let err = plane
        .client()
        .await
        .watch(forged)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("not signed by node \"n1\""),
        "{}",
        err.message()
    );

    // An unsigned request is refused too.
    let mut unsigned = watch_request(&n1.signer().expect("signer"));
    unsigned.signature.clear();
    assert_eq!(
        plane
            .client()
            .await
            .watch(unsigned)
            .await
            .expect_err("refused")
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_replayed_request_is_refused() {
    let plane = control_plane().await;
    let n1 = plane.join("n1").await;
    let request = watch_request(&n1.signer().expect("signer"));
    plane
        .client()
        .await
        .watch(request.clone())
        .await
        .expect("first time");
    let err = plane
        .client()
        .await
        .watch(request)
        .await
        .expect_err("replay");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("not newer"), "{}", err.message());
}

#[tokio::test]
async fn a_node_cannot_report_on_containers_it_does_not_own() {
    let plane = control_plane().await;
    let n1 = plane.join("n1").await;
    let n2 = plane.join("n2").await;
    plane
        .allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    plane
        .allocator
        .deploy(
            "acme",
            1,
            &topology("name: app\nservices:\n  web:\n    image: x\n    deploy: {replicas: 2}\n"),
        )
        .await
        .expect("deploy");
    let s1 = n1.signer().expect("signer");
    let (version, mine) = first_set(&plane, &s1).await;
    let s2 = n2.signer().expect("signer");
    let (_, theirs) = first_set(&plane, &s2).await;
    let status = |a: &TopologyAssignment| ReplicaStatus {
        cpu_millis: None,
        tenant: a.id.tenant.clone(),
        topology: a.id.topology.clone(),
        service: a.slots[0].service.clone(),
        replica: a.slots[0].replica,
        generation: a.slots[0].generation,
        state: "running".into(),
        detail: String::new(),
    };
    let report = |signer: &Signer, answers_version: u64, replicas: Vec<ReplicaStatus>| {
        let (sequence, timestamp_ms) = signer.next_sequence();
        signer.sign(
            methods::REPORT,
            &ReportBody {
                sequence,
                timestamp_ms,
                answers_version,
                replicas,
            },
        )
    };

    plane
        .client()
        .await
        .report(report(&s1, version, vec![status(&mine[0])]))
        .await
        .expect("its own replica");
    let id = TopologyRef {
        tenant: "acme".into(),
        topology: "app".into(),
    };
    assert_eq!(plane.api.reported(&id).await.expect("statuses").len(), 1);

    let err = plane
        .client()
        .await
        .report(report(&s1, version, vec![status(&theirs[0])]))
        .await
        .expect_err("another node's replica");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("not assigned to it"),
        "{}",
        err.message()
    );

    let err = plane
        .client()
        .await
        .report(report(&s1, version + 1_000, vec![]))
        .await
        .expect_err("a version never sent");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        plane.api.reported(&id).await.expect("statuses").len(),
        1,
        "a refused report changed the recorded status"
    );
}

/// A `berth-node` process, killed (and its containers removed) when dropped.
struct NodeProcess {
    name: String,
    child: Child,
    _state: tempfile::TempDir,
}

impl NodeProcess {
    fn join(plane_url: &str, token: &str, name: &str) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let bin = berth_tests::berth_bin()
            .with_file_name(format!("berth-node{}", std::env::consts::EXE_SUFFIX));
        let child = Command::new(bin)
            .args([
                "join",
                "--allocator",
                plane_url,
                "--token",
                token,
                "--name",
                name,
            ])
            .env("BERTH_NODE_DIR", state.path())
            .env("BERTH_LOG", "warn")
            // It shares this machine's network with the other tests: no firewall.
            .env("BERTH_FIREWALL", "off")
            .spawn()
            .expect("berth-node starts");
        NodeProcess {
            name: name.to_owned(),
            child,
            _state: state,
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_node_objects(&self.name);
    }
}

fn running_on(node: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "--filter",
        &format!("label=berth.node={node}"),
        "--filter",
        "status=running",
        "--format",
        "{{.Names}}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_agents_run_a_tenants_replicas_across_the_pool() {
    ensure_images();
    let plane = control_plane().await;
    let prefix = format!("p{}", std::process::id());
    let names: Vec<String> = (1..=3).map(|i| format!("{prefix}-n{i}")).collect();
    let mut nodes = Vec::new();
    for name in &names {
        nodes.push(NodeProcess::join(&plane.url, &plane.token().await, name));
    }
    plane
        .allocator
        .set_quota("acme", Limit::default())
        .await
        .expect("quota");
    // Wait for the three nodes to have joined: their identities registered and their
    // rows in the pool (a join writes the one, then the other).
    let mut joined = false;
    for _ in 0..100 {
        let mut ok = true;
        for name in &names {
            ok &= plane.api.identities().is_joined(name).await.expect("read");
        }
        let pool = plane.allocator.nodes().await.expect("nodes");
        ok &= names
            .iter()
            .all(|name| pool.iter().any(|n| &n.name == name));
        if ok {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(joined, "the nodes did not join");

    let app = topology(
        "name: shop\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 3}\n",
    );
    plane
        .allocator
        .deploy("acme", 1, &app)
        .await
        .expect("deploy");

    // Every node runs one replica, in containers only it owns.
    let mut spread = Vec::new();
    for _ in 0..150 {
        spread = names.iter().map(|n| running_on(n)).collect();
        if spread.iter().all(|c| c.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        spread.iter().all(|c| c.len() == 1),
        "replicas are not one per node: {spread:?}"
    );
    for (name, containers) in names.iter().zip(&spread) {
        assert!(
            containers[0].starts_with(&format!("{name}."))
                && containers[0].contains(".acme.shop.web."),
            "{containers:?}"
        );
    }

    // The nodes report their replicas running, each on its own behalf.
    let id = TopologyRef {
        tenant: "acme".into(),
        topology: "shop".into(),
    };
    let mut reported = Vec::new();
    for _ in 0..100 {
        reported = plane.api.reported(&id).await.expect("statuses");
        if reported.len() == 3 && reported.iter().all(|r| r.status.state == "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reported.len(), 3, "{reported:?}");
    assert!(
        reported.iter().all(|r| r.status.state == "running"),
        "{reported:?}"
    );
    let reporters: std::collections::BTreeSet<&str> =
        reported.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(reporters.len(), 3);

    // Removing the topology takes its containers off every node.
    plane.allocator.remove(&id).await.expect("remove");
    let mut left = Vec::new();
    for _ in 0..150 {
        left = names.iter().flat_map(|n| running_on(n)).collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(left.is_empty(), "containers left after removal: {left:?}");
    drop(nodes);
}

#[tokio::test]
async fn only_the_node_asked_can_answer_a_request_for_logs() {
    use berth_protocol::node_api::{LogRequest, LogsBody, watch_event::Event};
    let plane = control_plane().await;
    let n1 = plane.join("n1").await;
    let n2 = plane.join("n2").await;
    let (s1, s2) = (n1.signer().expect("signer"), n2.signer().expect("signer"));
    let mut stream = plane
        .client()
        .await
        .watch(watch_request(&s1))
        .await
        .expect("watch")
        .into_inner();
    // The first event is n1's assignment set; then the request arrives on its stream.
    let _ = stream.message().await.expect("ok");
    let mut answers = plane
        .api
        .request_logs(
            "n1",
            LogRequest {
                request_id: 0,
                tenant: "acme".into(),
                topology: "app".into(),
                service: "web".into(),
                replica: 1,
                tail: 10,
                since_ns: 0,
            },
        )
        .expect("n1 is connected");
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an event");
    let Some(Event::Logs(asked)) = event.event else {
        panic!("expected a log request, got {event:?}");
    };
    assert_eq!((asked.service.as_str(), asked.replica), ("web", 1));
    let answer = |signer: &Signer, request_id: u64, line: &str| {
        let (sequence, timestamp_ms) = signer.next_sequence();
        signer.sign(
            methods::LOGS,
            &LogsBody {
                sequence,
                timestamp_ms,
                request_id,
                lines: vec![line.to_owned()],
                at_ns: vec![1],
                done: true,
                error: String::new(),
            },
        )
    };
    // Another node cannot answer it, nor can n1 answer a request never made.
    let err = plane
        .client()
        .await
        .logs(answer(&s2, asked.request_id, "forged by n2"))
        .await
        .expect_err("n2 answered n1's request");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = plane
        .client()
        .await
        .logs(answer(&s1, asked.request_id + 1000, "unasked"))
        .await
        .expect_err("n1 answered a request never made");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A signature by another key under n1's name is refused too.
    let mut stolen = answer(&s2, asked.request_id, "n2 posing as n1");
    stolen.node = "n1".into();
    let err = plane
        .client()
        .await
        .logs(stolen)
        .await
        .expect_err("n2 signed as n1");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // n1 answers; only its lines reach the asker.
    plane
        .client()
        .await
        .logs(answer(&s1, asked.request_id, "from n1"))
        .await
        .expect("n1 answers");
    let got = answers.recv().await.expect("an answer");
    assert_eq!(got.lines, ["from n1"]);
    assert!(got.done);
    // A node that is not connected cannot be asked.
    let e = plane
        .api
        .request_logs("n2", LogRequest::default())
        .expect_err("n2 has no stream");
    assert!(e.to_string().contains("not connected"), "{e}");
}

/// How many connections from this network namespace to `port` on loopback are open
/// (their client ends, from `/proc/net/tcp`).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("the socket table");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Established only: a closed join leaves its connection in TIME_WAIT.
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// A node holds one connection to its allocator: the heartbeat's calls ride beside
/// the stream of assignments, so a pool costs its allocator one connection per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_heartbeats_and_streams_over_one_connection() {
    use berth_node_runtime::agent::Capacity;
    let server = berth_tests::plane::Server::start(&[]).await;
    let capacity = Capacity {
        cpu_millis: None,
        memory_bytes: None,
        containers: Some(10),
        labels: Default::default(),
    };
    let pool = berth_tests::hollow::HollowPool::join(&server, "single", 3, &capacity, 3).await;
    let names: Vec<String> = pool.nodes.iter().map(|n| n.name.clone()).collect();
    server.wait_active(&names).await;
    let topology = serde_json::json!({
        "name": "spread",
        "services": { "web": { "image": "sim", "replicas": 3, "networks": { "default": {} } } },
        "networks": { "default": {} }
    });
    server.deploy(&topology).await;
    // Replicas run only once their node's stream delivered them.
    for _ in 0..300 {
        if pool.running() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool.running(), 3, "every replica runs");
    // Heartbeats go out every 500 ms: several have been answered by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connections_to(server.node_port),
        3,
        "one connection a node to the allocator"
    );
}
