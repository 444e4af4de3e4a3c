//! TLS for the control plane's two listeners, the REST API and the node API.
//!
//! An admin either hands the server a certificate and key (`--tls-cert`, `--tls-key`)
//! or lets it make its own (`--tls`): a certificate authority kept in the data
//! directory (`tls/ca.pem`, and its key owner-only), and at every start a server
//! certificate signed by it for the names the server is reached by. Clients trust
//! `tls/ca.pem` (`berth --ca`, `berth-node join --ca`); a restart with other names
//! issues a new server certificate under the same authority, so no client needs to
//! learn anything new.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a made server certificate is valid: it is made again at every start.
const SERVER_CERT_DAYS: i64 = 397;

/// Whether and how the control plane serves TLS.
#[derive(Debug, Clone, Default)]
pub(crate) enum TlsSetting {
    /// Plain HTTP and gRPC.
    #[default]
    Off,
    /// A certificate made by the server's own authority, for these names besides the
    /// ones it finds itself (localhost, the machine's name, the listen addresses).
    Made { names: Vec<String> },
    /// The admin's certificate chain and key, PEM.
    Files { cert: PathBuf, key: PathBuf },
}

/// The certificate and key a server presents.
#[derive(Clone)]
pub(crate) struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key_pem: String,
    /// The authority clients trust, when the server made it.
    pub(crate) ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The chain in `cert` and the key in `key`, both PEM.
    pub(crate) fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("reading the TLS key {}", key.display()))?;
        Self::new(chain_pem, key_pem, None)
            .with_context(|| format!("{} and {}", cert.display(), key.display()))
    }

    /// A server certificate for `names`, signed by the authority kept in `dir` (made
    /// there on first use).
    pub(crate) fn made_in(dir: &Path, names: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the TLS directory {}", dir.display()))?;
        let key_file = dir.join("ca-key.pem");
        let ca_key_pem = crate::secrets::read_or_create_secret(&key_file, || {
            Ok(rcgen::KeyPair::generate()?.serialize_pem())
        })?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)
            .with_context(|| format!("{} is not a PEM key", key_file.display()))?;
        // The authority's certificate is made again from its fixed name and its key,
        // so it signs exactly as the one written the first time; that one, the file
        // clients hold, is kept.
        let ca = authority_params()?.self_signed(&ca_key)?;
        let ca_file = dir.join("ca.pem");
        if !ca_file.exists() {
            let partial = dir.join(format!("ca.pem.{}", std::process::id()));
            std::fs::write(&partial, ca.pem())
                .and_then(|()| std::fs::rename(&partial, &ca_file))
                .with_context(|| format!("writing {}", ca_file.display()))?;
        }
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .with_context(|| format!("a certificate for {names:?}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth control plane");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(SERVER_CERT_DAYS);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Self::new(cert.pem(), key.serialize_pem(), Some(ca_file))
    }

    fn new(chain_pem: String, key_pem: String, ca_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("the certificate is not PEM: {e}"))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "the certificate file holds no certificate"
        );
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the key is not a PEM private key: {e}"))?;
        let tls = Self {
            chain,
            chain_pem,
            key_pem,
            ca_file,
        };
        // A key that does not match the certificate is found now, not at the first
        // client.
        tls.rustls()?;
        Ok(tls)
    }

    /// The server's own certificate, which its pages pin when they call its API.
    pub(crate) fn leaf(&self) -> CertificateDer<'static> {
        self.chain[0].clone()
    }

    /// The configuration of the REST API's listener.
    pub(crate) fn rustls(&self) -> anyhow::Result<rustls::ServerConfig> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the key is not a PEM private key: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), key)
        .context("the key does not go with the certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The configuration of the node API's listener.
    pub(crate) fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.chain_pem,
            &self.key_pem,
        ))
    }
}

fn authority_params() -> anyhow::Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth control plane authority");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The names a made certificate carries: loopback, this machine's name, the
/// addresses the server listens on (when not every address), the host of the URL it
/// advertises, and `extra`.
pub(crate) fn names_for(
    listen: &[std::net::SocketAddr],
    advertise: Option<&str>,
    extra: &[String],
) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    names.extend(
        listen
            .iter()
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.ip().to_string()),
    );
    if let Some(host) = advertise.and_then(url_host) {
        names.push(host);
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

/// The host of `http(s)://host:port/...`, without brackets around an IPv6 address.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_certificate_names_loopback_the_listen_address_and_the_advertised_host() {
        let listen = [
            "10.0.0.5:7420".parse().unwrap(),
            "0.0.0.0:7421".parse().unwrap(),
        ];
        let names = names_for(
            &listen,
            Some("https://pool.example:7421"),
            &["api.example".into()],
        );
        for want in [
            "localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.5",
            "pool.example",
            "api.example",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n == "0.0.0.0"), "{names:?}");
        assert_eq!(url_host("https://[fd00::1]:7421"), Some("fd00::1".into()));
    }

    #[test]
    fn restarts_sign_new_certificates_under_the_same_authority() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerTls::made_in(dir.path(), &["localhost".into()]).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let second = ServerTls::made_in(dir.path(), &["other.example".into()]).unwrap();
        assert_eq!(ca, std::fs::read(dir.path().join("ca.pem")).unwrap());
        assert_ne!(first.leaf(), second.leaf());
        // Both verify against the one authority file, each for its own names only.
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert.unwrap()).unwrap();
            }
            Arc::new(roots)
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let check = |tls: &ServerTls, name: &str| {
            verifier.verify_server_cert(
                &tls.leaf(),
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                now,
            )
        };
        use rustls::client::danger::ServerCertVerifier;
        assert!(check(&first, "localhost").is_ok());
        assert!(check(&second, "other.example").is_ok());
        assert!(check(&second, "localhost").is_err());
    }

    #[test]
    fn a_key_that_does_not_go_with_the_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let made = ServerTls::made_in(dir.path(), &["localhost".into()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let error = ServerTls::new(made.chain_pem.clone(), other, None).unwrap_err();
        assert!(
            format!("{error:#}").contains("does not go with the certificate"),
            "{error:#}"
        );
    }
}
