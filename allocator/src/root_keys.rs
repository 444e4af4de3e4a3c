//! The platform's root keys: the ones that sign session and delegation tokens, each with
//! an id that tokens carry, so keys rotate without breaking tokens in flight.
//!
//! Rotation: [`RootKeys::rotate`] makes a new key that signs sessions from then on; the
//! old one still verifies. Delegations, which nodes verify, are signed with the new key
//! only [`PROPAGATION`] later, once every connected node has been sent it, so no node
//! meets a token under a key it has not heard of. [`RootKeys::retire`] drops a key once
//! every token it signed has expired (it refuses earlier unless forced, since tokens
//! under it stop working at once). Keys are kept in one owner-only file,
//! `ID PRIVATE_KEY_HEX SUPERSEDED_AT_MS INTRODUCED_AT_MS` a line, written whole and
//! renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_protocol::capability::Keyring;
use biscuit_auth::{Algorithm, KeyPair, PrivateKey};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
};

pub use berth_api::audit::RootKeyInfo;

use crate::entity::root_key;
use crate::sealing::SealingKey;

/// How long after a rotation delegations are still signed with the previous key: a
/// new key reaches connected nodes on their streams at once, and within two rechecks
/// of a stream at worst; this leaves room for both.
pub const PROPAGATION: Duration = Duration::from_secs(5);

/// Why a key cannot be retired.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// No key has this id.
    #[error("there is no root key {0}")]
    Unknown(u32),
    /// The key signs new tokens.
    #[error("root key {0} signs new tokens; rotate first, then retire it")]
    Signing(u32),
    /// Tokens it signed may still be valid.
    #[error(
        "tokens signed with root key {id} may be valid until {until_ms} (Unix ms); retire it after that, or force it and those tokens are refused at once"
    )]
    TooSoon {
        /// The key.
        id: u32,
        /// When the last token it may have signed expires.
        until_ms: i64,
    },
    /// The database holding the keys could not be read or written.
    #[error("root keys in the database")]
    Database(#[from] sea_orm::DbErr),
    /// A key in the database does not open with this server's secrets key.
    #[error("root key {id} in the database")]
    Sealed {
        /// The key.
        id: u32,
        /// Why it does not open.
        #[source]
        source: crate::sealing::SealingError,
    },
    /// What the database holds is not a key.
    #[error("root keys in the database: {0}")]
    Corrupt(String),
    /// The key file could not be read or written.
    #[error("root keys in {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds something else than keys.
    #[error("root keys in {}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

#[derive(Debug)]
struct Key {
    pair: Arc<KeyPair>,
    superseded_at_ms: Option<i64>,
    introduced_at_ms: i64,
}

#[derive(Debug, Default)]
struct Ring {
    keys: BTreeMap<u32, Key>,
}

impl Ring {
    /// A ring of one key, `pair`, as id 1.
    fn first(pair: KeyPair) -> Self {
        let mut ring = Ring::default();
        ring.keys.insert(
            1,
            Key {
                pair: Arc::new(pair),
                superseded_at_ms: None,
                introduced_at_ms: 0,
            },
        );
        ring
    }

    fn signing(&self) -> Option<(u32, &Key)> {
        self.keys.iter().next_back().map(|(id, key)| (*id, key))
    }

    /// Whether both hold the same keys with the same times.
    fn same_as(&self, other: &Ring) -> bool {
        self.keys.len() == other.keys.len()
            && self.keys.iter().zip(&other.keys).all(|((a, x), (b, y))| {
                a == b
                    && x.pair.public() == y.pair.public()
                    && x.superseded_at_ms == y.superseded_at_ms
                    && x.introduced_at_ms == y.introduced_at_ms
            })
    }
}

/// The root keys, shared by every part of the control plane that mints or verifies.
#[derive(Clone, Debug)]
pub struct RootKeys {
    ring: Arc<RwLock<Ring>>,
    /// The key file, when the keys are kept in one.
    path: Option<PathBuf>,
    /// The database, when the keys are kept there, sealed under this key.
    database: Option<(DatabaseConnection, Arc<SealingKey>)>,
    /// Held by a database reload from its read to its swap: a reload that read the
    /// rows before a rotation committed cannot then replace what the rotation's own
    /// reload took.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl RootKeys {
    /// Keys held in memory only, starting with `key` as id 1 (tests, benchmarks).
    pub fn in_memory(key: KeyPair) -> Self {
        Self {
            ring: Arc::new(RwLock::new(Ring::first(key))),
            path: None,
            database: None,
            reloading: Arc::default(),
        }
    }

    /// The keys kept in `path`, made (one key, id 1) when the file does not exist.
    /// `legacy`, a single private key in hex from before keys had ids, becomes key 1.
    pub fn open(path: &Path, legacy: Option<&Path>) -> Result<Self, RootKeyError> {
        let store = |message: String| RootKeyError::Malformed {
            path: path.to_owned(),
            message,
        };
        let ring = match Self::parse(path)? {
            Some(ring) => ring,
            None => {
                let pair = match legacy.map(std::fs::read_to_string) {
                    Some(Ok(hex)) => KeyPair::from(
                        &PrivateKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
                            .map_err(|e| store(format!("the legacy key: {e}")))?,
                    ),
                    _ => KeyPair::new(),
                };
                Ring::first(pair)
            }
        };
        let keys = Self {
            ring: Arc::new(RwLock::new(ring)),
            path: Some(path.to_owned()),
            database: None,
            reloading: Arc::default(),
        };
        keys.save(&keys.read())?;
        Ok(keys)
    }

    /// The keys in the file at `path`; `None` when there is no file.
    fn parse(path: &Path) -> Result<Option<Ring>, RootKeyError> {
        let store = |message: String| RootKeyError::Malformed {
            path: path.to_owned(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RootKeyError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut ring = Ring::default();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = |what: &str| store(format!("line {}: {what}", n + 1));
            let mut fields = line.split_whitespace();
            let id = fields
                .next()
                .and_then(|f| f.parse::<u32>().ok())
                .ok_or_else(|| bad("the key id is not a number"))?;
            let private = fields
                .next()
                .and_then(|f| PrivateKey::from_bytes_hex(f, Algorithm::Ed25519).ok())
                .ok_or_else(|| bad("the private key is not Ed25519 in hex"))?;
            let superseded = fields
                .next()
                .and_then(|f| f.parse::<i64>().ok())
                .filter(|at| *at > 0);
            let introduced = fields.next().and_then(|f| f.parse::<i64>().ok());
            ring.keys.insert(
                id,
                Key {
                    pair: Arc::new(KeyPair::from(&private)),
                    superseded_at_ms: superseded,
                    introduced_at_ms: introduced.unwrap_or(0),
                },
            );
        }
        if ring.keys.is_empty() {
            return Err(store("the file holds no key".to_owned()));
        }
        Ok(Some(ring))
    }

    /// Reads the key file again, taking what another server sharing it rotated or
    /// retired; whether the keys changed. The file is the truth: a key it no longer
    /// holds is no longer accepted. A missing or unreadable file changes nothing.
    fn reload_file(&self) -> Result<bool, RootKeyError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        // Read under the lock a rotation here writes under: a file read before the
        // rotation cannot then replace the rotated ring.
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let Some(fresh) = Self::parse(path)? else {
            return Ok(false);
        };
        if ring.same_as(&fresh) {
            return Ok(false);
        }
        *ring = fresh;
        Ok(true)
    }

    /// Under the write lock, takes the file's keys first, so that a change made
    /// through this server builds on one another server made.
    fn refresh(&self, ring: &mut Ring) -> Result<(), RootKeyError> {
        if let Some(path) = &self.path
            && let Some(fresh) = Self::parse(path)?
        {
            *ring = fresh;
        }
        Ok(())
    }

    /// An exclusive lock on the key file's companion `.lock` file, held while a change
    /// reads the file, makes the change and writes it: servers sharing the data
    /// directory change the keys one at a time, so neither loses the other's change.
    /// Released when dropped.
    fn lock_file(&self) -> Result<Option<std::fs::File>, RootKeyError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let lock = path.with_extension("lock");
        let store = |source: std::io::Error| RootKeyError::Io {
            path: lock.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(store)?;
        file.lock().map_err(store)?;
        Ok(Some(file))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, ring: &Ring) -> Result<(), RootKeyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let store = |source: std::io::Error| RootKeyError::Io {
            path: path.clone(),
            source,
        };
        let text: String = ring
            .keys
            .iter()
            .map(|(id, key)| {
                format!(
                    "{id} {} {} {}\n",
                    key.pair.private().to_bytes_hex(),
                    key.superseded_at_ms.unwrap_or(0),
                    key.introduced_at_ms
                )
            })
            .collect();
        let temporary = path.with_extension("new");
        let _ = std::fs::remove_file(&temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(store)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(store)?;
        file.sync_all().map_err(store)?;
        std::fs::rename(&temporary, path).map_err(store)
    }

    /// The key new tokens are signed with, and its id.
    pub fn signing(&self) -> (u32, Arc<KeyPair>) {
        let ring = self.read();
        let (id, key) = ring.signing().expect("a ring always holds a key");
        (id, key.pair.clone())
    }

    /// The key delegations are signed with at `now_ms`: the newest one nodes have had
    /// [`PROPAGATION`] to hear of.
    pub fn delegating(&self, now_ms: i64) -> (u32, Arc<KeyPair>) {
        let ring = self.read();
        let propagation = i64::try_from(PROPAGATION.as_millis()).unwrap_or(i64::MAX);
        let known = ring
            .keys
            .iter()
            .rev()
            .find(|(_, key)| key.introduced_at_ms.saturating_add(propagation) <= now_ms);
        let (id, key) = known
            .or_else(|| ring.keys.iter().next())
            .expect("a ring always holds a key");
        (*id, key.pair.clone())
    }

    /// The public keys tokens are verified against.
    pub fn keyring(&self) -> Keyring {
        self.read()
            .keys
            .iter()
            .fold(Keyring::default(), |ring, (id, key)| {
                ring.with(*id, key.pair.public())
            })
    }

    /// The public keys by id, as nodes are sent them.
    pub fn public_keys(&self) -> BTreeMap<u32, Vec<u8>> {
        self.read()
            .keys
            .iter()
            .map(|(id, key)| (*id, key.pair.public().to_bytes().to_vec()))
            .collect()
    }

    /// Every key, the signing one last.
    pub fn list(&self) -> Vec<RootKeyInfo> {
        let ring = self.read();
        let signing = ring.signing().map(|(id, _)| id);
        ring.keys
            .iter()
            .map(|(id, key)| RootKeyInfo {
                id: *id,
                public_key: format!(
                    "ed25519/{}",
                    key.pair
                        .public()
                        .to_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                ),
                signing: Some(*id) == signing,
                superseded_at_ms: key.superseded_at_ms,
            })
            .collect()
    }

    /// Makes a new key that signs every token from now on (in the file, or in memory).
    fn rotate_in_file(&self, now_ms: i64) -> Result<RootKeyInfo, RootKeyError> {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let _one_server_at_a_time = self.lock_file()?;
        self.refresh(&mut ring)?;
        let next = ring.keys.keys().next_back().map_or(1, |id| id + 1);
        if let Some((_, key)) = ring.keys.iter_mut().next_back() {
            key.superseded_at_ms.get_or_insert(now_ms);
        }
        ring.keys.insert(
            next,
            Key {
                pair: Arc::new(KeyPair::new()),
                superseded_at_ms: None,
                introduced_at_ms: now_ms,
            },
        );
        if let Err(e) = self.save(&ring) {
            ring.keys.remove(&next);
            if let Some((_, key)) = ring.keys.iter_mut().next_back() {
                key.superseded_at_ms = None;
            }
            return Err(e);
        }
        drop(ring);
        Ok(self
            .list()
            .into_iter()
            .find(|k| k.id == next)
            .expect("the key just made"))
    }

    /// Whether [`Self::retire`] would retire key `id` now.
    pub fn check_retire(
        &self,
        id: u32,
        now_ms: i64,
        lifetime: Duration,
        force: bool,
    ) -> Result<(), RootKeyError> {
        Self::retirable(&self.read(), id, now_ms, lifetime, force)
    }

    fn retirable(
        ring: &Ring,
        id: u32,
        now_ms: i64,
        lifetime: Duration,
        force: bool,
    ) -> Result<(), RootKeyError> {
        let Some(key) = ring.keys.get(&id) else {
            return Err(RootKeyError::Unknown(id));
        };
        let Some(superseded) = key.superseded_at_ms else {
            return Err(RootKeyError::Signing(id));
        };
        // It may sign delegations until PROPAGATION after it stopped signing sessions.
        let until_ms = superseded.saturating_add(
            i64::try_from((lifetime + PROPAGATION).as_millis()).unwrap_or(i64::MAX),
        );
        if !force && now_ms < until_ms {
            return Err(RootKeyError::TooSoon { id, until_ms });
        }
        Ok(())
    }

    /// [`Self::retire`] in the file, or in memory.
    fn retire_in_file(
        &self,
        id: u32,
        now_ms: i64,
        lifetime: Duration,
        force: bool,
    ) -> Result<(), RootKeyError> {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let _one_server_at_a_time = self.lock_file()?;
        self.refresh(&mut ring)?;
        Self::retirable(&ring, id, now_ms, lifetime, force)?;
        let removed = ring.keys.remove(&id);
        if let Err(e) = self.save(&ring) {
            if let Some(key) = removed {
                ring.keys.insert(id, key);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Reads the keys again (from the key file, or the database), taking what another
    /// server rotated or retired; whether they changed. The store is the truth: a key
    /// it no longer holds is no longer accepted. A missing key file changes nothing.
    pub async fn reload(&self) -> Result<bool, RootKeyError> {
        let Some((db, seal)) = &self.database else {
            return self.reload_file();
        };
        let _one_reload_at_a_time = self.reloading.lock().await;
        let fresh = load(db, seal).await?;
        if fresh.keys.is_empty() {
            return Ok(false);
        }
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        if ring.same_as(&fresh) {
            return Ok(false);
        }
        *ring = fresh;
        Ok(true)
    }

    /// Makes a new key that signs every token from now on; the others keep verifying.
    pub async fn rotate(&self, now_ms: i64) -> Result<RootKeyInfo, RootKeyError> {
        let Some((db, seal)) = &self.database else {
            return self.rotate_in_file(now_ms);
        };
        // Servers rotating at once: the id is the row's key, so one of two inserts of
        // the same id fails and that server tries again on top of the other's key.
        let mut tries = 0;
        let next = loop {
            tries += 1;
            let ring = load(db, seal).await?;
            let next = ring.keys.keys().next_back().map_or(1, |id| id + 1);
            let pair = KeyPair::new();
            let made = async {
                let txn = db.begin().await?;
                root_key::Entity::update_many()
                    .col_expr(root_key::Column::SupersededAtMs, now_ms.into())
                    .filter(root_key::Column::SupersededAtMs.is_null())
                    .exec(&txn)
                    .await?;
                root_key::Entity::insert(row(seal, next, &pair, None, now_ms))
                    .exec_without_returning(&txn)
                    .await?;
                txn.commit().await
            }
            .await;
            match made {
                Ok(()) => break next,
                Err(_) if tries < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        };
        self.reload().await?;
        self.list()
            .into_iter()
            .find(|k| k.id == next)
            .ok_or_else(|| RootKeyError::Corrupt(format!("key {next} vanished once made")))
    }

    /// Stops accepting key `id`. Refused for the signing key, and, unless `force`,
    /// while tokens it signed may be valid: until `lifetime` (the longest a token
    /// lives) after it stopped signing.
    pub async fn retire(
        &self,
        id: u32,
        now_ms: i64,
        lifetime: Duration,
        force: bool,
    ) -> Result<(), RootKeyError> {
        let Some((db, seal)) = &self.database else {
            return self.retire_in_file(id, now_ms, lifetime, force);
        };
        let ring = load(db, seal).await?;
        Self::retirable(&ring, id, now_ms, lifetime, force)?;
        root_key::Entity::delete_by_id(i64::from(id))
            .exec(db)
            .await?;
        self.reload().await?;
        Ok(())
    }

    /// The keys kept in the database `db`, sealed under `seal`, made (one key, id 1)
    /// when it holds none: taken from the key file at `import` if there is one (a
    /// control plane that kept its keys in its data directory before), else new.
    pub async fn open_in_database(
        db: DatabaseConnection,
        seal: SealingKey,
        import: Option<&Path>,
    ) -> Result<Self, RootKeyError> {
        let seal = Arc::new(seal);
        let mut ring = load(&db, &seal).await?;
        if ring.keys.is_empty() {
            let imported = match import {
                Some(path) => Self::parse(path)?,
                None => None,
            };
            let first = imported.unwrap_or_else(|| Ring::first(KeyPair::new()));
            let rows: Vec<_> = first
                .keys
                .iter()
                .map(|(id, key)| {
                    row(
                        &seal,
                        *id,
                        &key.pair,
                        key.superseded_at_ms,
                        key.introduced_at_ms,
                    )
                })
                .collect();
            // Another server starting at once may have made its own: the first kept
            // wins, and both use it.
            let _ = root_key::Entity::insert_many(rows)
                .on_conflict(
                    sea_orm::sea_query::OnConflict::column(root_key::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&db)
                .await?;
            ring = load(&db, &seal).await?;
        }
        Ok(Self {
            ring: Arc::new(RwLock::new(ring)),
            path: None,
            database: Some((db, seal)),
            reloading: Arc::default(),
        })
    }
}

/// What a sealed root key is bound to.
fn sealed_as(id: u32) -> String {
    format!("root key {id}")
}

fn row(
    seal: &SealingKey,
    id: u32,
    pair: &KeyPair,
    superseded_at_ms: Option<i64>,
    introduced_at_ms: i64,
) -> root_key::ActiveModel {
    let private = pair.private().to_bytes();
    root_key::ActiveModel {
        id: Set(i64::from(id)),
        sealed: Set(seal.seal(&sealed_as(id), private.as_ref())),
        superseded_at_ms: Set(superseded_at_ms),
        introduced_at_ms: Set(introduced_at_ms),
    }
}

/// Every key in the database, opened.
async fn load(db: &DatabaseConnection, seal: &SealingKey) -> Result<Ring, RootKeyError> {
    let rows = root_key::Entity::find().all(db).await?;
    let mut ring = Ring::default();
    for r in rows {
        let id = u32::try_from(r.id)
            .map_err(|_| RootKeyError::Corrupt(format!("key id {} is out of range", r.id)))?;
        let private = seal
            .open(&sealed_as(id), &r.sealed)
            .map_err(|source| RootKeyError::Sealed { id, source })?;
        let private = PrivateKey::from_bytes(&private, Algorithm::Ed25519)
            .map_err(|e| RootKeyError::Corrupt(format!("key {id}: {e}")))?;
        ring.keys.insert(
            id,
            Key {
                pair: Arc::new(KeyPair::from(&private)),
                superseded_at_ms: r.superseded_at_ms,
                introduced_at_ms: r.introduced_at_ms,
            },
        );
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_signs_with_the_new_key_verifies_both_and_retires_the_old_one_late() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-keys");
        let keys = RootKeys::open(&path, None).unwrap();
        let (first, _) = keys.signing();
        assert_eq!(first, 1);
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            keys.retire_in_file(1, 0, hour, true),
            Err(RootKeyError::Signing(1))
        ));
        let added = keys.rotate_in_file(1_000).unwrap();
        assert_eq!((added.id, added.signing), (2, true));
        assert_eq!(keys.signing().0, 2);
        assert_eq!(keys.keyring().ids(), vec![1, 2]);
        // Reopened from the file: the same keys, the same signing key.
        let reopened = RootKeys::open(&path, None).unwrap();
        assert_eq!(reopened.list(), keys.list());
        // Delegations keep the old key until nodes have had time to hear of the new.
        assert_eq!(keys.delegating(1_000).0, 1);
        assert_eq!(keys.delegating(5_999).0, 1);
        assert_eq!(keys.delegating(6_000).0, 2);
        assert!(matches!(
            keys.retire_in_file(1, 2_000, hour, false),
            Err(RootKeyError::TooSoon {
                id: 1,
                until_ms: 3_606_000
            })
        ));
        keys.retire_in_file(1, 3_606_000, hour, false).unwrap();
        assert_eq!(keys.keyring().ids(), vec![2]);
        assert_eq!(
            RootKeys::open(&path, None).unwrap().keyring().ids(),
            vec![2]
        );
        assert!(matches!(
            keys.retire_in_file(7, 0, hour, true),
            Err(RootKeyError::Unknown(7))
        ));
    }

    #[test]
    fn a_legacy_key_becomes_key_one_and_a_damaged_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("root-key");
        let old = KeyPair::new();
        std::fs::write(&legacy, old.private().to_bytes_hex()).unwrap();
        let keys = RootKeys::open(&dir.path().join("root-keys"), Some(&legacy)).unwrap();
        assert_eq!(keys.signing().1.public(), old.public());
        let damaged = dir.path().join("damaged");
        std::fs::write(&damaged, "1 nothex 0\n").unwrap();
        let error = RootKeys::open(&damaged, None).unwrap_err().to_string();
        assert!(
            error.contains("line 1") && error.contains("Ed25519"),
            "{error}"
        );
    }

    #[test]
    fn servers_sharing_the_key_file_take_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-keys");
        let (a, b) = (
            RootKeys::open(&path, None).unwrap(),
            RootKeys::open(&path, None).unwrap(),
        );
        assert!(!b.reload_file().unwrap(), "nothing changed yet");
        a.rotate_in_file(1_000).unwrap();
        assert!(b.reload_file().unwrap());
        assert_eq!(b.keyring().ids(), vec![1, 2]);
        assert_eq!(b.signing().1.public(), a.signing().1.public());
        assert!(!b.reload_file().unwrap(), "read once");
        // A rotation through b builds on a's key rather than reusing its id.
        let third = b.rotate_in_file(2_000).unwrap();
        assert_eq!(third.id, 3);
        assert!(a.reload_file().unwrap());
        assert_eq!(a.keyring().ids(), vec![1, 2, 3]);
        // A retirement through one is seen by the other.
        a.retire_in_file(1, i64::MAX, Duration::ZERO, false)
            .unwrap();
        assert!(b.reload_file().unwrap());
        assert_eq!(b.keyring().ids(), vec![2, 3]);
        // A damaged file is reported and changes nothing.
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(b.reload_file().is_err());
        assert_eq!(b.keyring().ids(), vec![2, 3]);
    }

    #[test]
    fn rotations_through_two_servers_at_once_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-keys");
        let (a, b) = (
            RootKeys::open(&path, None).unwrap(),
            RootKeys::open(&path, None).unwrap(),
        );
        std::thread::scope(|scope| {
            for keys in [&a, &b] {
                scope.spawn(move || {
                    for i in 0..20 {
                        keys.rotate_in_file(1_000 + i).unwrap();
                    }
                });
            }
        });
        let after = RootKeys::open(&path, None).unwrap();
        assert_eq!(after.keyring().ids(), (1..=41).collect::<Vec<u32>>());
    }

    #[test]
    fn a_reload_beside_a_rotation_never_brings_the_old_key_back() {
        /// Stops the reloading thread however the rotations end, a failed assertion too.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = RootKeys::open(&dir.path().join("root-keys"), None).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    keys.reload_file().unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            let _stop = Stop(&done);
            for i in 0..50 {
                let made = keys.rotate_in_file(1_000 + i).unwrap();
                assert_eq!(keys.signing().0, made.id, "rotation {i}");
            }
        });
    }
}
