//! Ports as Compose writes them: the short form (`8080:80/udp`, ranges, a host
//! address) and the long form (`target`, `published`, `host_ip`, `protocol`, `mode`),
//! read into [`Port`]s with each problem at its line.

use super::*;

/// Parses `PORT`, `START-END`, with an optional `/tcp` or `/udp`.
pub(super) fn parse_port_spec(
    text: &str,
) -> Result<(std::ops::RangeInclusive<u16>, Protocol), String> {
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}: use tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    Ok((parse_port_range(ports)?, protocol))
}

pub(super) fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let port = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{text:?} is not a port (1 to 65535)")),
            Ok(p) => Ok(p),
        }
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("port range {text:?} ends before it starts"));
            }
            Ok(a..=b)
        }
        None => {
            let p = port(text)?;
            Ok(p..=p)
        }
    }
}

pub(super) fn port_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<PortMapping> {
    match &node.value {
        Value::Map(_) => long_port_of(cx, node, path).into_iter().collect(),
        Value::Int(_) | Value::Str(_) => {
            let text = cx.string(node, path).unwrap_or_default();
            match parse_short_port(&text) {
                Ok(ports) => ports,
                Err(e) => {
                    cx.error(node.pos, path, e);
                    Vec::new()
                }
            }
        }
        _ => {
            cx.expected(
                node,
                path,
                "a port such as \"8080:80\" or a mapping with `target`",
            );
            Vec::new()
        }
    }
}

/// `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, each port possibly a range.
pub(super) fn parse_short_port(text: &str) -> Result<Vec<PortMapping>, String> {
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((r, "tcp")) => (r, Protocol::Tcp),
        Some((r, "udp")) => (r, Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}: use tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (host_ip, rest) = if let Some(after) = rest.strip_prefix('[') {
        let end = after
            .find(']')
            .ok_or_else(|| format!("unclosed '[' in {text:?}"))?;
        let rest = after[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| format!("expected ':' after the address in {text:?}"))?;
        (Some(after[..end].to_owned()), rest)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (ip, [target]) => (ip, None, *target),
        (ip, [published, target]) => (ip, Some(*published), *target),
        (None, [ip, published, target]) => (Some((*ip).to_owned()), Some(*published), *target),
        _ => {
            return Err(format!(
                "{text:?} is not a port mapping such as \"8080:80\" or \"127.0.0.1:8080:80/udp\""
            ));
        }
    };
    if let Some(ip) = &host_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(format!("{ip:?} in {text:?} is not an IP address"));
    }
    let targets = parse_port_range(target)?;
    if published == Some("") && host_ip.is_none() {
        return Err(format!(
            "{text:?} has an empty host port before ':' (an unset variable?): write \"{target}\" to publish on any port"
        ));
    }
    let published = match published {
        None | Some("") => None,
        Some(p) => Some(parse_port_range(p)?),
    };
    match published {
        None => Ok(targets
            .map(|t| PortMapping {
                target: t,
                published: None,
                host_ip: host_ip.clone(),
                protocol,
            })
            .collect()),
        Some(hosts) => {
            if hosts.clone().count() != targets.clone().count() {
                return Err(format!(
                    "{text:?} maps a host range onto a container range of another length"
                ));
            }
            Ok(hosts
                .zip(targets)
                .map(|(h, t)| PortMapping {
                    target: t,
                    published: Some(h),
                    host_ip: host_ip.clone(),
                    protocol,
                })
                .collect())
        }
    }
}

pub(super) fn long_port_of(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<PortMapping> {
    let fields = cx.fields(
        node,
        path,
        &["target", "published", "host_ip", "protocol", "mode"],
        false,
    );
    let mut mapping = PortMapping {
        target: 0,
        published: None,
        host_ip: None,
        protocol: Protocol::Tcp,
    };
    let mut ok = true;
    for (key, value) in fields {
        let p = join(path, key);
        match key {
            "target" => match cx.int(value, &p, 1, 65535) {
                Some(t) => mapping.target = t as u16,
                None => ok = false,
            },
            "published" => match cx.string(value, &p).map(|s| parse_port_range(&s)) {
                Some(Ok(range)) if range.start() == range.end() => {
                    mapping.published = Some(*range.start())
                }
                Some(Ok(_)) => {
                    cx.error(value.pos, &p, "a range is not supported in the long syntax: use the short syntax \"8000-8010:8000-8010\"");
                    ok = false;
                }
                Some(Err(e)) => {
                    cx.error(value.pos, &p, e);
                    ok = false;
                }
                None => ok = false,
            },
            "host_ip" => match cx.string(value, &p) {
                Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => mapping.host_ip = Some(ip),
                Some(ip) => {
                    cx.error(value.pos, &p, format!("{ip:?} is not an IP address"));
                    ok = false;
                }
                None => ok = false,
            },
            "protocol" => match cx.string(value, &p).as_deref() {
                Some("tcp") => mapping.protocol = Protocol::Tcp,
                Some("udp") => mapping.protocol = Protocol::Udp,
                Some(other) => {
                    cx.error(
                        value.pos,
                        &p,
                        format!("unknown protocol {other:?}: use tcp or udp"),
                    );
                    ok = false;
                }
                None => ok = false,
            },
            "mode" => match cx.string(value, &p).as_deref() {
                Some("host") => {}
                Some("ingress") => {
                    cx.error(value.pos, &p, "`ingress` is Swarm's routing mesh, which Berth does not have: use `mode: host` (the port is published on the machine that runs the replica)");
                    ok = false;
                }
                Some(other) => {
                    cx.error(value.pos, &p, format!("unknown mode {other:?}: use host"));
                    ok = false;
                }
                None => ok = false,
            },
            _ => unreachable!("fields() returns only known keys"),
        }
    }
    if mapping.target == 0 && ok && matches!(node.value, Value::Map(_)) {
        cx.error(
            node.pos,
            &join(path, "target"),
            "a port needs a `target` (the port inside the container)",
        );
        ok = false;
    }
    ok.then_some(mapping)
}
