//! `berth push IMAGE...`: images from this machine's engine to the pool, without a
//! registry. The pool is asked which of the image's blobs (its config and its layers,
//! each named by the SHA-256 of its bytes) the tenant lacks; only those are read out
//! of the engine and sent, each with a progress bar; then the image is named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_api::client::Client;
use berth_api::images::{NewImage, normalized};
use berth_protocol::image::{Digest, Hasher};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::failure::{Exit, Failure};
use crate::remote::Remote;

/// What pushing one image did.
#[derive(Debug, Serialize)]
pub(crate) struct Pushed {
    /// The reference, as the pool keeps it.
    pub(crate) reference: String,
    /// The image's id.
    pub(crate) id: Digest,
    /// Blobs sent.
    pub(crate) sent: usize,
    /// Bytes sent.
    pub(crate) sent_bytes: u64,
    /// Blobs the pool had already.
    pub(crate) skipped: usize,
}

fn engine_failure(what: String) -> impl FnOnce(bollard::errors::Error) -> Failure {
    move |e| Failure {
        exit: Exit::Failure,
        message: format!("{what}: {}", berth_protocol::error_chain(&e)),
    }
}

/// Pushes each of `images` to `remote`'s tenant.
pub(crate) async fn push(
    remote: &Remote,
    images: &[String],
    json: bool,
) -> Result<Vec<Pushed>, Failure> {
    let docker = bollard::Docker::connect_with_defaults().map_err(engine_failure(
        "Docker is not reachable (start it or point DOCKER_HOST at it)".into(),
    ))?;
    let multi = if json {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    };
    let mut done = Vec::new();
    for image in images {
        let pushed = push_one(&docker, remote, image, &multi).await?;
        if !json {
            eprintln!(
                "pushed {} as {} ({} blob{} sent, {} bytes; {} already in the pool)",
                pushed.reference,
                pushed.id,
                pushed.sent,
                if pushed.sent == 1 { "" } else { "s" },
                pushed.sent_bytes,
                pushed.skipped
            );
        }
        done.push(pushed);
    }
    Ok(done)
}

async fn push_one(
    docker: &bollard::Docker,
    remote: &Remote,
    image: &str,
    multi: &MultiProgress,
) -> Result<Pushed, Failure> {
    let inspect = docker.inspect_image(image).await.map_err(|e| match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => Failure {
            exit: Exit::Invalid,
            message: format!(
                "image {image:?} is not in this machine's engine: build or load it first"
            ),
        },
        e => engine_failure(format!("inspecting image {image}"))(e),
    })?;
    let id_text = inspect.id.clone().unwrap_or_default();
    let id = Digest::parse(&id_text).map_err(|e| Failure {
        exit: Exit::Failure,
        message: format!("the engine gave image {image} an id that is not a digest: {e}"),
    })?;
    let layers: Vec<Digest> = inspect
        .root_fs
        .and_then(|r| r.layers)
        .unwrap_or_default()
        .iter()
        .map(|l| Digest::parse(l))
        .collect::<Result<_, _>>()
        .map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("image {image}: {e}"),
        })?;
    let mut blobs = vec![id.clone()];
    blobs.extend(layers.iter().cloned());
    let client = remote.client();
    let missing = client.missing_blobs(remote.tenant(), &blobs).await?;
    let mut sent_bytes = 0;
    if !missing.is_empty() {
        let dir = tempfile::tempdir().map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("cannot make a temporary directory: {e}"),
        })?;
        let found = export(docker, image, dir.path(), &missing).await?;
        for digest in &missing {
            let (path, size) = found.get(digest).cloned().ok_or_else(|| Failure {
                exit: Exit::Failure,
                message: format!("the engine's export of {image} holds no blob {digest}"),
            })?;
            sent_bytes += send(client, remote.tenant(), digest, &path, size, multi)
                .await
                .map_err(|f| Failure {
                    exit: f.exit,
                    message: format!("pushing {image}: {}", f.message),
                })?;
        }
    }
    let reference = normalized(image);
    client
        .record_image(
            remote.tenant(),
            &NewImage {
                reference: reference.clone(),
                config: id.clone(),
            },
        )
        .await?;
    let unique: BTreeSet<&Digest> = blobs.iter().collect();
    Ok(Pushed {
        reference,
        id,
        sent: missing.len(),
        sent_bytes,
        skipped: unique.len() - missing.len(),
    })
}

/// Reads `image` out of the engine (as `docker save` does) into `dir`, keeping each
/// file whose bytes hash to one of `wanted`: the config and layers of either archive
/// format the engine writes. Returns where each is, with its size.
async fn export(
    docker: &bollard::Docker,
    image: &str,
    dir: &Path,
    wanted: &[Digest],
) -> Result<std::collections::HashMap<Digest, (PathBuf, u64)>, Failure> {
    let archive = dir.join("image.tar");
    let mut file = tokio::fs::File::create(&archive)
        .await
        .map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("{}: {e}", archive.display()),
        })?;
    let mut parts = docker.export_image(image);
    while let Some(part) = parts.next().await {
        let part = part.map_err(engine_failure(format!(
            "reading image {image} from the engine"
        )))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &part)
            .await
            .map_err(|e| Failure {
                exit: Exit::Failure,
                message: format!("{}: {e}", archive.display()),
            })?;
    }
    drop(file);
    let wanted: BTreeSet<Digest> = wanted.iter().cloned().collect();
    let out = dir.to_owned();
    tokio::task::spawn_blocking(move || split(&archive, &out, &wanted))
        .await
        .map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("reading the image archive: {e}"),
        })?
        .map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("reading the image archive: {e}"),
        })
}

fn split(
    archive: &Path,
    dir: &Path,
    wanted: &BTreeSet<Digest>,
) -> std::io::Result<std::collections::HashMap<Digest, (PathBuf, u64)>> {
    use std::io::{Read, Write};
    let mut found = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for (n, entry) in tar.entries()?.enumerate() {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = dir.join(format!("blob-{n}"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut hasher = Hasher::default();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = entry.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read])?;
        }
        out.flush()?;
        let size = hasher.bytes();
        let digest = hasher.finish();
        if wanted.contains(&digest) && !found.contains_key(&digest) {
            found.insert(digest, (path, size));
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(found)
}

/// Sends one blob with a progress bar of its bytes.
async fn send(
    client: &Client,
    tenant: &str,
    digest: &Digest,
    path: &Path,
    size: u64,
    multi: &MultiProgress,
) -> Result<u64, Failure> {
    let bar = multi.add(ProgressBar::new(size));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(digest.short().to_owned());
    let file = tokio::fs::File::open(path).await.map_err(|e| Failure {
        exit: Exit::Failure,
        message: format!("{}: {e}", path.display()),
    })?;
    let counted = bar.clone();
    let parts = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |part| {
        let part = part.map(|bytes| bytes.to_vec());
        if let Ok(bytes) = &part {
            counted.inc(bytes.len() as u64);
        }
        part
    });
    let stored = client.push_blob(tenant, digest, size, parts).await;
    match stored {
        Ok(stored) => {
            bar.finish_with_message("sent");
            Ok(stored.size)
        }
        Err(e) => {
            bar.abandon_with_message("refused");
            Err(e.into())
        }
    }
}
