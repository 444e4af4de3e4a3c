//! Attacks on the API's authentication, one test each, against the real gateway over a
//! real SQLite database: forged, expired, tampered and garbage session tokens; an
//! attenuated CI token used beyond its scope; a tenant's token used on another tenant;
//! many wrong passwords.

use std::time::{Duration, SystemTime};

use actix_web::dev::{Service, ServiceResponse};
use actix_web::{App, test as web_test};
use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, DefaultRequest, Limit};
use berth_api_gateway::Gateway;
use berth_protocol::capability::{self, Role, Session};
use berth_tenant_service::TenantService;
use biscuit_auth::{Algorithm, KeyPair, PrivateKey};

const PASSWORD: &str = "acme-password-123";

struct Fixture<S> {
    app: S,
    root: KeyPair,
    db: sea_orm::DatabaseConnection,
    _dir: tempfile::TempDir,
}

const ADMIN: &str = "an-admin-token-for-this-test";

async fn fixture()
-> Fixture<impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>>
{
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    );
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let tenants = TenantService::open(db.clone()).await.expect("tenants");
    let ledger_db = db.clone();
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    for tenant in ["acme", "globex"] {
        tenants.ensure_tenant(tenant, 0).await.expect("tenant");
        allocator
            .ensure_quota(tenant, Limit::default())
            .await
            .expect("quota");
        tenants
            .create_user(tenant, "dev", PASSWORD, Role::Developer, 0)
            .await
            .expect("user");
        tenants
            .create_user(tenant, "sec", PASSWORD, Role::Auditor, 0)
            .await
            .expect("user");
    }
    allocator
        .upsert_node("n1", Limit::default(), &Default::default())
        .await
        .expect("node");
    let root = KeyPair::new();
    let copy = KeyPair::from(
        &PrivateKey::from_bytes(&root.private().to_bytes(), Algorithm::Ed25519).expect("key"),
    );
    let nodes = NodeApi::new(allocator.clone());
    let gateway = Gateway::new(
        tenants,
        allocator,
        nodes,
        ADMIN,
        "http://127.0.0.1:1",
        berth_allocator::root_keys::RootKeys::in_memory(copy),
    );
    let app =
        web_test::init_service(App::new().configure(berth_api_gateway::configure(gateway))).await;
    Fixture {
        app,
        root,
        db: ledger_db,
        _dir: dir,
    }
}

async fn call(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    call_from(app, "192.0.2.1", method, path, token, body).await
}

/// [`call`] from a client at `address`.
async fn call_from(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = web_test::TestRequest::default()
        .peer_addr(std::net::SocketAddr::new(
            address.parse().expect("address"),
            40_000,
        ))
        .method(method.parse().expect("method"))
        .uri(path);
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    if let Some(body) = body {
        request = request.set_json(body);
    }
    let response = web_test::call_service(app, request.to_request()).await;
    let status = response.status().as_u16();
    let body = web_test::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

async fn login(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    tenant: &str,
) -> String {
    let (status, body) = call(
        app,
        "POST",
        "/v1/login",
        None,
        Some(serde_json::json!({ "tenant": tenant, "user": "dev", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

fn topology(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "services": { "web": { "image": "berth/busybox:latest", "replicas": 1, "networks": { "default": {} } } },
        "networks": { "default": {} }
    })
}

fn session(tenant: &str, role: Role) -> Session {
    Session {
        user: "dev".into(),
        tenant: tenant.into(),
        role,
    }
}

#[actix_web::test]
async fn a_session_token_signed_by_another_root_key_is_refused() {
    let f = fixture().await;
    let forged = capability::mint_session(
        &KeyPair::new(),
        1,
        &session("acme", Role::Admin),
        SystemTime::now() + Duration::from_secs(600),
    )
    .expect("mint");
    let (status, body) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&forged),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthenticated");
    // The same claims signed by the real root key are accepted: the key is what failed.
    let real = capability::mint_session(
        &f.root,
        1,
        &session("acme", Role::Admin),
        SystemTime::now() + Duration::from_secs(600),
    )
    .expect("mint");
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&real),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn an_expired_session_token_is_refused() {
    let f = fixture().await;
    let expired = capability::mint_session(
        &f.root,
        1,
        &session("acme", Role::Developer),
        SystemTime::now() - Duration::from_secs(1),
    )
    .expect("mint");
    let (status, body) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&expired),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["message"], "the session has expired; log in again",
        "{body}"
    );
}

#[actix_web::test]
async fn a_tampered_or_garbage_token_is_refused() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    // Flip one character in the signature part of the token.
    let mut bytes = token.into_bytes();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("utf-8");
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&tampered),
        None,
    )
    .await;
    assert_eq!(status, 401);
    for garbage in ["not-a-token", "", "En0KAggB"] {
        let (status, body) = call(
            &f.app,
            "GET",
            "/v1/tenants/acme/topologies",
            Some(garbage),
            None,
        )
        .await;
        assert_eq!(status, 401, "{garbage:?}: {body}");
    }
    let (status, _) = call(&f.app, "GET", "/v1/tenants/acme/topologies", None, None).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn an_attenuated_ci_token_is_refused_beyond_its_scope() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    // Attenuated offline, with nothing but the token: may only deploy topology `web`.
    let ci = attenuate(&token, r#"check if operation("deploy"), topology("web")"#);
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/web",
        Some(&ci),
        Some(topology("web")),
    )
    .await;
    assert_eq!(
        status, 200,
        "the CI token could not do what it is for: {body}"
    );
    for (method, path, body) in [
        ("GET", "/v1/tenants/acme/topologies/web", None),
        ("DELETE", "/v1/tenants/acme/topologies/web", None),
        (
            "PUT",
            "/v1/tenants/acme/topologies/api",
            Some(topology("api")),
        ),
        ("GET", "/v1/tenants/acme/topologies", None),
    ] {
        let (status, answer) = call(&f.app, method, path, Some(&ci), body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["code"], "forbidden");
    }
    // The unattenuated token still may.
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies/web",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_datalog_bomb_is_refused_before_it_runs_and_the_same_holder_keeps_working() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    // Sixteen facts and a check joining them six ways: 16^6 combinations to evaluate.
    let facts: String = (0..16).map(|i| format!("f({i});")).collect();
    let bomb = attenuate(
        &token,
        &format!(
            "{facts} check if f($a), f($b), f($c), f($d), f($e), f($f), $a + $b + $c + $d + $e + $f < 0"
        ),
    );
    let (status, body) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&bomb),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthenticated");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("joins 6 predicates"),
        "{body}"
    );
    // A rule in an attenuation is refused the same way.
    let rules = attenuate(&token, "g($x) <- f($x); f(1)");
    let (status, body) = call(&f.app, "GET", "/v1/session", Some(&rules), None).await;
    assert_eq!(status, 401, "{body}");
    // The token it came from still works.
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_tenants_token_opens_nothing_of_another_tenant() {
    let f = fixture().await;
    let acme = login(&f.app, "acme").await;
    let globex = login(&f.app, "globex").await;
    let (status, _) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/web",
        Some(&acme),
        Some(topology("web")),
    )
    .await;
    assert_eq!(status, 200);
    for (method, path, body) in [
        ("GET", "/v1/tenants/acme/topologies/web", None),
        ("GET", "/v1/tenants/acme/topologies", None),
        ("DELETE", "/v1/tenants/acme/topologies/web", None),
        (
            "PUT",
            "/v1/tenants/acme/topologies/web",
            Some(topology("web")),
        ),
        (
            "POST",
            "/v1/tenants/acme/topologies/web/scale",
            Some(serde_json::json!({ "replicas": { "web": 0 } })),
        ),
        ("GET", "/v1/tenants/acme/quota", None),
        (
            "PUT",
            "/v1/tenants/acme/quota",
            Some(serde_json::json!({ "containers": 100 })),
        ),
        ("GET", "/v1/nodes", None),
        ("POST", "/v1/nodes/n1/drain", None),
    ] {
        let (status, answer) = call(&f.app, method, path, Some(&globex), body).await;
        assert_eq!(status, 403, "globex: {method} {path}: {answer}");
    }
    let (status, placed) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies/web",
        Some(&acme),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        placed["replicas"].as_array().map(Vec::len),
        Some(1),
        "{placed}"
    );
}

#[actix_web::test]
async fn many_wrong_passwords_throttle_the_login() {
    let f = fixture().await;
    let attempt = |password: &str| serde_json::json!({ "tenant": "acme", "user": "dev", "password": password });
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(
            call(
                &f.app,
                "POST",
                "/v1/login",
                None,
                Some(attempt("wrong-password-0000")),
            )
            .await
            .0,
        );
    }
    assert_eq!(codes, [401, 401, 401, 401, 401, 429]);
    // Throttled, even the right password waits at the source that failed...
    let (status, body) = call(&f.app, "POST", "/v1/login", None, Some(attempt(PASSWORD))).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "throttled");
    // ...but the owner, from an address that has not failed, is not locked out.
    let (status, body) = call_from(
        &f.app,
        "198.51.100.7",
        "POST",
        "/v1/login",
        None,
        Some(attempt(PASSWORD)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A request from this host may name the browser it forwards (the UI does).
    let forwarded = web_test::TestRequest::post()
        .uri("/v1/login")
        .peer_addr("127.0.0.1:40000".parse().expect("address"))
        .insert_header(("x-forwarded-for", "192.0.2.1"))
        .set_json(attempt(PASSWORD))
        .to_request();
    let answer = web_test::call_service(&f.app, forwarded).await;
    assert_eq!(answer.status().as_u16(), 429);
    assert!(answer.headers().contains_key("retry-after"));
    // One address cannot try name after name: it is held to a rate, names known or
    // not alike.
    let mut codes = Vec::new();
    for i in 0..45 {
        let guess = serde_json::json!({ "tenant": "acme", "user": format!("u{i}"), "password": "wrong-password-0000" });
        codes.push(
            call_from(
                &f.app,
                "203.0.113.9",
                "POST",
                "/v1/login",
                None,
                Some(guess),
            )
            .await
            .0,
        );
    }
    let tried = codes.iter().filter(|&&c| c == 401).count();
    assert_eq!(tried, 30, "{codes:?}");
    assert!(codes[tried..].iter().all(|&c| c == 429), "{codes:?}");
    // Another user of the same tenant is not locked out by it.
    let (status, _) = call(
        &f.app,
        "POST",
        "/v1/login",
        None,
        Some(serde_json::json!({ "tenant": "globex", "user": "dev", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200);
    // An unknown user gets the same answer as a wrong password.
    let ghost =
        serde_json::json!({ "tenant": "acme", "user": "ghost", "password": "whatever-password" });
    let (status, _) = call(&f.app, "POST", "/v1/login", None, Some(ghost)).await;
    assert_eq!(status, 401);
}

async fn login_as(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    tenant: &str,
    user: &str,
) -> (u16, serde_json::Value) {
    call(
        app,
        "POST",
        "/v1/login",
        None,
        Some(serde_json::json!({ "tenant": tenant, "user": user, "password": PASSWORD })),
    )
    .await
}

#[actix_web::test]
async fn every_token_minted_or_attenuated_is_in_the_ledger_but_never_the_token() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    let ci = attenuate(&token, r#"check if operation("deploy"), topology("web")"#);
    for _ in 0..3 {
        let (status, _) = call(
            &f.app,
            "PUT",
            "/v1/tenants/acme/topologies/web",
            Some(&ci),
            Some(topology("web")),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, entries) = call(
        &f.app,
        "GET",
        "/v1/audit/entries?tenant=acme",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{entries}");
    let entries = entries.as_array().expect("entries").clone();
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    // Newest first: the attenuated token once (however often it is used), then the login.
    assert_eq!(kinds, ["attenuated", "minted"], "{entries:?}");
    let minted = &entries[1];
    assert!(
        minted["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"user("dev")"#),
        "{minted}"
    );
    assert!(
        entries[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(r#"check if operation("deploy"), topology("web")"#)
    );
    let dump = serde_json::to_string(&entries).expect("json");
    assert!(
        !dump.contains(&token) && !dump.contains(&ci),
        "a usable token is in the ledger"
    );

    // Explained: the datalog, not revoked, and the attenuation in its history.
    let id = minted["subject"].as_str().expect("id");
    let (status, explained) = call(
        &f.app,
        "GET",
        &format!("/v1/audit/tokens/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(explained["revoked"], false);
    assert_eq!(explained["history"][0]["kind"], "attenuated", "{explained}");
    let (status, verified) = call(&f.app, "GET", "/v1/audit/verify", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["entries"], 2, "{verified}");
}

#[actix_web::test]
async fn a_revoked_token_is_refused_and_so_is_everything_attenuated_from_it() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    let narrower = attenuate(&token, r#"check if operation("read")"#);
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&narrower),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let other = login(&f.app, "acme").await;
    let (_, entries) = call(
        &f.app,
        "GET",
        "/v1/audit/entries?kind=minted",
        Some(ADMIN),
        None,
    )
    .await;
    let id = entries[1]["subject"]
        .as_str()
        .expect("the first login's id")
        .to_owned();
    // A developer may not revoke; an admin may.
    let (status, _) = call(
        &f.app,
        "POST",
        "/v1/audit/revocations",
        Some(&token),
        Some(serde_json::json!({ "ids": [id] })),
    )
    .await;
    assert_eq!(status, 403);
    let (status, entry) = call(
        &f.app,
        "POST",
        "/v1/audit/revocations",
        Some(ADMIN),
        Some(serde_json::json!({ "ids": [id], "reason": "laptop stolen" })),
    )
    .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["kind"], "revoked");
    for t in [&token, &narrower] {
        let (status, body) =
            call(&f.app, "GET", "/v1/tenants/acme/topologies", Some(t), None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["message"], "the token has been revoked");
    }
    // Another session of the same user is untouched.
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&other),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, explained) = call(
        &f.app,
        "GET",
        &format!("/v1/audit/tokens/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(explained["revoked"], true, "{explained}");
    // Garbage ids are a 400.
    let (status, _) = call(
        &f.app,
        "POST",
        "/v1/audit/revocations",
        Some(ADMIN),
        Some(serde_json::json!({ "ids": ["not hex"] })),
    )
    .await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn auditors_read_their_own_tenants_ledger_only() {
    let f = fixture().await;
    let _ = login(&f.app, "acme").await;
    let _ = login(&f.app, "globex").await;
    let (status, body) = login_as(&f.app, "acme", "sec").await;
    assert_eq!(status, 200, "{body}");
    let auditor = body["token"].as_str().expect("token").to_owned();
    let (status, entries) = call(
        &f.app,
        "GET",
        "/v1/audit/entries?tenant=acme",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(status, 200, "{entries}");
    assert!(
        entries
            .as_array()
            .is_some_and(|e| !e.is_empty() && e.iter().all(|e| e["tenant"] == "acme")),
        "{entries}"
    );
    // The chain is checked whole, for their tenant's sake.
    let (status, verified) = call(
        &f.app,
        "GET",
        "/v1/audit/verify?tenant=acme",
        Some(&auditor),
        None,
    )
    .await;
    assert_eq!(
        (status, &verified["intact"]),
        (200, &serde_json::json!(true)),
        "{verified}"
    );
    for path in [
        "/v1/audit/entries",
        "/v1/audit/entries?tenant=globex",
        "/v1/audit/verify",
        "/v1/audit/verify?tenant=globex",
    ] {
        let (status, body) = call(&f.app, "GET", path, Some(&auditor), None).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    // A developer reads no ledger, not even their own tenant's.
    let dev = login(&f.app, "acme").await;
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/audit/entries?tenant=acme",
        Some(&dev),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[actix_web::test]
async fn an_auditor_revokes_their_own_tenants_tokens_and_no_others() {
    let f = fixture().await;
    let acme_dev = login(&f.app, "acme").await;
    let globex_dev = login(&f.app, "globex").await;
    let (_, body) = login_as(&f.app, "acme", "sec").await;
    let auditor = body["token"].as_str().expect("token").to_owned();
    let first_id = |token: &str| {
        let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token).expect("biscuit");
        berth_protocol::capability::revocation_ids(&unverified.revocation_identifiers())[0].clone()
    };
    // Another tenant's token, every token of another tenant, a node's delegations:
    // not theirs to revoke.
    for body in [
        serde_json::json!({ "ids": [first_id(&globex_dev)], "reason": "x" }),
        serde_json::json!({ "tenant": "globex", "reason": "x" }),
        serde_json::json!({ "node": "n1", "reason": "x" }),
        serde_json::json!({ "ids": ["00ff"], "reason": "unknown to the ledger" }),
    ] {
        let (status, answer) = call(
            &f.app,
            "POST",
            "/v1/audit/revocations",
            Some(&auditor),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 403, "{body}: {answer}");
    }
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/globex/topologies",
        Some(&globex_dev),
        None,
    )
    .await;
    assert_eq!(status, 200, "globex's session still works");
    // Their own tenant's developer session: revoked, and refused from then on.
    let (status, answer) = call(
        &f.app,
        "POST",
        "/v1/audit/revocations",
        Some(&auditor),
        Some(serde_json::json!({ "ids": [first_id(&acme_dev)], "reason": "leaked in a CI log" })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&acme_dev),
        None,
    )
    .await;
    assert_eq!(status, 401);
    // A developer revokes nothing, not even in their own tenant.
    let other_dev = login(&f.app, "acme").await;
    let (status, _) = call(
        &f.app,
        "POST",
        "/v1/audit/revocations",
        Some(&other_dev),
        Some(serde_json::json!({ "tenant": "acme", "reason": "x" })),
    )
    .await;
    assert_eq!(status, 403);
}

#[actix_web::test]
async fn a_session_says_who_it_is_and_only_admins_list_tenants() {
    let f = fixture().await;
    let dev = login(&f.app, "acme").await;
    let (status, who) = call(&f.app, "GET", "/v1/session", Some(&dev), None).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(
        who,
        serde_json::json!({ "tenant": "acme", "user": "dev", "role": "developer" })
    );
    let (status, who) = call(&f.app, "GET", "/v1/session", Some(ADMIN), None).await;
    assert_eq!(
        (status, &who["role"]),
        (200, &serde_json::json!("admin")),
        "{who}"
    );
    let (status, _) = call(&f.app, "GET", "/v1/session", Some("garbage"), None).await;
    assert_eq!(status, 401);
    let (status, _) = call(&f.app, "GET", "/v1/tenants", Some(&dev), None).await;
    assert_eq!(status, 403);
    let (status, tenants) = call(&f.app, "GET", "/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{tenants}");
    let names: Vec<&str> = tenants
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    assert_eq!(tenants[0]["used"]["containers"], 0, "{tenants}");
}

#[actix_web::test]
async fn no_token_is_minted_when_the_ledger_cannot_record_it() {
    use sea_orm::ConnectionTrait;
    let f = fixture().await;
    f.db.execute_unprepared("DROP TABLE audit_entries")
        .await
        .expect("drop");
    let (status, body) = login_as(&f.app, "acme", "dev").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "ledger_unavailable");
    assert!(body.get("token").is_none(), "{body}");
}

/// `token` with one more block holding `code`, appended offline as any holder can.
fn attenuate(token: &str, code: &str) -> String {
    biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .expect("parse")
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(code)
                .expect("block"),
        )
        .expect("append")
        .to_base64()
        .expect("encode")
}

#[actix_web::test]
async fn a_join_token_lives_a_week_at_most() {
    let f = fixture().await;
    let (status, body) = call(
        &f.app,
        "POST",
        "/v1/join-tokens",
        Some(ADMIN),
        Some(serde_json::json!({ "ttl_seconds": u32::MAX })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ttl_seconds"),
        "{body}"
    );
    let (status, body) = call(
        &f.app,
        "POST",
        "/v1/join-tokens",
        Some(ADMIN),
        Some(serde_json::json!({ "ttl_seconds": 7 * 24 * 3600 })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[actix_web::test]
async fn who_asks_is_decided_before_what_they_send_is_read() {
    let f = fixture().await;
    let garbage = serde_json::json!({ "not": "a topology" });
    for (method, path, token) in [
        ("PUT", "/v1/tenants/acme/topologies/web", None),
        ("POST", "/v1/audit/revocations", None),
        (
            "PUT",
            "/v1/tenants/acme/topologies/web",
            Some("not-a-biscuit-at-all"),
        ),
    ] {
        let (status, body) = call(&f.app, method, path, token, Some(garbage.clone())).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["code"], "unauthenticated", "{body}");
    }
    // Signed in, the same body is what is wrong: judged as a topology file is, with
    // the field named; and a body that is not even an object is malformed.
    let token = login(&f.app, "acme").await;
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/web",
        Some(&token),
        Some(garbage),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_topology", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at not"),
        "{body}"
    );
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/web",
        Some(&token),
        Some(serde_json::json!([1, 2])),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[actix_web::test]
async fn a_wrong_method_is_a_405_that_names_the_right_ones() {
    let f = fixture().await;
    let request = web_test::TestRequest::default()
        .method(actix_web::http::Method::PATCH)
        .uri("/v1/tenants/acme/topologies/web")
        .insert_header(("authorization", format!("Bearer {ADMIN}")))
        .to_request();
    let response = web_test::call_service(&f.app, request).await;
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("PUT, GET, DELETE")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&web_test::read_body(response).await).expect("json");
    assert_eq!(body["code"], "method_not_allowed");
}

#[actix_web::test]
async fn documented_bounds_are_enforced_not_clamped() {
    let f = fixture().await;
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/quota",
        Some(ADMIN),
        Some(serde_json::json!({ "containers": u64::MAX })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("containers:"),
        "{body}"
    );
    let token = login(&f.app, "acme").await;
    let (status, _) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/web",
        Some(&token),
        Some(topology("web")),
    )
    .await;
    assert_eq!(status, 200);
    for limit in ["0", "501"] {
        let (status, body) = call(
            &f.app,
            "GET",
            &format!("/v1/tenants/acme/topologies/web/events?limit={limit}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 400, "limit={limit}: {body}");
    }
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies/web/events?limit=500",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_query_that_is_not_understood_is_a_json_400() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    let (status, body) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies/web/logs?nonsense=1",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request", "{body}");
}

/// Sets `limits` on `tenant` as the admin.
async fn set_limits(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    tenant: &str,
    limits: serde_json::Value,
) {
    let (status, body) = call(
        app,
        "PUT",
        &format!("/v1/tenants/{tenant}/limits"),
        Some(ADMIN),
        Some(limits),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn a_tenant_over_its_request_rate_is_answered_429_and_another_tenant_is_not() {
    let f = fixture().await;
    set_limits(
        &f.app,
        "acme",
        serde_json::json!({ "requests_per_second": 1 }),
    )
    .await;
    let (acme, globex) = (login(&f.app, "acme").await, login(&f.app, "globex").await);
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let request = web_test::TestRequest::get()
            .uri("/v1/tenants/acme/topologies")
            .insert_header(("authorization", format!("Bearer {acme}")))
            .to_request();
        let answer = web_test::call_service(&f.app, request).await;
        codes.push(answer.status().as_u16());
        if answer.status() == 429 {
            retry_after = answer.headers().get("retry-after").cloned();
            let body: serde_json::Value =
                serde_json::from_slice(&web_test::read_body(answer).await).expect("json");
            assert_eq!(body["code"], "rate_limited", "{body}");
        }
    }
    // A burst of twice the rate, then refusals.
    assert_eq!(&codes[..2], [200, 200], "{codes:?}");
    assert!(codes[2..].iter().all(|&c| c == 429), "{codes:?}");
    assert!(retry_after.is_some());
    // The other tenant is untouched.
    for _ in 0..10 {
        let (status, _) = call(
            &f.app,
            "GET",
            "/v1/tenants/globex/topologies",
            Some(&globex),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    // And it is counted for the admin to see.
    let request = web_test::TestRequest::get().uri("/metrics").to_request();
    let metrics = web_test::call_and_read_body(&f.app, request).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_rate_limited_total{")
                && l.contains(r#"tenant="acme""#)
                && l.contains(r#"kind="request""#)),
        "{metrics}"
    );
}

#[actix_web::test]
async fn attenuations_past_the_tenants_rate_are_refused_and_make_no_ledger_entry() {
    let f = fixture().await;
    set_limits(
        &f.app,
        "acme",
        serde_json::json!({ "attenuations_per_hour": 3 }),
    )
    .await;
    let token = login(&f.app, "acme").await;
    let mut codes = Vec::new();
    for i in 0..10 {
        // Each a different token, each a new entry were it let in.
        let ci = attenuate(&token, &format!(r#"check if operation("read"), {i} >= 0"#));
        codes.push(
            call(
                &f.app,
                "GET",
                "/v1/tenants/acme/topologies",
                Some(&ci),
                None,
            )
            .await
            .0,
        );
    }
    assert_eq!(codes, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    let (status, entries) = call(
        &f.app,
        "GET",
        "/v1/audit/entries?tenant=acme",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{entries}");
    let attenuated = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "attenuated")
        .count();
    assert_eq!(attenuated, 3);
    // The session itself, already in the ledger, still works.
    let (status, _) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_topology_larger_than_the_tenants_limits_is_refused_before_anything_is_stored() {
    let f = fixture().await;
    let token = login(&f.app, "acme").await;
    // A thousand services of ten thousand replicas: the default limits refuse it by
    // its shape, before any quota or placement is computed.
    let services: serde_json::Map<String, serde_json::Value> = (0..1000)
        .map(|i| {
            (
                format!("s{i}"),
                serde_json::json!({ "image": "berth/busybox:latest", "replicas": 10_000, "networks": { "default": {} } }),
            )
        })
        .collect();
    let huge =
        serde_json::json!({ "name": "huge", "services": services, "networks": { "default": {} } });
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/huge",
        Some(&token),
        Some(huge),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "too_large", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("services_per_topology"),
        "{body}"
    );
    // Replicas beyond the admin's limit are refused the same way.
    set_limits(
        &f.app,
        "acme",
        serde_json::json!({ "replicas_per_service": 3 }),
    )
    .await;
    let mut four = topology("web");
    four["services"]["web"]["replicas"] = 4.into();
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/topologies/web",
        Some(&token),
        Some(four),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("replicas_per_service"),
        "{body}"
    );
    let (status, listed) = call(
        &f.app,
        "GET",
        "/v1/tenants/acme/topologies",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed, serde_json::json!([]), "nothing was stored");
}

#[actix_web::test]
async fn deploys_past_the_tenants_rate_are_refused() {
    let f = fixture().await;
    set_limits(
        &f.app,
        "acme",
        serde_json::json!({ "deploys_per_minute": 2 }),
    )
    .await;
    let token = login(&f.app, "acme").await;
    let mut codes = Vec::new();
    for name in ["a", "b", "c"] {
        codes.push(
            call(
                &f.app,
                "PUT",
                &format!("/v1/tenants/acme/topologies/{name}"),
                Some(&token),
                Some(topology(name)),
            )
            .await
            .0,
        );
    }
    assert_eq!(codes, [200, 200, 429]);
    let globex = login(&f.app, "globex").await;
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/globex/topologies/c",
        Some(&globex),
        Some(topology("c")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn limits_are_the_admins_to_set_in_range_and_the_tenants_to_read() {
    let f = fixture().await;
    let dev = login(&f.app, "acme").await;
    let (status, _) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/limits",
        Some(&dev),
        Some(serde_json::json!({ "requests_per_second": 1_000_000 })),
    )
    .await;
    assert_eq!(status, 403);
    for out_of_range in [0, 1_000_001] {
        let (status, body) = call(
            &f.app,
            "PUT",
            "/v1/tenants/acme/limits",
            Some(ADMIN),
            Some(serde_json::json!({ "deploys_per_minute": out_of_range })),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("deploys_per_minute"),
            "{body}"
        );
    }
    let (status, body) = call(
        &f.app,
        "PUT",
        "/v1/tenants/acme/limits",
        Some(ADMIN),
        Some(serde_json::json!({ "unknown_limit": 3 })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    set_limits(
        &f.app,
        "acme",
        serde_json::json!({ "deploys_per_minute": 7 }),
    )
    .await;
    let (status, limits) = call(&f.app, "GET", "/v1/tenants/acme/limits", Some(&dev), None).await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["deploys_per_minute"], 7);
    assert_eq!(
        limits["requests_per_second"],
        berth_protocol::limits::TenantLimits::DEFAULT.requests_per_second
    );
    let (status, _) = call(&f.app, "GET", "/v1/tenants/globex/limits", Some(&dev), None).await;
    assert_eq!(status, 403);
}
