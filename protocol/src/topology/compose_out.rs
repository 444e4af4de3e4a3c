//! The normalised topology written back in Compose's own keys: what `berth config`
//! prints. `docker-compose config` accepts it again, and reading it back gives the
//! same topology. Every value is in one long form: lists for commands, maps for
//! environments and labels, the long syntax for volumes and dependencies, durations
//! with units.

use serde_json::{Map, Value, json};

use super::model::*;

/// `topology` as a Compose document.
pub fn to_compose(topology: &Topology) -> Value {
    let mut doc = Map::new();
    doc.insert("name".into(), json!(topology.name));
    let mut services = Map::new();
    for (name, service) in &topology.services {
        services.insert(name.clone(), service_of(topology, service));
    }
    doc.insert("services".into(), Value::Object(services));
    let networks: Map<String, Value> = topology
        .networks
        .iter()
        .filter(|(name, network)| !is_implicit_default(name, network, topology))
        .map(|(name, network)| (name.clone(), network_of(network)))
        .collect();
    if !networks.is_empty() {
        doc.insert("networks".into(), Value::Object(networks));
    }
    if !topology.volumes.is_empty() {
        let volumes = topology
            .volumes
            .iter()
            .map(|(name, volume)| (name.clone(), volume_of(volume)))
            .collect();
        doc.insert("volumes".into(), Value::Object(volumes));
    }
    for (key, kind) in [("secrets", FileKind::Secret), ("configs", FileKind::Config)] {
        let mut defined = Map::new();
        for file in topology.services.values().flat_map(|s| &s.files) {
            if file.kind != kind {
                continue;
            }
            let source = match &file.source {
                FileSource::File(path) => json!({ "file": path }),
                FileSource::Content(text) => json!({ "content": text }),
            };
            defined.insert(file.name.clone(), source);
        }
        if !defined.is_empty() {
            doc.insert(key.into(), Value::Object(defined));
        }
    }
    let mut doc = Value::Object(doc);
    escape_dollars(&mut doc);
    doc
}

/// Every `$` of a value is written `$$`, so that reading the file again (by Compose or
/// Berth) interpolates nothing: the values are already resolved.
fn escape_dollars(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Array(items) => items.iter_mut().for_each(escape_dollars),
        Value::Object(map) => map.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

/// The network Compose makes on its own for services that name none: left implicit.
fn is_implicit_default(name: &str, network: &Network, topology: &Topology) -> bool {
    name == "default"
        && *network == Network::default()
        && topology
            .services
            .values()
            .filter(|s| s.networks.contains_key("default"))
            .all(|s| s.networks["default"] == ServiceNetwork::default())
}

fn service_of(topology: &Topology, s: &Service) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    put("image", json!(s.image));
    if let Some(build) = &s.build {
        put("build", build_of(build));
    }
    if let Some(command) = &s.command {
        put("command", json!(command));
    }
    if let Some(entrypoint) = &s.entrypoint {
        put("entrypoint", json!(entrypoint));
    }
    if !s.environment.is_empty() {
        put("environment", json!(s.environment));
    }
    if !s.ports.is_empty() {
        put(
            "ports",
            Value::Array(s.ports.iter().map(|p| json!(port_of(p))).collect()),
        );
    }
    if !s.expose.is_empty() {
        let expose: Vec<String> = s
            .expose
            .iter()
            .map(|e| match e.protocol {
                Protocol::Tcp => e.port.to_string(),
                Protocol::Udp => format!("{}/udp", e.port),
            })
            .collect();
        put("expose", json!(expose));
    }
    if !s.depends_on.is_empty() {
        let deps: Map<String, Value> = s
            .depends_on
            .iter()
            .map(|(name, d)| {
                let mut dep = Map::new();
                dep.insert("condition".into(), json!(condition_of(d.condition)));
                if !d.required {
                    dep.insert("required".into(), json!(false));
                }
                (name.clone(), Value::Object(dep))
            })
            .collect();
        put("depends_on", Value::Object(deps));
    }
    if let Some(h) = &s.healthcheck {
        put("healthcheck", healthcheck_of(h));
    }
    if let Some(deploy) = deploy_of(s) {
        put("deploy", deploy);
    }
    match s.restart {
        RestartPolicy::No => {}
        RestartPolicy::Always => put("restart", json!("always")),
        RestartPolicy::UnlessStopped => put("restart", json!("unless-stopped")),
        RestartPolicy::OnFailure { max_retries: None } => put("restart", json!("on-failure")),
        RestartPolicy::OnFailure {
            max_retries: Some(n),
        } => put("restart", json!(format!("on-failure:{n}"))),
    }
    if !s.labels.is_empty() {
        put("labels", json!(s.labels));
    }
    if !s.volumes.is_empty() {
        put(
            "volumes",
            Value::Array(s.volumes.iter().map(mount_of).collect()),
        );
    }
    let implicit = s.networks.len() == 1
        && topology
            .networks
            .get("default")
            .is_some_and(|n| is_implicit_default("default", n, topology))
        && s.networks.contains_key("default");
    if !s.networks.is_empty() && !implicit {
        let networks: Map<String, Value> = s
            .networks
            .iter()
            .map(|(name, n)| {
                let mut attachment = Map::new();
                if !n.aliases.is_empty() {
                    attachment.insert("aliases".into(), json!(n.aliases));
                }
                for address in s.engine.addresses.get(name).into_iter().flatten() {
                    let key = if address.contains(':') {
                        "ipv6_address"
                    } else {
                        "ipv4_address"
                    };
                    attachment.insert(key.into(), json!(address));
                }
                let value = if attachment.is_empty() {
                    Value::Null
                } else {
                    Value::Object(attachment)
                };
                (name.clone(), value)
            })
            .collect();
        put("networks", Value::Object(networks));
    }
    if let Some(dir) = &s.working_dir {
        put("working_dir", json!(dir));
    }
    if let Some(user) = &s.user {
        put("user", json!(user));
    }
    if s.init {
        put("init", json!(true));
    }
    if let Some(signal) = &s.stop_signal {
        put("stop_signal", json!(signal));
    }
    if let Some(ms) = s.stop_grace_period_ms {
        put("stop_grace_period", json!(duration(ms)));
    }
    if let Some(a) = &s.autoscale {
        put(
            "x-berth",
            json!({ "autoscale": { "min": a.min, "max": a.max, "cpu": format!("{}%", a.cpu_percent) } }),
        );
    }
    let files = |kind: FileKind| -> Vec<Value> {
        s.files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| json!({ "source": f.name, "target": f.target }))
            .collect()
    };
    for (key, kind) in [("secrets", FileKind::Secret), ("configs", FileKind::Config)] {
        let list = files(kind);
        if !list.is_empty() {
            put(key, Value::Array(list));
        }
    }
    engine_of(&s.engine, &mut out);
    Value::Object(out)
}

/// A port in the short syntax, which every Compose version reads.
fn port_of(p: &PortMapping) -> String {
    let mut text = String::new();
    if let Some(ip) = &p.host_ip {
        if ip.contains(':') {
            text.push_str(&format!("[{ip}]:"));
        } else {
            text.push_str(&format!("{ip}:"));
        }
        if p.published.is_none() {
            text.push(':');
        }
    }
    if let Some(published) = p.published {
        text.push_str(&format!("{published}:"));
    }
    text.push_str(&p.target.to_string());
    if p.protocol == Protocol::Udp {
        text.push_str("/udp");
    }
    text
}

fn condition_of(c: Condition) -> &'static str {
    match c {
        Condition::ServiceStarted => "service_started",
        Condition::ServiceHealthy => "service_healthy",
        Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
    }
}

/// Milliseconds as a Compose duration.
fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Bytes in the largest unit that divides them.
fn bytes(n: u64) -> String {
    const K: u64 = 1024;
    for (unit, size) in [("g", K * K * K), ("m", K * K), ("k", K)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}b")
}

fn healthcheck_of(h: &Healthcheck) -> Value {
    if h.is_disabled() {
        return json!({ "disable": true });
    }
    let mut out = Map::new();
    out.insert("test".into(), json!(h.test));
    for (key, value) in [
        ("interval", h.interval_ms),
        ("timeout", h.timeout_ms),
        ("start_period", h.start_period_ms),
        ("start_interval", h.start_interval_ms),
    ] {
        if let Some(ms) = value {
            out.insert(key.into(), json!(duration(ms)));
        }
    }
    if let Some(retries) = h.retries {
        out.insert("retries".into(), json!(retries));
    }
    Value::Object(out)
}

fn deploy_of(s: &Service) -> Option<Value> {
    let mut deploy = Map::new();
    if s.replicas != 1 {
        deploy.insert("replicas".into(), json!(s.replicas));
    }
    let mut limits = Map::new();
    if let Some(millis) = s.limits.cpu_millis {
        let cpus = if millis.is_multiple_of(1000) {
            (millis / 1000).to_string()
        } else {
            format!("{}", millis as f64 / 1000.0)
        };
        limits.insert("cpus".into(), json!(cpus));
    }
    if let Some(memory) = s.limits.memory_bytes {
        limits.insert("memory".into(), json!(bytes(memory)));
    }
    if !limits.is_empty() {
        deploy.insert("resources".into(), json!({ "limits": limits }));
    }
    if !s.constraints.is_empty() {
        let constraints: Vec<String> = s.constraints.iter().map(ToString::to_string).collect();
        deploy.insert("placement".into(), json!({ "constraints": constraints }));
    }
    (!deploy.is_empty()).then_some(Value::Object(deploy))
}

fn mount_of(m: &VolumeMount) -> Value {
    let mut out = Map::new();
    let kind = match m.kind {
        MountKind::Volume => "volume",
        MountKind::Bind => "bind",
        MountKind::Tmpfs => "tmpfs",
    };
    out.insert("type".into(), json!(kind));
    if let Some(source) = &m.source {
        out.insert("source".into(), json!(source));
    }
    out.insert("target".into(), json!(m.target));
    if m.read_only {
        out.insert("read_only".into(), json!(true));
    }
    Value::Object(out)
}

fn build_of(b: &Build) -> Value {
    let mut out = Map::new();
    out.insert("context".into(), json!(b.context));
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    if let Some(d) = &b.dockerfile {
        put("dockerfile", json!(d));
    }
    if let Some(d) = &b.dockerfile_inline {
        put("dockerfile_inline", json!(d));
    }
    if !b.args.is_empty() {
        put("args", json!(b.args));
    }
    if let Some(t) = &b.target {
        put("target", json!(t));
    }
    if !b.labels.is_empty() {
        put("labels", json!(b.labels));
    }
    if !b.tags.is_empty() {
        put("tags", json!(b.tags));
    }
    if b.no_cache {
        put("no_cache", json!(true));
    }
    if b.pull {
        put("pull", json!(true));
    }
    if let Some(n) = &b.network {
        put("network", json!(n));
    }
    if !b.extra_hosts.is_empty() {
        put("extra_hosts", json!(b.extra_hosts));
    }
    if let Some(n) = b.shm_size {
        put("shm_size", json!(bytes(n)));
    }
    if !b.platforms.is_empty() {
        put("platforms", json!(b.platforms));
    }
    Value::Object(out)
}

fn network_of(n: &Network) -> Value {
    let mut out = Map::new();
    if let Some(name) = &n.external {
        out.insert("external".into(), json!(true));
        out.insert("name".into(), json!(name));
        return Value::Object(out);
    }
    if n.internal {
        out.insert("internal".into(), json!(true));
    }
    if !n.labels.is_empty() {
        out.insert("labels".into(), json!(n.labels));
    }
    if let Some(d) = &n.driver {
        out.insert("driver".into(), json!(d));
    }
    if !n.driver_opts.is_empty() {
        out.insert("driver_opts".into(), json!(n.driver_opts));
    }
    if n.enable_ipv6 {
        out.insert("enable_ipv6".into(), json!(true));
    }
    if !n.subnets.is_empty() {
        let config: Vec<Value> = n
            .subnets
            .iter()
            .map(|s| {
                let mut c = Map::new();
                c.insert("subnet".into(), json!(s.subnet));
                if let Some(g) = &s.gateway {
                    c.insert("gateway".into(), json!(g));
                }
                if let Some(r) = &s.ip_range {
                    c.insert("ip_range".into(), json!(r));
                }
                Value::Object(c)
            })
            .collect();
        out.insert("ipam".into(), json!({ "config": config }));
    }
    Value::Object(out)
}

fn volume_of(v: &Volume) -> Value {
    let mut out = Map::new();
    if let Some(name) = &v.external {
        out.insert("external".into(), json!(true));
        out.insert("name".into(), json!(name));
        return Value::Object(out);
    }
    if !v.labels.is_empty() {
        out.insert("labels".into(), json!(v.labels));
    }
    if let Some(d) = &v.driver {
        out.insert("driver".into(), json!(d));
    }
    if !v.driver_opts.is_empty() {
        out.insert("driver_opts".into(), json!(v.driver_opts));
    }
    Value::Object(out)
}

/// The engine settings, each under its own Compose key.
fn engine_of(e: &EngineSettings, out: &mut Map<String, Value>) {
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    let strings = [
        ("container_name", &e.container_name),
        ("hostname", &e.hostname),
        ("domainname", &e.domainname),
        ("network_mode", &e.network_mode),
        ("pid", &e.pid),
        ("ipc", &e.ipc),
        ("uts", &e.uts),
        ("userns_mode", &e.userns_mode),
        ("cgroup", &e.cgroup),
        ("cgroup_parent", &e.cgroup_parent),
        ("cpuset", &e.cpuset),
        ("platform", &e.platform),
        ("pull_policy", &e.pull_policy),
        ("runtime", &e.runtime),
        ("mac_address", &e.mac_address),
    ];
    for (key, value) in strings {
        if let Some(v) = value {
            put(key, json!(v));
        }
    }
    let lists = [
        ("cap_add", &e.cap_add),
        ("cap_drop", &e.cap_drop),
        ("devices", &e.devices),
        ("device_cgroup_rules", &e.device_cgroup_rules),
        ("security_opt", &e.security_opt),
        ("extra_hosts", &e.extra_hosts),
        ("dns", &e.dns),
        ("dns_search", &e.dns_search),
        ("dns_opt", &e.dns_opt),
        ("tmpfs", &e.tmpfs),
        ("group_add", &e.group_add),
        ("volumes_from", &e.volumes_from),
        ("links", &e.links),
        ("external_links", &e.external_links),
    ];
    for (key, value) in lists {
        if !value.is_empty() {
            put(key, json!(value));
        }
    }
    let maps = [
        ("sysctls", &e.sysctls),
        ("annotations", &e.annotations),
        ("storage_opt", &e.storage_opt),
    ];
    for (key, value) in maps {
        if !value.is_empty() {
            put(key, json!(value));
        }
    }
    for (key, value) in [
        ("privileged", e.privileged),
        ("read_only", e.read_only),
        ("stdin_open", e.stdin_open),
        ("tty", e.tty),
        ("oom_kill_disable", e.oom_kill_disable),
    ] {
        if value {
            put(key, json!(true));
        }
    }
    let integers = [
        ("pids_limit", e.pids_limit),
        ("cpu_shares", e.cpu_shares),
        ("cpu_quota", e.cpu_quota),
        ("cpu_period", e.cpu_period),
        ("memswap_limit", e.memswap_limit),
        ("mem_swappiness", e.mem_swappiness),
        ("oom_score_adj", e.oom_score_adj),
    ];
    for (key, value) in integers {
        if let Some(v) = value {
            put(key, json!(v));
        }
    }
    if let Some(n) = e.shm_size {
        put("shm_size", json!(bytes(n)));
    }
    if let Some(n) = e.mem_reservation {
        put("mem_reservation", json!(bytes(n)));
    }
    if !e.ulimits.is_empty() {
        let ulimits: Map<String, Value> = e
            .ulimits
            .iter()
            .map(|(k, u)| (k.clone(), json!({ "soft": u.soft, "hard": u.hard })))
            .collect();
        put("ulimits", Value::Object(ulimits));
    }
    if let Some(logging) = &e.logging {
        let mut l = Map::new();
        if let Some(d) = &logging.driver {
            l.insert("driver".into(), json!(d));
        }
        if !logging.options.is_empty() {
            l.insert("options".into(), json!(logging.options));
        }
        put("logging", Value::Object(l));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Topology {
        crate::topology::read_for_test(text, &[("HOME", "/home/u"), ("TOKEN", "s3cret")])
    }

    const RICH: &str = r#"
name: shop
x-common: &common
  restart: on-failure:3
  labels: [tier=back]
services:
  web:
    <<: *common
    image: nginx:1.25
    build:
      context: ./web
      dockerfile: Containerfile
      args: [A=1]
      target: prod
    command: echo "hi there"
    entrypoint: /bin/sh -c
    environment: [A=1, B=two words, C=cost is $$5]
    ports: ["8080:80", "127.0.0.1:9000:9000/udp", "3000", "[::1]::81"]
    expose: ["9090", "53/udp"]
    volumes:
      - ./site:/srv:ro
      - data:/data
      - type: tmpfs
        target: /cache
    depends_on:
      db:
        condition: service_healthy
      cache:
        condition: service_started
        required: false
    healthcheck:
      test: curl -f http://localhost/
      interval: 1m30s
      timeout: 500ms
      retries: 3
      start_period: 5s
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 256M}
      placement:
        constraints: ["node.labels.zone == a"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    container_name: webby
    hostname: h
    domainname: example.com
    working_dir: /w
    user: "1000"
    init: true
    stop_signal: SIGINT
    stop_grace_period: 20s
    tmpfs: /tmp
    extra_hosts: ["a:1.2.3.4"]
    dns: 8.8.8.8
    dns_search: [example.com]
    sysctls: {net.core.somaxconn: 1024}
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    logging: {driver: json-file, options: {max-size: 10m}}
    security_opt: [no-new-privileges:true]
    shm_size: 64m
    read_only: true
    tty: true
    stdin_open: true
    pids_limit: 100
    mem_reservation: 128m
    networks:
      front:
        aliases: [www]
        ipv4_address: 10.5.0.5
      back: {}
    secrets: [token]
    configs:
      - source: site
        target: /etc/site.conf
    x-berth:
      autoscale: {min: 1, max: 4, cpu: 60%}
  db:
    image: postgres
    networks: [back]
    privileged: true
    devices: ["/dev/fuse:/dev/fuse"]
    pid: host
    volumes_from: [web]
  cache:
    image: redis
    network_mode: none
  lone:
    image: busybox
    deploy: {replicas: 3}
networks:
  front:
    driver: bridge
    ipam:
      config: [{subnet: 10.5.0.0/16, gateway: 10.5.0.1}]
  back:
    internal: true
    labels: {x: y}
  outside:
    external: true
    name: the-world
volumes:
  data:
    labels: [k=v]
  kept:
    external: true
    name: old-data
secrets:
  token:
    environment: TOKEN
configs:
  site:
    file: ./site.conf
"#;

    #[test]
    fn reading_what_config_prints_gives_the_same_topology() {
        for text in [RICH, "services:\n  a:\n    image: busybox\n"] {
            let first = read(text);
            let printed = serde_json::to_string_pretty(&to_compose(&first)).unwrap();
            let again = read(&printed);
            assert_eq!(first, again, "{printed}");
        }
    }

    #[test]
    fn values_take_compose_forms() {
        let doc = to_compose(&read(RICH));
        let web = &doc["services"]["web"];
        assert_eq!(web["ports"][0], "8080:80");
        assert_eq!(web["ports"][1], "127.0.0.1:9000:9000/udp");
        assert_eq!(web["ports"][3], "[::1]::81");
        assert_eq!(web["healthcheck"]["interval"], "90s");
        assert_eq!(web["healthcheck"]["timeout"], "500ms");
        assert_eq!(web["deploy"]["resources"]["limits"]["memory"], "256m");
        assert_eq!(web["deploy"]["resources"]["limits"]["cpus"], "0.5");
        assert_eq!(web["restart"], "on-failure:3");
        assert_eq!(web["volumes"][0]["type"], "bind");
        assert_eq!(web["volumes"][0]["source"], "/p/site");
        // A service on the implicit default network names none, as in Compose.
        assert!(doc["services"]["lone"].get("networks").is_none(), "{doc}");
    }
}
