//! The vocabulary of Berth's REST API: every request and answer the gateway takes and
//! gives, its error codes, replica states and event kinds as enums, and (with the
//! `client` feature) one typed client that the CLI and the UI both use.
//!
//! The gateway serves these types, the allocator keeps its records in them, and the
//! clients read them: one declaration each, so a field cannot mean one thing to the
//! server and another to a client. This crate holds data and the client only: it must
//! never authorize, place, or touch a database.

pub mod audit;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
pub mod images;
pub mod nodes;
pub mod quota;
pub mod registries;
pub mod topologies;
pub mod users;

pub use berth_protocol::capability::Role;
pub use berth_protocol::limits::TenantLimits;
pub use berth_protocol::replica::ReplicaState;
pub use error::{ErrorBody, ErrorCode};
pub use quota::{Limit, Resources};
