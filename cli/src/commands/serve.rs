//! `berth server` and `berth dev`: the control plane as a process, assembled from the
//! command line's settings by `crate::server`.

use crate::args::{Cli, Command};
use crate::failure::{Exit, Failure};
use crate::local::data_dir;
use crate::server;

/// Runs the control plane the command line asks for until it is stopped.
pub(crate) async fn serve(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Server {
            listen,
            node_listen,
            advertise,
            advertise_api,
            database,
            liveness,
            autoscale_every,
            rebalance_every,
            disruption_budget,
            tls,
            witness,
        } => {
            let config = server::ServerConfig {
                listen: *listen,
                node_listen: *node_listen,
                advertise: advertise.clone(),
                advertise_api: advertise_api.clone(),
                database: database.clone(),
                witness: witness.setting(&data_dir()),
                data_dir: data_dir(),
                local_node: false,
                thresholds: liveness.thresholds()?,
                autoscale_every: *autoscale_every,
                rebalance_every: *rebalance_every,
                disruption_budget: *disruption_budget,
                tls: tls.setting(),
            };
            server::run(config).await.map_err(|e| Failure {
                exit: Exit::Failure,
                message: format!("{e:#}"),
            })
        }
        Command::Dev {
            listen,
            node_listen,
            advertise,
            advertise_api,
            database,
            tls,
            witness,
        } => {
            let config = server::ServerConfig {
                listen: *listen,
                node_listen: *node_listen,
                advertise: advertise.clone(),
                advertise_api: advertise_api.clone(),
                database: database.clone(),
                witness: witness.setting(&data_dir().join("dev")),
                data_dir: data_dir().join("dev"),
                thresholds: berth_allocator::liveness::Thresholds::default(),
                local_node: true,
                autoscale_every: std::time::Duration::from_secs(15),
                rebalance_every: std::time::Duration::from_secs(30),
                disruption_budget: 1,
                tls: tls.setting(),
            };
            server::run(config).await.map_err(|e| {
                // `berth dev` runs a node on this machine's engine: say so when it
                // is the engine that is missing.
                let docker = e.chain().any(|cause| {
                    matches!(
                        cause.downcast_ref::<berth_node_runtime::DriverError>(),
                        Some(berth_node_runtime::DriverError::Unavailable { .. })
                    )
                });
                Failure {
                    exit: if docker {
                        Exit::DockerUnavailable
                    } else {
                        Exit::Failure
                    },
                    message: format!("{e:#}"),
                }
            })
        }
        _ => Err(Failure {
            exit: Exit::Failure,
            message: "not a server command".into(),
        }),
    }
}
