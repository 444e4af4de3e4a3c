//! Pushed images on a node: fetched blob by blob (from other nodes that hold them,
//! with the delegation the allocator minted for exactly that image, else from the
//! control plane), each checked against its digest before it is kept, then loaded
//! into the engine as the image whose id the revision names.
//!
//! Blobs are kept under `DIR/sha256/HEX` once verified (a partial or corrupt fetch
//! never gets there), which is also what this node serves to others.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_protocol::assignment::{ImageSource, TopologyAssignment, hex_decode};
use berth_protocol::image::{Digest, Hasher, MOST_CONFIG_BYTES, config_layers};
use berth_protocol::node_api::node_control_client::NodeControlClient;
use berth_protocol::node_api::node_peer_client::NodePeerClient;
use berth_protocol::node_api::{BlobChunk, FetchBlobBody, PeerCallBody, methods};
use ring::rand::SecureRandom;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::driver::{ContainerDriver, DriverError};
use crate::peer::Decision;
use crate::signer::Signer;

/// Why an image could not be brought to this node.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No source gave the blob.
    #[error("image {image}: blob {blob} could not be fetched: {reasons}")]
    Unavailable {
        /// The image.
        image: Digest,
        /// The blob.
        blob: Digest,
        /// What each source said, in the order tried.
        reasons: String,
    },
    /// The blob cache's disk failed.
    #[error("the image cache at {path} failed: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The config does not describe an image.
    #[error("image {image}: {reason}")]
    NotAnImage {
        /// The image.
        image: Digest,
        /// Why.
        reason: String,
    },
    /// The engine refused the image.
    #[error("image {image} could not be loaded: {source}")]
    Load {
        /// The image.
        image: Digest,
        /// What the engine said.
        source: DriverError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a blob comes from.
enum From<'a> {
    Peer(&'a ImageSource),
    ControlPlane,
}

/// What one fetch of an image did, for the record and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Blobs taken from other nodes.
    pub from_peers: usize,
    /// Blobs taken from the control plane.
    pub from_control_plane: usize,
    /// Blobs this node held already.
    pub held: usize,
}

type Channels = Arc<std::sync::Mutex<std::collections::HashMap<(String, String), Channel>>>;

/// The node's image cache and the means to fill it.
#[derive(Debug)]
pub struct ImageCache {
    dir: PathBuf,
    signer: Arc<Signer>,
    /// gRPC channels by the peer's address and key, shared by every fetch from it.
    channels: Channels,
    /// Blobs refused because their bytes were not their digest, for the ledger.
    decisions: std::sync::Mutex<Vec<Decision>>,
}

/// Why a fetched blob was not kept.
enum NotKept {
    /// Its bytes hash to another digest: the source served something else.
    Mismatch(String),
    /// The transfer or the disk failed.
    Failed(String),
}

impl std::fmt::Display for NotKept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mismatch(reason) | Self::Failed(reason) => f.write_str(reason),
        }
    }
}

fn random_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
    nonce
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ImageCache {
    /// The cache under `dir` (made when missing), fetching in the name `signer` signs.
    pub fn new(dir: PathBuf, signer: Arc<Signer>) -> Result<Self, FetchError> {
        for sub in ["sha256", "incoming"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(Self {
            dir,
            signer,
            channels: Arc::default(),
            decisions: std::sync::Mutex::default(),
        })
    }

    /// The blobs refused since the last call, as decisions for the ledger, oldest first.
    pub fn take_decisions(&self) -> Vec<Decision> {
        std::mem::take(&mut *self.decisions.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where the verified blob `digest` is kept, if this node holds it.
    pub fn held(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.dir.join("sha256").join(digest.hex());
        path.is_file().then_some(path)
    }

    /// The layers of the image `image`, from its config held here.
    pub fn layers_of(&self, image: &Digest) -> Option<Vec<Digest>> {
        let bytes = std::fs::read(self.held(image)?).ok()?;
        config_layers(&bytes).ok()
    }

    /// Brings every pushed image `assignment`'s services run that the engine lacks:
    /// fetches what is not held, then loads it. `control` is the allocator, the
    /// source of last resort.
    pub async fn ensure<D: ContainerDriver>(
        &self,
        driver: &D,
        control: Option<NodeControlClient<Channel>>,
        assignment: &TopologyAssignment,
    ) -> Result<Fetched, FetchError> {
        let mut ids: Vec<Digest> = assignment
            .services
            .values()
            .filter_map(|s| s.digest.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let mut done = Fetched::default();
        if ids.is_empty() {
            return Ok(done);
        }
        let names: Vec<String> = ids.iter().map(|d| d.to_string()).collect();
        let missing = driver
            .missing_images(&names)
            .await
            .map_err(|source| FetchError::Load {
                image: ids[0].clone(),
                source,
            })?;
        for id in ids.iter().filter(|d| missing.contains(&d.to_string())) {
            let sources: Vec<&ImageSource> = assignment
                .image_sources
                .iter()
                .filter(|s| &s.image == id)
                .collect();
            let tenant = &assignment.id.tenant;
            let config = self
                .blob(tenant, id, id, &sources, control.clone(), &mut done)
                .await?;
            let bytes = tokio::fs::read(&config).await.map_err(io(&config))?;
            if bytes.len() as u64 > MOST_CONFIG_BYTES {
                return Err(FetchError::NotAnImage {
                    image: id.clone(),
                    reason: "its config is larger than any image config".into(),
                });
            }
            let layers = config_layers(&bytes).map_err(|reason| FetchError::NotAnImage {
                image: id.clone(),
                reason,
            })?;
            let mut paths = Vec::new();
            for layer in &layers {
                paths.push(
                    self.blob(tenant, id, layer, &sources, control.clone(), &mut done)
                        .await?,
                );
            }
            let archive = self.archive(id, &config, &layers, &paths).await?;
            let loaded = driver.load_image(&archive).await;
            let _ = tokio::fs::remove_file(&archive).await;
            loaded.map_err(|source| FetchError::Load {
                image: id.clone(),
                source,
            })?;
            let still = driver
                .missing_images(&[id.to_string()])
                .await
                .map_err(|source| FetchError::Load {
                    image: id.clone(),
                    source,
                })?;
            if !still.is_empty() {
                return Err(FetchError::NotAnImage {
                    image: id.clone(),
                    reason: "the engine loaded it under another id".into(),
                });
            }
            tracing::info!(image = %id, layers = layers.len(), from_peers = done.from_peers, from_control_plane = done.from_control_plane, "image loaded");
        }
        Ok(done)
    }

    /// The blob `blob` of `tenant`'s image `image`, held or fetched: from the sources
    /// in turn, then from the control plane.
    async fn blob(
        &self,
        tenant: &str,
        image: &Digest,
        blob: &Digest,
        sources: &[&ImageSource],
        control: Option<NodeControlClient<Channel>>,
        done: &mut Fetched,
    ) -> Result<PathBuf, FetchError> {
        if let Some(path) = self.held(blob) {
            done.held += 1;
            return Ok(path);
        }
        let mut reasons = Vec::new();
        let mut tries: Vec<From<'_>> = sources.iter().map(|s| From::Peer(s)).collect();
        tries.push(From::ControlPlane);
        for from in tries {
            let parts = match (&from, control.clone()) {
                (From::Peer(source), _) => self.fetch_from_peer(tenant, image, blob, source).await,
                (From::ControlPlane, Some(client)) => {
                    self.fetch_from_control_plane(tenant, image, blob, client)
                        .await
                }
                (From::ControlPlane, None) => Err("no connection to the control plane".into()),
            };
            let where_ = match &from {
                From::Peer(s) => format!("node {}", s.node),
                From::ControlPlane => "the control plane".to_owned(),
            };
            let stream = match parts {
                Ok(stream) => stream,
                Err(reason) => {
                    reasons.push(format!("{where_}: {reason}"));
                    continue;
                }
            };
            match self.keep(blob, stream).await {
                Ok(path) => {
                    match from {
                        From::Peer(_) => done.from_peers += 1,
                        From::ControlPlane => done.from_control_plane += 1,
                    }
                    return Ok(path);
                }
                Err(not_kept) => {
                    tracing::warn!(blob = %blob, source = %where_, reason = %not_kept, "a blob fetch failed");
                    if let NotKept::Mismatch(reason) = &not_kept {
                        self.refused(tenant, image, blob, &from, reason);
                    }
                    reasons.push(format!("{where_}: {not_kept}"));
                }
            }
        }
        Err(FetchError::Unavailable {
            image: image.clone(),
            blob: blob.clone(),
            reasons: reasons.join("; "),
        })
    }

    /// Records that the bytes `from` served as `blob` were not `blob`.
    fn refused(&self, tenant: &str, image: &Digest, blob: &Digest, from: &From<'_>, reason: &str) {
        let source = match from {
            From::Peer(s) => s.node.clone(),
            From::ControlPlane => "control-plane".to_owned(),
        };
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Decision {
                allowed: false,
                operation: berth_protocol::delegation::NodeOperation::ImageFetch.as_str(),
                resource: format!("{tenant}/{image} blob {blob}"),
                caller: source.clone(),
                reason: format!("the bytes {source} served are not the blob: {reason}; not kept"),
                revocation_ids: Vec::new(),
                at_ms: now_ms(),
            });
    }

    async fn fetch_from_peer(
        &self,
        tenant: &str,
        image: &Digest,
        blob: &Digest,
        source: &ImageSource,
    ) -> Result<tonic::Streaming<BlobChunk>, String> {
        let token = biscuit_auth::UnverifiedBiscuit::from_base64(&source.token)
            .and_then(|t| t.to_vec())
            .map_err(|e| format!("unreadable token: {e}"))?;
        let body = PeerCallBody {
            target: source.node.clone(),
            tenant: tenant.to_owned(),
            topology: String::new(),
            service: image.to_string(),
            port: 0,
            timestamp_ms: now_ms(),
            nonce: random_nonce(),
            digest: blob.to_string(),
        };
        let call = self.signer.peer_call(methods::FETCH_BLOB, token, &body);
        let channel = self.channel_to(source)?;
        NodePeerClient::new(channel)
            .max_decoding_message_size(4 * 1024 * 1024)
            .fetch_blob(call)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("refused: {}", s.message()))
    }

    fn channel_to(&self, source: &ImageSource) -> Result<Channel, String> {
        let key = (source.peer.clone(), source.peer_key.clone());
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let peer_key = hex_decode(&source.peer_key)
            .ok_or_else(|| format!("node {}'s key is not hex", source.node))?;
        let channel = self.signer.tls().channel(&source.peer, &peer_key)?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    async fn fetch_from_control_plane(
        &self,
        tenant: &str,
        image: &Digest,
        blob: &Digest,
        mut client: NodeControlClient<Channel>,
    ) -> Result<tonic::Streaming<BlobChunk>, String> {
        let body = FetchBlobBody {
            timestamp_ms: now_ms(),
            nonce: random_nonce(),
            tenant: tenant.to_owned(),
            image: image.to_string(),
            digest: blob.to_string(),
        };
        let request = self.signer.sign(methods::FETCH_BLOB, &body);
        client
            .fetch_blob(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("refused: {}", s.message()))
    }

    /// Writes what `stream` carries, and keeps it as `blob` only if its bytes hash to
    /// `blob`.
    async fn keep<S>(&self, blob: &Digest, mut stream: S) -> Result<PathBuf, NotKept>
    where
        S: tokio_stream::Stream<Item = Result<BlobChunk, tonic::Status>> + Unpin,
    {
        let incoming = self.dir.join("incoming").join(format!(
            "{}.{}",
            blob.hex(),
            berth_protocol::assignment::hex_encode(&random_nonce())
        ));
        let failed = |e: std::io::Error| NotKept::Failed(format!("{}: {e}", incoming.display()));
        let mut file = tokio::fs::File::create(&incoming).await.map_err(failed)?;
        let written = async {
            let mut hasher = Hasher::default();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|s| NotKept::Failed(format!("cut short: {}", s.message())))?;
                hasher.update(&chunk.data);
                file.write_all(&chunk.data).await.map_err(failed)?;
            }
            file.flush().await.map_err(failed)?;
            hasher
                .verify(blob)
                .map_err(|e| NotKept::Mismatch(e.to_string()))
        }
        .await;
        drop(file);
        if let Err(reason) = written {
            let _ = tokio::fs::remove_file(&incoming).await;
            return Err(reason);
        }
        let kept = self.dir.join("sha256").join(blob.hex());
        tokio::fs::rename(&incoming, &kept)
            .await
            .map_err(|e| NotKept::Failed(format!("{}: {e}", kept.display())))?;
        Ok(kept)
    }

    /// An archive the engine loads (`docker load`'s format): the config, the layers
    /// in order, and a manifest naming them; no tag, so that no tenant's name for an
    /// image is seen by another on the same engine.
    async fn archive(
        &self,
        image: &Digest,
        config: &Path,
        layers: &[Digest],
        paths: &[PathBuf],
    ) -> Result<PathBuf, FetchError> {
        let archive = self.dir.join("incoming").join(format!(
            "{}.{}.tar",
            image.hex(),
            berth_protocol::assignment::hex_encode(&random_nonce())
        ));
        let manifest = serde_json::json!([{
            "Config": format!("{}.json", image.hex()),
            "RepoTags": null,
            "Layers": layers.iter().map(|l| format!("{}/layer.tar", l.hex())).collect::<Vec<_>>(),
        }])
        .to_string();
        let mut entries: Vec<(String, PathBuf)> =
            vec![(format!("{}.json", image.hex()), config.to_owned())];
        for (layer, path) in layers.iter().zip(paths) {
            entries.push((format!("{}/layer.tar", layer.hex()), path.clone()));
        }
        let out = archive.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let file = std::fs::File::create(&out)?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            let mut seen = std::collections::HashSet::new();
            for (name, path) in entries {
                // A layer listed twice is one entry.
                if seen.insert(name.clone()) {
                    tar.append_path_with_name(path, name)?;
                }
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(manifest.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "manifest.json", manifest.as_bytes())?;
            tar.into_inner()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()
        })
        .await
        .map_err(|e| FetchError::Io {
            path: archive.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(&archive))?;
        Ok(archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (ImageCache, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .expect("key");
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let tls = crate::node_tls::NodeTls::from_pkcs8(pkcs8.as_ref()).expect("tls");
        let signer = Arc::new(Signer::new("n1", key, tls));
        (
            ImageCache::new(dir.path().join("images"), signer).expect("cache"),
            dir,
        )
    }

    fn chunks(
        parts: &[&[u8]],
    ) -> impl tokio_stream::Stream<Item = Result<BlobChunk, tonic::Status>> + Unpin {
        tokio_stream::iter(
            parts
                .iter()
                .map(|p| {
                    Ok(BlobChunk {
                        data: prost::bytes::Bytes::copy_from_slice(p),
                    })
                })
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_blob_is_kept_only_when_its_bytes_hash_to_its_digest() {
        let (cache, dir) = cache();
        let layer = Digest::of(b"the layer");
        let refused = cache
            .keep(&layer, chunks(&[b"the ", b"other layer"]))
            .await
            .expect_err("bytes that are not the layer are refused");
        assert!(
            matches!(&refused, NotKept::Mismatch(r) if r.contains("corrupt or was tampered with")),
            "{refused}"
        );
        assert!(cache.held(&layer).is_none(), "nothing kept under its name");
        let incoming = std::fs::read_dir(dir.path().join("images/incoming")).expect("dir");
        assert_eq!(incoming.count(), 0, "the refused bytes were removed");
        let Ok(kept) = cache.keep(&layer, chunks(&[b"the ", b"layer"])).await else {
            panic!("the layer was not kept");
        };
        assert_eq!(std::fs::read(kept).expect("read"), b"the layer");
        assert!(cache.held(&layer).is_some());
    }

    #[tokio::test]
    async fn a_cut_fetch_keeps_nothing() {
        let (cache, _dir) = cache();
        let layer = Digest::of(b"the layer");
        let cut = tokio_stream::iter(vec![
            Ok(BlobChunk {
                data: prost::bytes::Bytes::from_static(b"the "),
            }),
            Err(tonic::Status::unavailable("gone")),
        ]);
        let refused = cache.keep(&layer, cut).await.expect_err("refused");
        assert!(
            matches!(&refused, NotKept::Failed(r) if r.contains("cut short")),
            "{refused}"
        );
        assert!(cache.held(&layer).is_none());
    }
}
