//! Graphs drawn as SVG on the server: a topology (services in columns by dependency
//! depth, their replicas on nodes coloured by state) and the graph of who can call what
//! (nodes on a circle, one arrow per caller and target listing what is delegated).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use berth_protocol::topology::Topology;
use maud::{Markup, html};

use crate::api::{Reach, Replica, ReplicaState};

const BOX_WIDTH: u32 = 200;
const COLUMN: u32 = 260;
const ROW: u32 = 22;

/// The colour of a replica's state; the state is also written beside it.
fn colour(state: ReplicaState) -> &'static str {
    if state.is_running() {
        "#2e7d32"
    } else if state.is_starting() {
        "#9a6700"
    } else if state.has_failed() {
        "#c62828"
    } else {
        "#6b7280"
    }
}

/// How many dependencies deep each service is: 0 for one that needs nothing.
fn depths(topology: &Topology) -> BTreeMap<&str, u32> {
    let mut depth: BTreeMap<&str, u32> = BTreeMap::new();
    // Relax as many times as there are services: enough for any acyclic graph, and a
    // cycle (which the loader refuses anyway) cannot loop forever.
    for _ in 0..=topology.services.len() {
        for (name, service) in &topology.services {
            let d = service
                .depends_on
                .keys()
                .filter_map(|dep| depth.get(dep.as_str()).map(|d| d + 1))
                .max()
                .unwrap_or(0);
            depth.insert(name, d);
        }
    }
    depth
}

/// A topology's services, its links and its replicas.
pub(crate) fn topology(topology: &Topology, replicas: &[Replica]) -> Markup {
    let depth = depths(topology);
    let columns = depth.values().copied().max().map_or(1, |d| d + 1);
    // Each service's box: column, top, height.
    let mut boxes: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    let mut next_top = vec![10u32; columns as usize];
    for (name, service) in &topology.services {
        let column = depth.get(name.as_str()).copied().unwrap_or(0);
        let shown = replicas
            .iter()
            .filter(|r| &r.service == name)
            .count()
            .max(1);
        let height = 34 + ROW * u32::try_from(shown).unwrap_or(u32::MAX);
        let top = next_top[column as usize];
        next_top[column as usize] = top + height + 24;
        boxes.insert(name, (column, top, height));
        let _ = service;
    }
    let width = columns * COLUMN + 20;
    let height = next_top.iter().copied().max().unwrap_or(10) + 10;
    let mut links = String::new();
    for (name, service) in &topology.services {
        let Some(&(column, top, h)) = boxes.get(name.as_str()) else {
            continue;
        };
        for dependency in service.depends_on.keys() {
            let Some(&(dc, dt, dh)) = boxes.get(dependency.as_str()) else {
                continue;
            };
            let (x1, y1) = (10 + column * COLUMN, top + h / 2);
            let (x2, y2) = (10 + dc * COLUMN + BOX_WIDTH, dt + dh / 2);
            let _ = write!(
                links,
                r##"<path class="link" d="M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}" fill="none" stroke="#14213d" stroke-width="1.5" marker-end="url(#arrow)"><title>{name} depends on {dependency}</title></path>"##,
                x1.saturating_sub(30),
                x2 + 30
            );
        }
    }
    html! {
        svg #topology-graph xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (width) " " (height) } width=(width) role="img"
            aria-label={ "Services of " (topology.name) ", their links and replicas" } {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#14213d" {}
                }
            }
            (maud::PreEscaped(links))
            @for (name, &(column, top, h)) in &boxes {
                @let x = 10 + column * COLUMN;
                g.service data-service=(name) {
                    rect x=(x) y=(top) width=(BOX_WIDTH) height=(h) rx="6" fill="#fff" stroke="#14213d" {}
                    text x=(x + 10) y=(top + 20) font-weight="bold" font-size="14" { (name) }
                    @let mine: Vec<&Replica> = replicas.iter().filter(|r| &r.service == name).collect();
                    @if mine.is_empty() {
                        text x=(x + 10) y=(top + 20 + ROW) font-size="12" fill="#6b7280" { "no replica placed" }
                    }
                    @for (i, r) in mine.iter().enumerate() {
                        @let y = top + 16 + ROW * (u32::try_from(i).unwrap_or(0) + 1);
                        g.replica data-state=(r.state) {
                            circle cx=(x + 16) cy=(y) r="6" fill=(colour(r.state)) {}
                            text x=(x + 28) y=(y + 4) font-size="12" { "#" (r.replica) " on " (r.node) " · " (r.state) }
                            title { (r.service) " replica " (r.replica) " on node " (r.node) ": " (r.state) }
                        }
                    }
                }
            }
        }
    }
}

/// Who can call what: one arrow per caller and target, listing the delegations.
pub(crate) fn reach(reach: &Reach) -> Markup {
    let nodes: BTreeSet<&str> = reach
        .nodes
        .iter()
        .map(String::as_str)
        .chain(
            reach
                .edges
                .iter()
                .flat_map(|e| [e.caller.as_str(), e.target.as_str()]),
        )
        .collect();
    let nodes: Vec<&str> = nodes.into_iter().collect();
    let n = nodes.len().max(1);
    let radius = 60.0 + 40.0 * n as f64;
    let centre = radius + 120.0;
    let size = (2.0 * centre) as u32;
    let position = |name: &str| -> (f64, f64) {
        let i = nodes.iter().position(|n| *n == name).unwrap_or(0);
        let angle = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
        (centre + radius * angle.cos(), centre + radius * angle.sin())
    };
    let mut grouped: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for e in &reach.edges {
        let what = if e.port == 0 {
            format!("{} {}/{}/{}", e.operation, e.tenant, e.topology, e.service)
        } else {
            format!(
                "{} {}/{}/{}:{}",
                e.operation, e.tenant, e.topology, e.service, e.port
            )
        };
        grouped
            .entry((&e.caller, &e.target))
            .or_default()
            .push(what);
    }
    html! {
        svg #reach-graph xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (size) " " (size) } width=(size) role="img"
            aria-label="Nodes and the calls each is delegated to make to another" {
            defs {
                marker #call viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#0b57d0" {}
                }
            }
            @for ((caller, target), what) in &grouped {
                @let (x1, y1) = position(caller);
                @let (x2, y2) = position(target);
                // Shorten to the circles' edges, and bend so that a→b and b→a differ.
                @let (dx, dy) = (x2 - x1, y2 - y1);
                @let len = (dx * dx + dy * dy).sqrt().max(1.0);
                @let (ux, uy) = (dx / len, dy / len);
                @let (sx, sy, ex, ey) = (x1 + ux * 18.0, y1 + uy * 18.0, x2 - ux * 18.0, y2 - uy * 18.0);
                @let (mx, my) = ((sx + ex) / 2.0 - uy * 30.0, (sy + ey) / 2.0 + ux * 30.0);
                g.delegation data-caller=(caller) data-target=(target) {
                    path d=(format!("M{sx:.1},{sy:.1} Q{mx:.1},{my:.1} {ex:.1},{ey:.1}")) fill="none" stroke="#0b57d0" stroke-width="1.5" marker-end="url(#call)" {}
                    @for (i, line) in what.iter().enumerate() {
                        text x=(format!("{mx:.1}")) y=(format!("{:.1}", my + 14.0 * i as f64)) font-size="11" text-anchor="middle" fill="#0b57d0" { (line) }
                    }
                    title { (caller) " may call " (target) ": " (what.join(", ")) }
                }
            }
            @for name in &nodes {
                @let (x, y) = position(name);
                g.node data-node=(name) {
                    circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="14" fill="#14213d" {}
                    text x=(format!("{x:.1}")) y=(format!("{:.1}", y + 32.0)) font-size="13" fill="#14213d" text-anchor="middle" { (name) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::audit::Edge;

    fn replica(service: &str, replica: u32, node: &str, state: ReplicaState) -> Replica {
        Replica {
            service: service.to_owned(),
            replica,
            node: node.to_owned(),
            generation: 1,
            state,
            detail: String::new(),
            cpu_millis: None,
            image: String::new(),
        }
    }

    fn topology_of(yaml: &str) -> Topology {
        let vars = berth_protocol::topology::Variables::default();
        let options = berth_protocol::topology::LoadOptions {
            file_name: "t.yaml",
            dir: std::path::Path::new("."),
            default_name: "t",
            vars: &vars,
            files: &berth_protocol::topology::LocalFiles,
        };
        berth_protocol::topology::load(yaml, &options)
            .expect("valid")
            .topology
    }

    #[test]
    fn a_dependent_stands_right_of_what_it_needs_and_links_to_it() {
        let t = topology_of(
            "name: shop\nservices:\n  web:\n    image: x\n    depends_on: [db]\n  db:\n    image: x\n",
        );
        let svg = topology(
            &t,
            &[
                replica("web", 0, "n1", ReplicaState::Running),
                replica("db", 0, "n2", ReplicaState::Failed),
            ],
        )
        .into_string();
        assert!(svg.contains("web depends on db"), "{svg}");
        // db in column 0, web in column 1.
        assert!(svg.contains(r#"data-service="db"><rect x="10""#), "{svg}");
        assert!(svg.contains(r#"data-service="web"><rect x="270""#), "{svg}");
        assert!(svg.contains("#0 on n2 · failed"), "{svg}");
        assert!(svg.contains("#c62828"), "a failed replica is red: {svg}");
    }

    #[test]
    fn one_arrow_per_pair_lists_every_delegation() {
        let edge = |caller: &str, target: &str, port: u16| Edge {
            caller: caller.to_owned(),
            operation: "tunnel".to_owned(),
            target: target.to_owned(),
            tenant: "acme".to_owned(),
            topology: "shop".to_owned(),
            service: "db".to_owned(),
            port,
            token: "00".to_owned(),
            minted_at_ms: 0,
        };
        let graph = Reach {
            nodes: vec!["n1".to_owned(), "n2".to_owned()],
            edges: vec![edge("n1", "n2", 5432), edge("n1", "n2", 9000)],
        };
        let svg = reach(&graph).into_string();
        assert_eq!(svg.matches("class=\"delegation\"").count(), 1, "{svg}");
        assert!(
            svg.contains("n1 may call n2: tunnel acme/shop/db:5432, tunnel acme/shop/db:9000"),
            "{svg}"
        );
    }
}
