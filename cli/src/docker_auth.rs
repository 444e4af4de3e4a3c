//! The user's Docker credentials, as `docker login` keeps them and Compose uses them:
//! `auths` in `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`). Credential
//! helpers (`credsStore`, `credHelpers`) are not asked; a registry kept only there is
//! pulled from without a login.

use std::path::PathBuf;

use base64::Engine;
use berth_protocol::assignment::{RegistryCredential, TopologyAssignment};
use berth_protocol::image::registry_of;

fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// The login `config` (a Docker `config.json`) holds for `registry`, if any.
fn credential_in(config: &serde_json::Value, registry: &str) -> Option<RegistryCredential> {
    let auths = config.get("auths")?.as_object()?;
    let entry = auths.get(registry).or_else(|| {
        auths
            .iter()
            .find(|(key, _)| {
                key.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    == Some(registry)
            })
            .map(|(_, v)| v)
    })?;
    let (username, password) = match entry.get("auth").and_then(|a| a.as_str()) {
        Some(auth) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':')?;
            (user.to_owned(), pass.to_owned())
        }
        None => (
            entry.get("username")?.as_str()?.to_owned(),
            entry.get("password")?.as_str()?.to_owned(),
        ),
    };
    Some(RegistryCredential {
        registry: registry.to_owned(),
        username,
        password,
    })
}

/// `assignment` with the user's logins to the registries its images name.
pub(crate) fn with_user_credentials(mut assignment: TopologyAssignment) -> TopologyAssignment {
    let Some(config) = config_path()
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return assignment;
    };
    let mut registries: Vec<&str> = assignment
        .services
        .values()
        .filter_map(|s| registry_of(&s.image))
        .collect();
    registries.sort_unstable();
    registries.dedup();
    let found: Vec<RegistryCredential> = registries
        .into_iter()
        .filter_map(|r| credential_in(&config, r))
        .collect();
    assignment.registry_credentials = found;
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_read_from_auth_or_from_its_fields() {
        let config = serde_json::json!({ "auths": {
            "reg.example:5000": { "auth": base64::engine::general_purpose::STANDARD.encode("ann:s3cret") },
            "https://other.example/v1/": { "username": "bob", "password": "pw" }
        }});
        let ann = credential_in(&config, "reg.example:5000").expect("ann");
        assert_eq!(
            (ann.username.as_str(), ann.password.as_str()),
            ("ann", "s3cret")
        );
        let bob = credential_in(&config, "other.example").expect("bob");
        assert_eq!(
            (bob.username.as_str(), bob.password.as_str()),
            ("bob", "pw")
        );
        assert!(credential_in(&config, "third.example").is_none());
        assert!(
            !format!("{ann:?}").contains("s3cret"),
            "the password is not shown"
        );
    }
}
