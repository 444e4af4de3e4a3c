//! What the routes' OpenAPI descriptions share: the answers every route that needs a
//! token may give, and the parameters of their paths. Descriptions only: the handlers
//! never build these.

use berth_api::ErrorBody;

/// What every route that needs a token may answer besides its own: no valid token
/// (401), or one that does not allow the call (403). Named once in each route's
/// `responses`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description of answers, never built
pub(crate) enum Denied {
    /// No valid token.
    #[response(status = 401, description = "No valid token")]
    Unauthenticated(ErrorBody),
    /// The token does not allow this.
    #[response(status = 403, description = "The token does not allow this")]
    Forbidden(ErrorBody),
}

/// The path of a route about one of a tenant's topologies.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a description of parameters; handlers take the path as a tuple
pub(crate) struct TopologyPath {
    /// The tenant
    tenant: String,
    /// The topology
    name: String,
}

/// The path of a route about one tenant.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a description of parameters; handlers take the path as a string
pub(crate) struct TenantPath {
    /// The tenant
    tenant: String,
}

/// The path of a route about one node.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // a description of parameters; handlers take the path as a string
pub(crate) struct NodePath {
    /// The node
    node: String,
}
