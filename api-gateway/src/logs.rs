//! A topology's output, asked of the nodes that run its replicas.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_api::topologies::{LogsQuery, ReplicaLogs};
use berth_api::{ErrorBody, ErrorCode};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::capability::Operation;

use crate::{ApiError, Gateway, contract};

/// How long the gateway waits for a node to send a replica's output.
pub(crate) const LOGS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}/logs",
    tag = "topologies",
    params(
        crate::docs::TopologyPath,
        LogsQuery,
    ),
    responses(
        (status = 200, description = "The last lines of each replica, asked of the node that runs it", body = Vec<ReplicaLogs>),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or service", body = ErrorBody),
        (status = 503, description = "This server stands by and the leader, which reads the nodes' output, cannot be reached now: wait as `Retry-After` says", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn logs(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    // Only the leader holds the nodes' streams: any other server hands it the request.
    if !gw.nodes.is_leading() {
        return crate::forward::to_leader(&gw, &request).await;
    }
    contract::within("tail", query.tail, 0, 10_000)?;
    let tail = query.tail.unwrap_or(100);
    let id = TopologyRef {
        tenant,
        topology: name,
    };
    let placed: Vec<_> = gw
        .allocator
        .placed(&id)
        .await?
        .into_iter()
        .filter(|p| query.service.as_ref().is_none_or(|s| &p.service == s))
        .collect();
    if placed.is_empty() {
        let what = match &query.service {
            Some(s) => format!("service {s:?} of topology {:?}", id.topology),
            None => format!("topology {:?}", id.topology),
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{what} has no replicas placed in tenant {:?}", id.tenant),
        ));
    }
    // Ask every node at once; each answers for its own replicas only.
    let since_ns = query.since_ns.unwrap_or(0);
    let asks = placed.into_iter().map(|p| {
        let gw = gw.clone();
        let id = id.clone();
        async move {
            let ask = berth_protocol::node_api::LogRequest {
                request_id: 0,
                tenant: id.tenant.clone(),
                topology: id.topology.clone(),
                service: p.service.clone(),
                replica: p.replica,
                tail,
                since_ns,
            };
            let mut view = ReplicaLogs {
                service: p.service,
                replica: p.replica,
                node: p.node.clone(),
                lines: Vec::new(),
                at_ns: Vec::new(),
                error: None,
            };
            let mut answers = match gw.nodes.request_logs(&p.node, ask) {
                Ok(rx) => rx,
                Err(e) => {
                    view.error = Some(e.to_string());
                    return view;
                }
            };
            let collect = async {
                while let Some(part) = answers.recv().await {
                    // A node that sends no stamps gets zeros, one per line.
                    let stamps = part.at_ns.iter().copied().chain(std::iter::repeat(0));
                    view.at_ns.extend(stamps.take(part.lines.len()));
                    view.lines.extend(part.lines);
                    if !part.error.is_empty() {
                        view.error = Some(part.error);
                    }
                    if part.done {
                        return true;
                    }
                }
                false
            };
            let finished = matches!(tokio::time::timeout(LOGS_TIMEOUT, collect).await, Ok(true));
            if !finished && view.error.is_none() {
                view.error = Some(format!(
                    "node {:?} did not send the output within {} s",
                    p.node,
                    LOGS_TIMEOUT.as_secs()
                ));
            }
            view
        }
    });
    let mut views = futures_util::future::join_all(asks).await;
    views.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    Ok(HttpResponse::Ok().json(views))
}
