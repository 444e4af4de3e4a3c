//! The audit side of the API: what the gateway writes to the ledger (every session it
//! mints, every attenuated token the first time it is shown) and the endpoints for
//! security teams: list and filter entries, explain a token, revoke, verify the chain.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_allocator::ledger::{Entry, EntryKind, Filter, LedgerError, NewEntry, Verification};
use berth_allocator::root_keys::{RootKeyError, RootKeyInfo};
use berth_allocator::witness::Witnessed;
use berth_protocol::capability::{self, Authorized, Operation};

use crate::limits::Kind;
use berth_api::ErrorBody;
use berth_api::ErrorCode;
use berth_api::audit::{
    DecisionExplained, Explained, GraphQuery, RetireQuery, Revoke, VerifyQuery,
};

use crate::{ApiError, Gateway, now_ms};

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        tracing::error!(error = %e, "audit ledger failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LedgerUnavailable,
            e.to_string(),
        )
    }
}

/// Attenuated tokens a gateway remembers finding in the ledger, so that a token
/// shown again costs no lookup.
const ATTENUATIONS_REMEMBERED: usize = 100_000;

impl Gateway {
    /// Refuses a token any of whose revocation ids is revoked.
    pub(crate) async fn check_revocation(&self, revocation_ids: &[String]) -> Result<(), ApiError> {
        if self.ledger.is_revoked(revocation_ids).await? {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "the token has been revoked",
            ));
        }
        Ok(())
    }

    /// Records an attenuated token in the ledger the first time any gateway sees it,
    /// with the datalog its holder added, so auditors see every narrowing of a token.
    /// The ledger decides whether it was seen: this process only caches what it
    /// found there, so every gateway process answers alike.
    pub(crate) async fn record_attenuation(
        &self,
        verified: &capability::Verified,
        authorized: &Authorized,
    ) -> Result<(), ApiError> {
        let Some(last) = authorized.revocation_ids.last() else {
            return Ok(());
        };
        if authorized.blocks < 2 {
            return Ok(());
        }
        let seen = self
            .attenuations_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(last);
        if seen {
            return Ok(());
        }
        let recorded = self.ledger.holds(EntryKind::Attenuated, last).await?;
        if !recorded {
            self.record_new_attenuation(verified, authorized, last)
                .await?;
        }
        let mut seen = self
            .attenuations_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Bounded: forgotten all at once when full, after which a token shown again
        // costs one lookup again.
        if seen.len() >= ATTENUATIONS_REMEMBERED {
            seen.clear();
        }
        seen.insert(last.clone());
        Ok(())
    }

    /// Appends the entry of an attenuation no gateway has recorded.
    async fn record_new_attenuation(
        &self,
        verified: &capability::Verified,
        authorized: &Authorized,
        last: &str,
    ) -> Result<(), ApiError> {
        // Each new attenuation costs a ledger entry: the tenant's rate bounds them.
        self.limit(&authorized.session.tenant, Kind::Attenuation, now_ms())
            .await?;
        let blocks = verified.datalog();
        let added: Vec<String> = blocks
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, b)| format!("// block {i}\n{b}"))
            .collect();
        let session = &authorized.session;
        self.ledger
            .append(
                NewEntry {
                    kind: EntryKind::Attenuated,
                    actor: format!("{}/{}", session.tenant, session.user),
                    tenant: session.tenant.clone(),
                    subject: last.to_owned(),
                    detail: added.join("\n"),
                    revocation_ids: authorized.revocation_ids.clone(),
                },
                now_ms(),
            )
            .await?;
        Ok(())
    }

    /// Records a session token just minted; an error means it must not be handed out.
    pub(crate) async fn record_minted(
        &self,
        token: &str,
        session: &capability::Session,
    ) -> Result<(), ApiError> {
        let blocks = capability::datalog(token)
            .map_err(|e| ApiError::internal(format!("cannot read the token minted: {e}")))?;
        let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token)
            .map_err(|e| ApiError::internal(format!("cannot read the token minted: {e}")))?;
        let ids = capability::revocation_ids(&unverified.revocation_identifiers());
        let key = unverified
            .root_key_id()
            .map_or_else(|| "none".to_owned(), |id| id.to_string());
        self.ledger
            .append(
                NewEntry {
                    kind: EntryKind::Minted,
                    actor: "platform".to_owned(),
                    tenant: session.tenant.clone(),
                    subject: ids.first().cloned().unwrap_or_default(),
                    detail: format!("// root key {key}\n{}", blocks.join("\n")),
                    revocation_ids: ids,
                },
                now_ms(),
            )
            .await?;
        Ok(())
    }
}

/// `GET /v1/audit/entries`: the tenant's entries (an auditor's own tenant), or all of
/// them for an admin.
#[utoipa::path(
    get,
    path = "/v1/audit/entries",
    tag = "audit",
    params(Filter),
    responses(
        (status = 200, description = "Entries, newest first", body = Vec<Entry>),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this (auditors: pass tenant=YOUR_TENANT)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn entries(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, ApiError> {
    crate::contract::within("limit", filter.limit, 1, 1000)?;
    let tenant = filter.tenant.clone().unwrap_or_else(|| "*".to_owned());
    gw.authorize(&request, Operation::Audit, &tenant, None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.ledger.list(&filter).await?))
}

/// `GET /v1/audit/verify`: walks the whole hash chain.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    params(VerifyQuery),
    responses(
        (status = 200, description = "Whether the chain is intact, and the first entry that is not", body = Verification),
        crate::docs::Denied,
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn verify(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    query: web::Query<VerifyQuery>,
) -> Result<HttpResponse, ApiError> {
    // The chain is one for all tenants: a tenant's auditor checks it whole, since that
    // is what proves their entries intact, and learns only its length and head.
    let tenant = query.tenant.as_deref().unwrap_or("*");
    gw.authorize(&request, Operation::Audit, tenant, None)
        .await?;
    let given = match &query.anchor {
        Some(text) => Some(
            text.parse::<berth_allocator::ledger::Anchor>()
                .map_err(ApiError::bad_request)?,
        ),
        None => None,
    };
    // Not given an anchor, check against the witness's last one.
    let witnessed = match (&given, &gw.witness) {
        (None, Some(witness)) => witness.last().map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::WitnessUnreadable,
                e.to_string(),
            )
        })?,
        _ => None,
    };
    let anchor = given.or_else(|| witnessed.as_ref().map(|(anchor, _)| anchor.clone()));
    let mut found = gw.ledger.verify_against(anchor.as_ref()).await?;
    found.witnessed = witnessed.map(|(anchor, at_ms)| Witnessed {
        anchor: anchor.to_string(),
        at_ms,
    });
    Ok(HttpResponse::Ok().json(found))
}

/// `GET /v1/audit/tokens/{id}`: a token by its first revocation id.
#[utoipa::path(
    get,
    path = "/v1/audit/tokens/{id}",
    tag = "audit",
    params(("id" = String, Path, description = "The token's first revocation id, hex")),
    responses(
        (status = 200, description = "The token's datalog, revocation state and history", body = Explained),
        crate::docs::Denied,
        (status = 404, description = "No token was minted with this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn explain(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Some(minted) = gw.ledger.token(&id).await? else {
        // Authorize before saying anything about whether the token exists.
        gw.authorize(&request, Operation::Audit, "*", None).await?;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no token was minted with revocation id {id}"),
        ));
    };
    gw.authorize(&request, Operation::Audit, &minted.tenant, None)
        .await?;
    Ok(HttpResponse::Ok().json(gw.token_history(minted).await?))
}

impl Gateway {
    /// A minted token with its revocation state and every later entry about it.
    async fn token_history(&self, minted: Entry) -> Result<Explained, ApiError> {
        let gw = self;
        let revoked = gw.ledger.is_revoked(&minted.revocation_ids).await?;
        let mut history: Vec<Entry> = gw
            .ledger
            .list(&Filter {
                tenant: Some(minted.tenant.clone()),
                limit: Some(1000),
                ..Filter::default()
            })
            .await?
            .into_iter()
            .filter(|e| {
                e.seq > minted.seq
                    && e.revocation_ids
                        .iter()
                        .any(|r| minted.revocation_ids.first() == Some(r))
            })
            .collect();
        history.reverse();
        Ok(Explained {
            minted,
            revoked,
            history,
        })
    }
}

#[utoipa::path(
    post,
    path = "/v1/audit/revocations",
    tag = "audit",
    request_body = Revoke,
    responses(
        (status = 200, description = "Revoked, with the ledger entry that records it", body = Entry),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        crate::docs::Denied,
        (status = 404, description = "No token of that node or tenant may still be valid: nothing to revoke", body = ErrorBody),
        (status = 503, description = "The ledger cannot be written", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    body: crate::contract::Body<Revoke>,
) -> Result<HttpResponse, ApiError> {
    let chosen = usize::from(!body.ids.is_empty())
        + usize::from(body.node.is_some())
        + usize::from(body.tenant.is_some());
    if chosen != 1 {
        return Err(ApiError::bad_request(
            "name exactly one of: ids (revocation ids), node, tenant",
        ));
    }
    if let Some(name) = body.node.as_ref().or(body.tenant.as_ref())
        && !berth_allocator::identity::valid_node_name(name)
    {
        return Err(ApiError::bad_request(format!(
            "{name:?} cannot name a node or tenant: a name matches {}",
            crate::contract::NAME_PATTERN
        )));
    }
    if body
        .ids
        .iter()
        .any(|id| id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(
            "ids must be one or more revocation ids in hex (as `berth audit list` shows them)",
        ));
    }
    // Revoking only takes rights away, so whoever audits a tenant may revoke that
    // tenant's tokens: its security team need not wait for a platform admin. A node's
    // delegations, and tokens the ledger cannot place in one tenant, are the admin's.
    let scope = if body.node.is_some() {
        None
    } else if let Some(tenant) = &body.tenant {
        Some(tenant.clone())
    } else {
        let mut tenants = std::collections::BTreeSet::new();
        for id in &body.ids {
            tenants.insert(gw.ledger.token(id).await?.map(|minted| minted.tenant));
        }
        match tenants.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(tenant)] if tenant != "*" => Some(tenant.clone()),
            _ => None,
        }
    };
    let who = match &scope {
        Some(tenant) => {
            gw.authorize(&request, Operation::Audit, tenant, None)
                .await?
        }
        None => {
            gw.authorize(&request, Operation::Administer, "*", None)
                .await?
        }
    };
    let actor = format!("{}/{}", who.session.tenant, who.session.user);
    let (ids, tenant) = if let Some(node) = &body.node {
        let reach = gw.ledger.reach(None, std::time::SystemTime::now()).await?;
        let ids: Vec<String> = reach
            .edges
            .into_iter()
            .filter(|e| &e.caller == node || &e.target == node)
            .map(|e| e.token)
            .collect();
        (ids, "*".to_owned())
    } else if let Some(tenant) = &body.tenant {
        let lifetime = crate::SESSION_TTL.max(berth_allocator::links::LINK_TOKEN_LIFETIME);
        let since = now_ms().saturating_sub(i64::try_from(lifetime.as_millis()).unwrap_or(0));
        (
            gw.ledger.tokens_of_tenant(tenant, since).await?,
            tenant.clone(),
        )
    } else {
        // Filed under the token's tenant when the ledger knows the token, so the
        // tenant's auditors see it in the token's history.
        let tenant = match gw.ledger.token(&body.ids[0]).await? {
            Some(minted) => minted.tenant,
            None => "*".to_owned(),
        };
        (body.ids.clone(), tenant)
    };
    if ids.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no token of that node or tenant may still be valid: nothing to revoke",
        ));
    }
    let entry = gw
        .ledger
        .revoke(&ids, &actor, &tenant, &body.reason, now_ms())
        .await?;
    // Nodes get the new revocation list now, not at their next recheck.
    gw.nodes.root_keys_changed();
    Ok(HttpResponse::Ok().json(entry))
}

/// `GET /v1/audit/graph`: who can call what now.
#[utoipa::path(
    get,
    path = "/v1/audit/graph",
    tag = "audit",
    params(GraphQuery),
    responses(
        (status = 200, description = "The delegations in force: JSON, or DOT with format=dot", content(
            (berth_api::audit::Reach = "application/json"),
            (String = "text/vnd.graphviz"),
        )),
        (status = 400, description = "Unknown format", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this (auditors: pass tenant=YOUR_TENANT)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn graph(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    query: web::Query<GraphQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = query.tenant.as_deref();
    gw.authorize(&request, Operation::Audit, tenant.unwrap_or("*"), None)
        .await?;
    let dot = match query.format.as_deref() {
        None | Some("json") => false,
        Some("dot") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be `json` or `dot`, not {other:?}"
            )));
        }
    };
    let reach = gw
        .ledger
        .reach(tenant, std::time::SystemTime::now())
        .await?;
    Ok(if dot {
        HttpResponse::Ok()
            .content_type("text/vnd.graphviz; charset=utf-8")
            .body(reach.to_dot())
    } else {
        HttpResponse::Ok().json(reach)
    })
}

/// `GET /v1/audit/decisions/{seq}`: a node-API decision, with the token it was about.
#[utoipa::path(
    get,
    path = "/v1/audit/decisions/{seq}",
    tag = "audit",
    params(("seq" = u64, Path, description = "The decision's place in the ledger")),
    responses(
        (status = 200, description = "The decision, its reason, and the token presented", body = DecisionExplained),
        crate::docs::Denied,
        (status = 404, description = "No decision at this place", body = ErrorBody),
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn decision(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    seq: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    let found = gw
        .ledger
        .entry(*seq)
        .await?
        .filter(|e| e.kind == EntryKind::Decision);
    let Some(decision) = found else {
        gw.authorize(&request, Operation::Audit, "*", None).await?;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("entry {seq} is not a decision"),
        ));
    };
    gw.authorize(&request, Operation::Audit, &decision.tenant, None)
        .await?;
    let (allowed, reason) = match decision.detail.split_once(": ") {
        Some(("allowed", rest)) => (true, rest.to_owned()),
        Some((_, rest)) => (false, rest.to_owned()),
        None => (false, decision.detail.clone()),
    };
    let token = match decision.revocation_ids.first() {
        Some(id) => gw.ledger.token(id).await?,
        None => None,
    };
    let token = match token {
        Some(minted) => Some(gw.token_history(minted).await?),
        None => None,
    };
    let known: Vec<String> = token
        .as_ref()
        .map(|t| {
            t.history
                .iter()
                .chain(std::iter::once(&t.minted))
                .flat_map(|e| e.revocation_ids.iter().cloned())
                .collect()
        })
        .unwrap_or_default();
    let unknown_blocks = decision
        .revocation_ids
        .iter()
        .filter(|id| !known.contains(id))
        .cloned()
        .collect();
    Ok(HttpResponse::Ok().json(DecisionExplained {
        decision,
        allowed,
        reason,
        token,
        unknown_blocks,
    }))
}

impl Gateway {
    /// Records what `who` did to root key `id`.
    async fn record_root_key(
        &self,
        who: &Authorized,
        id: u32,
        detail: &str,
    ) -> Result<(), ApiError> {
        self.ledger
            .append(
                NewEntry {
                    kind: EntryKind::RootKey,
                    actor: format!("{}/{}", who.session.tenant, who.session.user),
                    tenant: "*".to_owned(),
                    subject: format!("root key {id}"),
                    detail: detail.to_owned(),
                    revocation_ids: Vec::new(),
                },
                now_ms(),
            )
            .await?;
        Ok(())
    }
}

impl From<RootKeyError> for ApiError {
    fn from(e: RootKeyError) -> Self {
        match &e {
            RootKeyError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
            }
            RootKeyError::Signing(_) | RootKeyError::TooSoon { .. } => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            RootKeyError::Database(_)
            | RootKeyError::Sealed { .. }
            | RootKeyError::Corrupt(_)
            | RootKeyError::Io { .. }
            | RootKeyError::Malformed { .. } => ApiError::internal(berth_protocol::error_chain(&e)),
        }
    }
}

/// `GET /v1/root-keys`: the keys tokens are verified against; the signing one last.
#[utoipa::path(
    get,
    path = "/v1/root-keys",
    tag = "audit",
    responses(
        (status = 200, description = "The root keys (public halves only)", body = Vec<RootKeyInfo>),
        crate::docs::Denied,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn root_keys(
    gw: web::Data<Gateway>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Audit, "*", None).await?;
    Ok(HttpResponse::Ok().json(gw.keys.list()))
}

/// `POST /v1/root-keys`: a new root key signs every token from now on; tokens under
/// the others keep working until they expire or their key is retired. Nodes are sent
/// the new key, and every link's token is renewed under it.
#[utoipa::path(
    post,
    path = "/v1/root-keys",
    tag = "audit",
    responses(
        (status = 201, description = "The new signing key", body = RootKeyInfo),
        crate::docs::Denied,
        (status = 503, description = "The ledger cannot be written: no key was made", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rotate_root_key(
    gw: web::Data<Gateway>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = gw
        .authorize(&request, Operation::Administer, "*", None)
        .await?;
    let next = gw.keys.list().last().map_or(1, |k| k.id + 1);
    // In the ledger before it signs anything.
    gw.record_root_key(&who, next, "introduced: signs every new token from now on")
        .await?;
    let key = gw.keys.rotate(now_ms()).await?;
    gw.nodes.root_keys_changed();
    tracing::info!(key = key.id, "root key rotated");
    Ok(HttpResponse::Created().json(key))
}

/// `DELETE /v1/root-keys/{id}`: tokens under this key are refused from now on, by the
/// gateway at once and by nodes once their stream brings the change.
#[utoipa::path(
    delete,
    path = "/v1/root-keys/{id}",
    tag = "audit",
    params(("id" = u32, Path, description = "The key's id"), RetireQuery),
    responses(
        (status = 200, description = "The keys left", body = Vec<RootKeyInfo>),
        crate::docs::Denied,
        (status = 404, description = "No key has this id", body = ErrorBody),
        (status = 409, description = "The key signs new tokens, or tokens it signed may still be valid (force=true to retire anyway)", body = ErrorBody),
        (status = 503, description = "The ledger cannot be written: the key was not retired", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retire_root_key(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    id: web::Path<u32>,
    query: web::Query<RetireQuery>,
) -> Result<HttpResponse, ApiError> {
    let who = gw
        .authorize(&request, Operation::Administer, "*", None)
        .await?;
    let lifetime = crate::SESSION_TTL.max(berth_allocator::links::LINK_TOKEN_LIFETIME);
    // Checked first, so the ledger records only what is done.
    gw.keys.check_retire(*id, now_ms(), lifetime, query.force)?;
    let detail = if query.force {
        "retired early (forced): tokens it signed are refused from now on"
    } else {
        "retired: every token it signed has expired"
    };
    gw.record_root_key(&who, *id, detail).await?;
    gw.keys.retire(*id, now_ms(), lifetime, query.force).await?;
    gw.nodes.root_keys_changed();
    tracing::info!(key = *id, "root key retired");
    Ok(HttpResponse::Ok().json(gw.keys.list()))
}
