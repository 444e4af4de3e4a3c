//! The pool on real hosts: three network namespaces made by `infra/hosts.sh`, each with
//! its own address, its own Docker engine and its own `berth-node` keeping its
//! firewall; the control plane in this machine's namespace, on the hosts' bridge.
//!
//! - Reachability: from each host, and from a tenant's container on it, to every port
//!   that listens on every other host, only the node API port connects; a call to it
//!   without a delegation is refused; with one, a link carries traffic between hosts.
//! - A host cut off (its link down) while it runs a replica that another host reaches
//!   through a link: its node fences the replica before a copy runs elsewhere (every
//!   engine is sampled every 100 ms), the link moves, and the host, back, removes
//!   what it no longer owns.
//! - A host's engine restarted under a running topology: its replicas run again, once
//!   each, as reported, and their link carries traffic again.
//! - A stream of deploys, scales and a drain through one server while the leading
//!   server and a node agent are killed (`kill -9`): the standby takes over, and every
//!   change is applied once: no deploy lost, no replica running twice.
//! - The output of replicas on two hosts comes through the endpoint (`berth logs`).
//! - An image only this machine's engine has is pushed and runs on every host, each
//!   fetching it from the control plane or, under an `image.fetch` delegation, from a
//!   host that runs it; a host speaking out of turn (no token, another tenant's image,
//!   another image than its delegation's, a blob not of the image) is refused and the
//!   refusal is in the ledger; bytes served corrupt are refused and fetched elsewhere;
//!   another tenant naming the image by id, or pushing past its quota, is refused.
//! - Two servers on two hosts with no shared directory, PostgreSQL on a third: a root
//!   key rotated through one is used by the other, and cutting the leader's host off
//!   hands the lead, and the node on a fourth host, to the other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_node_runtime::agent::NodeIdentity;
use berth_protocol::delegation::{self, Grant};
use berth_protocol::image::Digest;
use berth_protocol::node_api::PeerCallBody;
use berth_protocol::node_api::node_peer_client::NodePeerClient;
use berth_tests::hosts::{HostNode, Hosts, NODE_API_PORT};
use berth_tests::images::{LocalImages, build_local_image, payload_app};
use berth_tests::plane::Server;

/// Polls `check` every 200 ms for up to `seconds`.
async fn eventually(what: &str, seconds: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never happened within {seconds} s: {what}");
}

/// Three hosts, a server on their bridge with `envs`, and a node on each
/// (`host1`, `host2`, `host3`), all of them joined and enforcing their firewall.
async fn pool(envs: &[(&str, &str)]) -> (Hosts, Server, Vec<HostNode>) {
    let hosts = Hosts::up(3);
    let (server, nodes) = joined(&hosts, envs).await;
    (hosts, server, nodes)
}

/// A server on `hosts`' bridge with `envs`, and a node on each of the first three
/// hosts (`host1`, `host2`, `host3`), all joined and enforcing their firewall.
async fn joined(hosts: &Hosts, envs: &[(&str, &str)]) -> (Server, Vec<HostNode>) {
    let server = hosts.server(envs).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(hosts.join(&server, i, &format!("host{}", i + 1), &[]).await);
    }
    eventually(
        "three nodes joined, each enforcing its firewall",
        60,
        async || {
            let listed = server.api(reqwest::Method::GET, "/nodes").await;
            listed.as_array().is_some_and(|nodes| {
                nodes.len() == 3
                    && nodes
                        .iter()
                        .all(|n| n["state"] == "active" && n["firewall"] == "enforced")
            })
        },
    )
    .await;
    (server, nodes)
}

fn on(node: &str) -> serde_json::Value {
    serde_json::json!([{ "attribute": "hostname", "equal": true, "value": node }])
}

/// `replicas` replicas that sleep, each placed by `constraints`.
fn sleeper(replicas: u32, constraints: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "image": "berth/busybox:latest", "replicas": replicas, "init": true,
        "command": ["sleep", "3600"], "networks": { "default": {} },
        "constraints": constraints
    })
}

/// `db`, one replica placed by `constraints`, serving at `/rows` on port 8080 (exposed
/// to its topology) what the shell command `rows` prints.
fn db(rows: &str, constraints: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "image": "berth/busybox:latest", "replicas": 1, "init": true,
        "command": ["sh", "-c", format!("mkdir -p /www && {rows} > /www/rows && httpd -f -p 8080 -h /www")],
        "networks": { "default": {} },
        "expose": [{ "port": 8080 }],
        "constraints": constraints
    })
}

/// One HTTP request from `container` on host `i` to `db:8080` by name.
fn ask_db(hosts: &Hosts, i: usize, container: &str) -> String {
    hosts.docker(
        i,
        &[
            "exec",
            container,
            "sh",
            "-c",
            r#"printf 'GET /rows HTTP/1.0\r\n\r\n' | nc -w 5 db 8080"#,
        ],
    )
}

/// Whether `container` runs on host `i`.
fn running(hosts: &Hosts, i: usize, container: &str) -> bool {
    hosts
        .docker(i, &["inspect", "--format", "{{.State.Running}}", container])
        .trim()
        == "true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_reach_each_other_only_through_the_node_api_and_links_carry_traffic() {
    let (hosts, server, nodes) = pool(&[]).await;
    // db serves on host2 (and publishes 18080 there); web, on host1, reaches it by
    // name; probe2 and probe3 are tenant containers on host2 and host3.
    let mut published = db("echo secret-rows", on("host2"));
    published["ports"] = serde_json::json!([{ "target": 8080, "published": 18080 }]);
    let topology = serde_json::json!({
        "name": "shop",
        "services": {
            "db": published,
            "web": sleeper(1, on("host1")),
            "probe2": sleeper(1, on("host2")),
            "probe3": sleeper(1, on("host3"))
        },
        "networks": { "default": {} }
    });
    server.deploy_when_placeable("default", &topology).await;
    let container =
        |i: usize, service: &str| format!("{}.default.shop.{service}.1", nodes[i].prefix());
    let tenants = [
        container(0, "web"),
        container(1, "probe2"),
        container(2, "probe3"),
    ];
    eventually("every replica runs on its host", 90, async || {
        tenants
            .iter()
            .enumerate()
            .all(|(i, c)| running(&hosts, i, c))
            && running(&hosts, 1, &container(1, "db"))
    })
    .await;

    // With a delegation, the link carries traffic from host1 to host2.
    eventually(
        "web on host1 reaches db on host2 through the link",
        90,
        async || ask_db(&hosts, 0, &tenants[0]).contains("secret-rows"),
    )
    .await;

    // A service of each host's own (as sshd would be), listening on every address.
    let _own: Vec<_> = (0..3)
        .map(|i| {
            hosts.spawn(
                i,
                "python3",
                &["-m", "http.server", "2222", "--bind", "0.0.0.0"],
            )
        })
        .collect();
    eventually("each host's own service listens", 30, async || {
        (0..3).all(|j| hosts.listening(j).contains(&2222))
    })
    .await;

    // Every port that listens on each host, probed from each other host and from the
    // tenant container there.
    let mut probes = Vec::new();
    for j in 0..3 {
        let ports = hosts.listening(j);
        assert!(
            ports.contains(&NODE_API_PORT),
            "host{} listens on {ports:?}",
            j + 1
        );
        if j == 1 {
            assert!(ports.contains(&18080), "db's published port: {ports:?}");
        }
        for i in (0..3).filter(|i| *i != j) {
            for port in &ports {
                probes.push((i, None, j, *port));
                probes.push((i, Some(tenants[i].clone()), j, *port));
            }
        }
    }
    let hosts_ref = &hosts;
    let results: Vec<(usize, Option<String>, usize, u16, bool)> = std::thread::scope(|scope| {
        let running: Vec<_> = probes
            .into_iter()
            .map(|(i, from, j, port)| {
                scope.spawn(move || {
                    let address = &hosts_ref.hosts[j].address;
                    let connected = hosts_ref.connects(i, from.as_deref(), address, port);
                    (i, from, j, port, connected)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("probe"))
            .collect()
    });
    let mut matrix = BTreeMap::new();
    let mut wrong = Vec::new();
    for (i, from, j, port, connected) in &results {
        let source = match from {
            Some(_) => format!("a container on host{}", i + 1),
            None => format!("host{}", i + 1),
        };
        let verdict = if *connected { "connects" } else { "refused" };
        matrix.insert((source.clone(), j + 1, *port), verdict);
        if *connected != (*port == NODE_API_PORT) {
            wrong.push(format!("{source} -> host{}:{port} {verdict}", j + 1));
        }
    }
    for ((source, target, port), verdict) in &matrix {
        eprintln!("{source} -> host{target}:{port} {verdict}");
    }
    assert!(
        wrong.is_empty(),
        "only the node API port may connect between hosts: {wrong:?}\nmatrix: {matrix:?}"
    );
    assert!(
        results.iter().any(|r| r.4),
        "the node API port answered no one"
    );

    // The hosts' own services and what db publishes are still reached from an
    // address that is no node's (this machine, as the admin's default policy allows),
    // so the refusals above are the firewall's doing, not dead ports.
    let mut open = vec![format!("{}:18080", hosts.hosts[1].address)];
    open.extend(hosts.hosts.iter().map(|h| format!("{}:2222", h.address)));
    for address in open {
        let reached = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&address),
        )
        .await;
        assert!(matches!(reached, Ok(Ok(_))), "{address}: {reached:?}");
    }

    // The node API itself, called without a delegation, refuses.
    let caller = NodeIdentity::load(nodes[0].dir.path()).expect("host1's identity");
    let signer = caller.signer().expect("signer");
    let target_key = NodeIdentity::load(nodes[1].dir.path())
        .and_then(|n| n.public_key())
        .expect("host2's key");
    let url = format!("http://{}:{NODE_API_PORT}", hosts.hosts[1].address);
    let channel = signer.tls().channel(&url, &target_key).expect("channel");
    let body = PeerCallBody {
        target: "host2".into(),
        tenant: "default".into(),
        topology: "shop".into(),
        service: "db".into(),
        port: 0,
        timestamp_ms: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0),
        nonce: vec![7; 16],
        digest: String::new(),
    };
    let call = signer.peer_call("Health", Vec::new(), &body);
    let refused = NodePeerClient::new(channel)
        .health(call)
        .await
        .expect_err("a call without a delegation was answered");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // `berth node list` says which nodes enforce their firewall.
    let listed = std::process::Command::new(berth_tests::berth_bin())
        .args([
            "--endpoint",
            &server.api,
            "--token",
            server.admin,
            "node",
            "list",
        ])
        .output()
        .expect("berth runs");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.lines().next().is_some_and(|h| h.contains("FIREWALL")),
        "{text}"
    );
    assert_eq!(text.matches("enforced").count(), 3, "{text}");
}

/// A replica of tenant `default`: its topology, service and number.
type Replica = (String, String, u32);

/// The replicas of tenant `default` that run now on each of `engines` (a host's index
/// and its `DOCKER_HOST`): for each, the indices of the hosts running a copy.
fn live_replicas(engines: &[(usize, String)]) -> BTreeMap<Replica, Vec<usize>> {
    let mut live: BTreeMap<Replica, Vec<usize>> = BTreeMap::new();
    for (i, engine) in engines {
        let listed = std::process::Command::new("docker")
            .args(["ps", "--format", "{{.Names}}"])
            .env("DOCKER_HOST", engine)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for name in listed.lines() {
            // NODE.POOL.TENANT.TOPOLOGY.SERVICE.REPLICA
            let parts: Vec<&str> = name.split('.').collect();
            if let [_, _, "default", topology, service, replica] = parts[..]
                && let Ok(replica) = replica.parse()
            {
                let key = (topology.to_owned(), service.to_owned(), replica);
                live.entry(key).or_default().push(*i);
            }
        }
    }
    live
}

/// The engines of `hosts` numbered `indices`, as [`live_replicas`] takes them.
fn engines(hosts: &Hosts, indices: impl IntoIterator<Item = usize>) -> Vec<(usize, String)> {
    indices
        .into_iter()
        .map(|i| (i, hosts.hosts[i].docker_host.clone()))
        .collect()
}

/// [`live_replicas`] of `engines` every 100 ms while `sampling` holds: per sample, its
/// time and what ran.
fn sample(
    engines: &[(usize, String)],
    sampling: &std::sync::atomic::AtomicBool,
) -> Vec<(Instant, BTreeMap<Replica, Vec<usize>>)> {
    let mut samples = Vec::new();
    while sampling.load(std::sync::atomic::Ordering::Relaxed) {
        let at = Instant::now();
        samples.push((at, live_replicas(engines)));
        std::thread::sleep(Duration::from_millis(100).saturating_sub(at.elapsed()));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_fences_its_replica_before_it_runs_elsewhere_and_its_link_moves() {
    // Suspect after 2 s, fence after 3 s, dead after 5 s.
    let fast = [
        ("BERTH_SUSPECT_AFTER", "2s"),
        ("BERTH_FENCE_AFTER", "3s"),
        ("BERTH_DEAD_AFTER", "5s"),
    ];
    let (hosts, server, nodes) = pool(&fast).await;
    // db goes to host1 (the others cordoned while it is placed); web stays on host3
    // and reaches db by name, through a link while db is on another host.
    let post = reqwest::Method::POST;
    server.api(post.clone(), "/nodes/host2/cordon").await;
    server.api(post.clone(), "/nodes/host3/cordon").await;
    let topology = serde_json::json!({
        "name": "shop",
        "services": {
            "db": db("hostname", serde_json::json!([
                { "attribute": "hostname", "equal": false, "value": "host3" }
            ]))
        },
        "networks": { "default": {} }
    });
    server.deploy_when_placeable("default", &topology).await;
    let db1 = format!("{}.default.shop.db.1", nodes[0].prefix());
    eventually("db runs on host1", 90, async || running(&hosts, 0, &db1)).await;
    server.api(post.clone(), "/nodes/host2/uncordon").await;
    server.api(post.clone(), "/nodes/host3/uncordon").await;
    let mut with_web = topology.clone();
    with_web["services"]["web"] = sleeper(1, on("host3"));
    server.deploy(&with_web).await;
    let web = format!("{}.default.shop.web.1", nodes[2].prefix());
    eventually("web on host3 reaches db on host1", 90, async || {
        ask_db(&hosts, 2, &web).contains("200 OK")
    })
    .await;
    assert!(running(&hosts, 0, &db1), "db left host1 before the cut");

    let sampling = std::sync::atomic::AtomicBool::new(true);
    let all = engines(&hosts, 0..3);
    let (samples, cut_at) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(&all, &sampling));
        std::thread::sleep(Duration::from_millis(500));
        let cut_at = Instant::now();
        hosts.cut(0);
        // Wait (without an async runtime in this thread) for db to run elsewhere and
        // web to reach it again.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline && !ask_db(&hosts, 2, &web).contains("200 OK") {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        (sampler.join().expect("sampler"), cut_at)
    });
    let db = ("shop".to_owned(), "db".to_owned(), 1);
    let after: Vec<(Instant, Vec<usize>)> = samples
        .into_iter()
        .filter(|(at, _)| *at >= cut_at)
        .map(|(at, live)| (at, live.get(&db).cloned().unwrap_or_default()))
        .collect();
    let duplicates = after.iter().filter(|(_, live)| live.len() > 1).count();
    let moved = after
        .iter()
        .find(|(_, live)| live.iter().any(|h| *h != 0))
        .map(|(at, _)| at.duration_since(cut_at));
    let fenced = after
        .iter()
        .find(|(_, live)| !live.contains(&0))
        .map(|(at, _)| at.duration_since(cut_at));
    eprintln!(
        "cut off: {} samples, {duplicates} with two live copies; fenced after {fenced:?}, running elsewhere after {moved:?}",
        after.len()
    );
    let moved = moved.expect("db never ran on another host");
    let fenced = fenced.expect("host1 never fenced db");
    assert_eq!(duplicates, 0, "two live copies of db: {after:?}");
    assert!(
        fenced <= moved,
        "fenced after {fenced:?}, running elsewhere after {moved:?}"
    );
    let answer = ask_db(&hosts, 2, &web);
    assert!(answer.contains("200 OK"), "web does not reach db: {answer}");

    // Back on the network, host1 removes the copy it no longer owns.
    hosts.mend(0);
    eventually("host1 removed its fenced db", 90, async || {
        hosts
            .docker(0, &["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .all(|n| !n.ends_with(".default.shop.db.1"))
    })
    .await;
    eventually("host1 is active again", 60, async || {
        let listed = server.api(reqwest::Method::GET, "/nodes").await;
        listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == "host1" && n["state"] == "active")
    })
    .await;
}

/// PostgreSQL on the first host and a server on each of the next two, given the same
/// secrets key and `envs` and nothing else in common: the one that leads, and the one
/// that stands by.
async fn control_plane(hosts: &Hosts, envs: &[(&str, &str)]) -> (Server, Server) {
    let database = hosts.postgres(0);
    let secrets = berth_allocator::sealing::SealingKey::generate_hex();
    let mut envs = envs.to_vec();
    envs.push(("BERTH_SECRETS_KEY", secrets.as_str()));
    let args = ["--database", database.as_str()];
    let leader = hosts.server_on(1, &args, &envs).await;
    eventually("the first server leads", 60, async || {
        leader.printed().contains("leading:")
    })
    .await;
    let standby = hosts.server_on(2, &args, &envs).await;
    eventually("the second server stands by", 60, async || {
        standby.printed().contains("standing by:")
    })
    .await;
    (leader, standby)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_two_hosts_share_only_postgres_rotate_keys_together_and_hand_over_the_lead() {
    let hosts = Hosts::up(4);
    let (first, second) = control_plane(&hosts, &[]).await;
    assert_ne!(first.state.path(), second.state.path());
    for server in [&first, &second] {
        assert!(
            !server.state.path().join("root-keys").exists(),
            "the root keys are in the database, not in a file"
        );
    }

    // A node on a fourth host, given both servers.
    let allocators = format!("{},{}", first.node_url(), second.node_url());
    let node = hosts.join_to(&second, &allocators, 3, "host4", &[]).await;
    eventually("the node is active", 60, async || {
        let listed = second.api(reqwest::Method::GET, "/nodes").await;
        listed
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["state"] == "active")
    })
    .await;

    // A root key rotated through the server that stands by signs the other's
    // sessions, and the session is accepted by both.
    let (status, rotated) = second.post("/root-keys", serde_json::json!({})).await;
    assert_eq!(
        (status, rotated["id"].clone()),
        (201, serde_json::json!(2)),
        "{rotated}"
    );
    eventually("the first server signs under the new key", 30, async || {
        let keys = first.api(reqwest::Method::GET, "/root-keys").await;
        keys.as_array()
            .is_some_and(|k| k.iter().any(|k| k["id"] == 2 && k["signing"] == true))
    })
    .await;
    let user = serde_json::json!({ "name": "dev", "password": "a long enough password", "role": "developer" });
    let (status, body) = first.post("/tenants/default/users", user).await;
    assert_eq!(status, 201, "{body}");
    let login = serde_json::json!({ "tenant": "default", "user": "dev", "password": "a long enough password" });
    let (status, body) = first.post("/login", login).await;
    assert_eq!(status, 200, "{body}");
    let session = body["token"].as_str().expect("a token").to_owned();
    for server in [&first, &second] {
        assert_eq!(
            server
                .status_with("/tenants/default/topologies", &session)
                .await,
            200
        );
    }

    // The leader's host cut off: the other server takes the lead, the node follows
    // it, and a deploy through it is placed and runs.
    hosts.cut(1);
    eventually("the second server leads", 90, async || {
        second.printed().contains("leading:")
    })
    .await;
    let topology = serde_json::json!({
        "name": "after",
        "services": { "web": sleeper(1, serde_json::json!([])) },
        "networks": { "default": {} }
    });
    second.deploy_when_placeable("default", &topology).await;
    let web = format!("{}.default.after.web.1", node.prefix());
    eventually(
        "the deploy runs on the node under the new leader",
        90,
        async || running(&hosts, 3, &web),
    )
    .await;
    let listed = second.api(reqwest::Method::GET, "/nodes").await;
    assert_eq!(listed[0]["state"], "active", "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_engine_restarts_runs_its_replicas_again_once_each() {
    let (hosts, server, nodes) = pool(&[]).await;
    let topology = serde_json::json!({
        "name": "shop",
        "services": {
            "db": db("echo secret-rows", on("host2")),
            "web": sleeper(2, on("host1"))
        },
        "networks": { "default": {} }
    });
    server.deploy_when_placeable("default", &topology).await;
    let web = |n: u32| format!("{}.default.shop.web.{n}", nodes[0].prefix());
    eventually("web reaches db across hosts", 90, async || {
        ask_db(&hosts, 0, &web(1)).contains("secret-rows")
    })
    .await;
    let before: Vec<String> = (1..=2)
        .map(|n| {
            hosts
                .docker(0, &["inspect", "--format", "{{.Id}}", &web(n)])
                .trim()
                .to_owned()
        })
        .collect();

    hosts.restart_engine(0);

    let reported_running = async || {
        let status = server
            .api(reqwest::Method::GET, "/tenants/default/topologies/shop")
            .await;
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["service"] == "web" && r["state"] == "running")
            .count()
    };
    eventually(
        "both web replicas run again and are reported running",
        90,
        async || (1..=2).all(|n| running(&hosts, 0, &web(n))) && reported_running().await == 2,
    )
    .await;
    eventually("web reaches db again", 90, async || {
        ask_db(&hosts, 0, &web(2)).contains("secret-rows")
    })
    .await;
    // Once each: one container per replica on the host's engine.
    let names = hosts.docker(0, &["ps", "-a", "--format", "{{.Names}}"]);
    for n in 1..=2 {
        let copies = names.lines().filter(|l| *l == web(n)).count();
        assert_eq!(copies, 1, "web.{n}: {names}");
    }
    let after: Vec<String> = (1..=2)
        .map(|n| {
            hosts
                .docker(0, &["inspect", "--format", "{{.Id}}", &web(n)])
                .trim()
                .to_owned()
        })
        .collect();
    eprintln!("engine restart: containers {before:?} -> {after:?}");
}

/// Sends `method path` with `body` to `server` as the admin until it is answered with
/// success (a client retrying through a handover); the answer.
async fn until_accepted(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..150 {
        let response = server
            .http
            .request(method.clone(), format!("{}/v1{path}", server.api))
            .bearer_auth(server.admin)
            .timeout(Duration::from_secs(10))
            .json(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => return r.json().await.unwrap_or_default(),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{method} {path} was never accepted: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_leader_and_an_agent_are_killed_are_each_applied_once() {
    let hosts = Hosts::up(5);
    let fast = [
        ("BERTH_SUSPECT_AFTER", "2s"),
        ("BERTH_FENCE_AFTER", "3s"),
        ("BERTH_DEAD_AFTER", "5s"),
    ];
    let (mut leader, standby) = control_plane(&hosts, &fast).await;
    let allocators = format!("{},{}", leader.node_url(), standby.node_url());
    let mut nodes = Vec::new();
    for (i, name) in [(3, "host4"), (4, "host5")] {
        nodes.push(hosts.join_to(&standby, &allocators, i, name, &[]).await);
    }
    eventually("both nodes are active", 60, async || {
        let listed = standby.api(reqwest::Method::GET, "/nodes").await;
        listed
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["state"] == "active"))
    })
    .await;
    let topology = |name: &str| {
        serde_json::json!({
            "name": name,
            "services": { "web": sleeper(2, serde_json::json!([])) },
            "networks": { "default": {} }
        })
    };
    let put = reqwest::Method::PUT;
    let deploy = async |name: &str| {
        until_accepted(
            &standby,
            put.clone(),
            &format!("/tenants/default/topologies/{name}"),
            &topology(name),
        )
        .await
    };
    // Every 100 ms meanwhile: the live copies of each replica on both nodes' engines.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let nodes_engines = engines(&hosts, [3, 4]);
    let sampler = {
        let (engines, sampling) = (nodes_engines.clone(), sampling.clone());
        std::thread::spawn(move || sample(&engines, &sampling))
    };
    // The stream of changes, all through the server that stands by at first.
    for name in ["s1", "s2", "s3"] {
        deploy(name).await;
    }
    nodes[1].kill();
    deploy("s4").await;
    nodes[1].restart();
    leader.kill();
    deploy("s5").await;
    let scale = serde_json::json!({ "replicas": { "web": 3 } });
    until_accepted(
        &standby,
        reqwest::Method::POST,
        "/tenants/default/topologies/s1/scale",
        &scale,
    )
    .await;
    deploy("s6").await;
    until_accepted(
        &standby,
        reqwest::Method::POST,
        "/nodes/host4/drain",
        &serde_json::json!({}),
    )
    .await;
    deploy("s3").await; // asked again, unchanged: no new revision
    eventually("the standby leads", 90, async || {
        standby.printed().contains("leading:")
    })
    .await;

    // Every change applied once: each topology at its revision, every replica running
    // exactly once across both hosts' engines, all of them off the drained node.
    let expected = [
        ("s1", 3, 2),
        ("s2", 2, 1),
        ("s3", 2, 1),
        ("s4", 2, 1),
        ("s5", 2, 1),
        ("s6", 2, 1),
    ];
    let mut last = BTreeMap::new();
    let converged = async || {
        let seen = live_replicas(&nodes_engines);
        let want: usize = expected.iter().map(|(_, r, _)| *r as usize).sum();
        let all_once = seen.len() == want
            && seen.values().all(|hosts| hosts == &vec![4])
            && expected.iter().all(|(t, r, _)| {
                (1..=*r).all(|n| seen.contains_key(&((*t).to_owned(), "web".to_owned(), n)))
            });
        last = seen;
        all_once
    };
    eventually("every replica runs once, on host5", 120, converged).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let doubled = samples
        .iter()
        .filter(|(_, live)| live.values().any(|hosts| hosts.len() > 1))
        .count();
    let samples = samples.len();
    // Reported, not asserted: a replica that a drain moves may run on both nodes for a
    // moment, by design.
    eprintln!("kills: {samples} samples, {doubled} with two live copies of a replica");
    // What the new leader reports follows: each topology at its revision, its replicas
    // reported running on host5 (the node's reports reach the new leader in time).
    let mut statuses = Vec::new();
    let reported = async || {
        statuses.clear();
        for (name, replicas, revision) in expected {
            let status = standby
                .api(
                    reqwest::Method::GET,
                    &format!("/tenants/default/topologies/{name}"),
                )
                .await;
            let running = status["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["state"] == "running" && r["node"] == "host5")
                .count();
            let right = status["revision"] == revision && running == replicas as usize;
            statuses.push(status);
            if !right {
                return false;
            }
        }
        true
    };
    eventually(
        "every topology reported at its revision, running on host5",
        60,
        reported,
    )
    .await;
    eprintln!("after the kills: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_replicas_on_two_hosts_come_through_the_endpoint() {
    let (_hosts, server, _nodes) = pool(&[]).await;
    let speaker = |service: &str, node: &str| {
        format!(
            "  {service}:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sh\", \"-c\", \"echo hello from $$(hostname); echo second line; sleep 3600\"]\n    deploy: {{placement: {{constraints: [\"node.hostname == {node}\"]}}}}\n"
        )
    };
    let yaml = format!(
        "name: NAME\nservices:\n{}{}",
        speaker("east", "host1"),
        speaker("west", "host2")
    );
    let mut project = berth_tests::Project::new("hostlogs", &yaml);
    project.set_env("BERTH_ENDPOINT", &server.api);
    project.set_env("BERTH_TOKEN", server.admin);
    project.berth(&["up", "-d"]).ok();
    let mut logs = project.berth(&["logs"]);
    for _ in 0..150 {
        if logs
            .stdout
            .lines()
            .filter(|l| l.contains("second line"))
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        logs = project.berth(&["logs"]);
    }
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert!(lines.contains(&"east.1 | second line"), "{logs:?}");
    assert!(lines.contains(&"west.1 | second line"), "{logs:?}");
    let tail = project.berth(&["logs", "--tail", "1", "west"]).ok();
    assert_eq!(
        tail.stdout.lines().collect::<Vec<_>>(),
        ["west.1 | second line"]
    );
}

/// `berth ARGS` against `server` as its admin; status, stdout and stderr.
fn berth(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(berth_tests::berth_bin())
        .args(["--endpoint", &server.api, "--token", server.admin])
        .args(args)
        .output()
        .expect("berth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit entries of `kind` whose subject or detail holds `text`.
async fn ledger_with(server: &Server, kind: &str, text: &str) -> Vec<serde_json::Value> {
    server
        .api(
            reqwest::Method::GET,
            &format!("/audit/entries?kind={kind}&limit=1000"),
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e["subject"].as_str().is_some_and(|s| s.contains(text))
                || e["detail"].as_str().is_some_and(|s| s.contains(text))
        })
        .collect()
}

/// The image `id` is in host `i`'s engine.
fn host_has_image(hosts: &Hosts, i: usize, id: &str) -> bool {
    hosts
        .docker(i, &["image", "inspect", "--format", "{{.Id}}", id])
        .trim()
        == id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_runs_on_every_host_fetched_only_under_delegations() {
    let (hosts, server, nodes) = pool(&[]).await;
    let pid = std::process::id();
    let _built = LocalImages(
        ["pushed", "theirs", "big"]
            .map(|n| format!("berth-test/{n}:{pid}"))
            .to_vec(),
    );
    let name = format!("berth-test/pushed:{pid}");
    let id = build_local_image(&name, 4);
    for i in 0..3 {
        assert!(
            !host_has_image(&hosts, i, &id),
            "host{} has the image already",
            i + 1
        );
    }

    // Pushed: the config and the new layer are sent; the base layer too, once.
    let (ok, _, err) = berth(&server, &["push", &name]);
    assert!(ok, "push failed: {err}");
    assert!(err.contains(&format!("pushed {name} as {id}")), "{err}");
    // Again: the pool has every blob, nothing is sent.
    let (ok, out, err) = berth(&server, &["--json", "push", &name]);
    assert!(ok, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(again[0]["sent"], 0, "{out}");
    assert_eq!(again[0]["id"], id.as_str());

    // One replica first, then three: the two new ones fetch from the first's host.
    let deploy = async |replicas: usize| {
        server
            .deploy(&payload_app(
                "pushed",
                &name,
                replicas,
                serde_json::json!([]),
            ))
            .await;
    };
    let running = async |count: usize| {
        let status = server
            .api(reqwest::Method::GET, "/tenants/default/topologies/pushed")
            .await;
        status["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == count && r.iter().all(|r| r["state"] == "running"))
    };
    deploy(1).await;
    eventually("the first replica runs", 120, async || running(1).await).await;
    deploy(3).await;
    eventually("three replicas run", 180, async || running(3).await).await;
    let status = server
        .api(reqwest::Method::GET, "/tenants/default/topologies/pushed")
        .await;
    let mut on: Vec<String> = status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["node"].as_str().unwrap_or_default().to_owned())
        .collect();
    on.sort();
    assert_eq!(
        on,
        ["host1", "host2", "host3"],
        "one replica per host: {status}"
    );
    // The status names the image each replica runs by its id.
    assert!(
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["image"] == id.as_str()),
        "{status}"
    );
    for i in 0..3 {
        assert!(
            host_has_image(&hosts, i, &id),
            "host{} lacks the image",
            i + 1
        );
    }
    // Each replica runs the pushed bits, by id.
    for node in &nodes {
        let i = hosts
            .hosts
            .iter()
            .position(|h| h.name == node.host.name)
            .expect("host");
        let containers = hosts.docker(
            i,
            &[
                "ps",
                "--filter",
                "label=berth.service=app",
                "--format",
                "{{.Image}}",
            ],
        );
        // The engine shows an image named by id as its short id.
        let shown = containers.trim();
        assert!(
            shown.len() >= 12 && id.trim_start_matches("sha256:").starts_with(shown),
            "host{}: {containers}",
            i + 1
        );
    }

    // The ledger: the control plane served the first host; each of the two others
    // was given an `image.fetch` delegation for exactly this image, and the host it
    // fetched from recorded the calls it allowed.
    let minted = ledger_with(&server, "minted", "image.fetch").await;
    assert!(minted.len() >= 2, "image.fetch delegations: {minted:?}");
    assert!(
        minted
            .iter()
            .all(|e| e["detail"].as_str().is_some_and(|d| d.contains(&id))),
        "{minted:?}"
    );
    let served = ledger_with(&server, "decision", &format!("image.fetch default/{id}")).await;
    assert!(
        served.iter().any(|e| e["actor"] == "control-plane"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("allowed"))),
        "the control plane's fetches: {served:?}"
    );
    let by_peers: Vec<_> = served
        .iter()
        .filter(|e| e["actor"] != "control-plane")
        .collect();
    assert!(
        by_peers
            .iter()
            .filter(|e| e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("allowed")))
            .count()
            >= 2,
        "the peers' fetches: {served:?}"
    );

    attacks_on_fetches_are_refused_and_recorded(&hosts, &server, &nodes, &id).await;
    a_blob_served_corrupt_is_refused_and_fetched_elsewhere(&hosts, &server, &nodes, &name, &id)
        .await;
    drop(nodes);
}

/// The layers of the local image `name`, bottom first.
fn local_layers(name: &str) -> Vec<Digest> {
    let out = std::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            name,
        ])
        .output()
        .expect("docker runs");
    serde_json::from_slice::<Vec<String>>(&out.stdout)
        .expect("layers")
        .iter()
        .map(|l| Digest::parse(l).expect("a layer digest"))
        .collect()
}

/// A `FetchBlob` body from host2 to host1 for `tenant`'s blob `blob` of `image`.
fn fetch_body(tenant: &str, image: &str, blob: &Digest) -> PeerCallBody {
    PeerCallBody {
        target: "host1".into(),
        tenant: tenant.into(),
        topology: String::new(),
        service: image.into(),
        port: 0,
        timestamp_ms: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0),
        nonce: (0..16).map(|_| rand_byte()).collect(),
        digest: blob.to_string(),
    }
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    b[0]
}

/// Host2, speaking with its own identity to host1's node API, tries to take blobs it
/// was not given: each call is refused, and host1's refusals reach the ledger. A
/// fetch its delegation does cover is served, so the refusals are the policy's.
async fn attacks_on_fetches_are_refused_and_recorded(
    hosts: &Hosts,
    server: &Server,
    nodes: &[HostNode],
    id: &str,
) {
    // Another tenant's image, running on host1 only.
    let (ok, _, err) = berth(server, &["tenant", "create", "other"]);
    assert!(ok, "{err}");
    let theirs = format!("berth-test/theirs:{}", std::process::id());
    let their_id = build_local_image(&theirs, 1);
    let (ok, _, err) = berth(server, &["--tenant", "other", "push", &theirs]);
    assert!(ok, "{err}");
    let their_layer = local_layers(&theirs).pop().expect("their layer");
    // Their image quota, once full, stops a push with a message naming the image
    // and the limit; what they pushed before stays.
    let (ok, _, err) = berth(
        server,
        &["limits", "set", "other", "--image-mebibytes", "2"],
    );
    assert!(ok, "{err}");
    let big = format!("berth-test/big:{}", std::process::id());
    build_local_image(&big, 3);
    let (ok, _, err) = berth(server, &["--tenant", "other", "push", &big]);
    assert!(!ok, "a push past the quota succeeded");
    assert!(
        err.contains(&format!("pushing {big}")) && err.contains("does not fit"),
        "{err}"
    );
    let mine = Digest::parse(id).expect("an id");
    let my_layer = {
        let ours: Vec<_> = local_layers(id);
        ours.last().cloned().expect("a layer")
    };
    // Naming another tenant's image by id, in a topology, gives nothing.
    let response = server
        .http
        .put(format!("{}/v1/tenants/other/topologies/stolen", server.api))
        .bearer_auth(server.admin)
        .json(&serde_json::json!({
            "name": "stolen",
            "services": { "app": { "image": id, "replicas": 1, "command": ["sleep", "3600"],
                                   "networks": { "default": {} } } },
            "networks": { "default": {} }
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let refusal: serde_json::Value = response.json().await.expect("json");
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(id) && message.contains("not one of tenant \"other\"'s pushed images"),
        "{refusal}"
    );
    let response = server
        .http
        .put(format!("{}/v1/tenants/other/topologies/theirs", server.api))
        .bearer_auth(server.admin)
        .json(&serde_json::json!({
            "name": "theirs",
            "services": { "app": { "image": theirs, "replicas": 1, "init": true,
                                   "command": ["sleep", "3600"],
                                   "networks": { "default": {} }, "constraints": on("host1") } },
            "networks": { "default": {} }
        }))
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap_or_default()
    );
    eventually("the other tenant's image runs on host1", 120, async || {
        host_has_image(hosts, 0, &their_id)
    })
    .await;

    let host2 = NodeIdentity::load(nodes[1].dir.path()).expect("host2's identity");
    let signer = host2.signer().expect("signer");
    let host1_key = NodeIdentity::load(nodes[0].dir.path())
        .and_then(|n| n.public_key())
        .expect("host1's key");
    let url = format!("http://{}:{NODE_API_PORT}", hosts.hosts[0].address);
    let client = NodePeerClient::new(signer.tls().channel(&url, &host1_key).expect("channel"))
        .max_decoding_message_size(8 * 1024 * 1024);
    // What the allocator would mint host2 to fetch its own tenant's image from host1.
    let mine_token = delegation::mint(
        &server.root_key(),
        1,
        &Grant::image_fetch(
            "host2",
            signer.public_key(),
            "host1",
            "default",
            &mine,
            std::time::SystemTime::now() + Duration::from_secs(60),
        ),
    )
    .expect("mint")
    .to_vec()
    .expect("encode");
    let fetch = async |token: Vec<u8>, body: PeerCallBody| {
        let call = signer.peer_call("FetchBlob", token, &body);
        let mut stream = client.clone().fetch_blob(call).await?.into_inner();
        let mut hasher = berth_protocol::image::Hasher::default();
        while let Some(chunk) = stream.message().await? {
            hasher.update(&chunk.data);
        }
        Ok::<_, tonic::Status>(hasher.finish())
    };

    // Allowed: a layer of the image the delegation names comes back, whole.
    let got = fetch(mine_token.clone(), fetch_body("default", id, &my_layer))
        .await
        .expect("the delegated fetch is served");
    assert_eq!(got, my_layer);

    let attacks = [
        ("no token", Vec::new(), fetch_body("default", id, &my_layer)),
        (
            "another tenant's image with a delegation for one's own",
            mine_token.clone(),
            fetch_body("other", &their_id, &their_layer),
        ),
        (
            "a delegation for one image used for another",
            mine_token.clone(),
            fetch_body("default", &their_id, &their_layer),
        ),
        (
            "a blob that is not part of the delegated image",
            mine_token.clone(),
            fetch_body("default", id, &their_layer),
        ),
    ];
    for (attack, token, body) in attacks {
        let refused = fetch(token, body).await.expect_err(attack);
        assert_eq!(
            refused.code(),
            tonic::Code::PermissionDenied,
            "{attack}: {refused:?}"
        );
    }
    // Host1 recorded each refusal; the ledger names host1 as the one who decided.
    eventually("host1's refusals in the ledger", 60, async || {
        let refusals: Vec<_> = ledger_with(server, "decision", "image.fetch")
            .await
            .into_iter()
            .filter(|e| {
                e["actor"] == "host1"
                    && e["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("refused"))
            })
            .collect();
        let about = |text: &str| {
            refusals
                .iter()
                .any(|e| e["subject"].as_str().is_some_and(|s| s.contains(text)))
        };
        refusals.len() >= 4
            && about(&format!("other/{their_id} blob {their_layer}"))
            && about(&format!("default/{their_id} blob {their_layer}"))
            && about(&format!("default/{id} blob {their_layer}"))
            && about(&format!("default/{id} blob {my_layer}"))
    })
    .await;
}

/// Host1's and host2's copies of the pushed layer are overwritten (what a compromised
/// host would serve); host3, made to fetch the image again, refuses their bytes,
/// records the refusals, and takes the layer from the control plane.
async fn a_blob_served_corrupt_is_refused_and_fetched_elsewhere(
    hosts: &Hosts,
    server: &Server,
    nodes: &[HostNode],
    name: &str,
    id: &str,
) {
    let layer = local_layers(name).pop().expect("the pushed layer");
    let deploy = async |replicas: usize, constraints: serde_json::Value| {
        server
            .deploy(&payload_app("pushed", name, replicas, constraints))
            .await;
    };
    let replicas_on = async || -> Vec<String> {
        let status = server
            .api(reqwest::Method::GET, "/tenants/default/topologies/pushed")
            .await;
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] == "running")
            .map(|r| r["node"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    deploy(
        2,
        serde_json::json!([{ "attribute": "hostname", "equal": false, "value": "host3" }]),
    )
    .await;
    eventually("host3 runs no replica", 120, async || {
        let on = replicas_on().await;
        on.len() == 2
            && !on.iter().any(|n| n == "host3")
            && hosts
                .docker(2, &["ps", "-q", "--filter", "label=berth.service=app"])
                .trim()
                .is_empty()
    })
    .await;
    hosts.docker(2, &["image", "rm", "-f", id]);
    assert!(!host_has_image(hosts, 2, id), "host3 still has the image");
    let cache = |i: usize| nodes[i].dir.path().join("images/sha256");
    for entry in std::fs::read_dir(cache(2)).expect("host3's cache") {
        std::fs::remove_file(entry.expect("entry").path()).expect("emptied");
    }
    for i in [0, 1] {
        let held = cache(i).join(layer.hex());
        let size = std::fs::metadata(&held).expect("held").len();
        std::fs::write(&held, vec![0u8; usize::try_from(size).expect("size")])
            .expect("overwritten");
    }

    deploy(3, serde_json::json!([])).await;
    eventually("a replica runs on host3 again", 180, async || {
        replicas_on().await.iter().any(|n| n == "host3")
    })
    .await;
    assert!(host_has_image(hosts, 2, id), "host3 lacks the image");
    // Host3 refused both copies it was served, and said so.
    eventually(
        "host3's refusals of the corrupt copies in the ledger",
        60,
        async || {
            let decisions =
                ledger_with(server, "decision", &format!("default/{id} blob {layer}")).await;
            let refused_from = |source: &str| {
                let said = format!("refused: the bytes {source} served are not the blob");
                decisions.iter().any(|e| {
                    e["actor"] == "host3"
                        && e["detail"].as_str().is_some_and(|d| d.starts_with(&said))
                })
            };
            refused_from("host1") && refused_from("host2")
        },
    )
    .await;
    let served = ledger_with(
        server,
        "decision",
        &format!("blob {layer} served to node \"host3\""),
    )
    .await;
    assert!(
        served.iter().any(|e| e["actor"] == "control-plane"),
        "the control plane served host3: {served:?}"
    );
}

/// A registry (Debian's `docker-registry`) with one htpasswd login on host `i`,
/// listening at `address:5000`; stopped when the process is dropped.
fn start_registry(
    hosts: &Hosts,
    i: usize,
    dir: &std::path::Path,
    user: &str,
    password: &str,
) -> berth_tests::plane::Process {
    let htpasswd = std::process::Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd runs");
    assert!(htpasswd.status.success());
    std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).expect("htpasswd file");
    let address = &hosts.hosts[i].address;
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {address}:5000\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {auth}\n",
            root = dir.join("data").display(),
            auth = dir.join("htpasswd").display(),
        ),
    )
    .expect("registry config");
    hosts.spawn(
        i,
        "docker-registry",
        &["serve", &dir.join("config.yml").display().to_string()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_images_run_with_the_tenants_login_which_is_shown_nowhere() {
    let pid = std::process::id();
    let _built = LocalImages(vec![format!("berth-test/registered:{pid}")]);
    let password = format!(
        "pw-{pid}-{}",
        (0..8)
            .map(|_| format!("{:02x}", rand_byte()))
            .collect::<String>()
    );
    // Three pool hosts and a fourth, outside the pool, for the registry.
    let hosts = Hosts::up(4);
    let registry_dir = tempfile::tempdir().expect("registry dir");
    let _registry = start_registry(&hosts, 3, registry_dir.path(), "tester", &password);
    let registry = format!("{}:5000", hosts.hosts[3].address);
    let (server, nodes) = joined(
        &hosts,
        &[
            ("BERTH_INSECURE_REGISTRIES", &registry),
            ("BERTH_REGISTRIES", &registry),
        ],
    )
    .await;

    // An image built here, pushed to the registry through the fourth host's engine.
    let local = format!("berth-test/registered:{pid}");
    let id = build_local_image(&local, 1);
    let image = format!("{registry}/app:v1");
    let docker_config = tempfile::tempdir().expect("docker config");
    let on_host4 = |args: &[&str], stdin: Option<&[u8]>| {
        let mut child = std::process::Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &hosts.hosts[3].docker_host)
            .env("DOCKER_CONFIG", docker_config.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("docker runs");
        if let Some(bytes) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(bytes)
                .expect("written");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("docker ends");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let saved = std::process::Command::new("docker")
        .args(["save", &local])
        .output()
        .expect("docker save");
    on_host4(&["load", "-q"], Some(&saved.stdout));
    on_host4(&["tag", &local, &image], None);
    let mut registry_up = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(&registry).is_ok() {
            registry_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(registry_up, "the registry never listened at {registry}");
    on_host4(
        &["login", &registry, "-u", "tester", "--password-stdin"],
        Some(password.as_bytes()),
    );
    on_host4(&["push", "-q", &image], None);
    for i in 0..3 {
        assert!(
            !host_has_image(&hosts, i, &id),
            "host{} has the image",
            i + 1
        );
    }

    // The tenant keeps its login in the pool; the API shows the user name only.
    let login = std::process::Command::new(berth_tests::berth_bin())
        .args(["--endpoint", &server.api, "--token", server.admin])
        .args(["registry", "login", &registry, "--username", "tester"])
        .env("BERTH_REGISTRY_PASSWORD", &password)
        .output()
        .expect("berth runs");
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let listed = server
        .api(reqwest::Method::GET, "/tenants/default/registries")
        .await;
    assert_eq!(listed[0]["registry"], registry.as_str(), "{listed}");
    assert_eq!(listed[0]["username"], "tester");

    let topology = payload_app("registered", &image, 3, serde_json::json!([]));
    let deploy = async |tenant: &str| {
        server
            .http
            .put(format!(
                "{}/v1/tenants/{tenant}/topologies/registered",
                server.api
            ))
            .bearer_auth(server.admin)
            .json(&topology)
            .send()
            .await
            .expect("request")
    };
    let accepted = deploy("default").await;
    assert!(
        accepted.status().is_success(),
        "{}",
        accepted.text().await.unwrap_or_default()
    );
    eventually(
        "three replicas of the registry image run",
        180,
        async || {
            let status = server
                .api(
                    reqwest::Method::GET,
                    "/tenants/default/topologies/registered",
                )
                .await;
            status["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["state"] == "running"))
        },
    )
    .await;
    // Every host runs the bits the tag named at deploy, by digest.
    for i in 0..3 {
        assert!(
            host_has_image(&hosts, i, &id),
            "host{} lacks the image",
            i + 1
        );
        let container = hosts.docker(i, &["ps", "-q", "--filter", "label=berth.service=app"]);
        let created_from = hosts.docker(
            i,
            &["inspect", "--format", "{{.Config.Image}}", container.trim()],
        );
        assert!(
            created_from.trim().starts_with(&format!("{image}@sha256:")),
            "host{} runs {created_from:?}",
            i + 1
        );
    }

    // The status and `berth ps` show the digest the tag was pinned to.
    let status = server
        .api(
            reqwest::Method::GET,
            "/tenants/default/topologies/registered",
        )
        .await;
    let pinned = status["replicas"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(pinned.starts_with(&format!("{image}@sha256:")), "{status}");
    let (ok, listed, err) = berth(&server, &["ps", "--all"]);
    assert!(ok, "{err}");
    let short = &pinned[..pinned.find("sha256:").expect("a digest") + "sha256:".len() + 12];
    assert!(listed.contains(short), "berth ps: {listed}");

    // Another tenant, without a login, is refused at deploy, clearly.
    let (ok, _, err) = berth(&server, &["tenant", "create", "other"]);
    assert!(ok, "{err}");
    let refused = deploy("other").await;
    assert_eq!(refused.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = refused.json().await.expect("json");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&image) && message.contains("without a login"),
        "{body}"
    );

    // The password is in no log, no API answer, no ledger entry.
    let mut seen = Vec::new();
    let log = std::fs::read_to_string(&server.output).unwrap_or_default();
    assert!(!log.is_empty(), "the server's log is read");
    seen.push(("the server's log", log));
    for path in [
        "/audit/entries?limit=1000",
        "/tenants/default/registries",
        "/tenants/default/topologies/registered",
        "/tenants/default/topologies",
    ] {
        seen.push((
            path,
            server.api(reqwest::Method::GET, path).await.to_string(),
        ));
    }
    seen.push((
        "berth registry login",
        String::from_utf8_lossy(&login.stdout).into_owned()
            + &String::from_utf8_lossy(&login.stderr),
    ));
    for (place, text) in &seen {
        assert!(!text.contains(&password), "the password is in {place}");
    }
    drop(nodes);
}
