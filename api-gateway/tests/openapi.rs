//! The OpenAPI document is generated from the handlers, served at `/openapi.json` and
//! checked in as `api-gateway/openapi.json`. These tests fail when the three differ,
//! or when the document names an operation the gateway does not route.
//!
//! After changing the API, refresh the checked-in copy with
//! `BERTH_UPDATE_OPENAPI=1 cargo test -p berth-api-gateway --test openapi`.

use actix_web::{App, test as web_test};
use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, DefaultRequest};
use berth_api_gateway::{Gateway, openapi_json};
use berth_tenant_service::TenantService;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let generated = openapi_json();
    if std::env::var_os("BERTH_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).expect("write openapi.json");
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in == generated,
        "api-gateway/openapi.json differs from the API the code serves; run \
         BERTH_UPDATE_OPENAPI=1 cargo test -p berth-api-gateway --test openapi and commit it"
    );
}

#[actix_web::test]
async fn the_gateway_serves_the_document_and_routes_every_operation_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    );
    let db = berth_allocator::database::connect(&url).await.expect("db");
    let tenants = TenantService::open(db.clone()).await.expect("tenants");
    let allocator = Allocator::open(db, DefaultRequest::default())
        .await
        .expect("allocator");
    let nodes = NodeApi::new(allocator.clone());
    let gateway = Gateway::new(
        tenants,
        allocator,
        nodes,
        "an-admin-token-for-this-test",
        "http://127.0.0.1:1",
        berth_allocator::root_keys::RootKeys::in_memory(biscuit_auth::KeyPair::new()),
    );
    let app =
        web_test::init_service(App::new().configure(berth_api_gateway::configure(gateway))).await;

    let response = web_test::call_service(
        &app,
        web_test::TestRequest::get()
            .uri("/openapi.json")
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let served = web_test::read_body(response).await;
    assert_eq!(served, openapi_json().as_bytes());

    let doc: serde_json::Value = serde_json::from_slice(&served).expect("JSON");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            let uri = path
                .replace("{tenant}", "acme")
                .replace("{name}", "web")
                .replace("{node}", "n1")
                .replace("{id}", "00ff");
            let request = web_test::TestRequest::default()
                .method(method.to_uppercase().parse().expect("method"))
                .uri(&uri)
                .to_request();
            let response = web_test::call_service(&app, request).await;
            let status = response.status().as_u16();
            let body = web_test::read_body(response).await;
            let body = String::from_utf8_lossy(&body);
            assert!(
                !body.contains("no such route"),
                "{method} {path} is documented but not routed"
            );
            // A documented operation that needs a token says so, and is refused without
            // (401, or 400 when the empty body is refused before the token is read).
            if operation.get("security").is_some() {
                assert!(
                    status == 401 || status == 400,
                    "{method} {path} answered {status} without a token"
                );
            }
        }
    }
    assert!(operations >= 15, "only {operations} operations documented");
}
