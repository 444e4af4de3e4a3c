//! `berth logs`: each replica's output, from the engine here or from the nodes of a
//! pool, once or followed.

use futures_util::StreamExt;

use crate::args::Cli;
use crate::commands::print_json;
use crate::commands::topology::topology_name;
use crate::failure::{Exit, Failure};
use crate::local::{LocalPlane, data_dir};
use crate::remote;
use berth_node_runtime::driver::ContainerListing;

pub(crate) async fn logs(
    cli: &Cli,
    follow: bool,
    tail: Option<u64>,
    service: Option<&str>,
) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    if let Some(remote) = cli.remote()? {
        return remote_logs(cli, &remote, &name, follow, tail, service).await;
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let containers: Vec<ContainerListing> = plane
        .ps(Some(&name))
        .await?
        .into_iter()
        .filter(|c| service.is_none_or(|s| c.container.service == s))
        .collect();
    if containers.is_empty() {
        let what = service.map_or_else(
            || format!("topology {name:?}"),
            |s| format!("service {s:?} of topology {name:?}"),
        );
        return Err(Failure {
            exit: Exit::Failure,
            message: format!("no containers for {what}; is it up (`berth ps`)?"),
        });
    }
    follow_logs(&plane, &containers, follow, tail).await
}

/// How often `logs -f` against a pool asks for what was written since.
pub(crate) const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `berth logs` against a pool: the last lines of every replica, each asked of the
/// node that runs it; with `follow`, then every [`FOLLOW_EVERY`] what each wrote
/// since, until Ctrl-C. A line is printed once: each replica's lines are kept apart
/// by when its node's engine stamped them.
pub(crate) async fn remote_logs(
    cli: &Cli,
    remote: &remote::Remote,
    name: &str,
    follow: bool,
    tail: Option<u64>,
    service: Option<&str>,
) -> Result<(), Failure> {
    if cli.json && !follow {
        let replicas = remote
            .logs(name, service, tail.unwrap_or(100), None)
            .await?;
        print_json(&replicas);
        return Ok(());
    }
    // Per replica: the stamp of the last line printed, and the last error said.
    let mut printed: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut said: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut since = None;
    let mut tail = tail.unwrap_or(100);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let replicas = remote.logs(name, service, tail, since).await?;
        let label = |r: &berth_api::topologies::ReplicaLogs| format!("{}.{}", r.service, r.replica);
        let width = replicas.iter().map(|r| label(r).len()).max().unwrap_or(0);
        for r in &replicas {
            let label = label(r);
            for (i, text) in r.lines.iter().enumerate() {
                let at = r.at_ns.get(i).copied().unwrap_or(0);
                let last = printed.get(&label).copied();
                if at != 0 && last.is_some_and(|last| at <= last) {
                    continue; // printed already
                }
                if at != 0 {
                    printed.insert(label.clone(), at);
                }
                if cli.json {
                    let record = serde_json::json!({
                        "service": r.service, "replica": r.replica, "node": r.node,
                        "at_ns": at, "line": text,
                    });
                    println!("{record}");
                } else {
                    println!("{label:<width$} | {text}");
                }
            }
            let error = r.error.as_deref().unwrap_or_default();
            if said.get(&label).map(String::as_str).unwrap_or_default() != error {
                if !error.is_empty() {
                    eprintln!("{label}: {error}");
                }
                said.insert(label, error.to_owned());
            }
        }
        if !follow {
            return Ok(());
        }
        // Next, what was written after the earliest last line of any replica (the
        // others' lines up to their own last are skipped above). A replica that has
        // printed nothing yet sent all it had with the first answer.
        since = printed.values().min().copied();
        tail = 10_000;
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

pub(crate) async fn follow_logs(
    plane: &LocalPlane,
    containers: &[ContainerListing],
    follow: bool,
    tail: Option<u64>,
) -> Result<(), Failure> {
    use berth_node_runtime::ContainerDriver;
    let labels: std::collections::HashMap<String, String> = containers
        .iter()
        .map(|c| {
            (
                c.container.name.clone(),
                format!("{}.{}", c.container.service, c.container.replica),
            )
        })
        .collect();
    let width = labels.values().map(String::len).max().unwrap_or(0);
    let streams = containers
        .iter()
        .map(|c| plane.driver().logs(&c.container.name, follow, tail, None));
    let mut merged = futures_util::stream::select_all(streams);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            line = merged.next() => match line {
                Some(Ok(line)) => {
                    let label = labels.get(&line.container).map_or(line.container.as_str(), String::as_str);
                    println!("{label:<width$} | {}", line.text);
                }
                Some(Err(e)) => return Err(Failure { exit: Exit::Failure, message: e.to_string() }),
                None => return Ok(()),
            },
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}
