//! A tenant's topologies: the list, deploying from a pasted or uploaded file (checked by
//! the same loader as the CLI, its errors shown beside the lines they are about), a
//! topology's graph and replicas kept live, scaling, and a replica's output.

use std::path::Path;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use berth_protocol::topology::{
    Diagnostic, FileReader, LoadOptions, Topology, TopologyError, Variables, load,
};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::{Deployed, Event, Logs, LogsQuery, Role, Scale, Session, status_of};
use crate::{Signed, encode, page, see_other, svg};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tenants/{tenant}/topologies", web::get().to(list))
        .route("/tenants/{tenant}/topologies", web::post().to(deploy))
        .route("/tenants/{tenant}/topologies/{name}", web::get().to(show))
        .route(
            "/tenants/{tenant}/topologies/{name}/live",
            web::get().to(live),
        )
        .route(
            "/tenants/{tenant}/topologies/{name}/scale",
            web::post().to(scale),
        )
        .route(
            "/tenants/{tenant}/topologies/{name}/logs",
            web::get().to(logs),
        );
}

/// A web form has no directory to read `env_file`s from: it says so where one is named.
struct NoFiles;

impl FileReader for NoFiles {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "a topology deployed from the web cannot read {}: put its variables under `environment`, or deploy with `berth up --endpoint`",
                path.display()
            ),
        ))
    }
}

/// The deploy form, filled with `source` and its problems beside the lines.
fn deploy_form(tenant: &str, source: &str, problems: Option<&Problems>) -> Markup {
    html! {
        section #deploy {
            h2 { "Deploy or update a topology" }
            @if let Some(problems) = problems {
                p.problem role="alert" #deploy-problem { (problems.summary) }
                @if !problems.diagnostics.is_empty() { (annotated(source, &problems.diagnostics)) }
            }
            form method="post" action={ "/ui/tenants/" (tenant) "/topologies" } {
                label for="upload" { "Upload a topology file" }
                input #upload type="file" accept=".yaml,.yml" data-into="source";
                input #file_name type="hidden" name="file_name" value="topology.yaml";
                label for="source" { "or paste it" }
                textarea #source name="source" spellcheck="false" required { (source) }
                button #deploy-button type="submit" { "Deploy" }
            }
        }
    }
}

/// What stopped a deploy.
struct Problems {
    summary: String,
    diagnostics: Vec<Diagnostic>,
}

/// The source with line numbers, each problem in a row right under its line.
fn annotated(source: &str, diagnostics: &[Diagnostic]) -> Markup {
    let unplaced: Vec<&Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.line == 0 || d.line as usize > source.lines().count())
        .collect();
    html! {
        div.scroll {
            table.source aria-label="The topology file with its problems" {
                @for d in &unplaced {
                    tr.diagnostic data-line="0" { td.n {} td { (d.path) ": " (d.message) } }
                }
                @for (i, line) in source.lines().enumerate() {
                    @let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
                    @let here: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.line == number).collect();
                    tr class=@if here.is_empty() { "line" } @else { "line bad" } id={ "line-" (number) } {
                        td.n { (number) } td { (line) }
                    }
                    @for d in here {
                        tr.diagnostic data-line=(number) role="alert" {
                            td.n { "↑" }
                            td { "line " (d.line) ", column " (d.column) ", " (d.path) ": " (d.message) }
                        }
                    }
                }
            }
        }
    }
}

fn topologies_page(
    user: &Signed,
    tenant: &str,
    names: &[String],
    form: Markup,
    status: StatusCode,
) -> HttpResponse {
    let body = html! {
        h1 { "Topologies of " (tenant) }
        section {
            @if names.is_empty() {
                p.muted { "No topology is deployed yet." }
            } @else {
                ul #topologies {
                    @for name in names {
                        li { a href={ "/ui/tenants/" (tenant) "/topologies/" (name) } { (name) } }
                    }
                }
            }
        }
        @if user.session.role != Role::Auditor { (form) }
    };
    page::respond(
        status,
        &page::layout("Topologies", Some(&user.session), body),
    )
}

async fn list(user: Signed, tenant: web::Path<String>) -> HttpResponse {
    match user.api.topologies(&tenant).await {
        Ok(names) => topologies_page(
            &user,
            &tenant,
            &names,
            deploy_form(&tenant, "", None),
            StatusCode::OK,
        ),
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

#[derive(Debug, Deserialize)]
struct DeployForm {
    source: String,
    file_name: Option<String>,
}

async fn deploy(
    user: Signed,
    tenant: web::Path<String>,
    form: web::Form<DeployForm>,
) -> HttpResponse {
    let form = form.into_inner();
    let file_name = form
        .file_name
        .as_deref()
        .filter(|f| !f.is_empty())
        .unwrap_or("topology.yaml");
    let names: Vec<String> = user.api.topologies(&tenant).await.unwrap_or_default();
    let refuse = |status: StatusCode, problems: Problems| {
        let form_markup = deploy_form(&tenant, &form.source, Some(&problems));
        topologies_page(&user, &tenant, &names, form_markup, status)
    };
    let vars = Variables::default();
    let options = LoadOptions {
        file_name,
        dir: Path::new("."),
        default_name: "app",
        vars: &vars,
        files: &NoFiles,
    };
    let topology: Topology = match load(&form.source, &options) {
        Ok(loaded) => loaded.topology,
        Err(TopologyError { diagnostics }) => {
            let summary = format!(
                "{file_name} has {} problem{}; nothing was deployed.",
                diagnostics.len(),
                if diagnostics.len() == 1 { "" } else { "s" }
            );
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                Problems {
                    summary,
                    diagnostics,
                },
            );
        }
    };
    match user.api.deploy(&tenant, &topology).await {
        Ok(_) => see_other(&format!(
            "/ui/tenants/{tenant}/topologies/{}",
            topology.name
        )),
        Err(failure) => refuse(
            StatusCode::from_u16(status_of(&failure)).unwrap_or(StatusCode::BAD_GATEWAY),
            Problems {
                summary: format!("Not deployed: {}", failure.described()),
                diagnostics: Vec::new(),
            },
        ),
    }
}

/// The live part of a topology's page: its graph and its replicas.
async fn live_part(user: &Signed, tenant: &str, name: &str) -> Result<Markup, HttpResponse> {
    let deployed: Deployed = user
        .api
        .status(tenant, name)
        .await
        .map_err(|f| page::failure(Some(&user.session), &f))?;
    let spec: Topology = user
        .api
        .spec(tenant, name)
        .await
        .map_err(|f| page::failure(Some(&user.session), &f))?;
    let events: Vec<Event> = user
        .api
        .events(tenant, name, 30)
        .await
        .map_err(|f| page::failure(Some(&user.session), &f))?;
    Ok(html! {
        section {
            h2 { "Revision " (deployed.revision) }
            (svg::topology(&spec, &deployed.replicas))
        }
        section {
            h2 { "Replicas" }
            div.scroll {
                table #replicas {
                    thead { tr { th { "Service" } th { "Replica" } th { "Node" } th { "Generation" } th { "State" } th { "Detail" } th {} } }
                    tbody {
                        @for r in &deployed.replicas {
                            tr data-service=(r.service) data-state=(r.state) {
                                td { (r.service) } td { (r.replica) } td { (r.node) } td { (r.generation) }
                                td { (page::state(r.state.as_str())) } td { (r.detail) }
                                td { a href={ "/ui/tenants/" (tenant) "/topologies/" (name) "/logs?service=" (encode(&r.service)) } { "logs" } }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Events" }
            @if events.is_empty() { p.muted { "Nothing has happened yet." } }
            @else {
                div.scroll {
                    table #events {
                        thead { tr { th { "When (UTC)" } th { "What" } th { "Replica" } th { "Node" } th { "Generation" } th { "Detail" } } }
                        tbody {
                            @for e in &events {
                                tr data-kind=(e.kind) data-service=(e.service) {
                                    td { (page::when(e.at_ms)) } td { (page::state(e.kind.as_str())) }
                                    td { (e.service) " #" (e.replica) } td { (e.node) } td { (e.generation) } td { (e.detail) }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn scale_form(
    session: &Session,
    tenant: &str,
    name: &str,
    spec_services: &[(String, u32)],
) -> Markup {
    html! {
        @if session.role != Role::Auditor && !spec_services.is_empty() {
            section {
                h2 { "Scale" }
                @for (service, replicas) in spec_services {
                    form.inline method="post" action={ "/ui/tenants/" (tenant) "/topologies/" (name) "/scale" } {
                        input type="hidden" name="service" value=(service);
                        label for={ "replicas-" (service) } { (service) }
                        input id={ "replicas-" (service) } type="number" name="replicas" min="0" max="1000" value=(replicas);
                        button type="submit" { "Scale " (service) }
                    }
                }
            }
        }
    }
}

async fn show(user: Signed, path: web::Path<(String, String)>) -> HttpResponse {
    let (tenant, name) = path.into_inner();
    render_topology(&user, &tenant, &name, None, StatusCode::OK).await
}

async fn render_topology(
    user: &Signed,
    tenant: &str,
    name: &str,
    problem: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let live = match live_part(user, tenant, name).await {
        Ok(live) => live,
        Err(response) => return response,
    };
    let services: Vec<(String, u32)> = match user.api.spec(tenant, name).await {
        Ok(spec) => spec
            .services
            .iter()
            .map(|(n, s)| (n.clone(), s.replicas))
            .collect(),
        Err(failure) => return page::failure(Some(&user.session), &failure),
    };
    let body = html! {
        p { a href={ "/ui/tenants/" (tenant) "/topologies" } { "← Topologies of " (tenant) } }
        h1 { (name) }
        @if let Some(problem) = problem { p.problem role="alert" #scale-problem { (problem) } }
        div #live data-live={ "/ui/tenants/" (tenant) "/topologies/" (name) "/live" } aria-live="polite" { (live) }
        (scale_form(&user.session, tenant, name, &services))
    };
    page::respond(status, &page::layout(name, Some(&user.session), body))
}

async fn live(user: Signed, path: web::Path<(String, String)>) -> HttpResponse {
    let (tenant, name) = path.into_inner();
    match live_part(&user, &tenant, &name).await {
        Ok(part) => page::fragment(&part),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct ScaleForm {
    service: String,
    replicas: u32,
}

async fn scale(
    user: Signed,
    path: web::Path<(String, String)>,
    form: web::Form<ScaleForm>,
) -> HttpResponse {
    let (tenant, name) = path.into_inner();
    let form = form.into_inner();
    let asked = Scale {
        replicas: std::collections::BTreeMap::from([(form.service, form.replicas)]),
    };
    match user.api.scale(&tenant, &name, &asked).await {
        Ok(_) => see_other(&format!("/ui/tenants/{tenant}/topologies/{name}")),
        Err(failure) => {
            let status =
                StatusCode::from_u16(status_of(&failure)).unwrap_or(StatusCode::BAD_GATEWAY);
            let problem = format!("Not scaled: {}", failure.described());
            render_topology(&user, &tenant, &name, Some(&problem), status).await
        }
    }
}

#[derive(Debug, Deserialize)]
struct LogsForm {
    service: Option<String>,
}

async fn logs(
    user: Signed,
    path: web::Path<(String, String)>,
    query: web::Query<LogsForm>,
) -> HttpResponse {
    let (tenant, name) = path.into_inner();
    let asked = LogsQuery {
        service: query.service.clone(),
        tail: Some(200),
        since_ns: None,
    };
    let replicas: Vec<Logs> = match user.api.logs(&tenant, &name, &asked).await {
        Ok(replicas) => replicas,
        Err(failure) => return page::failure(Some(&user.session), &failure),
    };
    let body = html! {
        p { a href={ "/ui/tenants/" (tenant) "/topologies/" (name) } { "← " (name) } }
        h1 { "Output of " (query.service.as_deref().unwrap_or(&name)) }
        @for r in &replicas {
            section {
                h2 { (r.service) " replica " (r.replica) " on " (r.node) }
                @if let Some(error) = &r.error { p.problem { (error) } }
                pre.logs { @for line in &r.lines { (line) "\n" } }
            }
        }
    };
    page::respond(
        StatusCode::OK,
        &page::layout("Logs", Some(&user.session), body),
    )
}
