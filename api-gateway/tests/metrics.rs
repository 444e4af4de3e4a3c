//! `/metrics` counts requests under their route template (never the raw path, so
//! tenant names do not become label values) and shows the pool's nodes.

use actix_web::{App, test as web_test};
use berth_allocator::node_api::NodeApi;
use berth_allocator::{Allocator, DefaultRequest, Limit};
use berth_api_gateway::Gateway;
use berth_tenant_service::TenantService;

#[actix_web::test]
async fn metrics_count_requests_by_route_and_show_nodes() {
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
    for name in ["n1", "n2"] {
        allocator
            .upsert_node(name, Limit::default(), &Default::default())
            .await
            .expect("node");
    }
    allocator.cordon("n2", true).await.expect("cordon");
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
    for tenant in ["acme", "globex", "initech"] {
        let request = web_test::TestRequest::get()
            .uri(&format!("/v1/tenants/{tenant}/quota"))
            .to_request();
        assert_eq!(web_test::call_service(&app, request).await.status(), 401);
    }
    let response = web_test::call_service(
        &app,
        web_test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = String::from_utf8(web_test::read_body(response).await.to_vec()).expect("utf-8");
    assert!(
        text.contains(
            r#"berth_http_requests_total{method="GET",route="/v1/tenants/{tenant}/quota",status="401"} 3"#
        ),
        "{text}"
    );
    assert!(
        !text.contains("globex"),
        "a tenant's name became a label: {text}"
    );
    assert!(text.contains(r#"berth_nodes{state="active"} 1"#), "{text}");
    assert!(
        text.contains(r#"berth_nodes{state="cordoned"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("berth_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}
