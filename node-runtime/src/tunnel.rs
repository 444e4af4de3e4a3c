//! Tunnels outside gRPC. A tunnel (a byte stream to one port of one service's
//! replica on another node) has a TLS connection of its own to that node's API port,
//! told apart from gRPC connections at the handshake by its ALPN protocol
//! ([`crate::node_tls::TUNNEL_ALPN`]). The caller sends its call (a `PeerCall`), the
//! node answers (a `TunnelAnswer`, empty when the tunnel is open), each as a 4-byte
//! big-endian length and the encoded message; then the connection carries the
//! service's bytes both ways as TLS records, with no framing, flow control or message
//! copies of its own in between.
//!
//! The connection is the one the call is checked against, as for any node-API call:
//! the call must be signed by the key the TLS handshake was made with. What a new
//! connection costs (TCP, the handshake and its signatures) is kept off a tunnel's
//! path: a caller keeps one connection ready per peer node ([`Spares`]), made when a
//! tunnel takes the last.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_protocol::node_api::{PeerCall, TunnelAnswer};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::node_tls::NodeTls;

/// The largest call a node reads (a delegation token is about a kilobyte).
pub(crate) const MAX_CALL: usize = 64 * 1024;
/// The largest answer a caller reads.
const MAX_ANSWER: usize = 4 * 1024;
/// How long an accepted tunnel connection may wait for its call: spares wait unused.
pub(crate) const CALL_WITHIN: Duration = Duration::from_secs(60);
/// How long a caller keeps a spare before it makes a fresh one (well within
/// [`CALL_WITHIN`], so that the node has not closed it yet).
const SPARE_FOR: Duration = Duration::from_secs(30);
/// The buffer each way while bytes are carried.
const BUFFER: usize = 64 * 1024;

/// A caller's end of a tunnel connection.
pub type Connection = tokio_rustls::client::TlsStream<crate::node_tls::Buffered>;

/// Writes `message` as a 4-byte big-endian length and its encoding.
pub async fn send<M: Message>(
    io: &mut (impl AsyncWrite + Unpin),
    message: &M,
) -> std::io::Result<()> {
    io.write_all(&framed(message)?).await?;
    io.flush().await
}

/// `message` as [`send`] writes it.
fn framed<M: Message>(message: &M) -> std::io::Result<Vec<u8>> {
    let length = u32::try_from(message.encoded_len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(4 + message.encoded_len());
    framed.extend_from_slice(&length.to_be_bytes());
    message.encode(&mut framed).map_err(std::io::Error::other)?;
    Ok(framed)
}

/// Reads one message written by [`send`], refusing one longer than `max` bytes before
/// reading it.
pub async fn receive<M: Message + Default>(
    io: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<M> {
    let mut length = [0u8; 4];
    io.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {length} bytes, more than the {max} allowed"),
        ));
    }
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await?;
    M::decode(body.as_slice())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Carries bytes both ways between `a` and `b` until both ends have closed, as both
/// ends of an open tunnel do.
pub async fn carry(
    a: &mut (impl AsyncRead + AsyncWrite + Unpin + ?Sized),
    b: &mut (impl AsyncRead + AsyncWrite + Unpin + ?Sized),
) -> std::io::Result<()> {
    tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER, BUFFER)
        .await
        .map(|_| ())
}

/// Why a tunnel did not open.
#[derive(Debug)]
pub enum NotOpened {
    /// The connection failed before the node answered.
    Connection(std::io::Error),
    /// The node answered and refused.
    Refused(tonic::Status),
}

impl std::fmt::Display for NotOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(e) => write!(f, "{e}"),
            Self::Refused(status) => write!(f, "refused: {}", status.message()),
        }
    }
}

/// Sends `call` on `connection`, and right behind it `early`, the first bytes for the
/// service (the node reads them only once it has allowed the call), and waits for the
/// node's answer: the connection, ready to carry bytes, when the tunnel is open.
pub async fn open(
    mut connection: Connection,
    call: &PeerCall,
    early: &[u8],
) -> Result<Connection, NotOpened> {
    let mut sent = framed(call).map_err(NotOpened::Connection)?;
    sent.extend_from_slice(early);
    connection
        .write_all(&sent)
        .await
        .map_err(NotOpened::Connection)?;
    connection.flush().await.map_err(NotOpened::Connection)?;
    let answer: TunnelAnswer = receive(&mut connection, MAX_ANSWER)
        .await
        .map_err(NotOpened::Connection)?;
    match answer.refused.is_empty() {
        true => Ok(connection),
        false => Err(NotOpened::Refused(tonic::Status::new(
            tonic::Code::from(answer.code),
            answer.refused,
        ))),
    }
}

/// The answer a node sends for a tunnel's call: open, or why not.
pub(crate) fn answer(outcome: Result<(), &tonic::Status>) -> TunnelAnswer {
    match outcome {
        Ok(()) => TunnelAnswer::default(),
        Err(status) => TunnelAnswer {
            // A refusal always says something, so that it is never read as opened.
            refused: match status.message() {
                "" => "refused".to_owned(),
                message => message.to_owned(),
            },
            code: status.code() as i32,
        },
    }
}

/// Connections ready for tunnels: at most one per peer node (its address and key),
/// made in the background when a tunnel takes the one there was.
#[derive(Clone, Default)]
pub(crate) struct Spares(Arc<Mutex<SpareMap>>);

/// A spare connection, and when it was made, by its peer's address and key.
type SpareMap = HashMap<(String, Vec<u8>), (Instant, Connection)>;

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spares").finish_non_exhaustive()
    }
}

impl Spares {
    /// A connection to the node at `peer` with `peer_key`, and whether it was a spare
    /// (which may have been closed meanwhile): the spare when there is a fresh one,
    /// else a new connection. Either way a new spare is made.
    pub(crate) async fn take(
        &self,
        tls: &NodeTls,
        peer: &str,
        peer_key: &[u8],
    ) -> std::io::Result<(Connection, bool)> {
        let key = (peer.to_owned(), peer_key.to_vec());
        let spare = self.lock().remove(&key);
        self.refill(tls, key);
        match spare {
            Some((made, connection)) if made.elapsed() < SPARE_FOR => Ok((connection, true)),
            _ => Ok((tls.dial_tunnel(peer, peer_key).await?, false)),
        }
    }

    fn refill(&self, tls: &NodeTls, key: (String, Vec<u8>)) {
        let (spares, tls) = (self.clone(), tls.clone());
        tokio::spawn(async move {
            let made = Instant::now();
            match tls.dial_tunnel(&key.0, &key.1).await {
                Ok(connection) => {
                    spares
                        .lock()
                        .entry(key.clone())
                        .or_insert((made, connection));
                }
                Err(e) => {
                    tracing::debug!(peer = %key.0, error = %e, "no spare tunnel connection");
                    return;
                }
            }
            // A spare no tunnel took is closed once too old to be used, so that a
            // peer no longer called holds no connection.
            tokio::time::sleep(SPARE_FOR).await;
            let mut spares = spares.lock();
            if spares.get(&key).is_some_and(|(at, _)| *at == made) {
                spares.remove(&key);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpareMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_travels_and_one_too_long_is_refused_unread() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let answer = TunnelAnswer {
            refused: "no".into(),
            code: 7,
        };
        send(&mut a, &answer).await.unwrap();
        let read: TunnelAnswer = receive(&mut b, 64).await.unwrap();
        assert_eq!(read, answer);

        // A length past the bound is refused before any of the body is read.
        a.write_all(&(1_000_000u32).to_be_bytes()).await.unwrap();
        let refused = receive::<TunnelAnswer>(&mut b, 64).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        assert!(refused.to_string().contains("1000000 bytes"), "{refused}");
    }

    #[test]
    fn a_refusal_is_never_read_as_opened() {
        let refused = answer(Err(&tonic::Status::permission_denied("")));
        assert!(!refused.refused.is_empty());
        assert_eq!(refused.code, tonic::Code::PermissionDenied as i32);
        assert!(answer(Ok(())).refused.is_empty());
    }
}
