//! TLS between nodes, with raw public keys (RFC 7250) instead of certificates: each
//! node presents its own Ed25519 identity key, the one it registered at join, so there
//! is no authority to run and nothing to issue or renew.
//!
//! The calling node accepts exactly the key the allocator gave it for the node it
//! calls (with the link); anything else is a man in the middle. The called node takes
//! any key at the handshake, since who may call is the delegation's business, and then
//! requires every call to be signed by the very key its connection was made with
//! ([`connection_key`]): a call cannot travel over another node's connection. What
//! crosses between hosts, tunnelled bytes included, is encrypted (TLS 1.3 only, which
//! raw public keys need).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_stream::{Stream, StreamExt};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The ALPN protocol of a connection that carries one tunnel ([`crate::tunnel`]);
/// other connections (gRPC) offer none.
pub const TUNNEL_ALPN: &[u8] = b"berth-tunnel/1";

/// A connection accepted by the node API, through its handshake.
pub type Accepted = tokio_rustls::server::TlsStream<Buffered>;

/// The bytes read ahead of rustls on a node-API connection.
const READ_AHEAD: usize = 64 * 1024;

/// A TCP connection read through a buffer: rustls asks for TLS records 4 KiB at a
/// time, which unbuffered is a system call each (four for every full record).
#[derive(Debug)]
pub struct Buffered(tokio::io::BufReader<tokio::net::TcpStream>);

impl Buffered {
    fn new(tcp: tokio::net::TcpStream) -> Self {
        let _ = tcp.set_nodelay(true);
        Self(tokio::io::BufReader::with_capacity(READ_AHEAD, tcp))
    }
}

impl tokio::io::AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Buffered {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().connect_info()
    }
}

/// How long a connecting node may take over its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A node's key as it presents itself to other nodes.
#[derive(Clone)]
pub struct NodeTls {
    key: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
    /// How tunnel connections are made, per peer key: kept, so that each connection
    /// after the first to a peer resumes a session (no signatures to make or check).
    tunnel_configs: Arc<Mutex<HashMap<Vec<u8>, Arc<rustls::ClientConfig>>>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// The TLS identity of the node whose Ed25519 key is `pkcs8`.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let signing =
            rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8.to_vec()))
                .map_err(|e| format!("the node key cannot sign TLS handshakes: {e}"))?;
        let spki = signing
            .public_key()
            .ok_or("the node key has no public half")?
            .as_ref()
            .to_vec();
        Ok(Self {
            key: Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki)], signing)),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            tunnel_configs: Arc::default(),
        })
    }

    /// How this node accepts other nodes' connections.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(AnyNodeKey {
                provider: self.provider.clone(),
            }))
            .with_cert_resolver(Arc::new(
                rustls::server::AlwaysResolvesServerRawPublicKeys::new(self.key.clone()),
            ));
        // gRPC callers offer no protocol; tunnel connections offer theirs.
        config.alpn_protocols = vec![b"h2".to_vec(), TUNNEL_ALPN.to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// How this node connects to the node whose Ed25519 public key is `peer_key`.
    fn connector(&self, peer_key: &[u8]) -> Result<tokio_rustls::TlsConnector, String> {
        Ok(tokio_rustls::TlsConnector::from(Arc::new(
            self.client_config(peer_key)?,
        )))
    }

    fn client_config(&self, peer_key: &[u8]) -> Result<rustls::ClientConfig, String> {
        if peer_key.len() != 32 {
            return Err(format!(
                "the peer's key is {} bytes, not an Ed25519 key",
                peer_key.len()
            ));
        }
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ThisNodeKey {
                spki: [ED25519_SPKI_PREFIX.as_slice(), peer_key].concat(),
                provider: self.provider.clone(),
            }))
            .with_client_cert_resolver(Arc::new(
                rustls::client::AlwaysResolvesClientRawPublicKeys::new(self.key.clone()),
            ));
        Ok(config)
    }

    fn tunnel_config(&self, peer_key: &[u8]) -> std::io::Result<Arc<rustls::ClientConfig>> {
        let mut configs = self
            .tunnel_configs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(config) = configs.get(peer_key) {
            return Ok(config.clone());
        }
        let mut config = self
            .client_config(peer_key)
            .map_err(std::io::Error::other)?;
        config.alpn_protocols = vec![TUNNEL_ALPN.to_vec()];
        let config = Arc::new(config);
        // Peers come and go; the cache is emptied rather than grown past a bound.
        if configs.len() >= 4096 {
            configs.clear();
        }
        configs.insert(peer_key.to_vec(), config.clone());
        Ok(config)
    }

    /// A connection of its own for one tunnel ([`crate::tunnel`]) to the node API at
    /// `peer` (`http://host:port`) of the node whose key is `peer_key`.
    pub async fn dial_tunnel(
        &self,
        peer: &str,
        peer_key: &[u8],
    ) -> std::io::Result<crate::tunnel::Connection> {
        let config = self.tunnel_config(peer_key)?;
        let uri: tonic::transport::Uri = peer.parse().map_err(|e| {
            std::io::Error::other(format!("{peer:?} is not a node API address: {e}"))
        })?;
        let tls = handshake(&tokio_rustls::TlsConnector::from(config), &uri).await?;
        match tls.get_ref().1.alpn_protocol() {
            Some(TUNNEL_ALPN) => Ok(tls),
            _ => Err(std::io::Error::other(format!(
                "the node API at {peer} does not carry tunnels"
            ))),
        }
    }

    /// A channel to the node API at `peer` (`http://host:port`) of the node whose key
    /// is `peer_key`, over TLS, set as the node API's server is; it connects on first
    /// use and again after a failure.
    pub fn channel(
        &self,
        peer: &str,
        peer_key: &[u8],
    ) -> Result<tonic::transport::Channel, String> {
        let connector = self.connector(peer_key)?;
        let endpoint = endpoint(peer)?;
        let connect = tower::service_fn(move |uri: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tls = handshake(&connector, &uri).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connect))
    }
}

/// Connects to the node API at `uri` and makes the TLS handshake with `connector`.
async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    uri: &tonic::transport::Uri,
) -> std::io::Result<tokio_rustls::client::TlsStream<Buffered>> {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let tcp = Buffered::new(tokio::net::TcpStream::connect((host, port)).await?);
    // The name is not checked (the key is); rustls needs one to send.
    let name = ServerName::try_from("berth-node").map_err(std::io::Error::other)?;
    connector.connect(name, tcp).await
}

/// The gRPC connections `listener` accepts, each through its TLS handshake; handshakes
/// run side by side, so a slow or silent peer holds up no other, and one that fails is
/// dropped (and logged). A connection made for a tunnel goes to `tunnel` instead.
pub fn incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tunnel: impl Fn(Accepted) + Clone + Send + Sync + 'static,
) -> impl Stream<Item = std::io::Result<Accepted>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (socket, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "node API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let socket = Buffered::new(socket);
            let (acceptor, tx, tunnel) = (acceptor.clone(), tx.clone(), tunnel.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(TUNNEL_ALPN) => {
                        tunnel(tls);
                    }
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => handshake_failed(from, &e.to_string()),
                    Err(_) => handshake_failed(from, "timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

fn handshake_failed(from: SocketAddr, why: &str) {
    tracing::warn!(%from, error = why, "node API: TLS handshake failed");
}

/// The Ed25519 public key the calling node's connection was made with, when the call
/// came over the node API's TLS.
pub fn connection_key<T>(request: &tonic::Request<T>) -> Option<Vec<u8>> {
    let info = request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>(
        )?;
    node_key(info.peer_certs()?.first()?)
}

/// The Ed25519 public key the calling node's tunnel connection was made with.
pub fn accepted_key(connection: &Accepted) -> Option<Vec<u8>> {
    node_key(connection.get_ref().1.peer_certificates()?.first()?)
}

fn node_key(spki: &CertificateDer<'_>) -> Option<Vec<u8>> {
    spki.as_ref()
        .strip_prefix(ED25519_SPKI_PREFIX.as_slice())
        .filter(|key| key.len() == 32)
        .map(<[u8]>::to_vec)
}

/// The called node's check: any Ed25519 key, as long as the caller proves it holds it.
#[derive(Debug)]
struct AnyNodeKey {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyNodeKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match is_ed25519_spki(end_entity.as_ref()) {
            true => Ok(ClientCertVerified::assertion()),
            false => Err(not_a_node_key()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS13_ONLY)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_raw(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The calling node's check: exactly the key of the node it means to call.
#[derive(Debug)]
struct ThisNodeKey {
    spki: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ThisNodeKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match end_entity.as_ref() == self.spki.as_slice() {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(not_a_node_key()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS13_ONLY)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_raw(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Raw public keys need TLS 1.3, the only version these configurations offer.
const TLS13_ONLY: rustls::Error =
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered);

fn is_ed25519_spki(der: &[u8]) -> bool {
    der.len() == ED25519_SPKI_PREFIX.len() + 32 && der.starts_with(&ED25519_SPKI_PREFIX)
}

fn not_a_node_key() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

fn verify_raw(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// HTTP/2 flow-control windows of node-API connections, per stream and per
/// connection: the 64 KiB default would hold one tunnel to a window's worth per round
/// trip.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

/// Another node's API at `peer` (`http://host:port`), set as the node API's server is
/// (large windows, no Nagle delay); the connection itself is [`NodeTls::channel`]'s.
pub(crate) fn endpoint(peer: &str) -> Result<tonic::transport::Endpoint, String> {
    Ok(tonic::transport::Endpoint::from_shared(peer.to_owned())
        .map_err(|e| format!("{peer:?} is not a node API address: {e}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn node() -> (NodeTls, Vec<u8>) {
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        let public = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        (NodeTls::from_pkcs8(pkcs8.as_ref()).unwrap(), public)
    }

    /// Connects `caller` to `callee`'s acceptor, the caller expecting `expected`; the
    /// key the callee saw, or the caller's error.
    async fn handshake(
        caller: &NodeTls,
        callee: &NodeTls,
        expected: &[u8],
    ) -> Result<Vec<u8>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = callee.acceptor().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(socket).await.map_err(|e| e.to_string())?;
            let spki = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            Ok::<_, String>(spki[ED25519_SPKI_PREFIX.len()..].to_vec())
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let connector = caller.connector(expected)?;
        let name = ServerName::try_from("berth-node").unwrap();
        let result = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string());
        let seen = server.await.unwrap();
        result?;
        seen
    }

    #[tokio::test]
    async fn each_side_learns_the_other_nodes_key() {
        let ((caller, caller_key), (callee, callee_key)) = (node(), node());
        let seen = handshake(&caller, &callee, &callee_key).await.unwrap();
        assert_eq!(seen, caller_key);
    }

    #[tokio::test]
    async fn a_node_that_is_not_the_one_expected_is_refused() {
        let ((caller, _), (impostor, _), (_, expected_key)) = (node(), node(), node());
        let refused = handshake(&caller, &impostor, &expected_key).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    #[tokio::test]
    async fn a_second_tunnel_connection_resumes_and_still_carries_the_callers_key() {
        let ((caller, caller_key), (callee, callee_key)) = (node(), node());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = format!("http://{}", listener.local_addr().unwrap());
        let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let incoming = incoming(listener, callee.acceptor().unwrap(), move |connection| {
            let _ = tx.send(connection);
        });
        let _grpc = tokio::spawn(async move {
            let mut incoming = Box::pin(incoming);
            while incoming.next().await.is_some() {}
        });
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut connection = caller.dial_tunnel(&peer, &callee_key).await.unwrap();
            let server = accepted.recv().await.expect("accepted as a tunnel");
            assert_eq!(accepted_key(&server), Some(caller_key.clone()));
            // The session ticket arrives with the first bytes the callee sends.
            let mut server = server;
            tokio::io::AsyncWriteExt::write_all(&mut server, b"x")
                .await
                .unwrap();
            let mut byte = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut connection, &mut byte)
                .await
                .unwrap();
            kinds.push(connection.get_ref().1.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
    }
}
