//! The allocator ↔ node gRPC contract (`proto/berth/node/v1/node.proto`), and the
//! signing rule both sides apply to requests made in a node's name.

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("berth.node.v1");

/// The bytes a node signs for a request: a domain tag, the method, and the body.
pub fn signing_payload(method: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(body.len() + method.len() + 16);
    payload.extend_from_slice(b"berth.node.v1/");
    payload.extend_from_slice(method.as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(body);
    payload
}

/// The bytes a node signs for a call on another node's API.
pub fn peer_signing_payload(method: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(body.len() + method.len() + 16);
    payload.extend_from_slice(b"berth.peer.v1/");
    payload.extend_from_slice(method.as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(body);
    payload
}

/// Method names used in signatures.
pub mod methods {
    /// `Watch`.
    pub const WATCH: &str = "Watch";
    /// `Report`.
    pub const REPORT: &str = "Report";
    /// `Logs`.
    pub const LOGS: &str = "Logs";
    /// `Decisions`.
    pub const DECISIONS: &str = "Decisions";
    /// `Heartbeat`.
    pub const HEARTBEAT: &str = "Heartbeat";
    /// `FetchBlob`.
    pub const FETCH_BLOB: &str = "FetchBlob";
}
