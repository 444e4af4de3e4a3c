//! Server-rendered pages for the platform's three kinds of users, mounted by the gateway
//! under `/ui`: developers see and deploy their topologies, admins manage quotas and
//! nodes, auditors read the ledger and the graph of who can call what.
//!
//! The pages are a client of the REST API, like the CLI: each request carries the
//! user's session token (kept in an `HttpOnly`, `SameSite=Strict` cookie) to the same
//! gateway over loopback, so the UI can show or do nothing the API would refuse that
//! user, and needs no authorization code of its own. Pages are plain HTML forms and
//! links; one small script refreshes the live parts (replica states, nodes) every two
//! seconds and reads an uploaded topology file into the form.

mod admin;
mod api;
mod audit;
mod developer;
mod page;
mod pinned;
mod svg;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

use crate::api::{Api, Failure, Login, Session};

/// The cookie that holds the session token.
const SESSION_COOKIE: &str = "berth_session";

/// What every page handler shares: one HTTP client for the API.
#[derive(Clone, Debug)]
struct Ui {
    http: reqwest::Client,
}

impl Ui {
    /// A client of this process's own API; over TLS it trusts exactly `own` (the
    /// certificate this server presents) and nothing else.
    fn new(own: Option<rustls::pki_types::CertificateDer<'static>>) -> Self {
        // Let idle connections go well before the server's keep-alive (5 s) closes
        // them, so a request never goes out on a connection being closed.
        let builder =
            reqwest::Client::builder().pool_idle_timeout(std::time::Duration::from_secs(2));
        let builder = match own.map(pinned::client_config) {
            Some(Ok(config)) => builder.use_preconfigured_tls(config),
            Some(Err(e)) => {
                tracing::error!(error = %e, "the pages cannot call their own API over TLS");
                builder
            }
            None => builder,
        };
        Self {
            http: builder.build().unwrap_or_default(),
        }
    }
}

/// Registers the pages under `/ui`, for a server that presents `own` when it serves
/// TLS (the pages call its API over the same kind of connection a browser uses).
pub fn configure(
    own: Option<rustls::pki_types::CertificateDer<'static>>,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| configure_with(cfg, Ui::new(own))
}

fn configure_with(cfg: &mut web::ServiceConfig, ui: Ui) {
    let forms = web::FormConfig::default()
        .limit(1024 * 1024)
        .error_handler(|err, _| {
            let page = page::error(None, 400, &format!("the form is not valid: {err}"));
            actix_web::error::InternalError::from_response(err, page).into()
        });
    cfg.service(
        web::scope("/ui")
            .app_data(web::Data::new(ui))
            .app_data(forms)
            .route("", web::get().to(home))
            .route("/", web::get().to(home))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .configure(developer::configure)
            .configure(admin::configure)
            .configure(audit::configure)
            .default_service(web::to(not_found)),
    );
}

/// The signed-in user of a request: their session and an API client acting as them.
struct Signed {
    session: Session,
    api: Api,
}

/// A handler that takes a [`Signed`] runs only for a signed-in user; anyone else is
/// sent to the login page (or shown why the API could not say who they are).
impl actix_web::FromRequest for Signed {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            signed(&request).await.map_err(|response| {
                actix_web::error::InternalError::from_response("not signed in", response).into()
            })
        })
    }
}

/// The API's address as this process serves it: the socket the request came in on,
/// over TLS when the request came over TLS.
fn api_base(request: &HttpRequest) -> String {
    let scheme = match request.app_config().secure() {
        true => "https",
        false => "http",
    };
    let mut addr = request.app_config().local_addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{scheme}://{addr}")
}

/// The request's user, or the response to send instead: to the login page when there
/// is no session or it no longer works.
async fn signed(request: &HttpRequest) -> Result<Signed, HttpResponse> {
    let to_login = || {
        let mut back = request.path().to_owned();
        if !request.query_string().is_empty() {
            back = format!("{back}?{}", request.query_string());
        }
        let mut response = see_other(&format!("/ui/login?next={}", encode(&back)));
        // A session the API refuses (expired, revoked) is forgotten.
        let _ = response.add_removal_cookie(&session_cookie(String::new(), request));
        response
    };
    let Some(cookie) = request.cookie(SESSION_COOKIE) else {
        return Err(to_login());
    };
    let ui = request
        .app_data::<web::Data<Ui>>()
        .map(|ui| ui.http.clone())
        .unwrap_or_else(|| Ui::new(None).http);
    let api = match Api::new(ui, &api_base(request), cookie.value()) {
        Ok(api) => api,
        Err(failure) => return Err(page::failure(None, &failure)),
    };
    match api.session().await {
        Ok(session) => Ok(Signed { session, api }),
        Err(Failure::Api { status: 401, .. }) => Err(to_login()),
        Err(failure) => Err(page::failure(None, &failure)),
    }
}

/// A redirect that turns a form's POST into a GET.
fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("location", location))
        .finish()
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The session cookie, sent back only over TLS when the pages are served over TLS.
fn session_cookie(token: String, request: &HttpRequest) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token)
        .path("/ui")
        .http_only(true)
        .secure(request.app_config().secure())
        // Forms post only from these pages: a cross-site form carries no session.
        .same_site(SameSite::Strict)
        .finish()
}

/// Where a user lands: what their role is for.
fn home_of(session: &Session) -> String {
    match session.role.as_str() {
        "admin" => "/ui/admin/tenants".to_owned(),
        "auditor" => "/ui/audit".to_owned(),
        _ => format!("/ui/tenants/{}/topologies", session.tenant),
    }
}

async fn home(request: HttpRequest) -> HttpResponse {
    match signed(&request).await {
        Ok(user) => see_other(&home_of(&user.session)),
        Err(response) => response,
    }
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    let session = signed(&request).await.ok().map(|s| s.session);
    page::error(session.as_ref(), 404, "There is no such page.")
}

#[derive(Debug, Default, Deserialize)]
struct Next {
    next: Option<String>,
}

/// Only a path on these pages: never another site.
fn safe_next(next: Option<&str>) -> Option<&str> {
    // A page of this UI, and nothing that could end a header line or leave the site.
    next.filter(|n| {
        n.starts_with("/ui")
            && !n.starts_with("//")
            && !n.contains("://")
            && !n.contains('\\')
            && n.chars().all(|c| !c.is_control())
    })
}

fn login_page(
    status: StatusCode,
    next: Option<&str>,
    tenant: &str,
    user: &str,
    problem: Option<&str>,
) -> HttpResponse {
    let body = html! {
        section.narrow {
            h1 { "Sign in to Berth" }
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form method="post" action="/ui/login" {
                @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                label for="tenant" { "Tenant" }
                input #tenant name="tenant" required autocomplete="organization" value=(tenant);
                label for="user" { "User" }
                input #user name="user" required autocomplete="username" value=(user);
                label for="password" { "Password" }
                input #password type="password" name="password" required autocomplete="current-password";
                button #sign-in type="submit" { "Sign in" }
            }
        }
    };
    page::respond(status, &page::layout("Sign in", None, body))
}

async fn login_form(query: web::Query<Next>) -> HttpResponse {
    login_page(
        StatusCode::OK,
        safe_next(query.next.as_deref()),
        "",
        "",
        None,
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    tenant: String,
    user: String,
    password: String,
    next: Option<String>,
}

async fn login(
    request: HttpRequest,
    ui: web::Data<Ui>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let base = api_base(&request);
    let browser = request.peer_addr().map(|a| a.ip());
    let anonymous = match Api::new(ui.http.clone(), &base, "") {
        Ok(api) => api,
        Err(failure) => return page::failure(None, &failure),
    };
    let asked = Login {
        tenant: form.tenant.clone(),
        user: form.user.clone(),
        password: form.password.clone(),
    };
    match anonymous.login(&asked, browser).await {
        Ok(logged_in) => {
            let api = anonymous.with_token(&logged_in.token);
            let target = match (next, api.session().await) {
                (Some(next), _) => next.to_owned(),
                (None, Ok(session)) => home_of(&session),
                (None, Err(_)) => "/ui".to_owned(),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut cookie = session_cookie(logged_in.token, &request);
            cookie.set_max_age(actix_web::cookie::time::Duration::seconds(
                i64::try_from(logged_in.expires_at.saturating_sub(now)).unwrap_or(0),
            ));
            let mut response = see_other(&target);
            if let Err(e) = response.add_cookie(&cookie) {
                return page::error(None, 500, &format!("cannot set the session cookie: {e}"));
            }
            response
        }
        Err(failure) => login_page(
            StatusCode::from_u16(failure.status().unwrap_or(502))
                .unwrap_or(StatusCode::UNAUTHORIZED),
            next,
            &form.tenant,
            &form.user,
            Some(&failure.described()),
        ),
    }
}

async fn logout(request: HttpRequest) -> HttpResponse {
    let mut response = see_other("/ui/login");
    let _ = response.add_removal_cookie(&session_cookie(String::new(), &request));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_page_of_this_ui_and_no_header_can_be_smuggled_in() {
        assert_eq!(
            safe_next(Some("/ui/tenants/acme")),
            Some("/ui/tenants/acme")
        );
        for hostile in [
            "/ui/\r\nX-Injected: 1",
            "//evil.example/ui",
            "/ui/../x?u=https://evil.example",
            "/ui\\evil",
            "https://evil.example/ui",
        ] {
            assert_eq!(safe_next(Some(hostile)), None, "{hostile:?}");
        }
    }
}
