//! The images tenants push: blobs kept once on disk, content-addressed
//! (`blobs/sha256/HEX`), and owned per tenant in the database.
//!
//! A tenant owns a blob only after sending its bytes itself: the bytes are hashed as
//! they arrive and kept only under the digest they hash to, so knowing another
//! tenant's digest gives nothing (asking which blobs are missing answers for the
//! asking tenant alone). What a tenant keeps counts against its `image_mebibytes`
//! limit, each blob once.

use std::path::{Path, PathBuf};

use berth_protocol::image::{Digest, Hasher, Image, MOST_CONFIG_BYTES, Mismatch, config_layers};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, Set};
use tokio::io::AsyncWriteExt;

use crate::entity::{image_blob, pushed_image};

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
    /// The blob store's disk failed.
    #[error("the image store at {path} failed: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The bytes sent are not the blob they were sent as.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// Keeping the blob would pass the tenant's limit.
    #[error(
        "tenant {tenant:?} keeps {used} bytes of images and may keep {limit}: {digest} ({size} bytes) does not fit; an admin may raise the tenant's image_mebibytes"
    )]
    QuotaFull {
        /// The tenant.
        tenant: String,
        /// The blob refused.
        digest: Digest,
        /// Its size (so far, when it was refused while arriving).
        size: u64,
        /// What the tenant keeps.
        used: u64,
        /// Its limit, bytes.
        limit: u64,
    },
    /// The tenant has not pushed this blob.
    #[error("tenant {tenant:?} has no blob {digest}: push the image first (`berth push`)")]
    UnknownBlob {
        /// The tenant.
        tenant: String,
        /// The blob.
        digest: Digest,
    },
    /// The tenant has no image by this reference or id.
    #[error("tenant {tenant:?} has no pushed image {image}: push it first (`berth push {image}`)")]
    UnknownImage {
        /// The tenant.
        tenant: String,
        /// The reference or id.
        image: String,
    },
    /// The config blob does not describe an image.
    #[error("{digest} is not an image config: {reason}")]
    NotAConfig {
        /// The blob.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// The body ended before the size it announced, or the client went away.
    #[error("the upload of {digest} was cut short: {reason}")]
    Cut {
        /// The blob.
        digest: Digest,
        /// What the transport said.
        reason: String,
    },
}

/// The tenant's images and blobs, on disk and in the database.
#[derive(Clone, Debug)]
pub struct ImageStore {
    db: DatabaseConnection,
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl ImageStore {
    /// The store whose blobs live under `dir` (made when missing) and whose owners are
    /// recorded in `db`.
    pub fn new(db: DatabaseConnection, dir: PathBuf) -> Result<Self, ImageError> {
        for sub in ["sha256", "incoming"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(Self { db, dir })
    }

    /// Where the blob `digest` is kept.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    /// Of `digests`, those `tenant` has not pushed, in the order asked.
    pub async fn missing(
        &self,
        tenant: &str,
        digests: &[Digest],
    ) -> Result<Vec<Digest>, ImageError> {
        let asked: Vec<&str> = digests.iter().map(Digest::as_str).collect();
        let held: std::collections::HashSet<String> = image_blob::Entity::find()
            .select_only()
            .column(image_blob::Column::Digest)
            .filter(image_blob::Column::Tenant.eq(tenant))
            .filter(image_blob::Column::Digest.is_in(asked))
            .into_tuple::<String>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        Ok(digests
            .iter()
            .filter(|d| !held.contains(d.as_str()))
            .cloned()
            .collect())
    }

    /// The bytes `tenant` keeps, each blob once.
    pub async fn used(&self, tenant: &str) -> Result<u64, ImageError> {
        let sizes: Vec<i64> = image_blob::Entity::find()
            .select_only()
            .column(image_blob::Column::Size)
            .filter(image_blob::Column::Tenant.eq(tenant))
            .into_tuple::<i64>()
            .all(&self.db)
            .await?;
        Ok(sizes.iter().map(|s| u64::try_from(*s).unwrap_or(0)).sum())
    }

    /// Receives the blob `digest` for `tenant` from `parts`, keeping it only when its
    /// bytes hash to `digest` and the tenant's images stay within `limit` bytes (the
    /// upload stops as soon as they would not). Returns its size.
    pub async fn receive<S, E>(
        &self,
        tenant: &str,
        digest: &Digest,
        limit: u64,
        mut parts: S,
        now_ms: i64,
    ) -> Result<u64, ImageError>
    where
        S: futures_core::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use tokio_stream::StreamExt;
        let used = self.used(tenant).await?;
        let room = limit.saturating_sub(used);
        let full = |size| ImageError::QuotaFull {
            tenant: tenant.to_owned(),
            digest: digest.clone(),
            size,
            used,
            limit,
        };
        let incoming = self
            .dir
            .join("incoming")
            .join(format!("{}.{}", digest.hex(), nonce()));
        let mut file = tokio::fs::File::create(&incoming)
            .await
            .map_err(io(&incoming))?;
        let written = async {
            let mut hasher = Hasher::default();
            while let Some(part) = parts.next().await {
                let part = part.map_err(|e| ImageError::Cut {
                    digest: digest.clone(),
                    reason: e.to_string(),
                })?;
                if hasher.bytes() + part.len() as u64 > room {
                    return Err(full(hasher.bytes() + part.len() as u64));
                }
                hasher.update(&part);
                file.write_all(&part).await.map_err(io(&incoming))?;
            }
            file.flush().await.map_err(io(&incoming))?;
            file.sync_all().await.map_err(io(&incoming))?;
            Ok(hasher.verify(digest)?)
        }
        .await;
        drop(file);
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&incoming).await;
                return Err(e);
            }
        };
        // The same bytes under the same name: whoever stored them first, they stay.
        let kept = self.path_of(digest);
        tokio::fs::rename(&incoming, &kept)
            .await
            .map_err(io(&kept))?;
        image_blob::Entity::insert(image_blob::ActiveModel {
            tenant: Set(tenant.to_owned()),
            digest: Set(digest.as_str().to_owned()),
            size: Set(to_i64(size)),
            stored_at_ms: Set(now_ms),
        })
        .on_conflict(
            OnConflict::columns([image_blob::Column::Tenant, image_blob::Column::Digest])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(size)
    }

    async fn owned_size(&self, tenant: &str, digest: &Digest) -> Result<u64, ImageError> {
        image_blob::Entity::find_by_id((tenant.to_owned(), digest.as_str().to_owned()))
            .one(&self.db)
            .await?
            .map(|row| u64::try_from(row.size).unwrap_or(0))
            .ok_or_else(|| ImageError::UnknownBlob {
                tenant: tenant.to_owned(),
                digest: digest.clone(),
            })
    }

    /// Records `tenant`'s image `reference` as the config `config` names, once the
    /// tenant holds the config and every layer it lists.
    pub async fn record(
        &self,
        tenant: &str,
        reference: &str,
        config: &Digest,
        now_ms: i64,
    ) -> Result<Image, ImageError> {
        let config_size = self.owned_size(tenant, config).await?;
        if config_size > MOST_CONFIG_BYTES {
            return Err(ImageError::NotAConfig {
                digest: config.clone(),
                reason: format!("{config_size} bytes, more than any image config"),
            });
        }
        let path = self.path_of(config);
        let bytes = tokio::fs::read(&path).await.map_err(io(&path))?;
        let layers = config_layers(&bytes).map_err(|reason| ImageError::NotAConfig {
            digest: config.clone(),
            reason,
        })?;
        let mut size = config_size;
        for layer in &layers {
            size += self.owned_size(tenant, layer).await?;
        }
        let row = pushed_image::ActiveModel {
            tenant: Set(tenant.to_owned()),
            reference: Set(reference.to_owned()),
            config: Set(config.as_str().to_owned()),
            layers: Set(layers
                .iter()
                .map(Digest::as_str)
                .collect::<Vec<_>>()
                .join("\n")),
            size: Set(to_i64(size)),
            pushed_at_ms: Set(now_ms),
        };
        pushed_image::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    pushed_image::Column::Tenant,
                    pushed_image::Column::Reference,
                ])
                .update_columns([
                    pushed_image::Column::Config,
                    pushed_image::Column::Layers,
                    pushed_image::Column::Size,
                    pushed_image::Column::PushedAtMs,
                ])
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(Image {
            reference: reference.to_owned(),
            config: config.clone(),
            layers,
        })
    }

    /// `tenant`'s images, by reference.
    pub async fn list(&self, tenant: &str) -> Result<Vec<(Image, u64, i64)>, ImageError> {
        let rows = pushed_image::Entity::find()
            .filter(pushed_image::Column::Tenant.eq(tenant))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let size = u64::try_from(row.size).unwrap_or(0);
                let at = row.pushed_at_ms;
                image_of(row).map(|image| (image, size, at))
            })
            .collect())
    }

    /// The image `tenant` pushed as `reference`, if any.
    pub async fn by_reference(
        &self,
        tenant: &str,
        reference: &str,
    ) -> Result<Option<Image>, ImageError> {
        Ok(
            pushed_image::Entity::find_by_id((tenant.to_owned(), reference.to_owned()))
                .one(&self.db)
                .await?
                .and_then(image_of),
        )
    }

    /// The image of `tenant` whose id is `id`, if the tenant pushed one.
    pub async fn by_id(&self, tenant: &str, id: &Digest) -> Result<Option<Image>, ImageError> {
        Ok(pushed_image::Entity::find()
            .filter(pushed_image::Column::Tenant.eq(tenant))
            .filter(pushed_image::Column::Config.eq(id.as_str()))
            .one(&self.db)
            .await?
            .and_then(image_of))
    }

    /// Opens `blob` of `tenant`'s image `image` for reading, with its size: only a blob
    /// of an image the tenant pushed.
    pub async fn open(
        &self,
        tenant: &str,
        image: &Digest,
        blob: &Digest,
    ) -> Result<(tokio::fs::File, u64), ImageError> {
        let found = self
            .by_id(tenant, image)
            .await?
            .ok_or_else(|| ImageError::UnknownImage {
                tenant: tenant.to_owned(),
                image: image.to_string(),
            })?;
        if !found.holds(blob) {
            return Err(ImageError::UnknownBlob {
                tenant: tenant.to_owned(),
                digest: blob.clone(),
            });
        }
        let size = self.owned_size(tenant, blob).await?;
        let path = self.path_of(blob);
        let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        Ok((file, size))
    }
}

/// How many bytes one message of a blob carries.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// The bytes of `file`, in chunks of [`CHUNK_BYTES`], as a blob's messages.
pub fn chunks(
    file: tokio::fs::File,
) -> impl futures_core::Stream<Item = Result<berth_protocol::node_api::BlobChunk, tonic::Status>>
+ Send
+ 'static {
    tokio_stream::StreamExt::map(
        tokio_util::io::ReaderStream::with_capacity(file, CHUNK_BYTES),
        |part| {
            part.map(|data| berth_protocol::node_api::BlobChunk { data })
                .map_err(|e| tonic::Status::unavailable(format!("reading the blob: {e}")))
        },
    )
}

fn image_of(row: pushed_image::Model) -> Option<Image> {
    Some(Image {
        reference: row.reference,
        config: Digest::parse(&row.config).ok()?,
        layers: row
            .layers
            .lines()
            .map(Digest::parse)
            .collect::<Result<_, _>>()
            .ok()?,
    })
}

fn nonce() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    berth_protocol::assignment::hex_encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (ImageStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = crate::database::connect("sqlite::memory:")
            .await
            .expect("database");
        <crate::migration::Migrator as sea_orm_migration::MigratorTrait>::up(&db, None)
            .await
            .expect("migrated");
        (
            ImageStore::new(db, dir.path().join("blobs")).expect("store"),
            dir,
        )
    }

    fn parts(
        chunks: &[&[u8]],
    ) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        tokio_stream::iter(
            chunks
                .iter()
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    fn config(layers: &[&Digest]) -> Vec<u8> {
        let ids: Vec<_> = layers.iter().map(|d| d.as_str()).collect();
        serde_json::json!({"rootfs": {"type": "layers", "diff_ids": ids}})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn a_blob_is_kept_under_the_digest_its_bytes_hash_to_and_owned_by_its_sender() {
        let (store, _dir) = store().await;
        let layer = Digest::of(b"layer bytes");
        assert_eq!(
            store
                .missing("a", std::slice::from_ref(&layer))
                .await
                .expect("asks"),
            vec![layer.clone()]
        );
        let size = store
            .receive("a", &layer, u64::MAX, parts(&[b"layer ", b"bytes"]), 1)
            .await
            .expect("received");
        assert_eq!(size, 11);
        assert!(
            store
                .missing("a", std::slice::from_ref(&layer))
                .await
                .expect("asks")
                .is_empty()
        );
        // Another tenant knowing the digest does not hold it.
        assert_eq!(
            store
                .missing("b", std::slice::from_ref(&layer))
                .await
                .expect("asks"),
            vec![layer.clone()]
        );
        assert_eq!(store.used("a").await.expect("used"), 11);
        assert_eq!(store.used("b").await.expect("used"), 0);
    }

    #[tokio::test]
    async fn bytes_that_are_not_their_digest_are_refused_and_leave_nothing() {
        let (store, dir) = store().await;
        let layer = Digest::of(b"the real layer");
        let err = store
            .receive("a", &layer, u64::MAX, parts(&[b"something else"]), 1)
            .await
            .expect_err("refused");
        assert!(matches!(err, ImageError::Mismatch(_)), "{err}");
        assert_eq!(
            store
                .missing("a", std::slice::from_ref(&layer))
                .await
                .expect("asks"),
            vec![layer.clone()]
        );
        assert!(!store.path_of(&layer).exists());
        let incoming = std::fs::read_dir(dir.path().join("blobs/incoming")).expect("dir");
        assert_eq!(incoming.count(), 0, "the partial upload was removed");
    }

    #[tokio::test]
    async fn a_full_image_quota_stops_the_upload() {
        let (store, _dir) = store().await;
        let one = Digest::of(&[1u8; 600]);
        store
            .receive("a", &one, 1000, parts(&[&[1u8; 600]]), 1)
            .await
            .expect("fits");
        let two = Digest::of(&[2u8; 600]);
        let err = store
            .receive("a", &two, 1000, parts(&[&[2u8; 300], &[2u8; 300]]), 1)
            .await
            .expect_err("does not fit");
        let ImageError::QuotaFull { used, limit, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!((*used, *limit), (600, 1000));
        assert!(err.to_string().contains("image_mebibytes"), "{err}");
        // Another tenant's room is its own.
        store
            .receive("b", &two, 1000, parts(&[&[2u8; 600]]), 1)
            .await
            .expect("fits b");
    }

    #[tokio::test]
    async fn an_image_is_recorded_only_from_blobs_the_tenant_holds() {
        let (store, _dir) = store().await;
        let layer = Digest::of(b"L");
        let cfg = config(&[&layer]);
        let id = Digest::of(&cfg);
        store
            .receive("a", &id, u64::MAX, parts(&[&cfg]), 1)
            .await
            .expect("config");
        let err = store
            .record("a", "app:1", &id, 1)
            .await
            .expect_err("layer missing");
        assert!(matches!(err, ImageError::UnknownBlob { .. }), "{err}");
        store
            .receive("a", &layer, u64::MAX, parts(&[b"L"]), 1)
            .await
            .expect("layer");
        let image = store.record("a", "app:1", &id, 1).await.expect("recorded");
        assert_eq!(image.layers, vec![layer.clone()]);
        assert_eq!(
            store.by_reference("a", "app:1").await.expect("read"),
            Some(image.clone())
        );
        assert!(store.open("a", &id, &layer).await.is_ok());
        // Tenant b, even holding the same layer, has no such image.
        store
            .receive("b", &layer, u64::MAX, parts(&[b"L"]), 1)
            .await
            .expect("layer b");
        assert!(matches!(
            store.open("b", &id, &layer).await,
            Err(ImageError::UnknownImage { .. })
        ));
        assert!(
            store
                .by_reference("b", "app:1")
                .await
                .expect("read")
                .is_none()
        );
        // A blob outside the image is not served under it.
        assert!(matches!(
            store.open("a", &id, &Digest::of(b"other")).await,
            Err(ImageError::UnknownBlob { .. })
        ));
        // A blob that is not a config is not recorded as an image.
        let err = store
            .record("a", "bad:1", &layer, 1)
            .await
            .expect_err("not a config");
        assert!(matches!(err, ImageError::NotAConfig { .. }), "{err}");
    }
}
