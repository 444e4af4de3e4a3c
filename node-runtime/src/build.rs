//! Builds a service's image from its `build` section through the engine's build API,
//! as `docker compose build` does: the context directory (less what `.dockerignore`
//! excludes) goes to the engine as a tar, with the Dockerfile, arguments, target,
//! labels and extra tags of the section.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_protocol::topology::Build;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{BuildImageOptions, TagImageOptions};
use futures_util::StreamExt;

use crate::DockerDriver;

/// The name an inline Dockerfile (or one outside the context) takes inside the context.
const OWN_DOCKERFILE: &str = ".berth.Dockerfile";

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The context cannot be read.
    #[error("service {service}: cannot read the build context {}: {message}", context.display())]
    Context {
        /// The service.
        service: String,
        /// The context directory.
        context: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The engine refused the build or a step of it failed.
    #[error("service {service}: the build failed: {message}{}", hint(message))]
    Failed {
        /// The service.
        service: String,
        /// What the engine said.
        message: String,
    },
}

/// Names the likeliest cause of an engine message, where it is one a user meets first.
fn hint(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if lower.contains("pull access denied")
        || lower.contains("failed to resolve")
        || lower.contains("no such host")
        || lower.contains("not found")
            && (lower.contains("manifest") || lower.contains("repository"))
    {
        " (its `FROM` image is not on this engine and cannot be pulled: build or load that image first)".to_owned()
    } else {
        String::new()
    }
}

/// What one build did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The image's id.
    pub id: String,
    /// Every tag it was given.
    pub tags: Vec<String>,
}

impl DockerDriver {
    /// Builds `image` for `service` from `build`, calling `output` with each line the
    /// build prints.
    pub async fn build(
        &self,
        service: &str,
        image: &str,
        build: &Build,
        mut output: impl FnMut(&str),
    ) -> Result<Built, BuildError> {
        let context = PathBuf::from(&build.context);
        let (tar, dockerfile) =
            context_tar(&context, build).map_err(|message| BuildError::Context {
                service: service.to_owned(),
                context: context.clone(),
                message,
            })?;
        let failed = |message: String| BuildError::Failed {
            service: service.to_owned(),
            message,
        };
        let options = BuildImageOptions {
            dockerfile,
            t: Some(image.to_owned()),
            rm: true,
            forcerm: true,
            nocache: build.no_cache,
            pull: build.pull.then(|| "1".to_owned()),
            buildargs: (!build.args.is_empty()).then(|| {
                build
                    .args
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>()
            }),
            labels: (!build.labels.is_empty()).then(|| {
                build
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>()
            }),
            target: build.target.clone().unwrap_or_default(),
            networkmode: build.network.clone(),
            extrahosts: (!build.extra_hosts.is_empty()).then(|| build.extra_hosts.join(",")),
            shmsize: build.shm_size.and_then(|b| i32::try_from(b).ok()),
            platform: build.platforms.first().cloned().unwrap_or_default(),
            ..BuildImageOptions::default()
        };
        let mut stream =
            self.client()
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut id = None;
        while let Some(info) = stream.next().await {
            let info = info.map_err(|e| {
                failed(match e {
                    BollardError::DockerStreamError { error } => error,
                    BollardError::DockerResponseServerError { message, .. } => message,
                    other => other.to_string(),
                })
            })?;
            if let Some(detail) = info.error_detail {
                return Err(failed(detail.message.unwrap_or_default()));
            }
            if let Some(text) = &info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    output(line);
                }
            }
            if let Some(aux) = info.aux.and_then(|a| a.id) {
                id = Some(aux);
            }
        }
        let mut tags = vec![image.to_owned()];
        for extra in &build.tags {
            let (repo, tag) = split_tag(extra);
            self.client()
                .tag_image(
                    image,
                    Some(TagImageOptions {
                        repo: Some(repo.to_owned()),
                        tag: Some(tag.to_owned()),
                    }),
                )
                .await
                .map_err(|e| failed(format!("cannot tag the image {extra}: {e}")))?;
            tags.push(extra.clone());
        }
        Ok(Built {
            id: id.unwrap_or_default(),
            tags,
        })
    }
}

/// `repo:tag` (the tag defaulting to `latest`), minding a registry's port.
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

/// The context as a tar, and the Dockerfile's path inside it.
fn context_tar(context: &Path, build: &Build) -> Result<(Vec<u8>, String), String> {
    if !context.is_dir() {
        return Err("it is not a directory".to_owned());
    }
    let ignore = match std::fs::read_to_string(context.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(format!(".dockerignore: {e}")),
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut files = Vec::new();
    walk(context, Path::new(""), &ignore, &mut files).map_err(|e| e.to_string())?;
    for relative in &files {
        tar.append_path_with_name(context.join(relative), relative)
            .map_err(|e| format!("{}: {e}", relative.display()))?;
    }
    // The Dockerfile: inline, inside the context, or elsewhere (then sent along).
    let own = |tar: &mut tar::Builder<Vec<u8>>, text: &[u8]| -> Result<String, String> {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, OWN_DOCKERFILE, text)
            .map_err(|e| e.to_string())?;
        Ok(OWN_DOCKERFILE.to_owned())
    };
    let dockerfile = match (&build.dockerfile_inline, &build.dockerfile) {
        (Some(inline), _) => own(&mut tar, inline.as_bytes())?,
        (None, Some(path)) => {
            let full = context.join(path);
            match full.strip_prefix(context) {
                Ok(inside) if !path.contains("..") && files.iter().any(|f| f == inside) => {
                    inside.to_string_lossy().into_owned()
                }
                _ => {
                    let text = std::fs::read(&full)
                        .map_err(|e| format!("the Dockerfile {}: {e}", full.display()))?;
                    own(&mut tar, &text)?
                }
            }
        }
        (None, None) => {
            if !context.join("Dockerfile").is_file() {
                return Err("it holds no Dockerfile (name one with `build.dockerfile`)".to_owned());
            }
            "Dockerfile".to_owned()
        }
    };
    let bytes = tar.into_inner().map_err(|e| e.to_string())?;
    Ok((bytes, dockerfile))
}

/// Every file and link under `dir` (relative to the context), less what is ignored.
/// The Dockerfile and `.dockerignore` are sent even if excluded, as the engine's own
/// client does, since the build needs them.
fn walk(
    root: &Path,
    relative: &Path,
    ignore: &Ignore,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(relative))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = relative.join(entry.file_name());
        let kind = entry.file_type()?;
        let text = path.to_string_lossy();
        let needed = text == "Dockerfile" || text == ".dockerignore";
        if kind.is_dir() {
            // A directory is walked even if excluded, in case a `!` pattern takes a
            // file inside it back.
            if !ignore.excludes(&text) || ignore.has_exceptions() {
                walk(root, &path, ignore, out)?;
            }
        } else if needed || !ignore.excludes(&text) {
            out.push(path);
        }
    }
    Ok(())
}

/// The patterns of a `.dockerignore`: the last pattern that matches a path decides,
/// `!` takes a path back, and a pattern that matches a directory excludes what is in it.
#[derive(Debug, Default)]
struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (keep, pattern) = match l.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, l),
                };
                let parts = pattern
                    .trim_start_matches("./")
                    .trim_matches('/')
                    .split('/')
                    .filter(|p| !p.is_empty() && *p != ".")
                    .map(str::to_owned)
                    .collect();
                (keep, parts)
            })
            .collect();
        Self { patterns }
    }

    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(keep, _)| *keep)
    }

    fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for (keep, pattern) in &self.patterns {
            // A pattern matches the path or one of its parent directories.
            let hit = (1..=parts.len()).any(|n| matches(pattern, &parts[..n]));
            if hit {
                excluded = !keep;
            }
        }
        excluded
    }
}

/// Whether the pattern's segments match the path's, `**` standing for any number of
/// segments.
fn matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| matches(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((segment, tail)) => {
                glob(first.as_bytes(), segment.as_bytes()) && matches(rest, tail)
            }
            None => false,
        },
    }
}

/// One segment against a glob of `*`, `?` and `[...]` classes.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return text.first() == Some(&b'[') && glob(rest, &text[1..]);
            };
            let Some((&c, tail)) = text.split_first() else {
                return false;
            };
            let (negated, class) = match rest[..end].split_first() {
                Some((b'^' | b'!', class)) => (true, class),
                _ => (false, &rest[..end]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negated && glob(&rest[end + 1..], tail)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == Some(&rest[0]) && glob(&rest[1..], &text[1..])
        }
        Some((&p, rest)) => text.first() == Some(&p) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_excludes_as_the_engine_client_does() {
        let ignore = Ignore::parse(
            "# comment\nnode_modules\n*.log\n**/tmp\n!keep.log\n./build/\nsecret[0-9].txt\n",
        );
        for excluded in [
            "node_modules",
            "node_modules/a/b.js",
            "x.log",
            "a/b/tmp",
            "a/b/tmp/file",
            "build/out",
            "secret1.txt",
        ] {
            assert!(ignore.excludes(excluded), "{excluded}");
        }
        for kept in [
            "keep.log",
            "src/x.log",
            "src/main.rs",
            "secretA.txt",
            "buildx",
        ] {
            assert!(!ignore.excludes(kept), "{kept}");
        }
    }

    #[test]
    fn the_context_goes_without_what_is_ignored_and_an_inline_dockerfile_comes_along() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "junk\n").unwrap();
        std::fs::create_dir(dir.path().join("junk")).unwrap();
        std::fs::write(dir.path().join("junk/big"), "x").unwrap();
        std::fs::write(dir.path().join("app"), "binary").unwrap();
        let build = Build {
            context: dir.path().display().to_string(),
            dockerfile_inline: Some("FROM scratch\nCOPY app /app\n".into()),
            ..Build::default()
        };
        let (bytes, dockerfile) = context_tar(dir.path(), &build).unwrap();
        assert_eq!(dockerfile, OWN_DOCKERFILE);
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".dockerignore", "app", OWN_DOCKERFILE]);
        let missing = Build {
            context: dir.path().display().to_string(),
            ..Build::default()
        };
        assert!(
            context_tar(dir.path(), &missing)
                .unwrap_err()
                .contains("no Dockerfile")
        );
    }

    #[test]
    fn a_tag_with_a_registry_port_keeps_it() {
        assert_eq!(split_tag("reg:5000/app"), ("reg:5000/app", "latest"));
        assert_eq!(split_tag("reg:5000/app:v1"), ("reg:5000/app", "v1"));
        assert_eq!(split_tag("app:v2"), ("app", "v2"));
    }
}
