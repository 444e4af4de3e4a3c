//! Traces cross processes: a deploy through the gateway, the allocator's placement,
//! the node agent's reconcile (in another process, over gRPC) and its report back are
//! spans of one trace, exported over OTLP to a collector, here a real OTLP/gRPC
//! endpoint that keeps what it receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_tests::ensure_images;
use berth_tests::plane::Server;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One exported span: the process that made it, its trace id (hex) and its name.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    service: String,
    trace_id: String,
    name: String,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Seen>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    seen.push(Seen {
                        service: service.clone(),
                        trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                        name: span.name,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_is_one_trace_across_gateway_allocator_and_node() {
    ensure_images();
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    let otel_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let server = Server::start(&otel_env).await;
    let node_name = format!("t{}-n1", std::process::id());
    let _node = server.join(&node_name, &[], &otel_env).await;
    let (api, admin, http) = (&server.api, server.admin, &server.http);

    // The caller starts the trace; the gateway continues it and says so.
    let trace_id = format!("{:032x}", u128::from(std::process::id()) << 64 | 0xbe27);
    let topology = serde_json::json!({
        "name": "traced",
        "services": { "web": {
            "image": "berth/busybox:latest", "replicas": 1, "init": true,
            "command": ["sleep", "3600"], "networks": { "default": {} }
        } },
        "networks": { "default": {} }
    });
    let mut deployed = None;
    for _ in 0..100 {
        let response = http
            .put(format!("{api}/v1/tenants/default/topologies/traced"))
            .bearer_auth(admin)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&topology)
            .send()
            .await
            .expect("request");
        if response.status().is_success() {
            deployed = Some(response);
            break;
        }
        // The node may still be joining.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployed = deployed.expect("the deploy was never placed");
    let answered = deployed
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "the gateway answered traceparent {answered:?}"
    );

    // Every process exports its part of the trace.
    let wanted = [
        ("berth-server", "PUT /v1/tenants/{tenant}/topologies/{name}"),
        ("berth-server", "allocate"),
        ("berth-node", "reconcile"),
        ("berth-node", "report"),
        ("berth-server", "report"),
    ];
    let mut seen = Vec::new();
    for _ in 0..150 {
        seen = collector
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if wanted.iter().all(|(service, name)| {
            seen.iter()
                .any(|s| s.service == *service && s.name == *name)
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (service, name) in wanted {
        assert!(
            seen.iter().any(|s| s.service == service && s.name == name),
            "no span {name:?} from {service} in trace {trace_id}: {seen:?}"
        );
    }
}
