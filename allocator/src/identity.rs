//! Nodes joining the pool and proving who they are.
//!
//! An admin creates a one-time join token; the allocator keeps only its hash. A node
//! presents the token once, with the public half of a key pair it made; from then on
//! the allocator knows the node by that key. Requests in a node's name are verified
//! here: the signature must match the key registered for the name the request claims,
//! and the sequence number must grow, so a request can be neither forged nor replayed.

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, UnparsedPublicKey};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionTrait,
};
use sha2::{Digest, Sha256};

use crate::entity::{join_token, node_identity};

/// Why a join or a signed request was refused. Messages never echo secrets.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// The token is not one the allocator issued.
    #[error("the join token is not valid")]
    UnknownToken,
    /// The token was used already.
    #[error("the join token has been used already; ask an admin for a new one")]
    UsedToken,
    /// The token expired.
    #[error("the join token has expired; ask an admin for a new one")]
    ExpiredToken,
    /// Another node has the name.
    #[error("a node named {0:?} has joined already")]
    NameTaken(String),
    /// The name is not usable.
    #[error(
        "{0:?} cannot name a node: use lower-case letters, digits and '-', starting with a letter or digit (at most 63)"
    )]
    BadName(String),
    /// The key is not an Ed25519 public key.
    #[error("the public key must be 32 bytes of Ed25519")]
    BadKey,
    /// No node has this name.
    #[error("no node named {0:?} has joined")]
    UnknownNode(String),
    /// The signature does not verify with the node's key.
    #[error("the request is not signed by node {0:?}")]
    BadSignature(String),
    /// The sequence number does not grow: a replay or a stale request.
    #[error(
        "request sequence {sequence} from node {node:?} is not newer than the last one accepted"
    )]
    Replay {
        /// The node.
        node: String,
        /// The refused sequence.
        sequence: u64,
    },
}

/// Hex SHA-256, as join tokens are stored.
fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `name` may name a node.
pub fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Join tokens and node identities over the allocator's database.
#[derive(Clone, Debug)]
pub struct Identities {
    db: DatabaseConnection,
}

impl Identities {
    /// Identities over `db` (migrated by [`crate::Allocator::open`]).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Creates a one-time join token valid for `ttl_ms`, returning it. Only its hash
    /// is stored, so it is shown this once.
    pub async fn create_join_token(
        &self,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<String, IdentityError> {
        let mut bytes = [0u8; 24];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| DbErr::Custom("the system random source failed".into()))?;
        let token = format!(
            "bjt_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        join_token::Entity::insert(join_token::ActiveModel {
            hash: Set(hash_token(&token)),
            created_at_ms: Set(now_ms),
            expires_at_ms: Set(now_ms.saturating_add(ttl_ms)),
            used_by: Set(None),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(token)
    }

    /// Spends `token` to register `node` with `public_key`. The token is consumed by a
    /// conditional update, so two nodes racing with one token cannot both join.
    pub async fn join(
        &self,
        token: &str,
        node: &str,
        public_key: &[u8],
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        if !valid_node_name(node) {
            return Err(IdentityError::BadName(node.to_owned()));
        }
        if public_key.len() != 32 {
            return Err(IdentityError::BadKey);
        }
        let hash = hash_token(token);
        let txn = self.db.begin().await?;
        match Self::join_in(&txn, &hash, node, public_key, now_ms).await {
            Ok(()) => {
                txn.commit().await?;
                Ok(())
            }
            Err(e) => {
                // Explicitly, so the token is not left spent by a failed join and SQLite's
                // write lock is released at once.
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    async fn join_in(
        txn: &sea_orm::DatabaseTransaction,
        hash: &str,
        node: &str,
        public_key: &[u8],
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        let spent = join_token::Entity::update_many()
            .col_expr(join_token::Column::UsedBy, Expr::value(node.to_owned()))
            .filter(join_token::Column::Hash.eq(hash))
            .filter(join_token::Column::UsedBy.is_null())
            .filter(join_token::Column::ExpiresAtMs.gt(now_ms))
            .exec(txn)
            .await?;
        if spent.rows_affected != 1 {
            let row = join_token::Entity::find_by_id(hash.to_owned())
                .one(txn)
                .await?;
            return Err(match row {
                None => IdentityError::UnknownToken,
                Some(r) if r.used_by.is_some() => IdentityError::UsedToken,
                Some(_) => IdentityError::ExpiredToken,
            });
        }
        if node_identity::Entity::find_by_id(node.to_owned())
            .one(txn)
            .await?
            .is_some()
        {
            return Err(IdentityError::NameTaken(node.to_owned()));
        }
        node_identity::Entity::insert(node_identity::ActiveModel {
            name: Set(node.to_owned()),
            public_key: Set(public_key.to_vec()),
            last_sequence: Set(0),
            joined_at_ms: Set(now_ms),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    /// The public key `node` registered when it joined.
    pub async fn public_key(&self, node: &str) -> Result<Option<Vec<u8>>, IdentityError> {
        Ok(node_identity::Entity::find_by_id(node.to_owned())
            .one(&self.db)
            .await?
            .map(|n| n.public_key))
    }

    /// Whether a node of this name has joined.
    pub async fn is_joined(&self, node: &str) -> Result<bool, IdentityError> {
        Ok(node_identity::Entity::find_by_id(node.to_owned())
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Verifies a request made in `node`'s name: the signature over `payload` must
    /// verify with the node's registered key, and `sequence` must be newer than any
    /// accepted before (recorded atomically, so concurrent replays cannot both pass).
    pub async fn verify(
        &self,
        node: &str,
        payload: &[u8],
        signature: &[u8],
        sequence: u64,
    ) -> Result<(), IdentityError> {
        let identity = node_identity::Entity::find_by_id(node.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| IdentityError::UnknownNode(node.to_owned()))?;
        UnparsedPublicKey::new(&ED25519, &identity.public_key)
            .verify(payload, signature)
            .map_err(|_| IdentityError::BadSignature(node.to_owned()))?;
        let sequence_i64 = i64::try_from(sequence).unwrap_or(i64::MAX);
        let advanced = node_identity::Entity::update_many()
            .col_expr(
                node_identity::Column::LastSequence,
                Expr::value(sequence_i64),
            )
            .filter(node_identity::Column::Name.eq(node))
            .filter(node_identity::Column::LastSequence.lt(sequence_i64))
            .exec(&self.db)
            .await?;
        if advanced.rows_affected != 1 {
            return Err(IdentityError::Replay {
                node: node.to_owned(),
                sequence,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(valid_node_name("node-1"));
        assert!(!valid_node_name("Node"));
        assert!(!valid_node_name("a.b"));
        assert!(!valid_node_name(""));
    }

    #[test]
    fn tokens_are_stored_hashed() {
        assert_eq!(hash_token("x").len(), 64);
        assert_ne!(hash_token("x"), hash_token("y"));
    }
}
