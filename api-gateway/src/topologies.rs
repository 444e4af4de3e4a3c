//! Topologies: deploy (and dry runs), status, spec, events, scale and removal, each
//! a thin edge over the deploy path of `berth-deployments` or a read of the allocator.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_allocator::ViewStamp;
use berth_api::topologies::{
    DeployQuery, Deployed, DryRun, Event, EventsQuery, Removed, ReplicaView, Scale,
};
use berth_api::{ErrorBody, ErrorCode, ReplicaState};
use berth_protocol::assignment::TopologyRef;
use berth_protocol::capability::Operation;
use berth_protocol::topology::Topology;

use crate::{ApiError, Gateway, contract};

/// The body of a deploy: a topology in Berth's normalised form, as `berth config
/// --json` prints it (the CLI sends it after reading and checking the file).
#[derive(Debug)]
pub(crate) struct TopologyBody;

impl utoipa::PartialSchema for TopologyBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .description(Some(
                "A topology in Berth's normalised form, as `berth config --model` prints it: `name`, `services`, `networks`, `volumes`. It is checked by the same rules as a topology file.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for TopologyBody {}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies",
    tag = "topologies",
    params(
        crate::docs::TenantPath,
    ),
    responses(
        (status = 200, description = "The names of the tenant's topologies", body = Vec<String>),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_topologies(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    tenant: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Read, &tenant, None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.tenants.list(&tenant).await?))
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/topologies/{name}",
    tag = "topologies",
    request_body = TopologyBody,
    params(
        crate::docs::TopologyPath,
        DeployQuery,
    ),
    responses(
        (status = 200, description = "Placed: the revision and where each replica went (with `dry_run`: a `DryRun`, and nothing changed)", body = Deployed),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
        (status = 409, description = "Over quota or no room in the pool; nothing changed", body = ErrorBody),
        (status = 422, description = "The topology breaks a rule; nothing changed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn deploy(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<DeployQuery>,
    body: crate::contract::Body<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, Some(&name))
        .await?;
    // The body is a JSON object; what it holds is judged as a topology file is.
    let topology: Topology = contract::from_value(body.into_inner()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidTopology,
            format!("the topology {e}"),
        )
    })?;
    if topology.name != name {
        return Err(ApiError::bad_request(format!(
            "the path names topology {name:?} but the body is {:?}",
            topology.name
        )));
    }
    let topology = crate::images::resolve(&gw, &tenant, topology).await?;
    if query.dry_run {
        let answer = gw.deployments.dry_run(&tenant, &topology).await?;
        return Ok(HttpResponse::Ok().json(DryRun {
            policy: answer.policy,
            current_revision: answer.current_revision,
            changed: answer.changed,
        }));
    }
    let applied = gw.deployments.apply(&tenant, &topology).await?;
    deployed(&gw, tenant, &topology.name, &applied).await
}

/// The answer to a change that was made: the revision and where its replicas went.
pub(crate) async fn deployed(
    gw: &Gateway,
    tenant: String,
    name: &str,
    applied: &berth_deployments::Applied,
) -> Result<HttpResponse, ApiError> {
    let replicas = replica_views(
        gw,
        &TopologyRef {
            tenant,
            topology: name.to_owned(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(Deployed {
        revision: applied.revision,
        changed: applied.changed,
        replicas,
    }))
}

pub(crate) async fn replica_views(
    gw: &Gateway,
    id: &TopologyRef,
) -> Result<Vec<ReplicaView>, ApiError> {
    let reported = gw.allocator.statuses(id).await?;
    let images = gw.allocator.placed_images(id).await?;
    let mut views: Vec<ReplicaView> = gw
        .allocator
        .placed(id)
        .await?
        .into_iter()
        .map(|p| {
            let report = reported.iter().find(|r| {
                r.status.service == p.service
                    && r.status.replica == p.replica
                    && r.status.generation == p.generation
            });
            ReplicaView {
                state: report.map_or(ReplicaState::Pending, |r| {
                    ReplicaState::parse(&r.status.state)
                }),
                detail: report.map(|r| r.status.detail.clone()).unwrap_or_default(),
                cpu_millis: report.and_then(|r| r.status.cpu_millis),
                image: images.get(&p.service).cloned().unwrap_or_default(),
                service: p.service,
                replica: p.replica,
                node: p.node,
                generation: p.generation,
            }
        })
        .collect();
    views.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    Ok(views)
}

/// The most events one request reads.
pub(crate) const MOST_EVENTS: u64 = 500;

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}/events",
    tag = "topologies",
    params(
        crate::docs::TopologyPath,
        EventsQuery,
    ),
    responses(
        (status = 200, description = "What happened to its replicas, newest first", body = Vec<Event>),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    let id = TopologyRef {
        tenant,
        topology: name,
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MOST_EVENTS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range; ask for 1 to {MOST_EVENTS} events"
        )));
    }
    let events = gw.allocator.events(&id, limit).await?;
    Ok(HttpResponse::Ok().json(events))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}/spec",
    tag = "topologies",
    params(
        crate::docs::TopologyPath,
    ),
    responses(
        (status = 200, description = "The current revision, in the normalised form a deploy sends", body = TopologyBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant or topology", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn spec(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    let current = gw.tenants.current(&tenant, &name).await?;
    Ok(HttpResponse::Ok().json(current.topology))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/topologies/{name}",
    tag = "topologies",
    params(
        crate::docs::TopologyPath,
    ),
    responses(
        (status = 200, description = "Each replica, its node and what the node reports", body = Deployed),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn status(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Read, &tenant, Some(&name))
        .await?;
    let id = TopologyRef {
        tenant,
        topology: name,
    };
    // Stamped before anything is read: a change committed meanwhile makes the answer
    // built now out of date at once.
    let stamp = gw.allocator.view_stamp(&id);
    if let Some(body) = gw.statuses.get(&id, stamp) {
        return Ok(HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(body));
    }
    let Some(revision) = gw.allocator.placed_revision(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!(
                "topology {:?} is not deployed in tenant {:?}",
                id.topology, id.tenant
            ),
        ));
    };
    let replicas = replica_views(&gw, &id).await?;
    let body = serde_json::to_vec(&Deployed {
        revision,
        changed: false,
        replicas,
    })
    .map_err(|e| ApiError::internal(format!("the status was not written: {e}")))?;
    let body = web::Bytes::from(body);
    gw.statuses.put(id, stamp, body.clone());
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

/// Topologies' statuses as last answered, each with the [`ViewStamp`] of what it was
/// built from: a read finding the same stamp is answered from memory, with no
/// database read. Every change of assignments or of a topology's replica reports
/// moves the stamp after its commit, in every server (see
/// [`berth_allocator::Allocator::view_stamp`]).
#[derive(Debug, Default)]
pub(crate) struct StatusCache {
    answers: std::sync::Mutex<Answers>,
}

#[derive(Debug, Default)]
struct Answers {
    by_topology: std::collections::HashMap<TopologyRef, (ViewStamp, web::Bytes)>,
    bytes: usize,
}

/// The most bytes of answers kept; past it the cache starts over.
const MOST_STATUS_BYTES: usize = 64 << 20;

impl StatusCache {
    fn get(&self, id: &TopologyRef, stamp: ViewStamp) -> Option<web::Bytes> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .by_topology
            .get(id)
            .filter(|(kept, _)| *kept == stamp)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, id: TopologyRef, stamp: ViewStamp, body: web::Bytes) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.bytes + body.len() > MOST_STATUS_BYTES {
            answers.by_topology.clear();
            answers.bytes = 0;
        }
        answers.bytes += body.len();
        if let Some((_, old)) = answers.by_topology.insert(id, (stamp, body)) {
            answers.bytes -= old.len();
        }
    }
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/topologies/{name}",
    tag = "topologies",
    params(
        crate::docs::TopologyPath,
    ),
    responses(
        (status = 200, description = "Removed, with the nodes that ran it", body = Removed),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Delete, &tenant, Some(&name))
        .await?;
    let id = TopologyRef {
        tenant: tenant.clone(),
        topology: name.clone(),
    };
    let Some(nodes) = gw.deployments.remove(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("topology {name:?} does not exist in tenant {tenant:?}"),
        ));
    };
    Ok(HttpResponse::Ok().json(Removed {
        removed: name,
        nodes,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/topologies/{name}/scale",
    tag = "topologies",
    request_body = Scale,
    params(
        crate::docs::TopologyPath,
    ),
    responses(
        (status = 200, description = "Placed with the new count", body = Deployed),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No such tenant, topology or node", body = ErrorBody),
        (status = 409, description = "Over quota or no room in the pool; nothing changed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn scale(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: crate::contract::Body<Scale>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, name) = path.into_inner();
    gw.authorize(&request, Operation::Deploy, &tenant, Some(&name))
        .await?;
    let applied = gw.deployments.scale(&tenant, &name, &body.replicas).await?;
    deployed(&gw, tenant, &name, &applied).await
}

#[cfg(test)]
mod tests {
    use berth_allocator::{Allocator, DefaultRequest};
    use berth_protocol::node_api::ReplicaStatus;

    use super::*;

    fn shop() -> TopologyRef {
        TopologyRef {
            tenant: "acme".into(),
            topology: "shop".into(),
        }
    }

    async fn allocator() -> Allocator {
        let db = berth_allocator::database::connect("sqlite::memory:")
            .await
            .expect("database");
        Allocator::open(db, DefaultRequest::default())
            .await
            .expect("allocator")
    }

    #[tokio::test]
    async fn a_kept_status_is_answered_only_under_the_stamp_it_was_built_at() {
        let allocator = allocator().await;
        let cache = StatusCache::default();
        let built_at = allocator.view_stamp(&shop());
        cache.put(
            shop(),
            built_at,
            web::Bytes::from_static(b"{\"revision\":1}"),
        );
        assert_eq!(
            cache.get(&shop(), built_at).as_deref(),
            Some(&b"{\"revision\":1}"[..])
        );
        // A report about one of its replicas is committed: the kept answer is out of
        // date, and is not given again.
        let report = ReplicaStatus {
            cpu_millis: None,
            tenant: "acme".into(),
            topology: "shop".into(),
            service: "web".into(),
            replica: 1,
            generation: 1,
            state: "running".into(),
            detail: String::new(),
        };
        allocator
            .record_statuses("n1", &[report], 1)
            .await
            .expect("report");
        let now = allocator.view_stamp(&shop());
        assert_ne!(now, built_at);
        assert_eq!(cache.get(&shop(), now), None);
    }

    #[tokio::test]
    async fn the_kept_answers_are_bounded_in_bytes() {
        let allocator = allocator().await;
        let stamp = allocator.view_stamp(&shop());
        let other = TopologyRef {
            tenant: "acme".into(),
            topology: "other".into(),
        };
        let big = web::Bytes::from(vec![b' '; MOST_STATUS_BYTES / 2 + 1]);
        // Two answers that do not fit together: the cache starts over for the second.
        let cache = StatusCache::default();
        cache.put(shop(), stamp, big.clone());
        cache.put(other.clone(), stamp, big);
        assert!(
            cache.get(&shop(), stamp).is_none(),
            "the cache started over"
        );
        assert!(cache.get(&other, stamp).is_some());
        let answers = cache.answers.lock().expect("lock");
        assert!(answers.bytes <= MOST_STATUS_BYTES);
    }
}
