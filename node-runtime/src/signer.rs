//! The node's signature on what it sends: reports and heartbeats to the allocator,
//! calls on other nodes' APIs. Every request carries a sequence number that only
//! grows, so a replayed one is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair};

use berth_protocol::node_api::{SignedRequest, signing_payload};

use crate::node_tls::NodeTls;

/// Signs requests in the node's name with numbers that always grow, across restarts
/// too (they start from the clock, in microseconds).
#[derive(Debug)]
pub struct Signer {
    node: String,
    key: Ed25519KeyPair,
    tls: NodeTls,
    last: AtomicU64,
}

impl Signer {
    /// A signer for the node `node` whose identity key is `key`, connecting to other
    /// nodes with `tls` (made from the same key).
    pub fn new(node: &str, key: Ed25519KeyPair, tls: NodeTls) -> Self {
        Self {
            node: node.to_owned(),
            key,
            tls,
            last: AtomicU64::new(0),
        }
    }

    /// The same key, for connections to other nodes.
    pub fn tls(&self) -> &NodeTls {
        &self.tls
    }

    /// The next sequence number and the current time in milliseconds.
    pub fn next_sequence(&self) -> (u64, i64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let micros = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
        let mut previous = self.last.load(Ordering::Relaxed);
        loop {
            let next = micros.max(previous + 1);
            match self
                .last
                .compare_exchange(previous, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (next, i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
                Err(actual) => previous = actual,
            }
        }
    }

    /// The node's public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// A call on another node's API (`method`), carrying `token` and signed with this
    /// node's key.
    pub fn peer_call(
        &self,
        method: &str,
        token: Vec<u8>,
        body: &berth_protocol::node_api::PeerCallBody,
    ) -> berth_protocol::node_api::PeerCall {
        let body = body.encode_to_vec();
        let signature = self
            .key
            .sign(&berth_protocol::node_api::peer_signing_payload(
                method, &body,
            ))
            .as_ref()
            .to_vec();
        berth_protocol::node_api::PeerCall {
            token,
            caller_key: self.public_key(),
            body,
            signature,
        }
    }

    /// Wraps `body` for `method`, signed.
    pub fn sign<B: Message>(&self, method: &str, body: &B) -> SignedRequest {
        let body = body.encode_to_vec();
        let signature = self
            .key
            .sign(&signing_payload(method, &body))
            .as_ref()
            .to_vec();
        SignedRequest {
            node: self.node.clone(),
            body,
            signature,
        }
    }
}
