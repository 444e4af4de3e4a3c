//! The audit side of the API: what the gateway writes to the ledger (every session it
//! mints, every attenuated token the first time it is shown) and the endpoints for
//! security teams: list and filter entries, explain a token, revoke, verify the chain.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use berth_allocator::ledger::{Entry, EntryKind, Filter, LedgerError, NewEntry, Verification};
use berth_protocol::capability::{self, Authorized, Operation};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ErrorBody, Gateway, now_ms};

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        tracing::error!(error = %e, "audit ledger failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            e.to_string(),
        )
    }
}

impl Gateway {
    /// Refuses a token any of whose revocation ids is revoked.
    pub(crate) async fn check_revocation(&self, authorized: &Authorized) -> Result<(), ApiError> {
        if self.ledger.is_revoked(&authorized.revocation_ids).await? {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the token has been revoked",
            ));
        }
        Ok(())
    }

    /// Records an attenuated token in the ledger the first time it is shown, with the
    /// datalog its holder added, so auditors see every narrowing of a token.
    pub(crate) async fn record_attenuation(
        &self,
        token: &str,
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
        let blocks = capability::datalog(token).unwrap_or_default();
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
                    subject: last.clone(),
                    detail: added.join("\n"),
                    revocation_ids: authorized.revocation_ids.clone(),
                },
                now_ms(),
            )
            .await?;
        self.attenuations_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(last.clone());
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
        let ids = biscuit_auth::UnverifiedBiscuit::from_base64(token)
            .map(|b| capability::revocation_ids(&b.revocation_identifiers()))
            .map_err(|e| ApiError::internal(format!("cannot read the token minted: {e}")))?;
        self.ledger
            .append(
                NewEntry {
                    kind: EntryKind::Minted,
                    actor: "platform".to_owned(),
                    tenant: session.tenant.clone(),
                    subject: ids.first().cloned().unwrap_or_default(),
                    detail: blocks.join("\n"),
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
    responses(
        (status = 200, description = "Whether the chain is intact, and the first entry that is not", body = Verification),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 503, description = "The ledger cannot be read", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn verify(
    gw: web::Data<Gateway>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    gw.authorize(&request, Operation::Audit, "*", None).await?;
    Ok(HttpResponse::Ok().json(gw.ledger.verify().await?))
}

/// A token explained.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explained {
    /// The entry that minted it.
    pub minted: Entry,
    /// Whether any of its revocation ids is revoked.
    pub revoked: bool,
    /// Every later entry about it (attenuations, revocations), oldest first.
    pub history: Vec<Entry>,
}

/// `GET /v1/audit/tokens/{id}`: a token by its first revocation id.
#[utoipa::path(
    get,
    path = "/v1/audit/tokens/{id}",
    tag = "audit",
    params(("id" = String, Path, description = "The token's first revocation id, hex")),
    responses(
        (status = 200, description = "The token's datalog, revocation state and history", body = Explained),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
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
            "not_found",
            format!("no token was minted with revocation id {id}"),
        ));
    };
    gw.authorize(&request, Operation::Audit, &minted.tenant, None)
        .await?;
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
    Ok(HttpResponse::Ok().json(Explained {
        minted,
        revoked,
        history,
    }))
}

/// `POST /v1/audit/revocations`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// Revocation ids, hex: a token's first id revokes it and every token attenuated
    /// from it; a later block's id revokes only the tokens that carry that block.
    pub ids: Vec<String>,
    /// Why, for the ledger.
    #[serde(default)]
    pub reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/audit/revocations",
    tag = "audit",
    request_body = Revoke,
    responses(
        (status = 200, description = "Revoked, with the ledger entry that records it", body = Entry),
        (status = 400, description = "The request is malformed", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token does not allow this", body = ErrorBody),
        (status = 503, description = "The ledger cannot be written", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(
    gw: web::Data<Gateway>,
    request: HttpRequest,
    body: web::Json<Revoke>,
) -> Result<HttpResponse, ApiError> {
    let who = gw
        .authorize(&request, Operation::Administer, "*", None)
        .await?;
    if body.ids.is_empty()
        || body
            .ids
            .iter()
            .any(|id| id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(
            "ids must be one or more revocation ids in hex (as `berth audit list` shows them)",
        ));
    }
    let actor = format!("{}/{}", who.session.tenant, who.session.user);
    // Filed under the token's tenant when the ledger knows the token, so the tenant's
    // auditors see it in the token's history.
    let tenant = match gw.ledger.token(&body.ids[0]).await? {
        Some(minted) => minted.tenant,
        None => "*".to_owned(),
    };
    let entry = gw
        .ledger
        .revoke(&body.ids, &actor, &tenant, &body.reason, now_ms())
        .await?;
    Ok(HttpResponse::Ok().json(entry))
}
