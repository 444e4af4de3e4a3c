//! Node-to-node delegation: the tokens the allocator mints so that one node may call
//! one operation of another node's API, and the decision the called node makes
//! offline, with nothing but the orchestrator's root public keys.
//!
//! ## The vocabulary
//!
//! A delegation token is a biscuit whose authority block, signed by a root key (its id
//! in the token, so keys rotate), says:
//!
//! ```text
//! caller("n1");                                  // the node the token is for
//! caller_key(hex:…);                             // that node's Ed25519 public key
//! target("n2");                                  // the node it may call
//! right("tunnel", "acme", "shop", "db", 5432);   // operation, tenant, topology, service, port
//! expires(2026-11-23T10:05:00Z);                // when it stops working, stated
//! check if time($t), $t < 2026-11-23T10:05:00Z;  // and enforced: a short expiry
//! ```
//!
//! The called node authorizes each call with these facts of its own, and
//! [`NODE_POLICIES`]:
//!
//! ```text
//! time(now); node("n2"); presenter_key(hex:…);   // the key that signed this call
//! operation("tunnel"); resource("acme", "shop", "db", 5432);
//! ```
//!
//! The call is allowed only when the key that signed the call is the key the token
//! names (possession: a token stolen from node 1 is useless from any other node), the
//! token is for this node, and it grants exactly this operation on exactly this
//! resource. For `image.fetch` the resource is the tenant and the image's id, in the
//! service's place (`right("image.fetch", "acme", "", "sha256:…", 0)`): the called node
//! serves only that image's blobs, and only for that tenant. Policies read the authority block and the authorizer only, so a block a
//! holder appends can narrow a token (`check if …`) but never widen it: a `right` fact
//! in an appended block is not seen. `health` rights carry port 0.
//!
//! Adding an operation is adding a [`NodeOperation`]; the policy does not change.
//!
//! ## Deciding a repeat
//!
//! A node verifies a token's signatures once ([`verify`], cached by the node by the
//! token's digest) and decides every call with [`authorize_verified`]. Revocation is
//! checked on every call. The datalog runs once per distinct call (who presents the
//! token, what it asks, of which resource) of a token whose only block is its authority
//! block and which states its expiry: for such a token the policies depend on nothing
//! else that changes, so an allowed call stays allowed until that expiry. A token a
//! holder attenuated, or one minted before the expiry was stated, is decided anew every
//! time (an appended check may name any time).

use std::collections::HashMap;
use std::time::SystemTime;

use biscuit_auth::builder::{Fact, Term, date, fact, int, string};
use biscuit_auth::{Biscuit, BiscuitBuilder, KeyPair, PublicKey, error};

use crate::capability::{limits, revocation_ids};

/// The operations a node's API offers to other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeOperation {
    /// Open a byte stream to one port of one service's replica on the node.
    Tunnel,
    /// Read the health of one service's replicas on the node.
    Health,
    /// Read the blobs (config and layers) of one of a tenant's pushed images that
    /// the node holds. The resource is `(tenant, "", image id, 0)`.
    ImageFetch,
}

impl NodeOperation {
    /// The word used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Health => "health",
            Self::ImageFetch => "image.fetch",
        }
    }
}

/// The called node's policies, in order; the first that matches decides.
pub const NODE_POLICIES: &str = r#"
allow if caller_key($k), presenter_key($k), target($n), node($n), operation($op), resource($te, $to, $s, $p), right($op, $te, $to, $s, $p);
deny if true;
"#;

/// What one node may do on another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The calling node.
    pub caller: String,
    /// Its Ed25519 public key (32 bytes): only requests signed by it may use the token.
    pub caller_key: Vec<u8>,
    /// The called node.
    pub target: String,
    /// The operation.
    pub operation: NodeOperation,
    /// The tenant of the service.
    pub tenant: String,
    /// The topology of the service.
    pub topology: String,
    /// The service.
    pub service: String,
    /// Its container port (0 for operations on the whole service).
    pub port: u16,
    /// When the token stops working.
    pub expires: SystemTime,
}

/// The authority block of a delegation token for `grant`, ready to be signed.
pub fn builder(grant: &Grant, root_key_id: u32) -> Result<BiscuitBuilder, error::Token> {
    Biscuit::builder()
        .fact(fact("caller", &[string(&grant.caller)]))?
        .fact(fact("caller_key", &[Term::Bytes(grant.caller_key.clone())]))?
        .fact(fact("target", &[string(&grant.target)]))?
        .fact(fact(
            "right",
            &[
                string(grant.operation.as_str()),
                string(&grant.tenant),
                string(&grant.topology),
                string(&grant.service),
                int(i64::from(grant.port)),
            ],
        ))?
        .fact(fact("expires", &[date(&grant.expires)]))?
        .code_with_params(
            "check if time($t), $t < {expires}",
            HashMap::from([("expires".to_owned(), Term::from(grant.expires))]),
            HashMap::new(),
        )
        .map(|b| b.root_key_id(root_key_id))
}

impl Grant {
    /// The grant that lets `caller` (whose key is `caller_key`) fetch the blobs of
    /// `tenant`'s image `image` from `target`, until `expires`.
    pub fn image_fetch(
        caller: &str,
        caller_key: Vec<u8>,
        target: &str,
        tenant: &str,
        image: &crate::image::Digest,
        expires: SystemTime,
    ) -> Self {
        Self {
            caller: caller.to_owned(),
            caller_key,
            target: target.to_owned(),
            operation: NodeOperation::ImageFetch,
            tenant: tenant.to_owned(),
            topology: String::new(),
            service: image.as_str().to_owned(),
            port: 0,
            expires,
        }
    }
}

/// Mints a delegation token for `grant`, signed by `root` (id `root_key_id`).
pub fn mint(root: &KeyPair, root_key_id: u32, grant: &Grant) -> Result<Biscuit, error::Token> {
    builder(grant, root_key_id)?.build(root)
}

/// One call a node received, as it knows it.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    /// The public key whose signature over the call verified.
    pub presenter_key: &'a [u8],
    /// This node's name.
    pub node: &'a str,
    /// What is asked.
    pub operation: NodeOperation,
    /// Of which tenant's service.
    pub tenant: &'a str,
    /// Topology.
    pub topology: &'a str,
    /// Service.
    pub service: &'a str,
    /// Port (0 for the whole service).
    pub port: u16,
    /// Now.
    pub now: SystemTime,
}

/// A call that was allowed: who made it and what identifies the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The calling node, as the token names it.
    pub caller: String,
    /// The token's revocation ids, hex.
    pub revocation_ids: Vec<String>,
}

/// Why a call was refused: the reason the ledger records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No token, or not a biscuit, or a signature that does not verify: tampered,
    /// forged, or signed by a root key this node does not know.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// One of the token's revocation ids is revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// The token's expiry has passed.
    #[error("the token has expired")]
    Expired,
    /// The call is signed by a key other than the one the token is bound to.
    #[error("the token is bound to node {caller:?} and was presented by another key")]
    NotTheHolder {
        /// The node the token is for.
        caller: String,
    },
    /// The token is for another node.
    #[error("the token is for node {target:?}, not this one")]
    WrongTarget {
        /// The node it is for.
        target: String,
    },
    /// The token does not grant this operation on this resource (or an appended block
    /// forbids it).
    #[error("the token does not grant {operation} on {resource}")]
    NotGranted {
        /// The operation asked.
        operation: &'static str,
        /// The resource asked, `tenant/topology/service:port`.
        resource: String,
    },
}

/// Decides a call: verifies the token offline against `root_key` (chosen by the
/// token's key id), refuses it if `is_revoked` says any of its ids is revoked, then
/// runs [`NODE_POLICIES`].
pub fn authorize(
    token: &[u8],
    root_key: impl Fn(Option<u32>) -> Result<PublicKey, error::Format>,
    is_revoked: impl Fn(&[String]) -> bool,
    call: &Call<'_>,
) -> Result<Allowed, Refused> {
    let verified = verify(token, root_key)?;
    authorize_verified(&verified, is_revoked, call)
}

/// A delegation token whose signatures and shape verified: what a node may cache by
/// the token's digest, with the calls it was allowed while the answers hold.
pub struct Verified {
    biscuit: Biscuit,
    /// Its revocation ids, hex.
    revocation_ids: Vec<String>,
    /// The calls it was allowed, while they stay allowed.
    allowed: crate::token_cache::Remembered<CallKey, Allowed>,
}

/// A call a token was allowed, without its time: presenter, node, operation, resource.
type CallKey = (Vec<u8>, String, NodeOperation, String, String, String, u16);

/// How many allowed calls a verified token remembers (forgotten all at once when
/// full: a delegation grants one resource).
const REMEMBERED_CALLS: usize = 16;

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("revocation_ids", &self.revocation_ids)
            .field("holds_until", &self.allowed.until())
            .finish_non_exhaustive()
    }
}

impl Verified {
    /// The id of the root key the token was signed with.
    pub fn root_key_id(&self) -> Option<u32> {
        self.biscuit.root_key_id()
    }

    /// The answer given to the same call before, if it was allowed and still holds.
    fn allowed_before(&self, call: &Call<'_>) -> Option<Allowed> {
        self.allowed.get(&Self::key(call), call.now)
    }

    fn remember_allowed(&self, call: &Call<'_>, allowed: &Allowed) {
        self.allowed.keep(Self::key(call), allowed, call.now);
    }

    fn key(call: &Call<'_>) -> CallKey {
        (
            call.presenter_key.to_vec(),
            call.node.to_owned(),
            call.operation,
            call.tenant.to_owned(),
            call.topology.to_owned(),
            call.service.to_owned(),
            call.port,
        )
    }
}

/// Parses `token`, verifies its signatures against the root key its key id names and
/// bounds the shape of what was appended to it (as for sessions,
/// [`capability::SHAPE`](crate::capability::SHAPE)): the costly half of [`authorize`],
/// which a node may cache by token.
pub fn verify(
    token: &[u8],
    root_key: impl Fn(Option<u32>) -> Result<PublicKey, error::Format>,
) -> Result<Verified, Refused> {
    let biscuit = Biscuit::from(token, root_key).map_err(|e| Refused::Invalid(e.to_string()))?;
    crate::capability::check_shape(&biscuit, &crate::capability::SHAPE)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    // Answers hold until the stated expiry, for a token with no appended block.
    let holds_until = match biscuit.block_count() {
        1 => crate::capability::authority_facts(&biscuit).1,
        _ => None,
    };
    Ok(Verified {
        revocation_ids: revocation_ids(&biscuit.revocation_identifiers()),
        allowed: crate::token_cache::Remembered::new(holds_until, REMEMBERED_CALLS),
        biscuit,
    })
}

/// The rest of [`authorize`] for a token already verified: revocation on every call;
/// expiry and the policies decided anew unless this same call was allowed before
/// and the answer holds (see "Deciding a repeat" above).
pub fn authorize_verified(
    verified: &Verified,
    is_revoked: impl Fn(&[String]) -> bool,
    call: &Call<'_>,
) -> Result<Allowed, Refused> {
    if is_revoked(&verified.revocation_ids) {
        return Err(Refused::Revoked);
    }
    if let Some(allowed) = verified.allowed_before(call) {
        return Ok(allowed);
    }
    let allowed = decide(verified, call)?;
    verified.remember_allowed(call, &allowed);
    Ok(allowed)
}

/// Runs [`NODE_POLICIES`] for `call`, with the facts of the node and the call.
fn decide(verified: &Verified, call: &Call<'_>) -> Result<Allowed, Refused> {
    let biscuit = &verified.biscuit;
    let ids = verified.revocation_ids.clone();
    let facts: Vec<Fact> = vec![
        fact("time", &[date(&call.now)]),
        fact("node", &[string(call.node)]),
        fact("presenter_key", &[Term::Bytes(call.presenter_key.to_vec())]),
        fact("operation", &[string(call.operation.as_str())]),
        fact(
            "resource",
            &[
                string(call.tenant),
                string(call.topology),
                string(call.service),
                int(i64::from(call.port)),
            ],
        ),
    ];
    let mut builder = biscuit_auth::AuthorizerBuilder::new().set_limits(limits());
    for f in facts {
        builder = builder
            .fact(f)
            .map_err(|e| Refused::Invalid(e.to_string()))?;
    }
    let mut authorizer = builder
        .code(NODE_POLICIES)
        .and_then(|b| b.build(biscuit))
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    let outcome = authorizer.authorize();
    // What the authority block says, for the decision and its reason.
    let callers: Vec<(String,)> = authorizer
        .query("data($c) <- caller($c)")
        .unwrap_or_default();
    let caller = callers.first().map(|c| c.0.clone()).unwrap_or_default();
    match outcome {
        Ok(_) => Ok(Allowed {
            caller,
            revocation_ids: ids,
        }),
        Err(e) => {
            let expired = matches!(
                &e,
                error::Token::FailedLogic(
                    error::Logic::Unauthorized { checks, .. } | error::Logic::NoMatchingPolicy { checks }
                ) if checks.iter().any(|c| matches!(c, error::FailedCheck::Block(b) if b.block_id == 0 && b.rule.contains("time(")))
            );
            if expired {
                return Err(Refused::Expired);
            }
            let keys: Vec<(Vec<u8>,)> = authorizer
                .query("data($k) <- caller_key($k)")
                .unwrap_or_default();
            if keys.first().map(|k| k.0.as_slice()) != Some(call.presenter_key) {
                return Err(Refused::NotTheHolder { caller });
            }
            let targets: Vec<(String,)> = authorizer
                .query("data($t) <- target($t)")
                .unwrap_or_default();
            let target = targets.first().map(|t| t.0.clone()).unwrap_or_default();
            if target != call.node {
                return Err(Refused::WrongTarget { target });
            }
            Err(Refused::NotGranted {
                operation: call.operation.as_str(),
                resource: format!(
                    "{}/{}/{}:{}",
                    call.tenant, call.topology, call.service, call.port
                ),
            })
        }
    }
}

/// A delegation as its authority block states it: who may call what on whom.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stated {
    /// The calling node.
    pub caller: String,
    /// The called node.
    pub target: String,
    /// The operation.
    pub operation: String,
    /// The tenant of the service.
    pub tenant: String,
    /// The topology of the service.
    pub topology: String,
    /// The service.
    pub service: String,
    /// Its port (0 for operations on the whole service).
    pub port: u16,
    /// Whether the block's own checks (its expiry) still pass at the time asked.
    pub live: bool,
}

/// Reads the grants an authority block states, from its datalog as the audit ledger
/// keeps it (never the token itself). A block of another kind (a session) states none.
/// Liveness is decided by running the block's checks, so it means what a node would
/// decide, not what a second parser thinks the datalog says.
pub fn stated(authority: &str, now: SystemTime) -> Result<Vec<Stated>, error::Token> {
    let mut authorizer = biscuit_auth::AuthorizerBuilder::new()
        .set_limits(limits())
        .code(authority)?
        .fact(fact("time", &[date(&now)]))?
        .code("allow if true;")?
        .build_unauthenticated()?;
    let live = authorizer.authorize().is_ok();
    let rows: Vec<(String, String, String, String, String, String, i64)> = authorizer.query(
        "data($c, $n, $op, $te, $to, $s, $p) <- caller($c), target($n), right($op, $te, $to, $s, $p)",
    )?;
    Ok(rows
        .into_iter()
        .map(
            |(caller, target, operation, tenant, topology, service, port)| Stated {
                caller,
                target,
                operation,
                tenant,
                topology,
                service,
                port: u16::try_from(port).unwrap_or(0),
                live,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn grant(caller_key: &[u8], now: SystemTime) -> Grant {
        Grant {
            caller: "n1".into(),
            caller_key: caller_key.to_vec(),
            target: "n2".into(),
            operation: NodeOperation::Tunnel,
            tenant: "acme".into(),
            topology: "shop".into(),
            service: "db".into(),
            port: 5432,
            expires: now + Duration::from_secs(60),
        }
    }

    #[test]
    fn the_grants_a_ledger_entry_states_are_read_back_with_their_liveness() {
        let root = KeyPair::new();
        let holder = KeyPair::new();
        let now = SystemTime::now();
        let token = mint(&root, 1, &grant(&holder.public().to_bytes(), now)).unwrap();
        // As the ledger keeps it: with a comment naming the key.
        let authority = format!("// root key 1\n{}", token.print_block_source(0).unwrap());
        let read = stated(&authority, now).unwrap();
        assert_eq!(
            read,
            vec![Stated {
                caller: "n1".into(),
                target: "n2".into(),
                operation: "tunnel".into(),
                tenant: "acme".into(),
                topology: "shop".into(),
                service: "db".into(),
                port: 5432,
                live: true,
            }]
        );
        let later = stated(&authority, now + Duration::from_secs(120)).unwrap();
        assert!(!later[0].live, "past its expiry the grant is not live");
        let session = "user(\"ana\"); tenant(\"acme\"); role(\"developer\");";
        assert!(stated(session, now).unwrap().is_empty());
    }

    fn call<'a>(key: &'a [u8], now: SystemTime) -> Call<'a> {
        Call {
            presenter_key: key,
            node: "n2",
            operation: NodeOperation::Tunnel,
            tenant: "acme",
            topology: "shop",
            service: "db",
            port: 5432,
            now,
        }
    }

    #[test]
    fn the_holder_may_call_exactly_what_is_granted() {
        let root = KeyPair::new();
        let now = SystemTime::now();
        let n1 = [1u8; 32];
        let token = mint(&root, 1, &grant(&n1, now)).unwrap().to_vec().unwrap();
        let key = |_| Ok(root.public());
        let never = |_: &[String]| false;
        let allowed = authorize(&token, key, never, &call(&n1, now)).unwrap();
        assert_eq!(allowed.caller, "n1");

        let n3 = [3u8; 32];
        assert_eq!(
            authorize(&token, key, never, &call(&n3, now)),
            Err(Refused::NotTheHolder {
                caller: "n1".into()
            })
        );
        let elsewhere = Call {
            node: "n3",
            ..call(&n1, now)
        };
        assert_eq!(
            authorize(&token, key, never, &elsewhere),
            Err(Refused::WrongTarget {
                target: "n2".into()
            })
        );
        let other_port = Call {
            port: 22,
            ..call(&n1, now)
        };
        assert!(matches!(
            authorize(&token, key, never, &other_port),
            Err(Refused::NotGranted { .. })
        ));
        let health = Call {
            operation: NodeOperation::Health,
            ..call(&n1, now)
        };
        assert!(matches!(
            authorize(&token, key, never, &health),
            Err(Refused::NotGranted { .. })
        ));
        let later = call(&n1, now + Duration::from_secs(61));
        assert_eq!(authorize(&token, key, never, &later), Err(Refused::Expired));
        assert_eq!(
            authorize(&token, key, |_| true, &call(&n1, now)),
            Err(Refused::Revoked)
        );
        let forged = KeyPair::new();
        assert!(matches!(
            authorize(&token, |_| Ok(forged.public()), never, &call(&n1, now)),
            Err(Refused::Invalid(_))
        ));
    }

    #[test]
    fn a_repeat_is_answered_as_before_only_while_that_answer_holds() {
        let root = KeyPair::new();
        // Whole seconds, as biscuit dates are.
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            );
        let n1 = [1u8; 32];
        let minted = mint(&root, 1, &grant(&n1, now)).unwrap();
        let verified = verify(&minted.to_vec().unwrap(), |_| Ok(root.public())).unwrap();
        assert_eq!(
            verified.allowed.until(),
            Some(now + Duration::from_secs(60))
        );
        let never = |_: &[String]| false;
        let allowed = authorize_verified(&verified, never, &call(&n1, now)).unwrap();
        assert_eq!(
            verified.allowed_before(&call(&n1, now + Duration::from_secs(1))),
            Some(allowed.clone()),
            "the same call a second later is answered as before"
        );
        // Revocation is asked every time, though the call was allowed before.
        assert_eq!(
            authorize_verified(&verified, |_| true, &call(&n1, now)),
            Err(Refused::Revoked)
        );
        // Another presenter, another port, the expiry: decided, and refused.
        let n3 = [3u8; 32];
        assert!(matches!(
            authorize_verified(&verified, never, &call(&n3, now)),
            Err(Refused::NotTheHolder { .. })
        ));
        let other_port = Call {
            port: 22,
            ..call(&n1, now)
        };
        assert!(matches!(
            authorize_verified(&verified, never, &other_port),
            Err(Refused::NotGranted { .. })
        ));
        let at_expiry = call(&n1, now + Duration::from_secs(60));
        assert_eq!(verified.allowed_before(&at_expiry), None);
        assert_eq!(
            authorize_verified(&verified, never, &at_expiry),
            Err(Refused::Expired)
        );

        // A holder's block may name any time: nothing is remembered for it.
        let soon = now + Duration::from_secs(5);
        let narrowed = minted
            .append(
                biscuit_auth::BlockBuilder::new()
                    .code_with_params(
                        "check if time($t), $t < {soon}",
                        HashMap::from([("soon".to_owned(), Term::from(soon))]),
                        HashMap::new(),
                    )
                    .unwrap(),
            )
            .unwrap();
        let verified = verify(&narrowed.to_vec().unwrap(), |_| Ok(root.public())).unwrap();
        assert_eq!(verified.allowed.until(), None);
        authorize_verified(&verified, never, &call(&n1, now)).unwrap();
        assert_eq!(verified.allowed_before(&call(&n1, now)), None);
        assert!(
            authorize_verified(&verified, never, &call(&n1, soon)).is_err(),
            "the holder's check decides past its time"
        );
    }

    #[test]
    fn an_appended_block_narrows_and_never_widens() {
        let root = KeyPair::new();
        let now = SystemTime::now();
        let n1 = [1u8; 32];
        let token = mint(&root, 1, &grant(&n1, now)).unwrap();
        let key = |_| Ok(root.public());
        let never = |_: &[String]| false;
        let widened = token
            .append(
                biscuit_auth::BlockBuilder::new()
                    .code(r#"right("tunnel", "acme", "shop", "admin", 22);"#)
                    .unwrap(),
            )
            .unwrap()
            .to_vec()
            .unwrap();
        let admin = Call {
            service: "admin",
            port: 22,
            ..call(&n1, now)
        };
        assert!(matches!(
            authorize(&widened, key, never, &admin),
            Err(Refused::NotGranted { .. })
        ));
        let narrowed = token
            .append(
                biscuit_auth::BlockBuilder::new()
                    .code(r#"check if operation("health");"#)
                    .unwrap(),
            )
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(matches!(
            authorize(&narrowed, key, never, &call(&n1, now)),
            Err(Refused::NotGranted { .. })
        ));
    }
}
