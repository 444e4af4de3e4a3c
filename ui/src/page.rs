//! The frame every page shares (navigation by role, styles, the live-update script) and
//! the small pieces pages are made of.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::api::{Failure, Role, Session};

/// Phone first: one column that widens; tables scroll sideways rather than squeeze.
const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,sans-serif;color:#1b1f24;background:#f6f7f9}
a{color:#0b57d0}
:focus-visible{outline:3px solid #f4b400;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:4px}
header{background:#14213d;color:#fff;padding:8px 16px;display:flex;flex-wrap:wrap;gap:4px 16px;align-items:center}
header a,header button{color:#fff}
header strong{margin-right:auto}
header form{margin:0}
header button{background:none;border:1px solid #fff;border-radius:4px;padding:2px 8px;cursor:pointer}
nav ul{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}
main{padding:16px;max-width:1100px;margin:0 auto}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px 16px;margin:0 0 16px}
.narrow{max-width:420px;margin:32px auto}
h1{font-size:1.5rem;margin:0 0 12px}h2{font-size:1.15rem;margin:0 0 8px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
label{display:block;margin:8px 0 2px;font-weight:600}
input,textarea,select{font:inherit;padding:6px;border:1px solid #aab2bd;border-radius:4px;max-width:100%}
textarea{width:100%;min-height:16em;font-family:ui-monospace,monospace;font-size:14px}
button{font:inherit;padding:6px 12px;border-radius:4px;border:1px solid #14213d;background:#14213d;color:#fff;cursor:pointer;margin-top:8px}
button.quiet{background:#fff;color:#14213d}
.inline{display:inline-flex;flex-wrap:wrap;gap:6px;align-items:end;margin:0}
.inline label{margin:0}
.problem{background:#fdecea;border-left:4px solid #c62828;padding:8px 12px}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:8px 12px}
.bar{background:#eef0f3;border-radius:4px;height:10px;min-width:120px;overflow:hidden}
.bar span{display:block;height:100%;background:#2e7d32}
.bar.high span{background:#f9a825}.bar.full span{background:#c62828}
.state{display:inline-block;padding:0 6px;border-radius:4px;color:#fff;background:#6b7280}
.state.running,.state.active,.state.allowed,.state.started{background:#2e7d32}
.state.placed,.state.rescheduled{background:#0b57d0}
.state.pending,.state.created,.state.starting,.state.cordoned,.state.draining{background:#9a6700}
.state.failed,.state.exited,.state.dead,.state.down,.state.denied,.state.revoked{background:#c62828}
pre{background:#0f1720;color:#e6edf3;padding:8px;overflow-x:auto;font-size:13px}
.source{font-family:ui-monospace,monospace;font-size:14px}
.source td{border:0;padding:0 8px;white-space:pre}
.source td.n{color:#6b7280;text-align:right;user-select:none}
.source tr.bad td{background:#fdecea}
.source tr.diagnostic td{white-space:normal;color:#c62828;font-family:system-ui,sans-serif;padding-bottom:6px}
svg{max-width:100%;height:auto}
.muted{color:#6b7280}
"#;

/// Refreshes every `[data-live]` element from its URL every two seconds, and reads a
/// chosen topology file into the form's text area.
const SCRIPT: &str = r#"
for (const el of document.querySelectorAll('[data-live]')) {
  setInterval(async () => {
    try {
      const r = await fetch(el.dataset.live, {credentials: 'same-origin'});
      if (r.ok) el.innerHTML = await r.text();
    } catch (e) {}
  }, 2000);
}
for (const input of document.querySelectorAll('input[type=file][data-into]')) {
  input.addEventListener('change', async () => {
    const file = input.files[0];
    if (!file) return;
    document.getElementById(input.dataset.into).value = await file.text();
    const name = document.getElementById('file_name');
    if (name) name.value = file.name;
  });
}
"#;

/// The whole page around `body`.
pub(crate) fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Berth" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    strong { a href="/ui" { "Berth" } }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            ul {
                                @if session.role != Role::Auditor || session.tenant != "*" {
                                    li { a href={ "/ui/tenants/" (session.home_tenant()) "/topologies" } { "Topologies" } }
                                }
                                @if session.is_admin() {
                                    li { a href="/ui/admin/tenants" { "Tenants" } }
                                    li { a href="/ui/admin/nodes" { "Nodes" } }
                                }
                                @if session.audits() {
                                    li { a href="/ui/audit" { "Ledger" } }
                                    li { a href="/ui/audit/graph" { "Who can call what" } }
                                }
                            }
                        }
                        span #whoami { (session.user) " · " (session.role.as_str()) " · " (session.tenant) }
                        form method="post" action="/ui/logout" { button.quiet type="submit" { "Sign out" } }
                    }
                }
                main #main { (body) }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// `markup` as an HTML response with `status`.
pub(crate) fn respond(status: StatusCode, markup: &Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(markup.0.clone())
}

/// An HTML fragment (a live part of a page).
pub(crate) fn fragment(markup: &Markup) -> HttpResponse {
    respond(StatusCode::OK, markup)
}

/// A page that says what went wrong, answering with `status`.
pub(crate) fn error(session: Option<&Session>, status: u16, message: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let heading = match status.as_u16() {
        403 => "Not allowed",
        404 => "Not found",
        _ => "Something went wrong",
    };
    let body = html! {
        section {
            h1 { (heading) }
            p.problem role="alert" #problem { (message) }
            p { a href="/ui" { "Back to your home page" } }
        }
    };
    respond(status, &layout(heading, session, body))
}

/// A page for a failed API call.
pub(crate) fn failure(session: Option<&Session>, failure: &Failure) -> HttpResponse {
    error(
        session,
        crate::api::status_of(failure),
        &failure.described(),
    )
}

/// A state as a coloured label that also says it in words.
pub(crate) fn state(word: &str) -> Markup {
    html! { span class={ "state " (word) } { (word) } }
}

/// A used/limit bar, with the figures in words beside it.
pub(crate) fn bar(used: u64, limit: Option<u64>, show: fn(u64) -> String) -> Markup {
    match limit {
        Some(limit) => {
            // A zero limit is full whatever is used.
            let percent = used
                .saturating_mul(100)
                .checked_div(limit)
                .map_or(100, |p| p.min(100));
            let class = match percent {
                0..=74 => "bar",
                75..=99 => "bar high",
                _ => "bar full",
            };
            html! {
                div class=(class) role="img" aria-label={ (percent) "% used" } {
                    span style={ "width:" (percent) "%" } {}
                }
                small { (show(used)) " / " (show(limit)) }
            }
        }
        None => html! { small { (show(used)) " / unlimited" } },
    }
}

/// Thousandths of a core, as cores.
pub(crate) fn cores(millis: u64) -> String {
    let whole = millis / 1000;
    match millis % 1000 {
        0 => format!("{whole} CPU"),
        frac => format!("{whole}.{} CPU", format!("{frac:03}").trim_end_matches('0')),
    }
}

/// Bytes, in the largest binary unit that keeps a whole number.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
        if n >= size * 10 {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} B")
}

/// A count.
pub(crate) fn count(n: u64) -> String {
    n.to_string()
}

/// Unix milliseconds as a UTC time of day with the date.
pub(crate) fn when(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(cores(1500), "1.5 CPU");
        assert_eq!(cores(250), "0.25 CPU");
        assert_eq!(cores(2000), "2 CPU");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 30), "3 GiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(1_795_000_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn a_full_quota_shows_a_full_bar() {
        let full = bar(10, Some(10), count).into_string();
        assert!(full.contains("bar full"), "{full}");
        assert!(full.contains("10 / 10"), "{full}");
        let unlimited = bar(3, None, count).into_string();
        assert!(unlimited.contains("3 / unlimited"), "{unlimited}");
    }
}
