//! The orchestrator: quotas, the node pool, placement and assignments.
//!
//! The domain logic (quota arithmetic in `resources`, placement in `placement`) is
//! pure; `service` loads its inputs from the database and commits its decisions in one
//! transaction. The allocator decides where replicas run; it never talks to Docker.

pub mod autoscale;
pub mod control;
pub mod database;
mod decision;
pub mod entity;
pub mod events;
pub mod identity;
pub mod images;
pub mod leader;
pub mod ledger;
pub mod links;
pub mod liveness;
mod loads;
pub mod migration;
pub mod node_api;
pub mod placement;
pub mod pool;
pub mod reach;
pub mod rebalance;
pub mod registries;
pub mod resources;
pub mod root_keys;
pub mod sealing;
pub mod service;
mod store;
pub mod witness;

pub use pool::{Drained, NodeInfo, NodeState, ReportedReplica};
pub use resources::{Limit, QuotaExceeded, Resources};
pub use service::{Allocator, AllocatorError, DefaultRequest, Deployment, ViewStamp};
