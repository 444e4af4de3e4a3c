//! The auditor's pages: the ledger with filters and its verification status, a token
//! explained (its blocks as datalog, its history), a decision explained, the graph of
//! who can call what, and revoking a token.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api::{
    Entry, EntryKind, Explained, Filter, Reach, Revoke, Session, Verification, VerifyQuery,
};
use crate::{Signed, encode, page, see_other, svg};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit", web::get().to(ledger))
        .route("/audit/tokens/{id}", web::get().to(token))
        .route("/audit/decisions/{seq}", web::get().to(decision))
        .route("/audit/graph", web::get().to(graph))
        .route("/audit/revoke", web::post().to(revoke));
}

/// The entry kinds, for the filter.
const KINDS: [&str; 7] = [
    "minted",
    "attenuated",
    "renewed",
    "revoked",
    "decision",
    "root-key",
    "policy",
];

#[derive(Debug, Default, Deserialize)]
struct LedgerQuery {
    tenant: Option<String>,
    kind: Option<String>,
    subject: Option<String>,
    /// An anchor kept from an earlier verification, to check the chain against.
    anchor: Option<String>,
}

/// The tenant whose entries a user reads: an auditor's own, or what an admin picked.
fn scope<'a>(session: &'a Session, asked: Option<&'a str>) -> Option<&'a str> {
    if session.is_admin() {
        asked.filter(|t| !t.is_empty())
    } else {
        Some(&session.tenant)
    }
}

fn verification(v: &Verification, anchor: Option<&str>) -> Markup {
    html! {
        @if v.intact {
            p.ok #verification role="status" {
                "The ledger's hash chain is intact: " (v.entries) " entries, head " code { (v.head.get(..16).unwrap_or(&v.head)) } "…"
                @if let Some(anchor) = anchor { ", and holds the anchored entry " (anchor.split(':').next().unwrap_or_default()) }
            }
        } @else {
            p.problem #verification role="alert" {
                "The ledger's hash chain is broken: " (v.problem.as_deref().unwrap_or("an entry does not match its hash"))
            }
        }
        @if let Some(w) = &v.witnessed {
            p #witnessed {
                "Checked against the anchor the server's witness took " (page::when(w.at_ms)) " (entry "
                (w.anchor.split(':').next().unwrap_or_default()) ")."
            }
        }
        form.inline method="get" action="/ui/audit" {
            @if !v.anchor.is_empty() {
                span { "Anchor to keep outside the database: " code #anchor-now { (v.anchor) } " " }
            }
            label for="anchor" { "Check against an anchor" }
            input #anchor name="anchor" size="24" placeholder="SEQ:HASH" value=(anchor.unwrap_or(""));
            button type="submit" { "Verify" }
        }
    }
}

/// A link to what explains an entry: its token, or the decision.
fn explain_link(e: &Entry) -> Markup {
    html! {
        @match e.kind.as_str() {
            "decision" => a href={ "/ui/audit/decisions/" (e.seq) } { "explain" },
            "minted" | "attenuated" | "renewed" => {
                @if let Some(id) = e.revocation_ids.first() {
                    a href={ "/ui/audit/tokens/" (id) } { "token" }
                }
            },
            _ => {},
        }
    }
}

async fn ledger(user: Signed, query: web::Query<LedgerQuery>) -> HttpResponse {
    let tenant = scope(&user.session, query.tenant.as_deref());
    let kind = query.kind.as_deref().filter(|k| !k.is_empty());
    let subject = query.subject.as_deref().filter(|s| !s.is_empty());
    let anchor = query
        .anchor
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let filter = Filter {
        kind: kind.map(str::to_owned),
        tenant: tenant.map(str::to_owned),
        subject: subject.map(str::to_owned),
        limit: Some(200),
    };
    let entries: Vec<Entry> = match user.api.audit_entries(&filter).await {
        Ok(entries) => entries,
        Err(failure) => return page::failure(Some(&user.session), &failure),
    };
    let asked = VerifyQuery {
        tenant: tenant.map(str::to_owned),
        anchor: anchor.map(str::to_owned),
    };
    let verified: Verification = match user.api.verify(&asked).await {
        Ok(v) => v,
        Err(failure) => return page::failure(Some(&user.session), &failure),
    };
    let body = html! {
        h1 { "Audit ledger" @if let Some(t) = tenant { " of " (t) } }
        (verification(&verified, anchor))
        section {
            form.inline method="get" action="/ui/audit" role="search" {
                @if user.session.is_admin() {
                    label for="tenant" { "Tenant" }
                    input #tenant name="tenant" size="10" value=(tenant.unwrap_or("")) placeholder="all";
                }
                label for="kind" { "Kind" }
                select #kind name="kind" {
                    option value="" { "any" }
                    @for k in KINDS { option value=(k) selected[kind == Some(k)] { (k) } }
                }
                label for="subject" { "Subject contains" }
                input #subject name="subject" size="16" value=(subject.unwrap_or(""));
                button type="submit" { "Filter" }
            }
        }
        section {
            div.scroll {
                table #entries {
                    thead { tr { th { "#" } th { "When (UTC)" } th { "Kind" } th { "Actor" } th { "Tenant" } th { "Subject" } th {} } }
                    tbody {
                        @for e in &entries {
                            tr data-kind=(e.kind) data-seq=(e.seq) {
                                td { (e.seq) } td { (page::when(e.at_ms)) }
                                td { @if e.kind == EntryKind::Decision { (page::state(decision_word(e))) " " } (e.kind) }
                                td { (e.actor) } td { (e.tenant) } td { (e.subject) }
                                td { (explain_link(e)) }
                            }
                        }
                    }
                }
                @if entries.is_empty() { p.muted { "No entry matches." } }
            }
        }
    };
    page::respond(
        StatusCode::OK,
        &page::layout("Audit ledger", Some(&user.session), body),
    )
}

/// Whether a decision entry records an allowed or a denied call.
fn decision_word(e: &Entry) -> &'static str {
    if e.detail.starts_with("allow") {
        "allowed"
    } else {
        "denied"
    }
}

fn entries_table(entries: &[&Entry]) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { th { "#" } th { "When (UTC)" } th { "Kind" } th { "Actor" } th { "Detail" } } }
                tbody {
                    @for e in entries {
                        tr data-kind=(e.kind) {
                            td { (e.seq) } td { (page::when(e.at_ms)) } td { (e.kind) } td { (e.actor) }
                            td { pre { (e.detail) } }
                        }
                    }
                }
            }
        }
    }
}

fn revoke_form(id: &str) -> Markup {
    html! {
        form method="post" action="/ui/audit/revoke" {
            input type="hidden" name="id" value=(id);
            label for="reason" { "Why (recorded in the ledger)" }
            input #reason name="reason" required size="40";
            button #revoke type="submit" { "Revoke this token and every token made from it" }
        }
    }
}

fn explained(x: &Explained, can_revoke: bool) -> Markup {
    let id = x.minted.revocation_ids.first().map_or("", String::as_str);
    html! {
        section {
            h2 { "Token " code { (id.get(..16).unwrap_or(id)) } "…" }
            p {
                @if x.revoked { (page::state("revoked")) " This token is revoked: every node refuses it." }
                @else { "Not revoked. Minted " (page::when(x.minted.at_ms)) " for tenant " (x.minted.tenant) " by " (x.minted.actor) "." }
            }
            h3 { "Its blocks, as datalog" }
            pre #datalog { (x.minted.detail) }
            @if !x.history.is_empty() {
                h3 { "What happened to it since" }
                (entries_table(&x.history.iter().collect::<Vec<_>>()))
            }
            @if can_revoke && !x.revoked { (revoke_form(id)) }
        }
    }
}

async fn token(user: Signed, id: web::Path<String>) -> HttpResponse {
    match user.api.explain_token(&id).await {
        Ok(x) => {
            let body = html! { h1 { "A token explained" } (explained(&x, user.session.audits())) };
            page::respond(
                StatusCode::OK,
                &page::layout("Token", Some(&user.session), body),
            )
        }
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

async fn decision(user: Signed, seq: web::Path<u64>) -> HttpResponse {
    match user.api.decision(*seq).await {
        Ok(d) => {
            let body = html! {
                h1 { "Decision " (d.decision.seq) }
                section {
                    p #decision-outcome {
                        (page::state(if d.allowed { "allowed" } else { "denied" }))
                        " " (d.decision.subject) " · " (page::when(d.decision.at_ms)) " · by " (d.decision.actor)
                    }
                    h2 { "Why" }
                    pre #decision-reason { (d.reason) }
                    @if !d.unknown_blocks.is_empty() {
                        h2 { "Blocks Berth never made" }
                        @for b in &d.unknown_blocks { pre { (b) } }
                    }
                }
                @match &d.token {
                    Some(x) => (explained(x, user.session.audits())),
                    None => section { p { "The token presented was never minted by Berth." } },
                }
            };
            page::respond(
                StatusCode::OK,
                &page::layout("Decision", Some(&user.session), body),
            )
        }
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}

#[derive(Debug, Default, Deserialize)]
struct GraphQuery {
    tenant: Option<String>,
}

async fn graph(user: Signed, query: web::Query<GraphQuery>) -> HttpResponse {
    let tenant = scope(&user.session, query.tenant.as_deref());
    let reach: Reach = match user.api.graph(tenant).await {
        Ok(reach) => reach,
        Err(failure) => return page::failure(Some(&user.session), &failure),
    };
    let body = html! {
        h1 { "Who can call what" @if let Some(t) = tenant { " for " (t) } }
        section {
            p { "Each arrow is a delegation in force: the calling node may make exactly these calls to the other, and nothing else." }
            @if reach.edges.is_empty() {
                p.muted #no-delegations { "No node may call another." }
            } @else {
                div.scroll { (svg::reach(&reach)) }
                div.scroll {
                    table #delegations {
                        thead { tr { th { "Caller" } th { "May" } th { "On" } th { "Service" } th { "Token" } } }
                        tbody {
                            @for e in &reach.edges {
                                tr {
                                    td { (e.caller) } td { (e.operation) } td { (e.target) }
                                    td { (e.tenant) "/" (e.topology) "/" (e.service) @if e.port != 0 { ":" (e.port) } }
                                    td { a href={ "/ui/audit/tokens/" (e.token) } { code { (e.token.get(..12).unwrap_or(&e.token)) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page::respond(
        StatusCode::OK,
        &page::layout("Who can call what", Some(&user.session), body),
    )
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    id: String,
    reason: String,
}

async fn revoke(user: Signed, form: web::Form<RevokeForm>) -> HttpResponse {
    let asked = Revoke {
        ids: vec![form.id.clone()],
        node: None,
        tenant: None,
        reason: form.reason.clone(),
    };
    match user.api.revoke(&asked).await {
        Ok(_) => see_other(&format!("/ui/audit/tokens/{}", encode(&form.id))),
        Err(failure) => page::failure(Some(&user.session), &failure),
    }
}
