//! The language every part of Berth speaks.
//!
//! Owns the topology format (parsing, interpolation, validation, normalisation) and the
//! types the control plane's API exchanges. It does no I/O beyond what a caller hands
//! it as text, and must never depend on Docker, a database or a network.
pub mod assignment;
pub mod capability;
pub mod delegation;
pub mod limits;
pub mod node_api;
pub mod replica;
pub mod time;
pub mod token_cache;
pub mod topology;
