use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

struct MemFiles(BTreeMap<PathBuf, String>);

impl FileReader for MemFiles {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

fn load_with(
    text: &str,
    vars: &[(&str, &str)],
    files: &[(&str, &str)],
) -> Result<Loaded, TopologyError> {
    let vars = Variables::from_pairs(vars.iter().copied());
    let files = MemFiles(
        files
            .iter()
            .map(|(p, t)| (Path::new("/proj").join(p), (*t).to_owned()))
            .collect(),
    );
    load(
        text,
        &LoadOptions {
            file_name: "app.yaml",
            dir: Path::new("/proj"),
            default_name: "My Proj",
            vars: &vars,
            files: &files,
        },
    )
}

fn topology(text: &str) -> Topology {
    match load_with(text, &[("HOME", "/home/u")], &[]) {
        Ok(l) => l.topology,
        Err(e) => panic!("expected a topology, got {e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match load_with(text, &[], &[]) {
        Ok(l) => panic!("expected errors, got {:?}", l.topology),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = r#"
name: shop
services:
  web:
    image: berth/busybox:latest
    command: httpd -f -p 8080
    environment:
      MODE: production
      COUNT: 3
    env_file: web.env
    ports:
      - "8080:8080"
      - target: 9090
        published: "${ADMIN_PORT:-9091}"
        host_ip: 127.0.0.1
        protocol: tcp
    expose: ["7000", "53/udp"]
    depends_on:
      api:
        condition: service_healthy
    deploy:
      replicas: 1
      resources:
        limits: { cpus: "0.5", memory: 64m }
    restart: on-failure:3
    labels: [tier=front]
    volumes: ["cache:/cache:ro", "/scratch"]
    networks: { front: { aliases: [www] } }
    working_dir: /srv
    user: "1000:1000"
    init: true
    stop_signal: SIGINT
    stop_grace_period: 3s
  api:
    image: berth/busybox
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo hi"]
    environment: ["A=1", "HOME_FROM_HOST"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      timeout: 500ms
      retries: 3
      start_period: 1m30s
    deploy: { replicas: "${API_REPLICAS:-2}" }
    networks: [front, default]
x-common: &common
  restart: always
networks:
  front:
    internal: true
volumes:
  cache: {}
"#;

#[test]
fn a_full_file_normalises() {
    let loaded = load_with(
        FULL,
        &[("HOME_FROM_HOST", "/root")],
        &[("web.env", "MODE=ignored\nFROM_FILE=yes\n")],
    )
    .unwrap();
    let t = loaded.topology;
    assert_eq!(t.name, "shop");
    let web = &t.services["web"];
    assert_eq!(
        web.command.as_deref(),
        Some(&["httpd".to_string(), "-f".into(), "-p".into(), "8080".into()][..])
    );
    assert_eq!(
        web.environment["MODE"], "production",
        "environment wins over env_file"
    );
    assert_eq!(web.environment["COUNT"], "3");
    assert_eq!(web.environment["FROM_FILE"], "yes");
    assert_eq!(web.ports.len(), 2);
    assert_eq!(
        web.ports[1],
        PortMapping {
            target: 9090,
            published: Some(9091),
            host_ip: Some("127.0.0.1".into()),
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(
        web.expose,
        vec![
            ExposedPort {
                port: 7000,
                protocol: Protocol::Tcp
            },
            ExposedPort {
                port: 53,
                protocol: Protocol::Udp
            }
        ]
    );
    assert_eq!(web.depends_on["api"].condition, Condition::ServiceHealthy);
    assert_eq!(
        web.limits,
        Limits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20)
        }
    );
    assert_eq!(
        web.restart,
        RestartPolicy::OnFailure {
            max_retries: Some(3)
        }
    );
    assert_eq!(web.labels["tier"], "front");
    assert_eq!(
        web.volumes[0],
        VolumeMount {
            kind: MountKind::Volume,
            source: Some("cache".into()),
            target: "/cache".into(),
            read_only: true
        }
    );
    assert_eq!(web.volumes[1].source, None);
    assert_eq!(web.networks["front"].aliases, vec!["www".to_string()]);
    assert_eq!(web.working_dir.as_deref(), Some("/srv"));
    assert_eq!(web.user.as_deref(), Some("1000:1000"));
    assert!(web.init);
    assert_eq!(web.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(web.stop_grace_period_ms, Some(3000));
    let api = &t.services["api"];
    assert_eq!(
        api.replicas, 2,
        "interpolated default feeds an integer field"
    );
    assert_eq!(api.environment["HOME_FROM_HOST"], "/root");
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, vec!["CMD".to_string(), "true".into()]);
    assert_eq!(
        (
            hc.interval_ms,
            hc.timeout_ms,
            hc.retries,
            hc.start_period_ms
        ),
        (Some(1000), Some(500), Some(3), Some(90_000))
    );
    assert!(t.networks.contains_key("default") && t.networks["front"].internal);
    assert!(t.volumes.contains_key("cache"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn the_name_defaults_to_the_directory() {
    let t = load_with("services:\n  a:\n    image: x\n", &[], &[])
        .unwrap()
        .topology;
    assert_eq!(t.name, "myproj");
    assert_eq!(t.services["a"].replicas, 1);
    assert_eq!(
        t.services["a"].networks.keys().collect::<Vec<_>>(),
        vec!["default"]
    );
}

#[test]
fn wrong_types_name_file_line_column_and_path() {
    let e = errors("services:\n  web:\n    image: x\n    deploy:\n      replicas: three\n");
    assert_eq!(
        e,
        vec![r#"app.yaml:5:17: services.web.deploy.replicas: expected an integer, found "three""#]
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let e = errors(
        "services:\n  web:\n    imgae: x\n    ports: [\"http\"]\n  db:\n    image: y\n    restart: sometimes\n    depends_on: [ghost]\n",
    );
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(
        e[0].starts_with("app.yaml:2:3: services.web.image: every service needs an `image`"),
        "{e:#?}"
    );
    assert!(
        e[1].contains("3:5: services.web.imgae: unknown key `imgae` (did you mean `image`?)"),
        "{e:#?}"
    );
    assert!(e[2].contains("4:13: services.web.ports[0]"), "{e:#?}");
    assert!(
        e[3].contains("services.db.restart: unknown restart policy \"sometimes\""),
        "{e:#?}"
    );
    assert!(
        e[4].contains("services.db.depends_on.ghost: depends on \"ghost\", which is not a service"),
        "{e:#?}"
    );
}

#[test]
fn malformed_yaml_is_one_clear_error() {
    let e = errors("services:\n  web: [\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("app.yaml:") && e[0].contains("not valid YAML"),
        "{e:?}"
    );
}

#[test]
fn dependency_cycles_are_named() {
    let e = errors(
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: [a]}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("dependency cycle: a -> b -> c -> a"), "{e:?}");
}

#[test]
fn host_reaching_keys_are_read_not_refused() {
    // The format reads them everywhere; whether they run is the target's policy.
    let t = topology(
        "services:\n  a:\n    build: .\n    privileged: true\n    cap_add: [NET_ADMIN]\n    container_name: the-a\n",
    );
    let a = &t.services["a"];
    assert!(a.engine.privileged);
    assert_eq!(a.engine.cap_add, ["NET_ADMIN"]);
    assert_eq!(a.engine.container_name.as_deref(), Some("the-a"));
    assert_eq!(a.build.as_ref().map(|b| b.context.as_str()), Some("/proj"));
    // A built service with no image gets Compose's name for it.
    assert_eq!(a.image, "myproj-a");
}

#[test]
fn bind_mounts_resolve_against_the_project_and_external_networks_by_name() {
    let t = topology(
        "services:\n  a:\n    image: x\n    volumes: [\"./data:/data:ro,z\", \"~/cache:/c\", \"../up:/u\"]\n    networks: [n]\nnetworks:\n  n: {external: true, name: shared}\n",
    );
    let mounts: Vec<(MountKind, Option<&str>, bool)> = t.services["a"]
        .volumes
        .iter()
        .map(|m| (m.kind, m.source.as_deref(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            (MountKind::Bind, Some("/proj/data"), true),
            (MountKind::Bind, Some("/home/u/cache"), false),
            (MountKind::Bind, Some("/up"), false),
        ]
    );
    assert_eq!(t.networks["n"].external.as_deref(), Some("shared"));
}

#[test]
fn undeclared_networks_and_volumes() {
    let e =
        errors("services:\n  a:\n    image: x\n    networks: [back]\n    volumes: [\"data:/d\"]\n");
    assert!(
        e.iter()
            .any(|m| m.contains("network \"back\" is not declared")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("volume \"data\" is not declared")),
        "{e:?}"
    );
}

#[test]
fn host_port_clashes() {
    let e = errors(
        "services:\n  a: {image: x, ports: [\"8080:80\"]}\n  b: {image: x, ports: [\"8080:81\"]}\n  c: {image: x, ports: [\"9000:80\"], deploy: {replicas: 2}}\n",
    );
    assert!(
        e.iter()
            .any(|m| m.contains("8080/tcp is already published by service \"a\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("9000 is published by a service with 2 replicas")),
        "{e:?}"
    );
}

#[test]
fn interpolation_errors_and_warnings() {
    let e = errors("services:\n  a:\n    image: \"x:${TAG:?set TAG}\"\n");
    assert!(
        e[0].contains("3:12: services.a.image: variable TAG is required: set TAG"),
        "{e:?}"
    );
    let loaded = load_with("services:\n  a:\n    image: \"x${SUFFIX}\"\n", &[], &[]).unwrap();
    assert_eq!(loaded.topology.services["a"].image, "x");
    assert!(loaded.warnings[0].message.contains("SUFFIX is not set"));
}

#[test]
fn env_file_problems() {
    let e = load_with(
        "services:\n  a: {image: x, env_file: missing.env}\n",
        &[],
        &[],
    )
    .unwrap_err();
    assert!(
        e.diagnostics[0]
            .message
            .contains("cannot read env file /proj/missing.env"),
        "{e}"
    );
    let ok = load_with(
        "services:\n  a: {image: x, env_file: [{path: missing.env, required: false}]}\n",
        &[],
        &[],
    );
    assert!(ok.is_ok());
}

#[test]
fn empty_and_non_mapping_documents() {
    assert!(errors("")[0].contains("the file is empty"));
    assert!(errors("- a\n- b\n")[0].contains("expected a mapping, found a list"));
    assert!(errors("name: x\n")[0].contains("a topology needs `services`"));
    assert!(errors("services: {}\n")[0].contains("at least one service"));
}

#[test]
fn reserved_labels_and_names() {
    let e =
        errors("services:\n  -web: {image: x}\n  a: {image: x, labels: {berth.tenant: evil}}\n");
    assert!(
        e.iter()
            .any(|m| m.contains("\"-web\" cannot name a service")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("reserved for Berth")), "{e:?}");
}

#[test]
fn the_normalised_form_round_trips_through_json() {
    let t = load_with(FULL, &[], &[("web.env", "")]).unwrap().topology;
    let json = serde_json::to_string(&t).unwrap();
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(t, back);
}

#[test]
fn a_loaded_topology_has_no_problems_and_a_tampered_one_does() {
    let mut t = load_with(FULL, &[], &[("web.env", "")]).unwrap().topology;
    assert_eq!(t.problems(), Vec::<String>::new());
    t.name = "../escape".into();
    let web = t.services.get_mut("web").unwrap();
    web.labels.insert("berth.tenant".into(), "other".into());
    web.volumes[0].source = Some("undeclared".into());
    web.depends_on.insert("web".into(), Dependency::default());
    let api = t.services.get_mut("api").unwrap();
    api.depends_on.insert("web".into(), Dependency::default());
    let problems = t.problems();
    assert!(
        problems.iter().any(|p| p.starts_with("name:")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("reserved")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"undeclared\" is not declared")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("cannot depend on itself")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("dependency cycle")),
        "{problems:?}"
    );
}

#[test]
fn placement_constraints_are_read_and_checked_where_they_are_written() {
    let loaded = load_with(
        "services:\n  db:\n    image: x\n    deploy:\n      placement:\n        constraints:\n          - node.labels.disk == ssd\n          - \"node.hostname != n1\"\n",
        &[],
        &[],
    )
    .unwrap();
    let db = &loaded.topology.services["db"];
    assert_eq!(
        db.constraints,
        vec![
            Constraint {
                attribute: NodeAttribute::Label("disk".into()),
                equal: true,
                value: "ssd".into()
            },
            Constraint {
                attribute: NodeAttribute::Hostname,
                equal: false,
                value: "n1".into()
            },
        ]
    );
    let ssd: BTreeMap<String, String> = [("disk".to_owned(), "ssd".to_owned())].into();
    assert!(db.constraints.iter().all(|c| c.allows("n2", &ssd)));
    assert!(!db.constraints.iter().all(|c| c.allows("n1", &ssd)));
    assert!(
        !db.constraints
            .iter()
            .all(|c| c.allows("n2", &BTreeMap::new()))
    );

    let e = errors(
        "services:\n  db:\n    image: x\n    deploy:\n      placement:\n        constraints: [\"node.role == manager\"]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("app.yaml:6:23: services.db.deploy.placement.constraints[0]: cannot constrain on \"node.role\""),
        "{e:?}"
    );
}

#[test]
fn autoscale_settings_are_read_and_checked_where_they_are_written() {
    let loaded = load_with(
        "services:\n  web:\n    image: x\n    deploy:\n      replicas: 2\n      resources: {limits: {cpus: '0.5'}}\n    x-berth:\n      autoscale: {min: 1, max: 5, cpu: 60%}\n",
        &[],
        &[],
    )
    .unwrap();
    let web = &loaded.topology.services["web"];
    let autoscale = web.autoscale.expect("autoscale");
    assert_eq!(
        autoscale,
        Autoscale {
            min: 1,
            max: 5,
            cpu_percent: 60
        }
    );
    assert_eq!(autoscale.target_millis(web.limits.cpu_millis), 300);
    assert_eq!(autoscale.target_millis(None), 600);
    assert!(loaded.topology.problems().is_empty());

    // max under min, at max's own line and column.
    let e = errors(
        "services:\n  web:\n    image: x\n    x-berth:\n      autoscale:\n        min: 3\n        max: 2\n        cpu: 50\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "app.yaml:7:14: services.web.x-berth.autoscale.max: must be at least min (3), found 2"
        ),
        "{e:?}"
    );
    // A percentage out of range, and a missing max.
    let e = errors("services:\n  web:\n    image: x\n    x-berth:\n      autoscale: {cpu: 150%}\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e.iter().any(|e| e
            .contains("autoscale.cpu: expected a percentage between 1% and 100%, found \"150%\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.contains("autoscale.max: autoscale needs `max`")),
        "{e:?}"
    );
    // A starting count outside the bounds.
    let e = errors(
        "services:\n  web:\n    image: x\n    deploy: {replicas: 9}\n    x-berth:\n      autoscale: {max: 4, cpu: 50}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("services.web.x-berth.autoscale: deploy.replicas (9) must lie between min (1) and max (4)"),
        "{e:?}"
    );
    // An unknown setting.
    let e = errors(
        "services:\n  web:\n    image: x\n    x-berth:\n      autoscale: {max: 4, cpu: 50, memory: 80}\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("autoscale.memory"), "{e:?}");

    // The same checks hold for a topology that arrives as data.
    let mut tampered = loaded.topology.clone();
    tampered.services.get_mut("web").unwrap().autoscale = Some(Autoscale {
        min: 4,
        max: 2,
        cpu_percent: 0,
    });
    let problems = tampered.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("services.web.autoscale.max (2) must be at least"),
        "{problems:?}"
    );
}

// Legal Compose that was once misread or refused: each a regression test.

#[test]
fn legal_compose_keys_are_never_unknown() {
    let t = topology(
        "services:
  API:
    image: x
    restart: unless-stopped
    healthcheck: {test: [CMD, true], start_interval: 2s}
    depends_on:
      db: {condition: service_started, restart: true}
    deploy:
      restart_policy: {condition: on-failure, max_attempts: 3}
      update_config: {parallelism: 1}
      resources:
        reservations: {memory: 64m}
    volumes:
      - type: volume
        source: data
        target: /d
        volume: {nocopy: true}
      - \"data:/e:Z\"
    networks:
      back: {ipv4_address: 172.28.0.5}
  db:
    image: x
    deploy:
      restart_policy: {condition: on-failure, max_attempts: 3}
networks:
  back:
    name: back-net
    ipam:
      config: [{subnet: 172.28.0.0/16}]
volumes:
  data: {name: the-data}
",
    );
    let api = &t.services["API"];
    assert_eq!(api.restart, RestartPolicy::UnlessStopped);
    assert_eq!(
        api.healthcheck.as_ref().unwrap().start_interval_ms,
        Some(2000)
    );
    assert_eq!(api.engine.mem_reservation, Some(64 * 1024 * 1024));
    assert_eq!(api.engine.addresses["back"], ["172.28.0.5"]);
    assert_eq!(t.networks["back"].subnets[0].subnet, "172.28.0.0/16");
    assert_eq!(
        t.services["db"].restart,
        RestartPolicy::OnFailure {
            max_retries: Some(3)
        }
    );
}

#[test]
fn restart_false_duplicate_entries_and_an_empty_host_port_are_errors_as_in_compose() {
    let e = errors("services:\n  a: {image: x, restart: false}\n");
    assert!(e[0].contains("restart: \"no\""), "{e:?}");
    let e = errors("services:\n  a: {image: x, environment: [A=1, A=1]}\n");
    assert!(e[0].contains("listed twice"), "{e:?}");
    let e = errors("services:\n  a: {image: x, ports: [\":80\"]}\n");
    assert!(e[0].contains("empty host port"), "{e:?}");
}

#[test]
fn extends_merges_the_base_under_the_service() {
    let t = topology(
        "services:
  base:
    image: x
    environment: {A: \"1\", B: \"2\"}
    ports: [\"80\"]
  web:
    extends: base
    environment: [B=3]
    ports: [\"81\"]
    command: run
",
    );
    let web = &t.services["web"];
    assert_eq!(web.image, "x");
    assert_eq!(web.environment["A"], "1");
    assert_eq!(web.environment["B"], "3");
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.command.as_deref(), Some(&["run".to_owned()][..]));
    let e = errors("services:\n  a: {image: x, extends: b}\n  b: {image: x, extends: a}\n");
    assert!(e.iter().any(|m| m.contains("`extends` loops")), "{e:?}");
}

#[test]
fn extends_and_include_read_other_files() {
    let loaded = load_with(
        "include: [more.yaml]\nservices:\n  web:\n    extends: {file: base.yaml, service: common}\n",
        &[],
        &[
            ("base.yaml", "services:\n  common: {image: base-image, user: \"1000\"}\n"),
            ("more.yaml", "services:\n  cache: {image: cache-image}\n"),
        ],
    )
    .expect("loads");
    let t = loaded.topology;
    assert_eq!(t.services["web"].image, "base-image");
    assert_eq!(t.services["web"].user.as_deref(), Some("1000"));
    assert_eq!(t.services["cache"].image, "cache-image");
}

#[test]
fn profiles_leave_out_inactive_services() {
    let text = "services:\n  web: {image: x}\n  debug: {image: x, profiles: [dev]}\n";
    let t = load_with(text, &[], &[]).unwrap().topology;
    assert_eq!(t.services.keys().collect::<Vec<_>>(), ["web"]);
    let t = load_with(text, &[("COMPOSE_PROFILES", "dev")], &[])
        .unwrap()
        .topology;
    assert_eq!(t.services.keys().collect::<Vec<_>>(), ["debug", "web"]);
}

#[test]
fn secrets_and_configs_become_files_in_the_container() {
    let loaded = load_with(
        "services:
  a:
    image: x
    secrets: [token, {source: cfg, target: app.conf}]
    configs: [motd]
secrets:
  token: {file: ./token.txt}
  cfg: {environment: CFG}
configs:
  motd: {content: hello}
",
        &[("CFG", "secret-value")],
        &[],
    )
    .expect("loads");
    let files = &loaded.topology.services["a"].files;
    let targets: Vec<&str> = files.iter().map(|f| f.target.as_str()).collect();
    // Configs, then secrets, each in the order the service lists them.
    assert_eq!(
        targets,
        ["/motd", "/run/secrets/token", "/run/secrets/app.conf"]
    );
    assert_eq!(files[1].source, FileSource::File("/proj/token.txt".into()));
}

#[test]
fn a_pool_refusal_is_shown_at_its_line() {
    let loaded = load_with(
        "services:\n  a:\n    image: x\n    cap_add:\n      - NET_ADMIN\n",
        &[],
        &[],
    )
    .unwrap();
    let d = loaded.refusals("app.yaml", &Policy::pool("acme", Default::default()));
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].line, d[0].path.as_str()),
        (5, "services.a.cap_add[0]")
    );
    let text = d[0].to_string();
    assert!(text.starts_with("app.yaml:5:"), "{text}");
    assert!(
        text.contains("pool (tenant acme)") && text.contains("cap_add:NET_ADMIN"),
        "{text}"
    );
}
