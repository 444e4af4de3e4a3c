//! Berth against the reference: for each project under `tests/compose/`, `berth config`
//! and `docker-compose config` must agree on every field both express, once each side's
//! spelling is reduced to one form (short and long port syntax, list and map
//! environments, durations, sizes, ...). A field the reference keeps and Berth drops
//! fails too, unless it is listed below with the reason. Then what `berth config`
//! prints goes back through `docker-compose config`, which must accept it and read it
//! as it read the original.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::{berth_bin, workspace};
use serde_json::{Map, Value, json};

/// Fields the reference keeps that Berth reads and drops on purpose.
const DROPPED: &[(&str, &str)] = &[
    (
        "version",
        "the `version` key is obsolete in the Compose specification",
    ),
    (
        "env_file",
        "Berth folds the file's values into `environment`, which is compared",
    ),
    (
        "profiles",
        "a service of an inactive profile is left out; an active one runs",
    ),
];

/// The environment each check runs in (both tools see the same).
fn environment() -> Vec<(&'static str, &'static str)> {
    vec![("COMPOSE_PROFILES", "debug"), ("INNER", "from-the-shell")]
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("the command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn reference(dir: &Path, file: &Path) -> Value {
    let (ok, out, err) = run(Command::new("docker-compose")
        .arg("-f")
        .arg(file)
        .args(["--project-directory", &dir.display().to_string(), "config"])
        .current_dir(dir)
        .envs(environment()));
    assert!(ok, "docker-compose config {}: {err}", file.display());
    serde_saphyr::from_str(&out).expect("docker-compose prints YAML")
}

fn berth_config(dir: &Path) -> Value {
    let state = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = run(Command::new(berth_bin())
        .args(["config", "--json"])
        .current_dir(dir)
        .env("BERTH_DATA_DIR", state.path())
        .envs(environment()));
    assert!(ok, "berth config in {}: {err}", dir.display());
    serde_json::from_str(&out).expect("berth prints JSON")
}

#[test]
fn berth_config_agrees_with_docker_compose_config_on_every_field_both_express() {
    let root = workspace().join("tests/compose");
    let mut projects: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/compose")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("compose.yaml").is_file())
        .collect();
    projects.sort();
    assert!(projects.len() >= 5, "{projects:?}");
    let mut disagreements = Vec::new();
    let mut compared = 0;
    for dir in &projects {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let theirs = canonical(&reference(dir, &dir.join("compose.yaml")), dir);
        let ours_raw = berth_config(dir);
        let ours = canonical(&ours_raw, dir);
        compared += compare(&name, &theirs, &ours, &mut disagreements);

        // What Berth prints, read again by the reference. docker-compose 1.29 predates
        // the top-level `name` (it takes the project's name from the directory), so
        // that one key is left out of what it is given.
        let mut printed = ours_raw.clone();
        printed.as_object_mut().unwrap().remove("name");
        let again = tempfile::tempdir().expect("tempdir");
        let file = again.path().join("printed.yaml");
        std::fs::write(&file, serde_json::to_string_pretty(&printed).unwrap()).unwrap();
        let reread = canonical(&reference(dir, &file), dir);
        compare(
            &format!("{name} (printed by berth, read by docker-compose)"),
            &theirs,
            &reread,
            &mut disagreements,
        );
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s) with docker-compose config over {} projects:\n{}",
        disagreements.len(),
        projects.len(),
        disagreements.join("\n")
    );
    // Enough was compared for agreement to mean something.
    assert!(compared > 100, "only {compared} fields compared");
    println!(
        "{} projects: {compared} fields agree with docker-compose config",
        projects.len()
    );
}

/// Compares service by service and field by field; returns how many fields agreed.
fn compare(project: &str, theirs: &Value, ours: &Value, out: &mut Vec<String>) -> usize {
    let mut agreed = 0;
    for section in ["services", "networks", "volumes", "secrets", "configs"] {
        let empty = Map::new();
        let t = theirs[section].as_object().unwrap_or(&empty);
        let o = ours[section].as_object().unwrap_or(&empty);
        let names = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        if names(t) != names(o) {
            out.push(format!(
                "{project}: {section}: docker-compose has {:?}, berth {:?}",
                names(t),
                names(o)
            ));
            continue;
        }
        for (name, t_entry) in t {
            let o_entry = &o[name];
            let (Some(t_fields), Some(o_fields)) = (t_entry.as_object(), o_entry.as_object())
            else {
                if t_entry != o_entry {
                    out.push(format!(
                        "{project}: {section}.{name}: {t_entry} != {o_entry}"
                    ));
                }
                continue;
            };
            for (field, t_value) in t_fields {
                match o_fields.get(field) {
                    Some(o_value) if o_value == t_value => agreed += 1,
                    Some(o_value) => out.push(format!(
                        "{project}: {section}.{name}.{field}: docker-compose {t_value}, berth {o_value}"
                    )),
                    None if DROPPED.iter().any(|(k, _)| k == field) => {}
                    None => out.push(format!(
                        "{project}: {section}.{name}.{field}: docker-compose has {t_value}, berth has nothing"
                    )),
                }
            }
        }
    }
    agreed
}

/// One spelling for every value either tool may print.
fn canonical(doc: &Value, dir: &Path) -> Value {
    let mut out = Map::new();
    // docker-compose 1.29 lists the services of every profile; the active ones are
    // those that run (and the only ones Compose 2 and Berth list).
    let active: Vec<&str> = environment()
        .iter()
        .find(|(k, _)| *k == "COMPOSE_PROFILES")
        .map(|(_, v)| v.split(',').collect())
        .unwrap_or_default();
    let runs = |s: &Value| {
        let profiles = list(&s["profiles"]);
        profiles.is_empty()
            || profiles
                .iter()
                .any(|p| active.contains(&scalar(p).as_str()))
    };
    let services: Map<String, Value> = doc["services"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, s)| runs(s))
                .map(|(n, s)| (n.clone(), service(s, dir)))
                .collect()
        })
        .unwrap_or_default();
    out.insert("services".into(), Value::Object(services));
    for section in ["networks", "volumes", "secrets", "configs"] {
        let entries: Map<String, Value> = doc[section]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(n, v)| !(section == "networks" && *n == "default" && is_empty(v)))
                    .map(|(n, v)| (n.clone(), top_level(v, dir)))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(section.into(), Value::Object(entries));
    }
    Value::Object(out)
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(Map::is_empty)
}

fn top_level(v: &Value, dir: &Path) -> Value {
    let mut out = Map::new();
    for (k, value) in v.as_object().into_iter().flatten() {
        let value = match k.as_str() {
            "labels" | "driver_opts" => pairs(value),
            "file" => json!(path(value, dir)),
            // `external: {name: x}` (old) or `external: true` with `name`.
            "external" => match value.get("name") {
                Some(name) => {
                    out.insert("name".into(), name.clone());
                    json!(true)
                }
                None => value.clone(),
            },
            _ => value.clone(),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

fn service(s: &Value, dir: &Path) -> Value {
    let mut out = Map::new();
    let mut fields = s.as_object().cloned().unwrap_or_default();
    // No restart policy is `no`.
    fields.entry("restart").or_insert_with(|| json!("no"));
    // The legacy resource keys are the limits of `deploy.resources`.
    for (legacy, limit) in [("cpus", "cpus"), ("mem_limit", "memory")] {
        if let Some(value) = fields.remove(legacy) {
            let deploy = fields.entry("deploy").or_insert_with(|| json!({}));
            let limits = &mut deploy["resources"]["limits"];
            if limits.get(limit).is_none() {
                if limits.is_null() {
                    *limits = json!({});
                }
                limits[limit] = value;
            }
        }
    }
    for (k, v) in &fields {
        let value = match k.as_str() {
            "command" | "entrypoint" => words(v),
            "environment" | "labels" | "sysctls" | "annotations" => pairs(v),
            "extra_hosts" => extra_hosts(v),
            "ports" => Value::Array(list(v).iter().map(port).collect()),
            "expose" => Value::Array(
                list(v)
                    .iter()
                    .map(|e| {
                        let text = scalar(e);
                        json!(if text.contains('/') {
                            text
                        } else {
                            format!("{text}/tcp")
                        })
                    })
                    .collect(),
            ),
            "volumes" => Value::Array(list(v).iter().map(|m| mount(m, dir)).collect()),
            "networks" => networks(v),
            "depends_on" => depends_on(v),
            "healthcheck" => healthcheck(v),
            "deploy" => deploy(v),
            // `S` is `service:S:rw`.
            "volumes_from" => Value::Array(
                list(v)
                    .iter()
                    .map(|x| {
                        let text = scalar(x);
                        let full = if text.starts_with("service:") || text.starts_with("container:")
                        {
                            text
                        } else {
                            format!("service:{text}")
                        };
                        let parts = full.split(':').count();
                        json!(if parts == 2 {
                            format!("{full}:rw")
                        } else {
                            full
                        })
                    })
                    .collect(),
            ),
            "dns" | "dns_search" | "dns_opt" | "tmpfs" | "env_file" | "cap_add" | "cap_drop"
            | "security_opt" | "devices" | "links" | "external_links" => {
                Value::Array(list(v).iter().map(|x| json!(scalar(x))).collect())
            }
            "stop_grace_period" => json!(millis(v)),
            "shm_size" | "mem_limit" | "mem_reservation" => json!(size(v)),
            "cpus" => json!(scalar(v).parse::<f64>().ok()),
            "ulimits" => ulimits(v),
            "logging" => {
                let mut l = v.as_object().cloned().unwrap_or_default();
                if let Some(options) = l.get("options").cloned() {
                    l.insert("options".into(), pairs(&options));
                }
                Value::Object(l)
            }
            "secrets" | "configs" => files(k, v),
            "build" => build(v, dir),
            "restart" => json!(scalar(v)),
            "user" | "working_dir" | "image" | "hostname" | "container_name" => json!(scalar(v)),
            _ => v.clone(),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn words(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(shell_words::split(s).expect("shell words")),
        Value::Array(items) => Value::Array(items.iter().map(|i| json!(scalar(i))).collect()),
        other => other.clone(),
    }
}

/// `KEY=VALUE` lists and maps alike, as a map of strings; keys without a value (passed
/// from the environment when set) are left out.
fn pairs(v: &Value) -> Value {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for item in items {
                if let Some((k, val)) = scalar(item).split_once('=') {
                    out.insert(k.to_owned(), val.to_owned());
                }
            }
        }
        Value::Object(m) => {
            for (k, val) in m {
                if !val.is_null() {
                    out.insert(k.clone(), scalar(val));
                }
            }
        }
        _ => {}
    }
    json!(out)
}

fn extra_hosts(v: &Value) -> Value {
    let mut hosts: Vec<String> = match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, a)| format!("{k}:{}", scalar(a)))
            .collect(),
        other => list(other)
            .iter()
            .map(|h| scalar(h).replacen('=', ":", 1))
            .collect(),
    };
    hosts.sort();
    json!(hosts)
}

/// A port as `{host_ip, published, target, protocol}`.
fn port(p: &Value) -> Value {
    if let Some(m) = p.as_object() {
        return json!({
            "host_ip": m.get("host_ip").map(scalar).unwrap_or_default(),
            "published": m.get("published").map(scalar).unwrap_or_default(),
            "target": scalar(&m["target"]),
            "protocol": m.get("protocol").map_or("tcp".to_owned(), scalar),
        });
    }
    let text = scalar(p);
    let (text, protocol) = match text.split_once('/') {
        Some((t, proto)) => (t.to_owned(), proto.to_owned()),
        None => (text, "tcp".to_owned()),
    };
    let (host_ip, rest) = if let Some(stripped) = text.strip_prefix('[') {
        let (ip, rest) = stripped.split_once("]:").expect("[ip]:...");
        (ip.to_owned(), rest.to_owned())
    } else {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.len() {
            3 => (parts[0].to_owned(), format!("{}:{}", parts[1], parts[2])),
            _ => (String::new(), text.clone()),
        }
    };
    let (published, target) = match rest.rsplit_once(':') {
        Some((p, t)) => (p.to_owned(), t.to_owned()),
        None => (String::new(), rest),
    };
    json!({ "host_ip": host_ip, "published": published, "target": target, "protocol": protocol })
}

fn path(v: &Value, dir: &Path) -> String {
    let text = scalar(v);
    let home = std::env::var("HOME").unwrap_or_default();
    let full = if let Some(rest) = text.strip_prefix("~/") {
        Path::new(&home).join(rest)
    } else {
        dir.join(&text)
    };
    let mut parts: Vec<String> = Vec::new();
    for c in full.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A mount as `{type, source, target, read_only}`.
fn mount(m: &Value, dir: &Path) -> Value {
    let (kind, source, target, read_only) = match m {
        Value::Object(f) => {
            let kind = f.get("type").map_or("volume".to_owned(), scalar);
            let source = f.get("source").map(|s| {
                if kind == "bind" {
                    path(s, dir)
                } else {
                    scalar(s)
                }
            });
            let ro = f.get("read_only").is_some_and(|r| r == &json!(true));
            (kind, source, scalar(&f["target"]), ro)
        }
        other => {
            let text = scalar(other);
            let parts: Vec<&str> = text.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => (None, (*t).to_owned(), ""),
                [s, t] => (Some(*s), (*t).to_owned(), ""),
                [s, t, m, ..] => (Some(*s), (*t).to_owned(), *m),
                [] => (None, String::new(), ""),
            };
            let bind = source.is_some_and(|s| s.starts_with(['/', '.', '~']));
            let kind = if bind { "bind" } else { "volume" };
            let source = source.map(|s| {
                if bind {
                    path(&json!(s), dir)
                } else {
                    s.to_owned()
                }
            });
            let ro = mode.split(',').any(|m| m == "ro");
            (kind.to_owned(), source, target, ro)
        }
    };
    json!({ "type": kind, "source": source, "target": target, "read_only": read_only })
}

fn networks(v: &Value) -> Value {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for n in items {
                out.insert(scalar(n), json!({}));
            }
        }
        Value::Object(m) => {
            for (n, attachment) in m {
                let mut a = Map::new();
                for (k, v) in attachment.as_object().into_iter().flatten() {
                    if k == "aliases" {
                        let mut aliases: Vec<String> = list(v).iter().map(scalar).collect();
                        aliases.sort();
                        a.insert(k.clone(), json!(aliases));
                    } else {
                        a.insert(k.clone(), json!(scalar(v)));
                    }
                }
                out.insert(n.clone(), Value::Object(a));
            }
        }
        _ => {}
    }
    json!(out)
}

fn depends_on(v: &Value) -> Value {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            for n in items {
                out.insert(scalar(n), "service_started".to_owned());
            }
        }
        Value::Object(m) => {
            for (n, d) in m {
                let condition = d.get("condition").map_or("service_started".into(), scalar);
                out.insert(n.clone(), condition);
            }
        }
        _ => {}
    }
    json!(out)
}

/// A duration in milliseconds (`1m30s`, `90s`, `500ms`).
fn millis(v: &Value) -> u64 {
    let text = scalar(v);
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = number.parse().unwrap_or(0.0);
        number.clear();
        total += n * match unit.as_str() {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" => 0.001,
            other => panic!("unit {other:?} in {text:?}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<f64>().unwrap_or(0.0) * 1000.0;
    }
    total.round() as u64
}

/// A size in bytes (`256M`, `256m`, `1gb`, `1024`).
fn size(v: &Value) -> u64 {
    let text = scalar(v).to_ascii_lowercase();
    let digits: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let unit = text[digits.len()..].trim_end_matches('b');
    let n: f64 = digits.parse().unwrap_or(0.0);
    let factor = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} in {text:?}"),
    };
    (n * factor) as u64
}

fn healthcheck(v: &Value) -> Value {
    let mut out = Map::new();
    for (k, value) in v.as_object().into_iter().flatten() {
        let value = match k.as_str() {
            "test" => match value {
                Value::String(s) => json!(["CMD-SHELL", s]),
                other => words(other),
            },
            "interval" | "timeout" | "start_period" | "start_interval" => json!(millis(value)),
            _ => value.clone(),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

fn deploy(v: &Value) -> Value {
    let mut out = Map::new();
    for (k, value) in v.as_object().into_iter().flatten() {
        let value = match k.as_str() {
            "resources" => {
                let mut r = Map::new();
                for (kind, limits) in value.as_object().into_iter().flatten() {
                    let mut l = Map::new();
                    for (lk, lv) in limits.as_object().into_iter().flatten() {
                        let canon = match lk.as_str() {
                            "cpus" => json!(scalar(lv).parse::<f64>().ok()),
                            "memory" => json!(size(lv)),
                            _ => lv.clone(),
                        };
                        l.insert(lk.clone(), canon);
                    }
                    r.insert(kind.clone(), Value::Object(l));
                }
                Value::Object(r)
            }
            _ => value.clone(),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

fn ulimits(v: &Value) -> Value {
    let mut out = Map::new();
    for (k, value) in v.as_object().into_iter().flatten() {
        let limit = match value {
            Value::Object(m) => json!({ "soft": scalar(&m["soft"]), "hard": scalar(&m["hard"]) }),
            n => json!({ "soft": scalar(n), "hard": scalar(n) }),
        };
        out.insert(k.clone(), limit);
    }
    Value::Object(out)
}

/// A service's secrets or configs as `{source, target}`, targets made absolute.
fn files(kind: &str, v: &Value) -> Value {
    let canon: Vec<Value> = list(v)
        .iter()
        .map(|f| {
            let (source, target) = match f {
                Value::Object(m) => (scalar(&m["source"]), m.get("target").map(scalar)),
                other => (scalar(other), None),
            };
            let target = match (kind, target) {
                (_, Some(t)) if t.starts_with('/') => t,
                ("secrets", Some(t)) => format!("/run/secrets/{t}"),
                ("secrets", None) => format!("/run/secrets/{source}"),
                (_, Some(t)) => format!("/{t}"),
                (_, None) => format!("/{source}"),
            };
            json!({ "source": source, "target": target })
        })
        .collect();
    let mut sorted = canon;
    sorted.sort_by_key(|v| v.to_string());
    Value::Array(sorted)
}

fn build(v: &Value, dir: &Path) -> Value {
    let mut out = Map::new();
    match v {
        Value::Object(m) => {
            for (k, value) in m {
                let value = match k.as_str() {
                    "context" => json!(path(value, dir)),
                    "args" | "labels" => pairs(value),
                    _ => value.clone(),
                };
                out.insert(k.clone(), value);
            }
        }
        other => {
            out.insert("context".into(), json!(path(other, dir)));
        }
    }
    Value::Object(out)
}

#[test]
fn the_reductions_read_both_spellings_alike() {
    assert_eq!(millis(&json!("1m30s")), 90_000);
    assert_eq!(millis(&json!("90s")), 90_000);
    assert_eq!(millis(&json!("500ms")), 500);
    assert_eq!(size(&json!("256M")), size(&json!("256m")));
    assert_eq!(
        port(&json!("127.0.0.1:8443:443")),
        port(&json!({"host_ip": "127.0.0.1", "published": 8443, "target": 443}))
    );
    assert_eq!(port(&json!("9000/udp"))["protocol"], "udp");
    assert_eq!(
        mount(&json!("./a:/b:ro"), Path::new("/p")),
        mount(
            &json!({"type": "bind", "source": "/p/a", "target": "/b", "read_only": true}),
            Path::new("/x")
        )
    );
    assert_eq!(
        pairs(&json!(["A=1", "B"])),
        pairs(&json!({"A": 1, "B": null}))
    );
}
