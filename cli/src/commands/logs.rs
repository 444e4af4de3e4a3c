//! `berth logs`: each replica's output, from the engine here or from the nodes of a
//! pool, once or followed.

use crate::args::Cli;
use crate::commands::print_json;
use crate::commands::topology::topology_name;
use crate::failure::{Exit, Failure};
use crate::plane::{Line, Plane};

/// How many lines of each replica `logs` shows first, unless told.
const TAIL: u64 = 100;

pub(crate) async fn logs(
    cli: &Cli,
    following: bool,
    tail: Option<u64>,
    service: Option<&str>,
) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    let plane = Plane::open(cli.remote()?).await?;
    let replicas = plane.logs(&name, service, tail.unwrap_or(TAIL)).await?;
    if replicas.is_empty() {
        let what = service.map_or_else(
            || format!("topology {name:?}"),
            |s| format!("service {s:?} of topology {name:?}"),
        );
        return Err(Failure {
            exit: Exit::Failure,
            message: format!("no replicas of {what}; is it up (`berth ps`)?"),
        });
    }
    let label = |r: &berth_api::topologies::ReplicaLogs| format!("{}.{}", r.service, r.replica);
    let width = replicas.iter().map(|r| label(r).len()).max().unwrap_or(0);
    if following {
        return follow(cli, &plane, &name, service, tail.unwrap_or(TAIL), width).await;
    }
    if cli.json {
        print_json(&replicas);
        return Ok(());
    }
    for r in &replicas {
        for text in &r.lines {
            println!("{:<width$} | {text}", label(r));
        }
        if let Some(error) = &r.error {
            eprintln!("{}: {error}", label(r));
        }
    }
    Ok(())
}

/// Shows every line the replicas of `name` write, the last `tail` of each first, until
/// Ctrl-C: `SERVICE.REPLICA | text` with labels `width` wide, or one JSON record per
/// line with `--json`.
pub(crate) async fn follow(
    cli: &Cli,
    plane: &Plane,
    name: &str,
    service: Option<&str>,
    tail: u64,
    width: usize,
) -> Result<(), Failure> {
    let json = cli.json;
    let show = |line: Line<'_>| {
        if json {
            match serde_json::to_string(&line) {
                Ok(record) => println!("{record}"),
                Err(e) => eprintln!("error: cannot render JSON: {e}"),
            }
        } else {
            let label = format!("{}.{}", line.service, line.replica);
            println!("{label:<width$} | {}", line.line);
        }
    };
    let followed = plane.follow(name, service, tail, show, |replica, why| {
        eprintln!("{replica}: {why}");
    });
    tokio::select! {
        result = followed => Ok(result?),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
