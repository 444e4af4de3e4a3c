//! The admin's pages: tenants with their quota usage as bars, editing a quota, nodes
//! with capacity, load, state and labels (kept live), cordon, drain and join tokens.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::{Limit, NewJoinToken, Node, NodeState, Tenant, status_of};
use crate::{Signed, page, see_other};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/tenants", web::get().to(tenants))
        .route("/admin/tenants/{tenant}/quota", web::post().to(set_quota))
        .route("/admin/nodes", web::get().to(nodes))
        .route("/admin/nodes/live", web::get().to(nodes_live))
        .route("/admin/nodes/{node}/{action}", web::post().to(node_action))
        .route("/admin/join-tokens", web::post().to(join_token));
}

fn limit_value(value: Option<u64>, show: fn(u64) -> String) -> String {
    value.map(show).unwrap_or_default()
}

fn quota_form(t: &Tenant) -> Markup {
    let cpu = limit_value(t.limit.cpu_millis, |m| {
        let text = format!("{}.{:03}", m / 1000, m % 1000);
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    });
    let memory = limit_value(t.limit.memory_bytes, |b| (b >> 20).to_string());
    let containers = limit_value(t.limit.containers, |c| c.to_string());
    let id = |field: &str| format!("{field}-{}", t.name);
    html! {
        form.inline method="post" action={ "/ui/admin/tenants/" (t.name) "/quota" } aria-label={ "Quota of " (t.name) } {
            label for=(id("cpu")) { "CPU (cores)" }
            input id=(id("cpu")) name="cpu" inputmode="decimal" size="5" value=(cpu) placeholder="unlimited";
            label for=(id("memory")) { "Memory (MiB)" }
            input id=(id("memory")) name="memory" inputmode="numeric" size="7" value=(memory) placeholder="unlimited";
            label for=(id("containers")) { "Containers" }
            input id=(id("containers")) name="containers" inputmode="numeric" size="5" value=(containers) placeholder="unlimited";
            button type="submit" { "Save quota" }
        }
    }
}

fn tenants_page(
    user: &Signed,
    tenants: &[Tenant],
    problem: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let body = html! {
        h1 { "Tenants" }
        @if let Some(problem) = problem { p.problem role="alert" #quota-problem { (problem) } }
        @for t in tenants {
            section.tenant data-tenant=(t.name) {
                h2 { a href={ "/ui/tenants/" (t.name) "/topologies" } { (t.name) } }
                div.scroll {
                    table {
                        tr { th scope="row" { "CPU" } td { (page::bar(t.used.cpu_millis, t.limit.cpu_millis, page::cores)) } }
                        tr { th scope="row" { "Memory" } td { (page::bar(t.used.memory_bytes, t.limit.memory_bytes, page::bytes)) } }
                        tr { th scope="row" { "Containers" } td { (page::bar(t.used.containers, t.limit.containers, page::count)) } }
                    }
                }
                (quota_form(t))
            }
        }
    };
    page::respond(status, &page::layout("Tenants", Some(&user.session), body))
}

async fn tenants(user: Signed) -> HttpResponse {
    match user.api.tenants().await {
        Ok(tenants) => tenants_page(&user, &tenants, None, StatusCode::OK),
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

#[derive(Debug, Deserialize)]
struct QuotaForm {
    cpu: String,
    memory: String,
    containers: String,
}

/// A form's quota: each field blank (unlimited) or a number, or what is wrong with it.
fn parse_quota(form: &QuotaForm) -> Result<Limit, String> {
    let whole = |field: &str, text: &str| -> Result<Option<u64>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<u64>().map(Some).map_err(|_| {
            format!("{field}: {text:?} is not a whole number (leave it blank for unlimited)")
        })
    };
    let cpu = form.cpu.trim();
    let cpu_millis = if cpu.is_empty() {
        None
    } else {
        let cores: f64 = cpu
            .parse()
            .ok()
            .filter(|c: &f64| c.is_finite() && *c >= 0.0 && *c < 1e9)
            .ok_or_else(|| format!("CPU: {cpu:?} is not a number of cores, like 2 or 0.5 (leave it blank for unlimited)"))?;
        Some((cores * 1000.0).round() as u64)
    };
    let memory_bytes = whole("Memory", &form.memory)?
        .map(|mib| {
            mib.checked_mul(1 << 20)
                .ok_or_else(|| format!("Memory: {mib} MiB is too large"))
        })
        .transpose()?;
    Ok(Limit {
        cpu_millis,
        memory_bytes,
        containers: whole("Containers", &form.containers)?,
    })
}

async fn set_quota(
    user: Signed,
    tenant: web::Path<String>,
    form: web::Form<QuotaForm>,
) -> HttpResponse {
    let result = match parse_quota(&form) {
        Ok(limit) => user.api.set_quota(&tenant, &limit).await.map_err(|f| {
            (
                StatusCode::from_u16(status_of(&f)).unwrap_or(StatusCode::BAD_GATEWAY),
                f.described(),
            )
        }),
        Err(problem) => Err((StatusCode::BAD_REQUEST, problem)),
    };
    match result {
        Ok(_) => see_other("/ui/admin/tenants"),
        Err((status, problem)) => match user.api.tenants().await {
            Ok(tenants) => tenants_page(
                &user,
                &tenants,
                Some(&format!("Quota of {tenant} not changed: {problem}")),
                status,
            ),
            Err(failure) => page::failure(Some(&user.session), &failure),
        },
    }
}

fn nodes_table(nodes: &[Node]) -> Markup {
    html! {
        div.scroll {
            table #nodes {
                thead { tr { th { "Node" } th { "State" } th { "CPU" } th { "Memory" } th { "Containers" } th { "Firewall" } th { "Labels" } th { "Actions" } } }
                tbody {
                    @for n in nodes {
                        tr data-node=(n.name) data-state=(n.state) {
                            td { (n.name) }
                            td { (page::state(n.state.as_str())) }
                            td { (page::bar(n.used.cpu_millis, n.capacity.cpu_millis, page::cores)) }
                            td { (page::bar(n.used.memory_bytes, n.capacity.memory_bytes, page::bytes)) }
                            td { (page::bar(n.used.containers, n.capacity.containers, page::count)) }
                            td.firewall { @if n.firewall.is_empty() { "—" } @else { (n.firewall) } }
                            td { @for (k, v) in &n.labels { code { (k) "=" (v) } " " } }
                            td {
                                @for action in actions(n.state) {
                                    form.inline method="post" action={ "/ui/admin/nodes/" (n.name) "/" (action) } {
                                        button.quiet type="submit" aria-label={ (action) " " (n.name) } { (action) }
                                    }
                                    " "
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What may be done to a node in `state`.
fn actions(state: NodeState) -> &'static [&'static str] {
    match state {
        NodeState::Active => &["cordon", "drain"],
        NodeState::Cordoned => &["uncordon", "drain"],
        NodeState::Draining => &["uncordon"],
        NodeState::Down => &[],
    }
}

fn nodes_page(
    user: &Signed,
    nodes: &[Node],
    notice: Option<Markup>,
    status: StatusCode,
) -> HttpResponse {
    let body = html! {
        h1 { "Nodes" }
        @if let Some(notice) = notice { (notice) }
        section {
            div #nodes-live data-live="/ui/admin/nodes/live" aria-live="polite" { (nodes_table(nodes)) }
        }
        section {
            h2 { "Add a node" }
            p { "A join token is good for one node, once." }
            form method="post" action="/ui/admin/join-tokens" {
                button #join-token type="submit" { "Make a join token" }
            }
        }
    };
    page::respond(status, &page::layout("Nodes", Some(&user.session), body))
}

async fn nodes(user: Signed) -> HttpResponse {
    match user.api.nodes().await {
        Ok(nodes) => nodes_page(&user, &nodes, None, StatusCode::OK),
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

async fn nodes_live(user: Signed) -> HttpResponse {
    match user.api.nodes().await {
        Ok(nodes) => page::fragment(&nodes_table(&nodes)),
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

async fn node_action(user: Signed, path: web::Path<(String, String)>) -> HttpResponse {
    let (node, action) = path.into_inner();
    if !["cordon", "uncordon", "drain"].contains(&action.as_str()) {
        return page::error(
            Some(&user.session),
            404,
            &format!("{action:?} is not something a node can be asked to do"),
        );
    }
    let outcome = match action.as_str() {
        "cordon" => user.api.cordon(&node).await.map(drop),
        "uncordon" => user.api.uncordon(&node).await.map(drop),
        _ => user.api.drain(&node).await.map(drop),
    };
    match outcome {
        Ok(_) => see_other("/ui/admin/nodes"),
        Err(failure) => {
            let status =
                StatusCode::from_u16(status_of(&failure)).unwrap_or(StatusCode::BAD_GATEWAY);
            let notice = html! { p.problem role="alert" { "Could not " (action) " " (node) ": " (failure.described()) } };
            match user.api.nodes().await {
                Ok(nodes) => nodes_page(&user, &nodes, Some(notice), status),
                Err(failure) => page::failure(Some(&user.session), &failure),
            }
        }
    }
}

async fn join_token(user: Signed) -> HttpResponse {
    let token = match user.api.join_token(&NewJoinToken::default()).await {
        Ok(token) => token,
        Err(failure) => return page::failure(Some(&user.session), &failure),
    };
    let notice = html! {
        div.ok role="status" {
            p { "Run this on the new node within " (token.ttl_seconds / 60) " minutes:" }
            pre #join-command { (token.join_command) }
        }
    };
    match user.api.nodes().await {
        Ok(nodes) => nodes_page(&user, &nodes, Some(notice), StatusCode::OK),
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(cpu: &str, memory: &str, containers: &str) -> QuotaForm {
        QuotaForm {
            cpu: cpu.to_owned(),
            memory: memory.to_owned(),
            containers: containers.to_owned(),
        }
    }

    #[test]
    fn a_quota_form_reads_cores_mebibytes_and_blanks_as_unlimited() {
        let limit = parse_quota(&form("1.5", "512", "")).expect("valid");
        assert_eq!(limit.cpu_millis, Some(1500));
        assert_eq!(limit.memory_bytes, Some(512 << 20));
        assert_eq!(limit.containers, None);
    }

    #[test]
    fn a_bad_quota_field_is_named() {
        let e = parse_quota(&form("lots", "", "")).expect_err("refused");
        assert!(e.starts_with("CPU:"), "{e}");
        let e = parse_quota(&form("", "", "-1")).expect_err("refused");
        assert!(e.starts_with("Containers:"), "{e}");
    }
}
