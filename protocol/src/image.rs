//! Images as content: a pushed image is its config blob (whose SHA-256 is the image's
//! id on every engine) and the layers the config lists, each a blob named by the
//! SHA-256 of its bytes (the uncompressed layer tar, the config's `rootfs.diff_ids`).
//!
//! Everything that moves a blob (the CLI pushing, the control plane storing, a node
//! fetching from the control plane or from another node) names it by [`Digest`] and
//! checks the bytes against it with [`Hasher`] before the blob is used: a blob is only
//! ever kept under the name its bytes hash to.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The name of a blob: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// A text that is not a digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a content digest: expected sha256: and 64 lowercase hex digits")]
pub struct NotADigest(pub String);

impl Digest {
    /// The digest `text` names, if it is one.
    pub fn parse(text: &str) -> Result<Self, NotADigest> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| NotADigest(text.chars().take(80).collect()))?;
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(text.to_owned()))
        } else {
            Err(NotADigest(text.chars().take(80).collect()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Hasher::default();
        h.update(bytes);
        h.finish()
    }

    /// The 64 hex digits, for file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The whole name, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as engines show image ids.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl TryFrom<String> for Digest {
    type Error = NotADigest;
    fn try_from(text: String) -> Result<Self, NotADigest> {
        Self::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 over bytes that arrive in parts, with their count.
#[derive(Clone, Debug, Default)]
pub struct Hasher {
    sha: sha2::Sha256,
    bytes: u64,
}

impl Hasher {
    /// Adds `part`.
    pub fn update(&mut self, part: &[u8]) {
        self.sha.update(part);
        self.bytes += part.len() as u64;
    }

    /// How many bytes were added.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        let sum = self.sha.finalize();
        Digest(format!("sha256:{}", crate::assignment::hex_encode(&sum)))
    }
}

/// Bytes that are not what their digest names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the bytes of {expected} hash to {actual}: the blob is corrupt or was tampered with")]
pub struct Mismatch {
    /// The digest asked for.
    pub expected: Digest,
    /// What the bytes hash to.
    pub actual: Digest,
}

impl Hasher {
    /// Finishes, and refuses bytes that do not hash to `expected`.
    pub fn verify(self, expected: &Digest) -> Result<u64, Mismatch> {
        let bytes = self.bytes;
        let actual = self.finish();
        if &actual == expected {
            Ok(bytes)
        } else {
            Err(Mismatch {
                expected: expected.clone(),
                actual,
            })
        }
    }
}

/// The registry an image reference names explicitly (`host[:port]` or `localhost`
/// before the first `/`), or none for a Docker Hub short name (`busybox`, `org/app`).
pub fn registry_of(reference: &str) -> Option<&str> {
    let (first, _) = reference.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// Whether a reference names its bits by digest (`name@sha256:...`).
pub fn is_pinned(reference: &str) -> bool {
    reference.contains("@sha256:")
}

/// The most bytes an image config may have (they are a few KiB).
pub const MOST_CONFIG_BYTES: u64 = 1024 * 1024;

/// The most layers one image may have (engines allow 127).
pub const MOST_LAYERS: usize = 128;

/// What an image config says of its layers: their digests, in order.
pub fn config_layers(config: &[u8]) -> Result<Vec<Digest>, String> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(rename = "type")]
        kind: String,
        diff_ids: Vec<Digest>,
    }
    let config: Config = serde_json::from_slice(config)
        .map_err(|e| format!("the image config is not valid: {e}"))?;
    if config.rootfs.kind != "layers" {
        return Err(format!(
            "the image config's rootfs is of type {:?}, not \"layers\"",
            config.rootfs.kind
        ));
    }
    if config.rootfs.diff_ids.len() > MOST_LAYERS {
        return Err(format!(
            "the image has {} layers; at most {MOST_LAYERS} are allowed",
            config.rootfs.diff_ids.len()
        ));
    }
    Ok(config.rootfs.diff_ids)
}

/// A pushed image: its reference as the tenant names it, its config and its layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference (`name:tag`) a topology names it by.
    pub reference: String,
    /// The config blob's digest: the image's id.
    pub config: Digest,
    /// The layers, in order.
    pub layers: Vec<Digest>,
}

impl Image {
    /// Whether `blob` is part of this image.
    pub fn holds(&self, blob: &Digest) -> bool {
        &self.config == blob || self.layers.contains(blob)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_registry_is_what_precedes_the_first_slash_when_it_looks_like_a_host() {
        use super::registry_of;
        assert_eq!(registry_of("10.0.0.2:5000/app:v1"), Some("10.0.0.2:5000"));
        assert_eq!(registry_of("ghcr.io/org/app"), Some("ghcr.io"));
        assert_eq!(registry_of("localhost/app"), Some("localhost"));
        assert_eq!(registry_of("org/app:1"), None);
        assert_eq!(registry_of("busybox"), None);
    }

    use super::*;

    #[test]
    fn a_digest_is_sha256_and_64_lowercase_hex_digits() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(d.as_str()), Ok(d.clone()));
        assert_eq!(d.short(), "2cf24dba5fb0");
        for bad in [
            "",
            "sha256:",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:../../../../etc/passwd",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bytes_are_checked_against_their_digest() {
        let expected = Digest::of(b"layer");
        let mut h = Hasher::default();
        h.update(b"lay");
        h.update(b"er");
        assert_eq!(h.verify(&expected), Ok(5));
        let mut h = Hasher::default();
        h.update(b"layer!");
        let err = h.verify(&expected).expect_err("other bytes refused");
        assert_eq!(err.expected, expected);
        assert!(err.to_string().contains("corrupt or was tampered with"));
    }

    #[test]
    fn a_config_lists_its_layers() {
        let a = Digest::of(b"a");
        let config = format!(
            r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{a}"]}}}}"#
        );
        assert_eq!(config_layers(config.as_bytes()), Ok(vec![a]));
        assert!(config_layers(b"{}").is_err());
        assert!(
            config_layers(br#"{"rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}"#).is_err()
        );
    }
}
