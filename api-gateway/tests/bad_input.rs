//! Bad input to every endpoint gets a 4xx with a JSON error, never a 5xx: random
//! methods, path parameters and bodies (arbitrary JSON, arbitrary bytes, and valid
//! shapes with wrong types), with and without a valid token, against the real gateway
//! over a real SQLite database.

use actix_web::{App, test};
use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, DefaultRequest};
use berth_api_gateway::Gateway;
use berth_tenant_service::TenantService;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const ADMIN: &str = "bat_property_test";

/// Every operation of the OpenAPI document, as (method, path template): the test is
/// driven by the document, so a new endpoint is covered as soon as it is documented.
fn routes() -> Vec<(String, String)> {
    let doc: serde_json::Value =
        serde_json::from_str(&berth_api_gateway::openapi_json()).expect("the document is JSON");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(
        out.len() >= 15,
        "the document lists only {} operations",
        out.len()
    );
    out
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z0-9./_-]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_owned()),
                    Just("services".to_owned()),
                    Just("image".to_owned()),
                    Just("replicas".to_owned()),
                    Just("networks".to_owned()),
                    Just("containers".to_owned()),
                    Just("password".to_owned()),
                    Just("role".to_owned()),
                    Just("tenant".to_owned()),
                    Just("user".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
struct Case {
    route: usize,
    method: Option<&'static str>,
    tenant: String,
    name: String,
    body: Vec<u8>,
    authorized: bool,
}

fn case(routes: usize) -> impl Strategy<Value = Case> {
    let segment = prop_oneof![
        Just("acme".to_owned()),
        Just("default".to_owned()),
        "[a-zA-Z0-9%._~-]{1,20}",
        "[^/?#]{1,10}"
    ];
    let body = prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        prop::collection::vec(any::<u8>(), 0..64),
        Just(br#"{"name":"app","services":{"a":{"image":"x","replicas":"many"}}}"#.to_vec()),
        Just(br#"{"name":"acme","quota":{"containers":-1}}"#.to_vec()),
        Just(br#"{"tenant":"acme","user":"dev","password":""}"#.to_vec()),
        Just(Vec::new()),
    ];
    (
        0..routes,
        prop::option::of(prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "PATCH",
        ])),
        segment.clone(),
        segment,
        body,
        any::<bool>(),
    )
        .prop_map(|(route, method, tenant, name, body, authorized)| Case {
            route,
            method,
            tenant,
            name,
            body,
            authorized,
        })
}

#[actix_web::test]
async fn no_request_makes_the_gateway_fail_with_a_5xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    );
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let tenants = TenantService::open(db.clone()).await.expect("tenants");
    let allocator = Allocator::open(db.clone(), DefaultRequest::default())
        .await
        .expect("allocator");
    tenants.ensure_tenant("acme", 0).await.expect("tenant");
    allocator
        .ensure_quota("acme", berth_allocator::Limit::default())
        .await
        .expect("quota");
    // With the stores a server has, so the image and registry routes are exercised.
    let seal = berth_allocator::sealing::SealingKey::from_hex(
        &berth_allocator::sealing::SealingKey::generate_hex(),
    )
    .expect("key");
    let nodes = NodeApi::new(allocator.clone())
        .with_images(
            berth_allocator::images::ImageStore::new(db.clone(), dir.path().join("images"))
                .expect("image store"),
        )
        .with_registries(berth_allocator::registries::RegistryLogins::new(db, seal));
    let gateway = Gateway::new(
        tenants,
        allocator,
        nodes,
        ADMIN,
        "http://127.0.0.1:1",
        berth_allocator::root_keys::RootKeys::in_memory(biscuit_auth::KeyPair::new()),
    );
    let app = test::init_service(App::new().configure(berth_api_gateway::configure(gateway))).await;

    let mut runner = TestRunner::deterministic();
    let routes = routes();
    let strategy = case(routes.len());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1500 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let (method, template) = &routes[case.route];
        let method = case.method.unwrap_or(method);
        let encode = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        let path = template
            .replace("{tenant}", &encode(&case.tenant))
            .replace("{name}", &encode(&case.name))
            .replace("{node}", &encode(&case.name))
            .replace("{id}", &encode(&case.name));
        let mut request = test::TestRequest::default()
            .method(method.parse().expect("method"))
            .uri(&path)
            .insert_header(("content-type", "application/json"))
            .set_payload(case.body.clone());
        if case.authorized {
            request = request.insert_header(("authorization", format!("Bearer {ADMIN}")));
        }
        let response = test::call_service(&app, request.to_request()).await;
        let status = response.status();
        seen.insert(status.as_u16());
        let body = test::read_body(response).await;
        assert!(
            !status.is_server_error(),
            "{method} {path} with body {:?} answered {status}: {}",
            String::from_utf8_lossy(&case.body),
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() {
            let error: Result<berth_api::ErrorBody, _> = serde_json::from_slice(&body);
            assert!(
                error.is_ok(),
                "{method} {path}: a {status} without a JSON error body: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // The cases reached the handlers: requests succeeded, and each kind of refusal
    // happened (malformed input, missing token, unknown resources).
    for code in [200, 400, 401, 404] {
        assert!(
            seen.contains(&code),
            "no request answered {code}; seen {seen:?}"
        );
    }
}
