//! How a service is run and kept running: `deploy` (replicas, resources, placement
//! constraints, the restart policy), `restart`, `healthcheck` and Berth's
//! `x-berth.autoscale`.

use super::*;

pub(super) fn healthcheck_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Healthcheck> {
    let fields = cx.fields(
        node,
        path,
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "start_interval",
            "disable",
        ],
        true,
    );
    let mut check = Healthcheck {
        test: Vec::new(),
        interval_ms: None,
        timeout_ms: None,
        retries: None,
        start_period_ms: None,
        start_interval_ms: None,
    };
    let mut disable = false;
    for (key, value) in fields {
        let p = join(path, key);
        let duration = |cx: &mut Cx<'_>| -> Option<u64> {
            let text = cx.string(value, &p)?;
            units::parse_duration_ms(&text)
                .map_err(|e| cx.error(value.pos, &p, e))
                .ok()
        };
        match key {
            "test" => match &value.value {
                Value::Str(s) => check.test = vec!["CMD-SHELL".to_owned(), s.clone()],
                Value::Seq(_) => {
                    let words = cx.command(value, &p).unwrap_or_default();
                    match words.first().map(String::as_str) {
                        Some("CMD" | "CMD-SHELL") if words.len() >= 2 => check.test = words,
                        Some("NONE") if words.len() == 1 => check.test = words,
                        _ => cx.error(value.pos, &p, "a list test starts with \"CMD\" (then the command), \"CMD-SHELL\" (then a script) or is [\"NONE\"]"),
                    }
                }
                _ => cx.expected(value, &p, "a string or a list"),
            },
            "interval" => check.interval_ms = duration(cx),
            "timeout" => check.timeout_ms = duration(cx),
            "start_period" => check.start_period_ms = duration(cx),
            "start_interval" => check.start_interval_ms = duration(cx),
            "retries" => {
                check.retries = cx.int(value, &p, 0, i64::from(u32::MAX)).map(|r| r as u32)
            }
            "disable" => disable = cx.bool(value, &p).unwrap_or(false),
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if disable {
        check.test = vec!["NONE".to_owned()];
    } else if check.test.is_empty() && matches!(node.value, Value::Map(_)) {
        cx.error(
            node.pos,
            &join(path, "test"),
            "a healthcheck needs a `test` (or `disable: true`)",
        );
        return None;
    }
    Some(check)
}

/// `x-berth.autoscale`: `min` (default 1), `max` and `cpu` (a percentage of the
/// replica's CPU limit, `60%` or `60`), all checked here.
pub(super) fn autoscale_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Autoscale> {
    let (mut min, mut max, mut cpu) = (Some(1), None, None);
    let mut max_pos = node.pos;
    let fields = cx.fields(node, path, &["min", "max", "cpu"], false);
    let read = !fields.is_empty() || matches!(node.value, Value::Map(_));
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "min" => min = cx.int(value, &p, 1, 10_000),
            "max" => {
                max_pos = value.pos;
                max = cx.int(value, &p, 1, 10_000);
            }
            "cpu" => {
                let text = match &value.value {
                    Value::Int(i) => Some(i.to_string()),
                    _ => cx.string(value, &p),
                };
                let Some(text) = text else { continue };
                match text.trim().trim_end_matches('%').trim().parse::<u32>() {
                    Ok(v) if (1..=100).contains(&v) => cpu = Some(v),
                    _ => cx.error(
                        value.pos,
                        &p,
                        format!("expected a percentage between 1% and 100%, found {text:?}"),
                    ),
                }
            }
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if !read {
        return None;
    }
    if max.is_none() && !cx.errors.iter().any(|d| d.path == join(path, "max")) {
        cx.error(
            node.pos,
            &join(path, "max"),
            "autoscale needs `max`, the most replicas",
        );
    }
    if cpu.is_none() && !cx.errors.iter().any(|d| d.path == join(path, "cpu")) {
        cx.error(
            node.pos,
            &join(path, "cpu"),
            "autoscale needs `cpu`, the average CPU to keep each replica at, as a percentage of its limit",
        );
    }
    let (min, max, cpu_percent) = (min?, max?, cpu?);
    let (min, max) = (u32::try_from(min).ok()?, u32::try_from(max).ok()?);
    if max < min {
        cx.error(
            max_pos,
            &join(path, "max"),
            format!("must be at least min ({min}), found {max}"),
        );
        return None;
    }
    Some(Autoscale {
        min,
        max,
        cpu_percent,
    })
}

pub(super) fn deploy_of(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    service: &mut Service,
    sites: &mut ServiceSites,
) -> Option<RestartPolicy> {
    let mut restart = None;
    let keys = [
        "mode",
        "endpoint_mode",
        "replicas",
        "labels",
        "rollback_config",
        "update_config",
        "resources",
        "restart_policy",
        "placement",
    ];
    for (key, value) in cx.fields(node, path, &keys, true) {
        let p = join(path, key);
        match key {
            "mode" => match cx.string(value, &p).as_deref() {
                Some("replicated") | None => {}
                Some("global") => cx.error(
                    value.pos,
                    &p,
                    "`mode: global` (one replica on every node) is not supported yet: set `deploy.replicas`",
                ),
                Some(other) => cx.error(
                    value.pos,
                    &p,
                    format!("unknown mode {other:?}: use replicated"),
                ),
            },
            "endpoint_mode" | "rollback_config" | "update_config" => cx.warn(
                value.pos,
                &p,
                format!("`deploy.{key}` is read but has no effect: Berth replaces replicas one service at a time, starting each new copy before stopping the old"),
            ),
            "labels" => {
                // Swarm puts these on the service object, which Berth does not have;
                // they are kept on each container with the service's own labels.
                for (k, v) in cx.key_values(value, &p, false) {
                    service.labels.entry(k).or_insert(v);
                }
            }
            "restart_policy" => restart = deploy_restart_of(cx, value, &p),
            "replicas" => {
                sites.replicas = value.pos;
                if let Some(r) = cx.int(value, &p, 0, 10_000) {
                    service.replicas = r as u32;
                }
            }
            "resources" => {
                for (key, value) in cx.fields(value, &p, &["limits", "reservations"], true) {
                    let lp = join(&p, key);
                    let reservation = key == "reservations";
                    let keys: &[&str] = if reservation {
                        &["cpus", "memory", "generic_resources", "devices"]
                    } else {
                        &["cpus", "memory", "pids"]
                    };
                    for (key, value) in cx.fields(value, &lp, keys, true) {
                        let vp = join(&lp, key);
                        if reservation {
                            // The engine has no CPU reservation; memory is a soft limit.
                            match key {
                                "memory" => {
                                    service.engine.mem_reservation = engine::bytes(cx, value, &vp)
                                }
                                _ => cx.warn(
                                    value.pos,
                                    &vp,
                                    format!("`{key}` reservations are read but not reserved: placement counts limits"),
                                ),
                            }
                            continue;
                        }
                        match key {
                            "pids" => service.engine.pids_limit = cx.int(value, &vp, -1, i64::MAX),
                            "cpus" => {
                                let parsed = match &value.value {
                                    Value::Float(x) => units::cpus_to_millis(*x),
                                    Value::Int(i) => units::cpus_to_millis(*i as f64),
                                    _ => match cx.string(value, &vp) {
                                        Some(s) => units::parse_cpu_millis(&s),
                                        None => continue,
                                    },
                                };
                                match parsed {
                                    Ok(m) => service.limits.cpu_millis = Some(m),
                                    Err(e) => cx.error(value.pos, &vp, e),
                                }
                            }
                            "memory" => {
                                let Some(text) = cx.string(value, &vp) else {
                                    continue;
                                };
                                match units::parse_bytes(&text) {
                                    Ok(b) if b >= 6 * 1024 * 1024 => {
                                        service.limits.memory_bytes = Some(b)
                                    }
                                    Ok(_) => cx.error(
                                        value.pos,
                                        &vp,
                                        "the engine refuses a memory limit under 6m",
                                    ),
                                    Err(e) => cx.error(value.pos, &vp, e),
                                }
                            }
                            _ => unreachable!("fields() returns only known keys"),
                        }
                    }
                }
            }
            "placement" => {
                for (key, value) in cx.fields(
                    value,
                    &p,
                    &["constraints", "preferences", "max_replicas_per_node"],
                    true,
                ) {
                    let cp = join(&p, key);
                    if key != "constraints" {
                        cx.warn(
                            value.pos,
                            &cp,
                            format!("`{key}` is read but has no effect: the allocator spreads replicas across nodes by load"),
                        );
                        continue;
                    }
                    let Value::Seq(items) = &value.value else {
                        cx.expected(value, &cp, "a list of constraints");
                        continue;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{cp}[{i}]");
                        let Some(text) = cx.string(item, &ip) else {
                            continue;
                        };
                        match Constraint::parse(&text) {
                            Ok(c) => service.constraints.push(c),
                            Err(e) => cx.error(item.pos, &ip, e),
                        }
                    }
                }
            }
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    restart
}

/// `deploy.restart_policy`, which Compose applies when `restart` is not given.
pub(super) fn deploy_restart_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<RestartPolicy> {
    let mut condition = "any".to_owned();
    let mut max_retries = None;
    for (key, value) in cx.fields(
        node,
        path,
        &["condition", "delay", "max_attempts", "window"],
        true,
    ) {
        let p = join(path, key);
        match key {
            "condition" => condition = cx.string(value, &p).unwrap_or(condition),
            "max_attempts" => {
                max_retries = cx.int(value, &p, 0, i64::from(u32::MAX)).map(|n| n as u32)
            }
            _ => cx.warn(
                value.pos,
                &p,
                format!("`{key}` is read but has no effect: the engine restarts at once"),
            ),
        }
    }
    match condition.as_str() {
        "none" => Some(RestartPolicy::No),
        "on-failure" => Some(RestartPolicy::OnFailure { max_retries }),
        "any" => Some(RestartPolicy::Always),
        other => {
            cx.error(
                node.pos,
                &join(path, "condition"),
                format!("unknown condition {other:?}: use none, on-failure or any"),
            );
            None
        }
    }
}

pub(super) fn restart_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<RestartPolicy> {
    if let Value::Bool(b) = node.value {
        cx.error(
            node.pos,
            path,
            format!("expected a string, found the boolean {b}: write restart: \"no\" (quoted), always, on-failure or unless-stopped"),
        );
        return None;
    }
    let text = cx.string(node, path)?;
    Some(match text.as_str() {
        "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure { max_retries: None },
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => RestartPolicy::OnFailure {
                max_retries: Some(n),
            },
            _ => {
                cx.error(node.pos, path, format!("unknown restart policy {other:?}: use \"no\", always, on-failure[:N] or unless-stopped"));
                return None;
            }
        },
    })
}
