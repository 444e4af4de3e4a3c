//! Secrets the servers of one control plane keep in their shared database, sealed
//! (AES-256-GCM) under a key each server is given but the database never holds: a dump
//! of the database alone yields no root key and no admin token.
//!
//! Each sealed value is bound to what it is (its name, say `root key 2`), so a value
//! copied into another row does not open there.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The length of a secrets key, in bytes (64 hex characters).
pub const KEY_LEN: usize = 32;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    /// The key as given is not 64 hex characters.
    #[error("the secrets key must be 64 hex characters (32 random bytes): {0}")]
    BadKey(String),
    /// The sealed value did not open: another key sealed it, or it was altered.
    #[error(
        "{0} does not open with this server's secrets key: the servers of one control plane must be given the same key"
    )]
    WrongKey(String),
    /// The database could not be read or written.
    #[error("sealed secrets in the database: {0}")]
    Database(String),
}

/// The key secrets are sealed under.
pub struct SealingKey(LessSafeKey);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// The key written as 64 hex characters (surrounding space ignored).
    pub fn from_hex(text: &str) -> Result<Self, SealingError> {
        let bytes = berth_protocol::assignment::hex_decode(text.trim())
            .filter(|b| b.len() == KEY_LEN)
            .ok_or_else(|| SealingError::BadKey(format!("{} characters", text.trim().len())))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| SealingError::BadKey("unusable".to_owned()))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// A new random key, as hex.
    pub fn generate_hex() -> String {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        hex(&bytes)
    }

    /// `secret`, sealed as `what`: hex of a fresh nonce, then the ciphertext and tag.
    pub fn seal(&self, what: &str, secret: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut sealed = secret.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(what.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any length the database holds");
        let mut out = hex(&nonce);
        out.push_str(&hex(&sealed));
        out
    }

    /// What `sealed` holds, if it was sealed as `what` under this key.
    pub fn open(&self, what: &str, sealed: &str) -> Result<Vec<u8>, SealingError> {
        let wrong = || SealingError::WrongKey(what.to_owned());
        let bytes = berth_protocol::assignment::hex_decode(sealed).ok_or_else(wrong)?;
        if bytes.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut body = body.to_vec();
        let opened = self
            .0
            .open_in_place(nonce, Aad::from(what.as_bytes()), &mut body)
            .map_err(|_| wrong())?;
        Ok(opened.to_vec())
    }
}

/// The secret `name` that the servers sharing `db` share, sealed there under `seal`:
/// the one a server stored first, or `make()` when none has (stored for the others).
pub async fn shared_secret(
    db: &sea_orm::DatabaseConnection,
    seal: &SealingKey,
    name: &str,
    make: impl FnOnce() -> String,
) -> Result<String, SealingError> {
    use crate::entity::sealed_secret;
    use sea_orm::{ActiveValue::Set, EntityTrait};
    let stored = |e: sea_orm::DbErr| SealingError::Database(e.to_string());
    let found = sealed_secret::Entity::find_by_id(name.to_owned())
        .one(db)
        .await
        .map_err(stored)?;
    let sealed = match found {
        Some(row) => row.sealed,
        None => {
            let row = sealed_secret::ActiveModel {
                name: Set(name.to_owned()),
                sealed: Set(seal.seal(name, make().as_bytes())),
            };
            // Another server may store its own at the same moment: the first kept wins.
            sealed_secret::Entity::insert(row)
                .on_conflict(
                    sea_orm::sea_query::OnConflict::column(sealed_secret::Column::Name)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(db)
                .await
                .map_err(stored)?;
            sealed_secret::Entity::find_by_id(name.to_owned())
                .one(db)
                .await
                .map_err(stored)?
                .ok_or_else(|| SealingError::Database(format!("{name} vanished once stored")))?
                .sealed
        }
    };
    let secret = seal.open(name, &sealed)?;
    String::from_utf8(secret).map_err(|_| SealingError::WrongKey(name.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_name() {
        let key = SealingKey::from_hex(&SealingKey::generate_hex()).expect("key");
        let sealed = key.seal("root key 1", b"private");
        assert!(!sealed.contains(&hex(b"private")));
        assert_eq!(key.open("root key 1", &sealed).expect("opens"), b"private");
        assert!(
            key.open("root key 2", &sealed).is_err(),
            "bound to its name"
        );
        let other = SealingKey::from_hex(&SealingKey::generate_hex()).expect("key");
        let error = other.open("root key 1", &sealed).expect_err("another key");
        assert!(error.to_string().contains("same key"), "{error}");
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(sealed, key.seal("root key 1", b"private"));
    }

    #[test]
    fn a_key_must_be_32_bytes_of_hex() {
        assert!(SealingKey::from_hex("abcd").is_err());
        assert!(SealingKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(SealingKey::from_hex(&format!(" {}\n", "ab".repeat(32))).is_ok());
    }
}
