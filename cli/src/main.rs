//! `berth`: run a topology file on this machine, inspect it and take it down.
//!
//! Exit codes: 0 success; 1 failed part way (what is running is said); 2 bad usage;
//! 3 the topology file is invalid, or a topology or service named is not there; 4
//! Docker is not reachable; 5 refused by quota or capacity (nothing changed); 6 a check
//! before any change failed: a missing image or a host port in use (nothing changed);
//! 7 the control plane is unreachable or refused the credentials.

mod args;
mod commands;
mod docker_auth;
mod failure;
mod local;
mod plane;
mod progress;
mod project;
mod remote;
mod secrets;
mod server;
mod tls;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use commands::{admin, logs, serve, topology};
use failure::{Exit, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure as u8);
        }
    };
    // The exporter's connection needs the runtime; the control plane logs at info,
    // the commands a person types only their warnings.
    let _telemetry = {
        let _entered = runtime.enter();
        match cli.command {
            Command::Server { .. } | Command::Dev { .. } => {
                berth_telemetry::init("berth-server", "info")
            }
            _ => berth_telemetry::init("berth", "warn"),
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message.trim_end());
            ExitCode::from(failure.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Validate { .. } => topology::validate(&cli).await,
        Command::Config { model, .. } => topology::config(&cli, *model),
        Command::Up {
            detach,
            build,
            push,
            ..
        } => topology::up(&cli, *detach, *build, *push).await,
        Command::Push { images } => topology::push(&cli, images).await,
        Command::Registry(command) => topology::registry(&cli, command).await,
        Command::Build { services, .. } => topology::build(&cli, services).await,
        Command::Scale { services, .. } => topology::scale(&cli, services).await,
        Command::Down { volumes, .. } => topology::down(&cli, *volumes).await,
        Command::Ps { all, .. } => topology::ps(&cli, *all).await,
        Command::Logs {
            follow,
            tail,
            service,
            ..
        } => logs::logs(&cli, *follow, *tail, service.as_deref()).await,
        Command::Tenant(_)
        | Command::Quota(_)
        | Command::Limits(_)
        | Command::Policy(_)
        | Command::User(_)
        | Command::Node(_)
        | Command::Audit(_)
        | Command::RootKey(_) => admin::admin(&cli).await,
        Command::Login { user } => admin::login(&cli, user).await,
        Command::Server { .. } | Command::Dev { .. } => serve::serve(&cli).await,
    }
}
