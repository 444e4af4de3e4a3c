//! `berth up` on this machine, end to end: the real binary, real Docker.

use berth_tests::{Project, docker_lines, ensure_images, free_port, http_get};

/// `a` answers on a published (ephemeral) port by asking `b` by its service name; `a`
/// waits for `b` to be healthy. Two replicas of `b` share the name.
const LINKED: &str = r#"
name: NAME
services:
  b:
    image: berth/busybox:latest
    init: true
    environment:
      ANSWER: ${ANSWER:-pong}
    command: ["sh", "-c", "mkdir -p /www && echo \"$$ANSWER\" > /www/index.html && exec httpd -f -p 8080 -h /www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 500ms
      retries: 20
    deploy:
      replicas: 2
  a:
    image: berth/busybox:latest
    init: true
    depends_on:
      b:
        condition: service_healthy
    ports: ["8080"]
    command:
      - sh
      - -c
      - |
        mkdir -p /www/cgi-bin
        printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\nwget -qO- http://b:8080/\n' > /www/cgi-bin/ask
        chmod +x /www/cgi-bin/ask
        exec httpd -f -p 8080 -h /www
"#;

fn published_port(project: &Project, service: &str) -> u16 {
    let ps = project.ps();
    let entry = ps
        .iter()
        .find(|c| c["service"] == service)
        .unwrap_or_else(|| panic!("no {service} in {ps:?}"));
    let port = entry["ports"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{service} publishes no port: {entry}"));
    port.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad port {port}"))
}

#[test]
fn a_reaches_b_by_name_and_a_second_up_changes_nothing() {
    ensure_images();
    let project = Project::new("linked", LINKED);
    let first = project.berth(&["up", "-d"]).ok();
    assert!(first.stdout.contains("3 created"), "{}", first.stdout);
    assert_eq!(
        http_get(published_port(&project, "a"), "/cgi-bin/ask").trim(),
        "pong"
    );

    let before = project.container_ids();
    assert_eq!(before.len(), 3, "{before:?}");
    let second = project.berth(&["up", "-d"]).ok();
    assert!(
        second.stdout.contains("0 created, 3 unchanged, 0 removed"),
        "{}",
        second.stdout
    );
    assert_eq!(
        project.container_ids(),
        before,
        "a second `up` recreated containers"
    );
    // `ps --all` lists every local topology, this one with its three replicas.
    let all: serde_json::Value =
        serde_json::from_str(&project.berth(&["ps", "--all", "--json"]).ok().stdout)
            .expect("ps --all --json prints JSON");
    let ours = all
        .as_array()
        .and_then(|all| all.iter().find(|t| t["topology"] == project.name.as_str()))
        .unwrap_or_else(|| panic!("{} not in {all}", project.name));
    assert_eq!(ours["replicas"].as_array().map(Vec::len), Some(3), "{ours}");
    assert_eq!(ours["revision"], 1, "{ours}");
}

#[test]
fn a_changed_service_is_replaced_and_the_others_are_kept() {
    ensure_images();
    let mut project = Project::new("changed", LINKED);
    project.berth(&["up", "-d"]).ok();
    let before = project.container_ids();

    project.set_env("ANSWER", "changed");
    let run = project.berth(&["up", "-d"]).ok();
    assert!(
        run.stdout.contains("2 created, 1 unchanged"),
        "{}",
        run.stdout
    );
    let after = project.container_ids();
    let a = format!("local.{}.a.1", project.name);
    assert_eq!(before[&a], after[&a], "the untouched service was recreated");
    for replica in 1..=2 {
        let b = format!("local.{}.b.{replica}", project.name);
        assert_ne!(
            before[&b], after[&b],
            "the changed service was not replaced"
        );
    }
    assert_eq!(
        http_get(published_port(&project, "a"), "/cgi-bin/ask").trim(),
        "changed"
    );
}

#[test]
fn removed_services_and_replicas_go_away() {
    ensure_images();
    let project = Project::new("shrink", LINKED);
    project.berth(&["up", "-d"]).ok();
    project.write(&LINKED.replace("replicas: 2", "replicas: 1"));
    let run = project.berth(&["up", "-d"]).ok();
    assert!(run.stdout.contains("1 removed"), "{}", run.stdout);
    let names: Vec<String> = project.container_ids().into_keys().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".b.2")), "{names:?}");
}

const WITH_VOLUME: &str = r#"
name: NAME
services:
  keeper:
    image: berth/busybox:latest
    init: true
    command: ["sh", "-c", "date >> /data/boots; exec sleep 3600"]
    volumes: ["data:/data"]
volumes:
  data: {}
"#;

#[test]
fn down_leaves_nothing_behind_but_volumes_unless_asked() {
    ensure_images();
    let project = Project::new("down", WITH_VOLUME);
    project.berth(&["up", "-d"]).ok();
    assert_eq!(project.container_ids().len(), 1);
    assert_eq!(project.networks().len(), 1);
    assert_eq!(project.volumes().len(), 1);

    project.berth(&["down"]).ok();
    assert!(project.container_ids().is_empty(), "containers left behind");
    assert!(project.networks().is_empty(), "networks left behind");
    assert_eq!(
        project.volumes().len(),
        1,
        "down without -v removed the volume"
    );

    // The volume's content survives a new `up`.
    project.berth(&["up", "-d"]).ok();
    let name = format!("local.{}.keeper.1", project.name);
    let boots = docker_lines(&["exec", &name, "cat", "/data/boots"]);
    assert_eq!(boots.len(), 2, "{boots:?}");

    project.berth(&["down", "-v"]).ok();
    assert!(project.container_ids().is_empty());
    assert!(project.networks().is_empty());
    assert!(project.volumes().is_empty(), "down -v kept the volume");
}

#[test]
fn a_missing_image_is_refused_before_any_change() {
    ensure_images();
    let project = Project::new(
        "noimage",
        "name: NAME\nservices:\n  ok:\n    image: berth/busybox:latest\n  gone:\n    image: berth/not-built:1\n",
    );
    let run = project.berth(&["up", "-d"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("berth/not-built:1") && run.stderr.contains("infra/build-images.sh"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Nothing was changed"), "{}", run.stderr);
    assert!(
        project.container_ids().is_empty(),
        "containers were created"
    );
    assert!(project.networks().is_empty(), "networks were created");
    assert!(project.ps().is_empty(), "{:?}", project.ps());
}

#[test]
fn a_port_in_use_is_refused_before_any_change() {
    ensure_images();
    let port = free_port();
    let _holder = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the port first");
    let yaml = format!(
        "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"httpd\", \"-f\", \"-p\", \"80\"]\n    ports: [\"{port}:80\"]\n"
    );
    let project = Project::new("portinuse", &yaml);
    let run = project.berth(&["up", "-d"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains(&format!("{port} (service web)"))
            && run.stderr.contains("already in use"),
        "{}",
        run.stderr
    );
    assert!(
        project.container_ids().is_empty(),
        "containers were created"
    );
    assert!(project.networks().is_empty(), "networks were created");
}

#[test]
fn a_failing_dependency_is_reported_and_its_dependents_not_started() {
    ensure_images();
    let yaml = r#"
name: NAME
services:
  sick:
    image: berth/busybox:latest
    init: true
    command: ["sleep", "3600"]
    healthcheck:
      test: ["CMD", "false"]
      interval: 200ms
      retries: 2
  waiting:
    image: berth/busybox:latest
    init: true
    command: ["sleep", "3600"]
    depends_on:
      sick: {condition: service_healthy}
  independent:
    image: berth/busybox:latest
    init: true
    command: ["sleep", "3600"]
"#;
    let project = Project::new("sick", yaml);
    let run = project.berth(&["up", "-d"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("2 of 3 services failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("sick: replica 1 is unhealthy"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("waiting: not started: dependency sick failed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("partly applied"), "{}", run.stderr);
    // Containers are created while dependencies come up; `waiting` was never started.
    let state = |service: &str| {
        project
            .ps()
            .into_iter()
            .find(|c| c["service"] == service)
            .map(|c| c["state"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(state("independent").as_deref(), Some("running"));
    assert_eq!(
        state("waiting").as_deref(),
        Some("created"),
        "a dependent of a failed service was started"
    );
}

#[test]
fn docker_not_running_is_a_clear_error() {
    let mut project = Project::new(
        "nodocker",
        "name: NAME\nservices:\n  a:\n    image: berth/busybox:latest\n",
    );
    project.set_env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let run = project.berth(&["up", "-d"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("Docker is not running"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn logs_show_each_replica_with_its_name() {
    ensure_images();
    let yaml = "name: NAME\nservices:\n  talker:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sh\", \"-c\", \"echo hello from $$HOSTNAME; exec sleep 3600\"]\n    deploy: {replicas: 2}\n";
    let project = Project::new("logs", yaml);
    project.berth(&["up", "-d"]).ok();
    let mut out = String::new();
    for _ in 0..50 {
        out = project.berth(&["logs", "talker"]).ok().stdout;
        if out.lines().count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        out.lines().any(|l| l.starts_with("talker.1 | hello from")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("talker.2 | hello from")),
        "{out}"
    );
}
