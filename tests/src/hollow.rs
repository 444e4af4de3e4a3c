//! Hollow nodes: the real node agent (its pull loop, heartbeats, signed reports,
//! reconciliation) over a simulated container engine, many to a process, each with
//! its own identity and its own gRPC connection to a real allocator. They let the
//! control plane be tested and measured at thousands of nodes on one machine.

use std::sync::Arc;

use berth_node_runtime::agent::{self, Agent, Capacity};
use berth_node_runtime::reconcile::{ReconcileOptions, Reconciler};
use berth_node_runtime::simulated::SimulatedDriver;
use berth_protocol::assignment::Scope;

use crate::plane::Server;

/// One hollow node.
#[derive(Debug)]
pub struct Hollow {
    /// Its name in the pool.
    pub name: String,
    /// Its engine, to look at what runs there.
    pub engine: Arc<SimulatedDriver>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Hollow {
    /// Stops the agent as a crash would: no more heartbeats; its "containers" stay.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Whether the agent runs.
    pub fn alive(&self) -> bool {
        self.task.is_some()
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Many hollow nodes joined to one server.
#[derive(Debug)]
pub struct HollowPool {
    /// The nodes, in join order.
    pub nodes: Vec<Hollow>,
    _state: tempfile::TempDir,
}

impl HollowPool {
    /// Joins `count` hollow nodes named `{prefix}-{i}`, each offering `capacity`, at
    /// most `parallel` joins at a time.
    pub async fn join(
        server: &Server,
        prefix: &str,
        count: usize,
        capacity: &Capacity,
        parallel: usize,
    ) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let allocator = format!("http://127.0.0.1:{}", server.node_port);
        let mut nodes = Vec::with_capacity(count);
        let mut pending = Vec::new();
        for i in 0..count {
            let name = format!("{prefix}-{i}");
            let token = server.join_token().await;
            let dir = state.path().join(&name);
            std::fs::create_dir_all(&dir).expect("node dir");
            let (allocator, capacity) = (allocator.clone(), capacity.clone());
            pending.push(tokio::spawn(async move {
                let identity = agent::join(&allocator, None, &token, &name, capacity, &dir)
                    .await
                    .expect("a hollow node joins");
                let engine = Arc::new(SimulatedDriver::new(Scope::node(&name)));
                let options = ReconcileOptions {
                    check_host_ports: false,
                    ..ReconcileOptions::default()
                };
                let reconciler = Reconciler::new(engine.clone(), options);
                let agent = Agent::new(identity, reconciler).expect("agent");
                let task = tokio::spawn(agent.run());
                Hollow {
                    name,
                    engine,
                    task: Some(task),
                }
            }));
            if pending.len() >= parallel {
                for joined in pending.drain(..) {
                    nodes.push(joined.await.expect("join task"));
                }
            }
        }
        for joined in pending {
            nodes.push(joined.await.expect("join task"));
        }
        Self {
            nodes,
            _state: state,
        }
    }

    /// How many simulated containers run across the pool.
    pub fn running(&self) -> usize {
        self.nodes.iter().map(|n| n.engine.running()).sum()
    }
}
