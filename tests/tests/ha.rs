//! High availability of the control plane on PostgreSQL, end to end: two `berth
//! server` processes over one database and one state directory, two `berth-node`
//! agents on real Docker given both servers' node API addresses. One server leads
//! (serves the node API, runs the failure detector), the other stands by. The leader
//! is killed while a deploy is in flight; the other takes the lead within seconds, the
//! nodes come over to it, and the deploy, asked again of the new leader as a client
//! would, converges: every replica runs once, none is lost and none runs twice.
//! A root key rotated or retired through one server is honoured by the other.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_tests::ensure_images;
use berth_tests::plane::Server;

const REPLICAS: usize = 6;

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

async fn get(server: &Server, path: &str) -> Option<serde_json::Value> {
    let response = server
        .http
        .get(format!("{}/v1{path}", server.api))
        .bearer_auth(server.admin)
        .send()
        .await
        .ok()?;
    match response.status().is_success() {
        true => response.json().await.ok(),
        false => None,
    }
}

/// The `berth_allocator_leading` gauge of `server`'s metrics.
async fn leading(server: &Server) -> Option<bool> {
    server
        .metric("berth_allocator_leading")
        .await
        .map(|v| v == "1")
}

async fn node_states(server: &Server) -> BTreeMap<String, String> {
    get(server, "/nodes")
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let field = |k: &str| n[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("state"))
        })
        .collect()
}

/// Running containers of the topology on any of the nodes named with `prefix`, by
/// replica number, with the nodes each runs on.
fn running_replicas(prefix: &str) -> BTreeMap<u32, Vec<String>> {
    let mut replicas: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for name in berth_tests::docker_lines(&["ps", "--format", "{{.Names}}"]) {
        // NODE.POOL.TENANT.TOPOLOGY.SERVICE.REPLICA
        let parts: Vec<&str> = name.split('.').collect();
        if let [node, _, "default", "ha", "web", replica] = parts[..]
            && node.starts_with(prefix)
            && let Ok(replica) = replica.parse()
        {
            replicas.entry(replica).or_default().push(node.to_owned());
        }
    }
    replicas
}

fn topology() -> serde_json::Value {
    serde_json::json!({
        "name": "ha",
        "services": { "web": {
            "image": "berth/busybox:latest", "replicas": REPLICAS, "init": true,
            "command": ["sleep", "3600"],
            "networks": { "default": {} }
        } },
        "networks": { "default": {} }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_during_a_deploy_hands_over_and_the_deploy_converges() {
    ensure_images();
    let database = berth_tests::postgres::fresh_database("ha").await;
    let bin = berth_tests::berth_bin();
    let args = ["--database", database.as_str()];
    let mut first = Server::start_with(&bin, None, &args, &[]).await;
    eventually("the first server leads", async || {
        first.printed().contains("leading:")
    })
    .await;
    let second = Server::start_with(&bin, Some(first.state.clone()), &args, &[]).await;
    eventually("the second server stands by", async || {
        second.printed().contains("standing by:")
    })
    .await;
    assert_eq!(leading(&first).await, Some(true));
    assert_eq!(leading(&second).await, Some(false));

    // Nodes are given both servers; they stream to the one that leads.
    let allocators = format!("{},{}", second.node_url(), first.node_url());
    let prefix = format!("ha{}", std::process::id());
    let _n1 = first.join_at(&allocators, &format!("{prefix}-n1")).await;
    let _n2 = second.join_at(&allocators, &format!("{prefix}-n2")).await;
    eventually("both nodes are active", async || {
        let states = node_states(&second).await;
        states.len() == 2 && states.values().all(|s| s == "active")
    })
    .await;

    // A deploy through the server that stands by reaches the nodes through the
    // leader's streams: it is told of the change through PostgreSQL at once, not at
    // its streams' periodic recheck (27 s at the soonest, longer than allowed here).
    let small = serde_json::json!({
        "name": "side",
        "services": { "one": {
            "image": "berth/busybox:latest", "replicas": 1, "init": true,
            "command": ["sleep", "3600"],
            "networks": { "default": {} }
        } },
        "networks": { "default": {} }
    });
    // (Past the wake-up every stream gets a few seconds after a server starts, when
    // its root keys may sign, so that this cannot stand in for the notice.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    second.deploy(&small).await;
    let mut told = false;
    for _ in 0..100 {
        let status = get(&second, "/tenants/default/topologies/side").await;
        if status.is_some_and(|s| s["replicas"][0]["state"] == "running") {
            told = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(told, "a deploy through the standing-by server never ran");

    // The deploy is sent to the leader, which is killed before it can answer (or
    // just after it committed: either way the client does not know).
    let request = first
        .http
        .put(format!("{}/v1/tenants/default/topologies/ha", first.api))
        .bearer_auth(first.admin)
        .json(&topology())
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(30)).await;
    first.kill();
    let killed = std::time::Instant::now();
    let _ = in_flight.await;

    eventually("the second server takes the lead", async || {
        second.printed().contains("leading:") && leading(&second).await == Some(true)
    })
    .await;
    eprintln!("the lead passed in {:.1} s", killed.elapsed().as_secs_f64());
    // The client asks the new leader again: the same topology, so at most one
    // revision's worth of replicas exists whatever the first request did.
    second.deploy(&topology()).await;

    eventually("every replica runs, once", async || {
        let running = running_replicas(&prefix);
        running.len() == REPLICAS && running.values().all(|nodes| nodes.len() == 1)
    })
    .await;
    let status = get(&second, "/tenants/default/topologies/ha")
        .await
        .expect("status");
    let mut slots: Vec<u64> = status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["replica"].as_u64().expect("replica number"))
        .collect();
    slots.sort_unstable();
    assert_eq!(
        slots,
        (1..=REPLICAS as u64).collect::<Vec<_>>(),
        "the allocator holds each replica once: {status}"
    );
    eventually(
        "the nodes report every replica running to the new leader",
        async || {
            get(&second, "/tenants/default/topologies/ha")
                .await
                .and_then(|s| s["replicas"].as_array().cloned())
                .is_some_and(|r| r.len() == REPLICAS && r.iter().all(|r| r["state"] == "running"))
        },
    )
    .await;
    // And it stays so: no replica appears twice later (a late assignment from the
    // dead leader, say).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let running = running_replicas(&prefix);
    assert_eq!(running.len(), REPLICAS, "{running:?}");
    assert!(
        running.values().all(|nodes| nodes.len() == 1),
        "{running:?}"
    );
    let states = node_states(&second).await;
    assert!(states.values().all(|s| s == "active"), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_key_rotated_through_one_server_is_honoured_by_the_other() {
    // Sessions signed under a key made through one server are accepted by the other
    // at once (it reads the shared key file again), and a key retired through one is
    // refused by both.
    let database = berth_tests::postgres::fresh_database("hakeys").await;
    let bin = berth_tests::berth_bin();
    let args = ["--database", database.as_str()];
    let first = Server::start_with(&bin, None, &args, &[]).await;
    let second = Server::start_with(&bin, Some(first.state.clone()), &args, &[]).await;
    let (status, _) = first.post(
        "/tenants/default/users",
        serde_json::json!({ "name": "dev", "password": "a long enough password", "role": "developer" }),
    )
    .await;
    assert_eq!(status, 201, "the user was not created");
    let login = async |server: &Server| {
        let (status, body) = server.post(
            "/login",
            serde_json::json!({ "tenant": "default", "user": "dev", "password": "a long enough password" }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().expect("a token").to_owned()
    };
    let old = login(&first).await;
    assert_eq!(second.status_with("/session", &old).await, 200);

    let (status, rotated) = first.post("/root-keys", serde_json::json!({})).await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["id"], 2, "{rotated}");
    let new = login(&first).await;
    eventually(
        "the other server accepts a session under the new key",
        async || second.status_with("/session", &new).await == 200,
    )
    .await;
    // The other server signs under the new key too, and the old session still works.
    eventually("the other server signs under the new key", async || {
        get(&second, "/root-keys").await.is_some_and(|keys| {
            keys.as_array()
                .is_some_and(|k| k.iter().any(|k| k["id"] == 2 && k["signing"] == true))
        })
    })
    .await;
    assert_eq!(second.status_with("/session", &old).await, 200);

    // Retired through the second server (forced: its sessions may still be valid),
    // the old key is refused by the first.
    let retired = second
        .http
        .delete(format!("{}/v1/root-keys/1?force=true", second.api))
        .bearer_auth(second.admin)
        .send()
        .await
        .expect("request");
    assert!(retired.status().is_success(), "{:?}", retired.text().await);
    eventually("the first server refuses the retired key", async || {
        first.status_with("/session", &old).await == 401
    })
    .await;
    assert_eq!(first.status_with("/session", &new).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_ps_through_the_standby_give_the_leaders_answer() {
    // Only the leader holds the nodes' streams; a standby forwards what needs them
    // (logs) to the address the leader recorded, and answers the rest (ps) from the
    // database they share. A client sees the same whichever server it asks.
    ensure_images();
    let database = berth_tests::postgres::fresh_database("hastandby").await;
    let bin = berth_tests::berth_bin();
    let args = ["--database", database.as_str()];
    let leader = Server::start_with(&bin, None, &args, &[]).await;
    eventually("the first server leads", async || {
        leader.printed().contains("leading:")
    })
    .await;
    let standby = Server::start_with(&bin, Some(leader.state.clone()), &args, &[]).await;
    eventually("the second server stands by", async || {
        standby.printed().contains("standing by:")
    })
    .await;
    let prefix = format!("hs{}", std::process::id());
    let _node = leader
        .join_at(&leader.node_url(), &format!("{prefix}-n1"))
        .await;
    eventually("the node is active", async || {
        node_states(&leader).await.values().any(|s| s == "active")
    })
    .await;

    let mut project = berth_tests::Project::new(
        "standby",
        "name: NAME\nservices:\n  echo:\n    image: berth/busybox:latest\n    init: true\n    deploy: { replicas: 2 }\n    command: [\"sh\", \"-c\", \"echo said-by-$$HOSTNAME; sleep 3600\"]\n",
    );
    project.set_env("BERTH_TOKEN", leader.admin);
    let through = |server: &Server| {
        let mut args = vec!["--endpoint".to_owned(), server.api.clone()];
        args.extend(["--json".to_owned()]);
        args
    };
    let run = |server: &Server, command: &[&str]| {
        let mut args = through(server);
        args.extend(command.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        project.berth(&args).ok().stdout
    };
    run(&standby, &["up", "-d"]);

    // Both replicas have said their line.
    let said = |stdout: &str| -> Vec<(String, u64, Vec<String>)> {
        let replicas: serde_json::Value = serde_json::from_str(stdout).expect("logs as JSON");
        let mut said: Vec<(String, u64, Vec<String>)> = replicas
            .as_array()
            .expect("a list of replicas")
            .iter()
            .map(|r| {
                let lines = r["lines"]
                    .as_array()
                    .expect("lines")
                    .iter()
                    .map(|l| l.as_str().unwrap_or_default().to_owned())
                    .collect();
                (
                    r["service"].as_str().unwrap_or_default().to_owned(),
                    r["replica"].as_u64().unwrap_or(0),
                    lines,
                )
            })
            .collect();
        said.sort();
        said
    };
    eventually("both replicas' lines reach the leader", async || {
        let logs = said(&run(&leader, &["logs"]));
        logs.len() == 2
            && logs
                .iter()
                .all(|(_, _, lines)| lines.iter().any(|l| l.starts_with("said-by-")))
    })
    .await;
    let from_leader = said(&run(&leader, &["logs"]));
    let from_standby = said(&run(&standby, &["logs"]));
    assert_eq!(from_standby, from_leader, "logs through the standby differ");
    assert!(
        from_standby
            .iter()
            .all(|(_, _, lines)| lines.iter().any(|l| l.starts_with("said-by-"))),
        "{from_standby:?}"
    );

    let ps = |server: &Server| {
        let status: serde_json::Value =
            serde_json::from_str(&run(server, &["ps"])).expect("ps as JSON");
        status["replicas"].clone()
    };
    let (leaders, standbys) = (ps(&leader), ps(&standby));
    assert_eq!(standbys, leaders, "ps through the standby differs");
    assert_eq!(
        leaders.as_array().map(Vec::len),
        Some(2),
        "two replicas: {leaders}"
    );
    assert!(
        leaders
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["state"] == "running"),
        "{leaders}"
    );
    run(&leader, &["down"]);
}
