//! The secrets a server keeps in its data directory (the admin token, the key that
//! seals the control plane's secrets, the authority's key): made once, readable by
//! their owner only, and never half-written when servers sharing the directory start
//! at once.

use std::path::Path;

pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, bytes)?;
    Ok(())
}

/// The secret kept in `path`, or one made by `make` and written there readable by its
/// owner only. Servers sharing the data directory may start at once: the first to
/// write wins and the others read what it wrote, never a half-written file.
pub(crate) fn read_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow::anyhow!("reading {}: {e}", path.display()));
        }
        Err(_) => {}
    }
    let made = make()?;
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    write_secret(&partial, made.as_bytes())?;
    // A link, unlike a rename, fails when the file is there already.
    let linked = std::fs::hard_link(&partial, path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(made),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?)
        }
        Err(e) => Err(anyhow::anyhow!("writing {}: {e}", path.display())),
    }
}

/// The key this server seals and opens the control plane's secrets with:
/// `BERTH_SECRETS_KEY` (64 hex characters), else the file `BERTH_SECRETS_KEY_FILE`
/// names, else `secrets-key` in the data directory (made there, owner-only, the first
/// time). Every server of one control plane must be given the same key.
pub(crate) fn secrets_key(data_dir: &Path) -> anyhow::Result<berth_allocator::sealing::SealingKey> {
    use berth_allocator::sealing::SealingKey;
    let (text, from) = match (
        std::env::var("BERTH_SECRETS_KEY"),
        std::env::var_os("BERTH_SECRETS_KEY_FILE"),
    ) {
        (Ok(text), _) => (text, "BERTH_SECRETS_KEY".to_owned()),
        (Err(_), Some(file)) => {
            let path = std::path::PathBuf::from(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading the secrets key {}: {e}", path.display()))?;
            (text, path.display().to_string())
        }
        (Err(_), None) => {
            let path = data_dir.join("secrets-key");
            let text = read_or_create_secret(&path, || Ok(SealingKey::generate_hex()))?;
            (text, path.display().to_string())
        }
    };
    SealingKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{from}: {e}"))
}

/// The admin token: `BERTH_ADMIN_TOKEN`, else the one kept in `path`, else a new one
/// written there readable by its owner only.
pub(crate) fn admin_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("BERTH_ADMIN_TOKEN") {
        return Ok(token);
    }
    if let Ok(token) = std::fs::read_to_string(path) {
        return Ok(token.trim().to_owned());
    }
    let token = format!("bat_{}", random_hex(32)?);
    write_secret(path, token.as_bytes())?;
    Ok(token)
}
