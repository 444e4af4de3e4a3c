//! The capability vocabulary: what Berth's biscuit tokens say, and the policies that
//! decide what a token may do. One place, so that minting and checking never drift.
//!
//! A **session token** is minted at login by the control plane's root key. Its
//! authority block states `user`, `tenant`, `role` and an expiry check:
//!
//! ```text
//! user("alice"); tenant("acme"); role("developer");
//! check if time($t), $t < 2026-11-23T20:00:00Z;
//! ```
//!
//! Its holder may append blocks that only narrow it, offline, for example a CI token
//! that may only deploy topology `web`:
//!
//! ```text
//! check if operation("deploy"), topology("web");
//! ```
//!
//! To authorize a request the gateway states the request as facts (`time`,
//! `operation`, `resource_tenant`, and `topology` when one is named) and applies
//! [`POLICIES`]; every check in every block must pass as well.

use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{Fact, Term, date, fact, string};
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PublicKey, error};

/// What a role may do. Admins manage the platform; developers own their tenant's
/// topologies; auditors read.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Tenants, quotas, nodes, users: everything.
    Admin,
    /// Deploy, read and delete the topologies of their own tenant.
    Developer,
    /// Read everything of their own tenant.
    Auditor,
}

impl Role {
    /// The word used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Auditor => "auditor",
        }
    }

    /// The role named `s`, if any.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// An operation on the API, as tokens name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Create or update a topology.
    Deploy,
    /// Read topologies and their status.
    Read,
    /// Delete a topology.
    Delete,
    /// Manage tenants, quotas, users and nodes.
    Administer,
    /// Read the audit ledger (of one tenant, or of the platform with tenant `*`).
    Audit,
}

impl Operation {
    /// The word used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Deploy => "deploy",
            Operation::Read => "read",
            Operation::Delete => "delete",
            Operation::Administer => "administer",
            Operation::Audit => "audit",
        }
    }
}

/// The authorizer's policies, in order; the first that matches decides.
pub const POLICIES: &str = r#"
allow if role("admin");
allow if role("developer"), tenant($t), resource_tenant($t), operation($op), ["deploy", "read", "delete"].contains($op);
allow if role("auditor"), tenant($t), resource_tenant($t), ["read", "audit"].contains($op), operation($op);
deny if true;
"#;

/// Limits for running a token's datalog: explicit, and generous enough in time that a
/// loaded machine does not refuse valid tokens (the library default is 1 ms).
pub fn limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(50),
    }
}

/// The root public keys a verifier accepts, by key id. Rotation: add the new key and
/// mint with it; tokens under the old key keep verifying until the old key is retired
/// (after the longest lifetime of a token minted under it).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: std::collections::BTreeMap<u32, PublicKey>,
}

impl Keyring {
    /// A ring holding one key.
    pub fn new(id: u32, key: PublicKey) -> Self {
        Self::default().with(id, key)
    }

    /// The ring with `key` accepted under `id` as well.
    pub fn with(mut self, id: u32, key: PublicKey) -> Self {
        self.keys.insert(id, key);
        self
    }

    /// Stops accepting the key `id`.
    pub fn retire(&mut self, id: u32) {
        self.keys.remove(&id);
    }

    /// The ids accepted now.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The key a token names by id; a token without an id, or with an unknown one, is
    /// refused.
    pub fn key(&self, id: Option<u32>) -> Result<PublicKey, error::Format> {
        id.and_then(|id| self.keys.get(&id).copied())
            .ok_or(error::Format::UnknownPublicKey)
    }
}

/// Who a session is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user: String,
    /// The user's tenant.
    pub tenant: String,
    /// The user's role.
    pub role: Role,
}

/// Mints a session token for `session`, valid until `expires`, signed by `root`
/// (identified by `root_key_id`, so keys can rotate). Returns it in base64.
pub fn mint_session(
    root: &KeyPair,
    root_key_id: u32,
    session: &Session,
    expires: SystemTime,
) -> Result<String, error::Token> {
    session_builder(session, expires, root_key_id)?
        .build(root)?
        .to_base64()
}

/// The authority block of a session token, ready to be signed.
pub fn session_builder(
    session: &Session,
    expires: SystemTime,
    root_key_id: u32,
) -> Result<biscuit_auth::BiscuitBuilder, error::Token> {
    Biscuit::builder()
        .fact(fact("user", &[string(&session.user)]))?
        .fact(fact("tenant", &[string(&session.tenant)]))?
        .fact(fact("role", &[string(session.role.as_str())]))?
        // The expiry as a fact too: whoever holds the verified token can tell how
        // long a decision about it holds without reading its checks.
        .fact(fact("expires", &[date(&expires)]))?
        .code_with_params(
            "check if time($t), $t < {expires}",
            std::collections::HashMap::from([("expires".to_owned(), Term::from(expires))]),
            std::collections::HashMap::new(),
        )
        .map(|b| b.root_key_id(root_key_id))
}

/// A request to authorize.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The operation.
    pub operation: Operation,
    /// The tenant whose resources are touched.
    pub tenant: &'a str,
    /// The topology, when the request names one.
    pub topology: Option<&'a str>,
    /// The current time.
    pub now: SystemTime,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// The token is not a biscuit signed by a known root key (forged, tampered, or
    /// from another issuer).
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// The session the token carries has expired: log in again.
    #[error("the session has expired; log in again")]
    Expired,
    /// The token is valid but does not allow this request (wrong tenant, role, or an
    /// attenuation).
    #[error("the token does not allow {operation} on tenant {tenant:?}{}", topology.as_ref().map(|t| format!(" topology {t:?}")).unwrap_or_default())]
    Forbidden {
        /// The operation asked for.
        operation: &'static str,
        /// The tenant asked for.
        tenant: String,
        /// The topology asked for.
        topology: Option<String>,
    },
}

/// The most bytes of a token, in base64, that are read at all.
pub const MOST_TOKEN_BYTES: usize = 8 * 1024;

/// What a block appended to a token (an attenuation) may hold, so that running its
/// datalog is bounded whatever its holder wrote. An attenuation narrows with checks
/// (and facts they read); rules, which derive facts that later joins multiply, are not
/// accepted, and a check joins at most two predicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Appended blocks.
    pub blocks: usize,
    /// Facts in one block.
    pub facts: usize,
    /// Checks in one block.
    pub checks: usize,
    /// Alternatives (`or`) in one check.
    pub queries: usize,
    /// Predicates one alternative joins.
    pub predicates: usize,
    /// Expressions in one alternative.
    pub expressions: usize,
}

/// The shape every attenuation must fit.
pub const SHAPE: Shape = Shape {
    blocks: 4,
    facts: 16,
    checks: 8,
    queries: 4,
    predicates: 2,
    expressions: 8,
};

/// A token whose signature verifies and whose shape is bounded: what it allows is
/// still for [`authorize_verified`] to say, after the caller has checked its
/// revocation ids.
pub struct Verified {
    biscuit: Biscuit,
    /// The token's revocation ids, hex, one per block.
    pub revocation_ids: Vec<String>,
    /// The tenant the authority block names, when it names exactly one (a session
    /// token); what the token may do there is still for [`authorize_verified`] to say.
    pub tenant: Option<String>,
    /// The requests it was allowed, with the answer, while they hold.
    allowed: crate::token_cache::Remembered<AllowedKey, Authorized>,
}

/// A request a token was allowed: operation, tenant, topology.
type AllowedKey = (Operation, String, Option<String>);

/// How many allowed requests a verified token remembers (forgotten all at once when
/// full: a session touches few resources).
const REMEMBERED_DECISIONS: usize = 64;

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("revocation_ids", &self.revocation_ids)
            .field("tenant", &self.tenant)
            .field("holds_until", &self.allowed.until())
            .finish_non_exhaustive()
    }
}

impl Verified {
    /// The id of the root key the token was signed with.
    pub fn root_key_id(&self) -> Option<u32> {
        self.biscuit.root_key_id()
    }

    /// How many blocks the token has (more than one: it was attenuated).
    pub fn blocks(&self) -> usize {
        self.biscuit.block_count()
    }

    /// Each block's datalog, as text, the authority block first.
    pub fn datalog(&self) -> Vec<String> {
        (0..self.biscuit.block_count())
            .filter_map(|i| self.biscuit.print_block_source(i).ok())
            .collect()
    }
}

/// Parses `token`, verifies its signatures against the root key `root_key` picks by
/// key id, and checks the shape of every appended block against [`SHAPE`], all
/// without running any datalog.
pub fn verify(
    token: &str,
    root_key: impl Fn(Option<u32>) -> Result<PublicKey, error::Format>,
) -> Result<Verified, Denied> {
    if token.len() > MOST_TOKEN_BYTES {
        return Err(Denied::Invalid(format!(
            "the token is {} bytes; at most {MOST_TOKEN_BYTES} are read",
            token.len()
        )));
    }
    let biscuit =
        Biscuit::from_base64(token, root_key).map_err(|e| Denied::Invalid(e.to_string()))?;
    check_shape(&biscuit, &SHAPE)?;
    let (tenant, expires) = authority_facts(&biscuit);
    Ok(Verified {
        revocation_ids: revocation_ids(&biscuit.revocation_identifiers()),
        tenant,
        allowed: crate::token_cache::Remembered::new(
            expires.filter(|_| biscuit.block_count() == 1),
            REMEMBERED_DECISIONS,
        ),
        biscuit,
    })
}

/// The tenant the authority block names and the expiry it states, each if exactly
/// one. Appended blocks hold no rules (the shape says so) and are not trusted by the
/// queries, so this costs one small evaluation.
pub(crate) fn authority_facts(biscuit: &Biscuit) -> (Option<String>, Option<SystemTime>) {
    let Ok(mut authorizer) = biscuit_auth::AuthorizerBuilder::new()
        .set_limits(limits())
        .build(biscuit)
    else {
        return (None, None);
    };
    let tenants: Vec<(String,)> = authorizer
        .query("data($t) <- tenant($t)")
        .unwrap_or_default();
    let expiries: Vec<(SystemTime,)> = authorizer
        .query("data($d) <- expires($d)")
        .unwrap_or_default();
    let tenant = match tenants.as_slice() {
        [(tenant,)] => Some(tenant.clone()),
        _ => None,
    };
    let expires = match expiries.as_slice() {
        [(at,)] => Some(*at),
        _ => None,
    };
    (tenant, expires)
}

/// Refuses a token whose appended blocks do not fit `shape`, saying which block and
/// what it holds. The authority block is the platform's own and is not judged.
pub(crate) fn check_shape(biscuit: &Biscuit, shape: &Shape) -> Result<(), Denied> {
    let appended = biscuit.block_count().saturating_sub(1);
    let refuse = |what: String| {
        Err(Denied::Invalid(format!(
            "{what}: an attenuation may hold up to {} facts and {} checks of up to {} alternatives, each joining up to {} predicates with up to {} expressions, and no rules, in up to {} blocks",
            shape.facts,
            shape.checks,
            shape.queries,
            shape.predicates,
            shape.expressions,
            shape.blocks
        )))
    };
    if appended > shape.blocks {
        return refuse(format!("the token has {appended} appended blocks"));
    }
    for index in 1..biscuit.block_count() {
        let source = biscuit
            .print_block_source(index)
            .map_err(|e| Denied::Invalid(e.to_string()))?;
        let parsed = biscuit_auth::parser::parse_block_source(&source)
            .map_err(|_| Denied::Invalid(format!("block {index} cannot be read back")))?;
        if !parsed.rules.is_empty() {
            return refuse(format!(
                "block {index} holds {} rule(s)",
                parsed.rules.len()
            ));
        }
        if parsed.facts.len() > shape.facts {
            return refuse(format!("block {index} holds {} facts", parsed.facts.len()));
        }
        if parsed.checks.len() > shape.checks {
            return refuse(format!(
                "block {index} holds {} checks",
                parsed.checks.len()
            ));
        }
        for (_, check) in &parsed.checks {
            if check.queries.len() > shape.queries {
                return refuse(format!(
                    "a check of block {index} has {} alternatives",
                    check.queries.len()
                ));
            }
            for query in &check.queries {
                if query.body.len() > shape.predicates {
                    return refuse(format!(
                        "a check of block {index} joins {} predicates",
                        query.body.len()
                    ));
                }
                if query.expressions.len() > shape.expressions {
                    return refuse(format!(
                        "a check of block {index} has {} expressions",
                        query.expressions.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Parses and verifies `token` against the root key `root_key` picks by key id, then
/// authorizes `request`. Returns who the session is for.
pub fn authorize(
    token: &str,
    root_key: impl Fn(Option<u32>) -> Result<PublicKey, error::Format>,
    request: &Request<'_>,
) -> Result<Authorized, Denied> {
    authorize_verified(&verify(token, root_key)?, request)
}

impl Verified {
    /// The answer this token was given for the same request before, while it holds:
    /// an allowed request stays allowed until the token's expiry, since the policies
    /// and the authority block depend on nothing else that changes (revocation is
    /// the caller's to check on every request).
    pub fn allowed_before(&self, request: &Request<'_>) -> Option<Authorized> {
        self.allowed.get(&Self::key(request), request.now)
    }

    /// Remembers that `request` was allowed, when answers about this token hold.
    pub fn remember_allowed(&self, request: &Request<'_>, authorized: &Authorized) {
        self.allowed
            .keep(Self::key(request), authorized, request.now);
    }

    fn key(request: &Request<'_>) -> AllowedKey {
        (
            request.operation,
            request.tenant.to_owned(),
            request.topology.map(str::to_owned),
        )
    }
}

/// Authorizes `request` with a token [`verify`] accepted: runs its datalog (bounded by
/// its shape and by [`limits`]). Returns who the session is for.
pub fn authorize_verified(
    verified: &Verified,
    request: &Request<'_>,
) -> Result<Authorized, Denied> {
    let biscuit = &verified.biscuit;
    let forbidden = || Denied::Forbidden {
        operation: request.operation.as_str(),
        tenant: request.tenant.to_owned(),
        topology: request.topology.map(str::to_owned),
    };
    let mut facts: Vec<Fact> = vec![
        fact("time", &[date(&request.now)]),
        fact("operation", &[string(request.operation.as_str())]),
        fact("resource_tenant", &[string(request.tenant)]),
    ];
    if let Some(topology) = request.topology {
        facts.push(fact("topology", &[string(topology)]));
    }
    let mut builder = biscuit_auth::AuthorizerBuilder::new().set_limits(limits());
    for f in facts {
        builder = builder
            .fact(f)
            .map_err(|e| Denied::Invalid(e.to_string()))?;
    }
    let mut authorizer = builder
        .code(POLICIES)
        .and_then(|b| b.build(biscuit))
        .map_err(|e| Denied::Invalid(e.to_string()))?;
    authorizer.authorize().map_err(|e| {
        // The authority block's own expiry check failed: say so, so that clients know
        // to log in again rather than that they lack a right.
        let expired = match &e {
            error::Token::FailedLogic(
                error::Logic::Unauthorized { checks, .. }
                | error::Logic::NoMatchingPolicy { checks },
            ) => checks.iter().any(|c| {
                matches!(c, error::FailedCheck::Block(b) if b.block_id == 0 && b.rule.contains("time("))
            }),
            _ => false,
        };
        if expired { Denied::Expired } else { forbidden() }
    })?;
    // Queries trust the authority block and the authorizer only, never appended blocks:
    // who the session is for comes from what the root key signed.
    let users: Vec<(String,)> = authorizer
        .query("data($u) <- user($u)")
        .map_err(|_| forbidden())?;
    let tenants: Vec<(String,)> = authorizer
        .query("data($t) <- tenant($t)")
        .map_err(|_| forbidden())?;
    let roles: Vec<(String,)> = authorizer
        .query("data($r) <- role($r)")
        .map_err(|_| forbidden())?;
    match (users.as_slice(), tenants.as_slice(), roles.as_slice()) {
        ([(user,)], [(tenant,)], [(role,)]) => Ok(Authorized {
            session: Session {
                user: user.clone(),
                tenant: tenant.clone(),
                role: Role::parse(role).ok_or_else(forbidden)?,
            },
            revocation_ids: verified.revocation_ids.clone(),
            blocks: biscuit.block_count(),
        }),
        _ => Err(forbidden()),
    }
}

/// The tenant a session token was minted for, read from its authority block once its
/// signature verifies; what it may do there is still for [`authorize`] to say.
pub fn session_tenant(
    token: &str,
    root_key: impl Fn(Option<u32>) -> Result<PublicKey, error::Format>,
) -> Result<String, Denied> {
    verify(token, root_key)?.tenant.ok_or_else(|| {
        Denied::Invalid("the token names no single tenant: it is not a session".to_owned())
    })
}

/// A token that passed [`authorize`]: who it speaks for, and what identifies it for
/// revocation and audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// Who the session is for (from the authority block).
    pub session: Session,
    /// One revocation id per block, hex; revoking any of them revokes the token.
    pub revocation_ids: Vec<String>,
    /// How many blocks the token has (more than one: it was attenuated).
    pub blocks: usize,
}

/// Revocation ids as hex strings.
pub fn revocation_ids(ids: &[Vec<u8>]) -> Vec<String> {
    ids.iter()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

/// The datalog of every block of a token, readable, without its signatures: what the
/// audit ledger keeps and what `berth audit explain` shows.
pub fn datalog(token: &str) -> Result<Vec<String>, Denied> {
    let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .map_err(|e| Denied::Invalid(e.to_string()))?;
    (0..unverified.block_count())
        .map(|i| {
            unverified
                .print_block_source(i)
                .map_err(|e| Denied::Invalid(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use biscuit_auth::builder::BlockBuilder;

    fn keys() -> KeyPair {
        KeyPair::new()
    }

    fn session(role: Role) -> Session {
        Session {
            user: "alice".into(),
            tenant: "acme".into(),
            role,
        }
    }

    fn request(
        operation: Operation,
        tenant: &str,
        topology: Option<&'static str>,
        now: SystemTime,
    ) -> Request<'static> {
        Request {
            operation,
            tenant: Box::leak(tenant.to_owned().into_boxed_str()),
            topology,
            now,
        }
    }

    #[test]
    fn a_developer_acts_on_their_own_tenant_only() {
        let root = keys();
        let now = SystemTime::now();
        let token = mint_session(
            &root,
            1,
            &session(Role::Developer),
            now + Duration::from_secs(600),
        )
        .unwrap();
        let key = |_| Ok(root.public());
        let who = authorize(
            &token,
            key,
            &request(Operation::Deploy, "acme", Some("web"), now),
        )
        .unwrap();
        assert_eq!(who.session, session(Role::Developer));
        assert_eq!(who.blocks, 1);
        assert_eq!(who.revocation_ids.len(), 1);
        assert_eq!(who.revocation_ids[0].len(), 128, "{:?}", who.revocation_ids);
        assert_eq!(datalog(&token).unwrap().len(), 1);
        assert!(datalog(&token).unwrap()[0].contains("role(\"developer\")"));
        assert!(authorize(&token, key, &request(Operation::Read, "acme", None, now)).is_ok());
        assert!(matches!(
            authorize(&token, key, &request(Operation::Read, "globex", None, now)),
            Err(Denied::Forbidden { .. })
        ));
        assert!(matches!(
            authorize(
                &token,
                key,
                &request(Operation::Administer, "acme", None, now)
            ),
            Err(Denied::Forbidden { .. })
        ));
    }

    #[test]
    fn an_auditor_reads_and_an_admin_does_everything() {
        let root = keys();
        let now = SystemTime::now();
        let key = |_| Ok(root.public());
        let auditor = mint_session(
            &root,
            1,
            &session(Role::Auditor),
            now + Duration::from_secs(60),
        )
        .unwrap();
        assert!(authorize(&auditor, key, &request(Operation::Read, "acme", None, now)).is_ok());
        assert!(
            authorize(
                &auditor,
                key,
                &request(Operation::Deploy, "acme", Some("x"), now)
            )
            .is_err()
        );
        let admin = mint_session(
            &root,
            1,
            &session(Role::Admin),
            now + Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            authorize(
                &admin,
                key,
                &request(Operation::Administer, "globex", None, now)
            )
            .is_ok()
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let root = keys();
        let now = SystemTime::now();
        let token = mint_session(
            &root,
            1,
            &session(Role::Admin),
            now + Duration::from_secs(60),
        )
        .unwrap();
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            authorize(
                &token,
                |_| Ok(root.public()),
                &request(Operation::Read, "acme", None, later)
            ),
            Err(Denied::Expired)
        ));
    }

    #[test]
    fn a_token_from_another_root_or_tampered_is_invalid() {
        let root = keys();
        let now = SystemTime::now();
        let forged = mint_session(
            &keys(),
            1,
            &session(Role::Admin),
            now + Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            authorize(
                &forged,
                |_| Ok(root.public()),
                &request(Operation::Read, "acme", None, now)
            ),
            Err(Denied::Invalid(_))
        ));
        let token = mint_session(
            &root,
            1,
            &session(Role::Developer),
            now + Duration::from_secs(60),
        )
        .unwrap();
        let mut bytes: Vec<char> = token.chars().collect();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = bytes.into_iter().collect();
        assert!(matches!(
            authorize(
                &tampered,
                |_| Ok(root.public()),
                &request(Operation::Read, "acme", None, now)
            ),
            Err(Denied::Invalid(_))
        ));
    }

    #[test]
    fn an_attenuated_ci_token_only_deploys_its_topology() {
        let root = keys();
        let now = SystemTime::now();
        let token = mint_session(
            &root,
            1,
            &session(Role::Developer),
            now + Duration::from_secs(600),
        )
        .unwrap();
        let parsed = Biscuit::from_base64(&token, |_| Ok(root.public())).unwrap();
        let ci = parsed
            .append(
                BlockBuilder::new()
                    .code(r#"check if operation("deploy"), topology("web")"#)
                    .unwrap(),
            )
            .unwrap()
            .to_base64()
            .unwrap();
        let key = |_| Ok(root.public());
        assert!(
            authorize(
                &ci,
                key,
                &request(Operation::Deploy, "acme", Some("web"), now)
            )
            .is_ok()
        );
        assert!(
            authorize(
                &ci,
                key,
                &request(Operation::Deploy, "acme", Some("db"), now)
            )
            .is_err()
        );
        assert!(
            authorize(
                &ci,
                key,
                &request(Operation::Delete, "acme", Some("web"), now)
            )
            .is_err()
        );
        assert!(authorize(&ci, key, &request(Operation::Read, "acme", None, now)).is_err());
        // A later block cannot widen what the session allowed: a fact claiming another
        // tenant or role in an appended block is not trusted by the policies.
        let widened = parsed
            .append(
                BlockBuilder::new()
                    .code(r#"role("admin"); tenant("globex");"#)
                    .unwrap(),
            )
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(
            authorize(
                &widened,
                key,
                &request(Operation::Administer, "globex", None, now)
            )
            .is_err()
        );
        assert!(
            authorize(
                &widened,
                key,
                &request(Operation::Read, "globex", None, now)
            )
            .is_err()
        );
    }

    #[test]
    fn tokens_under_an_old_root_key_verify_until_it_is_retired() {
        let now = SystemTime::now();
        let (old, new) = (KeyPair::new(), KeyPair::new());
        let expires = now + Duration::from_secs(600);
        let under_old = mint_session(&old, 1, &session(Role::Developer), expires).unwrap();
        let mut ring = Keyring::new(1, old.public()).with(2, new.public());
        let under_new = mint_session(&new, 2, &session(Role::Developer), expires).unwrap();
        let read = request(Operation::Read, "acme", None, now);
        for token in [&under_old, &under_new] {
            assert!(authorize(token, |id| ring.key(id), &read).is_ok());
        }
        ring.retire(1);
        assert_eq!(ring.ids(), [2]);
        assert!(matches!(
            authorize(&under_old, |id| ring.key(id), &read),
            Err(Denied::Invalid(_))
        ));
        assert!(authorize(&under_new, |id| ring.key(id), &read).is_ok());
        // A token that names no key id, or the old id signed by the new key, is refused.
        let swapped = mint_session(&new, 1, &session(Role::Developer), expires).unwrap();
        assert!(authorize(&swapped, |id| ring.key(id), &read).is_err());
    }

    #[test]
    fn an_allowed_request_is_remembered_until_the_token_expires() {
        let root = keys();
        let now = SystemTime::now();
        let expires = now + Duration::from_secs(60);
        let token = mint_session(&root, 1, &session(Role::Developer), expires).unwrap();
        let verified = verify(&token, |_| Ok(root.public())).unwrap();
        let read = request(Operation::Read, "acme", Some("shop"), now);
        assert_eq!(verified.allowed_before(&read), None, "nothing decided yet");
        let allowed = authorize_verified(&verified, &read).unwrap();
        verified.remember_allowed(&read, &allowed);
        assert_eq!(verified.allowed_before(&read), Some(allowed.clone()));
        // Only the same request: another topology, tenant or operation is decided.
        for other in [
            request(Operation::Read, "acme", Some("blog"), now),
            request(Operation::Read, "globex", Some("shop"), now),
            request(Operation::Delete, "acme", Some("shop"), now),
        ] {
            assert_eq!(verified.allowed_before(&other), None, "{other:?}");
        }
        // At the expiry and after, every request is decided anew, and refused.
        let at_expiry = request(Operation::Read, "acme", Some("shop"), expires);
        assert_eq!(verified.allowed_before(&at_expiry), None);
        assert!(matches!(
            authorize_verified(&verified, &at_expiry),
            Err(Denied::Expired)
        ));
        verified.remember_allowed(&at_expiry, &allowed);
        assert_eq!(verified.allowed_before(&at_expiry), None);
    }

    #[test]
    fn an_attenuated_token_is_decided_on_every_request() {
        // An appended block may hold checks on the time of its own: nothing is kept.
        let root = keys();
        let token = attenuated(&root, r#"check if operation("read");"#);
        let verified = verify(&token, |_| Ok(root.public())).unwrap();
        let read = request(Operation::Read, "acme", None, SystemTime::now());
        let allowed = authorize_verified(&verified, &read).unwrap();
        verified.remember_allowed(&read, &allowed);
        assert_eq!(verified.allowed_before(&read), None);
    }

    /// A developer's token with `code` appended, as its holder may write it.
    fn attenuated(root: &KeyPair, code: &str) -> String {
        let token = mint_session(
            root,
            1,
            &session(Role::Developer),
            SystemTime::now() + Duration::from_secs(600),
        )
        .unwrap();
        Biscuit::from_base64(&token, |_| Ok(root.public()))
            .unwrap()
            .append(BlockBuilder::new().code(code).unwrap())
            .unwrap()
            .to_base64()
            .unwrap()
    }

    fn refusal(token: &str, root: &KeyPair) -> String {
        match verify(token, |_| Ok(root.public())) {
            Err(Denied::Invalid(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_datalog_bomb_is_refused_by_its_shape_before_any_evaluation() {
        let root = keys();
        // Sixteen facts and a check that joins them six ways: 16^6 combinations.
        let facts: String = (0..16).map(|i| format!("f({i});")).collect();
        let bomb = attenuated(
            &root,
            &format!(
                "{facts} check if f($a), f($b), f($c), f($d), f($e), f($f), $a + $b + $c + $d + $e + $f < 0;"
            ),
        );
        let why = refusal(&bomb, &root);
        assert!(
            why.contains("a check of block 1 joins 6 predicates"),
            "{why}"
        );
        // Rules derive facts that later joins multiply: none in an attenuation.
        let rules = attenuated(&root, "g($x) <- f($x); f(1);");
        assert!(refusal(&rules, &root).contains("block 1 holds 1 rule(s)"));
        let many: String = (0..17).map(|i| format!("f({i});")).collect();
        assert!(refusal(&attenuated(&root, &many), &root).contains("holds 17 facts"));
        // A narrowing as people write it passes, and still narrows.
        let ci = attenuated(&root, r#"check if operation("deploy"), topology("web");"#);
        let verified = verify(&ci, |_| Ok(root.public())).expect("fits the shape");
        let now = SystemTime::now();
        assert!(
            authorize_verified(
                &verified,
                &request(Operation::Deploy, "acme", Some("web"), now)
            )
            .is_ok()
        );
        assert!(matches!(
            authorize_verified(
                &verified,
                &request(Operation::Delete, "acme", Some("web"), now)
            ),
            Err(Denied::Forbidden { .. })
        ));
        // Past the size anyone needs, a token is not even parsed.
        let long = "A".repeat(MOST_TOKEN_BYTES + 1);
        assert!(refusal(&long, &root).contains("at most"));
    }

    #[test]
    fn too_many_appended_blocks_are_refused() {
        let root = keys();
        let mut token = attenuated(&root, "check if true;");
        for _ in 0..SHAPE.blocks {
            token = Biscuit::from_base64(&token, |_| Ok(root.public()))
                .unwrap()
                .append(BlockBuilder::new().code("check if true;").unwrap())
                .unwrap()
                .to_base64()
                .unwrap();
        }
        let why = refusal(&token, &root);
        assert!(why.contains("appended blocks"), "{why}");
    }
}
