//! The agent on each host: turns the node's assignments into running containers.
//!
//! Owns the container spec derived from an assignment, the reconcile planner (pure),
//! the executor that applies a plan in dependency order, and the Docker driver. It
//! never decides placement and never reads another node's assignments: it acts only on
//! what it is handed.

pub mod build;
pub mod docker;
pub mod driver;
pub mod firewall;
pub mod plan;
pub mod reconcile;
pub mod simulated;
pub mod spec;

pub use docker::DockerDriver;
pub use driver::{ContainerDriver, DriverError};
pub use reconcile::{Outcome, Progress, ReconcileError, ReconcileOptions, Reconciler, Step};
pub mod agent;
pub mod images;
pub mod links;
pub mod node;
pub mod node_tls;
pub mod peer;
pub mod signer;
mod timing;
pub mod tunnel;
