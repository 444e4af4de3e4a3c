//! Tokens whose signatures and shape were already verified, by digest, so that a token
//! presented again costs a hash and a lookup rather than a parse and a signature check.
//!
//! What is cached is only what cannot change: that these bytes carry valid signatures
//! under a given root key, and what they say. Whether the key is still trusted is asked
//! again on every lookup (a retired key drops its tokens), and revocation, expiry and
//! the policies are decided by the caller on every request, never here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// A bounded cache of verified tokens. When full, it starts over: an attacker who
/// presents many distinct tokens costs itself their verification and evicts nothing
/// that a repeat does not restore at the price of one verification.
#[derive(Debug)]
pub struct TokenCache<T> {
    entries: Mutex<HashMap<[u8; 32], Entry<T>>>,
    capacity: usize,
}

#[derive(Debug)]
struct Entry<T> {
    /// The root key the token verified under, as bytes.
    key: Vec<u8>,
    verified: Arc<T>,
}

/// The SHA-256 of a token's bytes, by which caches know it.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl<T> TokenCache<T> {
    /// An empty cache holding up to `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The token `token`, verified: from the cache when it verified before under the
    /// key that `key_of` still returns for its key id, else by `verify` now (outside the
    /// cache's lock, so verifications run in parallel). `key_id` reads the key id a
    /// verified token names; `key_of` is the bytes of the trusted key of an id, if any.
    pub fn verified<E>(
        &self,
        token: &[u8],
        key_id: impl Fn(&T) -> Option<u32>,
        key_of: impl Fn(Option<u32>) -> Option<Vec<u8>>,
        verify: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        self.verified_by_digest(digest(token), key_id, key_of, verify)
    }

    /// [`Self::verified`] for the token whose [`digest`] the caller has already taken.
    pub fn verified_by_digest<E>(
        &self,
        digest: [u8; 32],
        key_id: impl Fn(&T) -> Option<u32>,
        key_of: impl Fn(Option<u32>) -> Option<Vec<u8>>,
        verify: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = entries.get(&digest) {
                if key_of(key_id(&entry.verified)).is_some_and(|k| k == entry.key) {
                    return Ok(entry.verified.clone());
                }
                entries.remove(&digest);
            }
        }
        let verified = Arc::new(verify()?);
        if let Some(key) = key_of(key_id(&verified)) {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(
                digest,
                Entry {
                    key,
                    verified: verified.clone(),
                },
            );
        }
        Ok(verified)
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answers a verified token was given, kept while they hold: until the expiry
/// its authority block states, for a token with no appended block (an appended block
/// may check the time its own way, so for such a token, or one that states no expiry,
/// nothing is kept and every request is decided anew). Forgotten all at once when
/// `most` are kept. Revocation is never decided here: callers check it every time.
#[derive(Debug)]
pub(crate) struct Remembered<K, V> {
    until: Option<std::time::SystemTime>,
    answers: Mutex<HashMap<K, V>>,
    most: usize,
}

impl<K: Eq + std::hash::Hash, V: Clone> Remembered<K, V> {
    /// Nothing kept yet; answers hold until `until`, if any.
    pub(crate) fn new(until: Option<std::time::SystemTime>, most: usize) -> Self {
        Self {
            until,
            answers: Mutex::default(),
            most: most.max(1),
        }
    }

    /// Until when answers hold.
    pub(crate) fn until(&self) -> Option<std::time::SystemTime> {
        self.until
    }

    /// The answer kept for `key`, if answers still hold at `now`.
    pub(crate) fn get(&self, key: &K, now: std::time::SystemTime) -> Option<V> {
        if !self.holds_at(now) {
            return None;
        }
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.get(key).cloned()
    }

    /// Keeps `answer` for `key`, if answers hold at `now`.
    pub(crate) fn keep(&self, key: K, answer: &V, now: std::time::SystemTime) {
        if !self.holds_at(now) {
            return;
        }
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.len() >= self.most {
            answers.clear();
        }
        answers.insert(key, answer.clone());
    }

    fn holds_at(&self, now: std::time::SystemTime) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Token(Option<u32>);

    #[test]
    fn a_repeat_is_not_verified_again_while_its_key_is_trusted() {
        let cache = TokenCache::new(8);
        let runs = Cell::new(0);
        let verify = || {
            runs.set(runs.get() + 1);
            Ok::<_, ()>(Token(Some(1)))
        };
        let trusted = |id: Option<u32>| (id == Some(1)).then(|| vec![1u8]);
        for _ in 0..3 {
            let t = cache.verified(b"abc", |t| t.0, trusted, verify).unwrap();
            assert_eq!(*t, Token(Some(1)));
        }
        assert_eq!(runs.get(), 1);
        // The key rotated to other bytes: the token is verified anew.
        let rotated = |_: Option<u32>| Some(vec![2u8]);
        cache.verified(b"abc", |t| t.0, rotated, verify).unwrap();
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_refusal_is_not_cached_and_a_full_cache_starts_over() {
        let cache = TokenCache::<Token>::new(2);
        let key = |_: Option<u32>| Some(vec![0u8]);
        assert!(cache.verified(b"bad", |t| t.0, key, || Err("no")).is_err());
        assert!(cache.is_empty());
        for token in [&b"a"[..], b"b", b"c"] {
            cache
                .verified(token, |t| t.0, key, || Ok::<_, ()>(Token(None)))
                .unwrap();
        }
        assert_eq!(cache.len(), 1);
        // A token whose key is not trusted is returned but not kept.
        let untrusted = |_: Option<u32>| None;
        cache
            .verified(b"d", |t| t.0, untrusted, || Ok::<_, ()>(Token(None)))
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}
