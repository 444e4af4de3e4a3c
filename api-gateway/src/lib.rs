//! The REST API of the control plane (actix-web, OpenAPI): authentication, per-request
//! authorization, and the same operations the CLI performs locally, for remote use.
//!
//! Not built yet. Today `berth` embeds the tenant service, allocator and node runtime
//! in-process (see `cli/src/local.rs`); this crate will serve those same services over
//! HTTP so that `berth --endpoint URL` speaks to a pool. It must never hold state of its
//! own: every replica of the gateway is interchangeable.
