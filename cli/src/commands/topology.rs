//! The commands on one topology: validate, config, build, up, down, ps and scale, on
//! this machine or against a pool.

use berth_node_runtime::driver::ContainerListing;
use serde::Serialize;

use crate::args::Cli;
use crate::commands::logs::{follow_logs, remote_logs};
use crate::commands::print_json;
use crate::failure::{Exit, Failure};
use crate::local::{LocalPlane, data_dir};
use crate::project::{ProjectError, find_file, load_project};
use crate::{progress, remote};

pub(crate) fn load(cli: &Cli) -> Result<berth_protocol::topology::Loaded, Failure> {
    let file = find_file(cli.file())?;
    let loaded = load_project(&file)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded)
}

/// The topology's name: from the file when it loads, else from the directory (so that
/// `down` works even when the file is gone or broken).
pub(crate) fn topology_name(cli: &Cli) -> Result<String, Failure> {
    match find_file(cli.file()).and_then(|f| load_project(&f)) {
        Ok(loaded) => Ok(loaded.topology.name),
        Err(ProjectError::NotFound { dir }) => {
            let name = berth_protocol::topology::normalize_name(
                dir.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            );
            if name.is_empty() {
                Err(Failure {
                    exit: Exit::Invalid,
                    message: format!(
                        "cannot tell which topology: no topology file in {}",
                        dir.display()
                    ),
                })
            } else {
                Ok(name)
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn validate(cli: &Cli) -> Result<(), Failure> {
    let file = find_file(cli.file())?;
    match load_project(&file) {
        Ok(loaded) => {
            // Against a pool, the pool itself says what its policy for the tenant
            // refuses; each refusal is shown at its line of this file.
            let policy = match cli.remote()? {
                Some(remote) => match remote.dry_run(&loaded.topology).await {
                    Ok(answer) => answer.policy,
                    Err(e) => return Err(located(cli, &loaded, &file, e)),
                },
                None => {
                    let policy = berth_protocol::topology::Policy::local();
                    let refusals = loaded.refusals(&file.display().to_string(), &policy);
                    if !refusals.is_empty() {
                        return Err(show_refusals(cli, &file, &policy.name, refusals));
                    }
                    policy.name
                }
            };
            if cli.json {
                print_json(
                    &serde_json::json!({ "valid": true, "name": loaded.topology.name, "warnings": loaded.warnings }),
                );
            } else {
                for warning in &loaded.warnings {
                    eprintln!("warning: {warning}");
                }
                let n = loaded.topology.services.len();
                println!(
                    "{}: valid topology {:?} with {n} service{} (policy: {policy})",
                    file.display(),
                    loaded.topology.name,
                    if n == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        Err(ProjectError::Invalid(e)) if cli.json => {
            print_json(&serde_json::json!({ "valid": false, "errors": e.diagnostics }));
            Err(Failure {
                exit: Exit::Invalid,
                message: format!("{} problem(s) in {}", e.diagnostics.len(), file.display()),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A remote failure; refusals by the pool's policy are shown at their lines of `file`.
pub(crate) fn located(
    cli: &Cli,
    loaded: &berth_protocol::topology::Loaded,
    file: &std::path::Path,
    e: impl Into<remote::RemoteError>,
) -> Failure {
    match e.into() {
        remote::RemoteError::Client(berth_api::client::ClientError::Api {
            code: Some(berth_api::ErrorCode::RefusedByPolicy),
            refusals,
            ..
        }) if !refusals.is_empty() => {
            let name = file.display().to_string();
            let policy = refusals
                .first()
                .map_or_else(|| "pool".to_owned(), |r| r.policy.clone());
            let mut located: Vec<_> = refusals.iter().map(|r| loaded.locate(&name, r)).collect();
            located.sort_by_key(|d| (d.line, d.column));
            show_refusals(cli, file, &policy, located)
        }
        other => other.into(),
    }
}

/// Prints refusals (as JSON with --json) and the failure that sums them up.
pub(crate) fn show_refusals(
    cli: &Cli,
    file: &std::path::Path,
    policy: &str,
    refusals: Vec<berth_protocol::topology::Diagnostic>,
) -> Failure {
    if cli.json {
        print_json(&serde_json::json!({ "valid": false, "errors": refusals }));
    } else {
        for refusal in &refusals {
            eprintln!("{refusal}");
        }
    }
    Failure {
        exit: Exit::Invalid,
        message: format!(
            "{} setting(s) in {} refused by the {policy} policy; nothing was changed",
            refusals.len(),
            file.display(),
        ),
    }
}

pub(crate) fn config(cli: &Cli, model: bool) -> Result<(), Failure> {
    let loaded = load(cli)?;
    if model {
        print_json(&loaded.topology);
        return Ok(());
    }
    let compose = berth_protocol::topology::to_compose(&loaded.topology);
    if cli.json {
        print_json(&compose);
    } else {
        let yaml = serde_saphyr::to_string(&compose).map_err(|e| Failure {
            exit: Exit::Failure,
            message: format!("cannot render the topology: {e}"),
        })?;
        print!("{yaml}");
    }
    Ok(())
}

/// Builds the images of the file's services locally (`berth build`).
pub(crate) async fn build(cli: &Cli, services: &[String]) -> Result<(), Failure> {
    let loaded = load(cli)?;
    let topology = &loaded.topology;
    if let Some(unknown) = services
        .iter()
        .find(|s| !topology.services.contains_key(s.as_str()))
    {
        return Err(Failure {
            exit: Exit::Invalid,
            message: format!("no service {unknown:?} in topology {:?}", topology.name),
        });
    }
    if cli.endpoint.is_some() {
        return Err(Failure {
            exit: Exit::Invalid,
            message: "a pool runs images, it does not build them: run `berth build` without --endpoint, then push the image where the nodes reach it".into(),
        });
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let built = plane
        .build(topology, services, true, |service, line| {
            eprintln!("{service}  | {line}");
        })
        .await?;
    if cli.json {
        print_json(&serde_json::json!({ "built": built }));
    } else if built.is_empty() {
        println!("no service of {:?} has a `build` section", topology.name);
    } else {
        for name in &built {
            println!("built {} for service {name}", topology.services[name].image);
        }
    }
    Ok(())
}

pub(crate) async fn up(cli: &Cli, detach: bool, always_build: bool) -> Result<(), Failure> {
    let file = find_file(cli.file())?;
    let loaded = load(cli)?;
    if let Some(remote) = cli.remote()? {
        let topology = &loaded.topology;
        // As on one machine: `up` returns once every replica runs (or one fails),
        // showing each as its node reports it; without -d it then follows the logs. A
        // token that may deploy but not read returns once the deploy is placed.
        let deployed = remote
            .up(topology, std::time::Duration::from_secs(300), cli.json)
            .await
            .map_err(|e| located(cli, &loaded, &file, e))?;
        let running = deployed.replicas.iter().all(|r| r.state.is_running());
        let what = if running { "running" } else { "placed" };
        if cli.json {
            print_json(&deployed);
        } else {
            println!(
                "topology {:?} is up in tenant {:?}: revision {}, {} replica(s) {what}",
                topology.name,
                cli.tenant,
                deployed.revision,
                deployed.replicas.len()
            );
        }
        if detach || cli.json || !running {
            return Ok(());
        }
        println!(
            "following logs; Ctrl-C stops following and leaves the topology running (`berth down` removes it)"
        );
        return remote_logs(cli, &remote, &topology.name, true, Some(10), None).await;
    }
    let topology = loaded.topology;
    let plane = LocalPlane::open(&data_dir()).await?;
    // Images a service builds: absent ones (all of them with --build), before any
    // check or change, as Compose does.
    plane
        .build(&topology, &[], always_build, |service, line| {
            if !cli.json {
                eprintln!("{service}  | {line}");
            }
        })
        .await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.up(&topology, events).await;
    let _ = shown.await;
    let outcome = result?;
    let containers = plane.ps(Some(&topology.name)).await?;
    if cli.json {
        print_json(&serde_json::json!({
            "topology": topology.name,
            "created": outcome.created,
            "unchanged": outcome.unchanged,
            "removed": outcome.removed,
            "containers": containers.iter().map(ContainerJson::from).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "topology {:?} is up: {} created, {} unchanged, {} removed",
            topology.name, outcome.created, outcome.unchanged, outcome.removed
        );
        print_reachable(&containers);
    }
    if detach || cli.json {
        return Ok(());
    }
    println!(
        "following logs; Ctrl-C stops following and leaves the topology running (`berth down` removes it)"
    );
    follow_logs(&plane, &containers, true, Some(10)).await
}

pub(crate) fn print_reachable(containers: &[ContainerListing]) {
    for c in containers {
        for (ip, port) in &c.container.host_ports {
            let host = if ip.is_empty() || ip == "0.0.0.0" || ip == "::" {
                "localhost"
            } else {
                ip.as_str()
            };
            if ip == "::"
                && c.container
                    .host_ports
                    .iter()
                    .any(|(i, p)| i == "0.0.0.0" && p == port)
            {
                continue;
            }
            println!(
                "  {}.{} reachable at {host}:{port}",
                c.container.service, c.container.replica
            );
        }
    }
}

pub(crate) async fn down(cli: &Cli, volumes: bool) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    if let Some(remote) = cli.remote()? {
        let removed = remote.remove(&name).await?;
        if cli.json {
            print_json(&removed);
        } else {
            println!("topology {name:?} is down in tenant {:?}", cli.tenant);
        }
        return Ok(());
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.down(&name, volumes, events).await;
    let _ = shown.await;
    let outcome = result?;
    if cli.json {
        print_json(&serde_json::json!({ "topology": name, "removed": outcome.removed }));
    } else {
        println!(
            "topology {name:?} is down: {} container{} removed",
            outcome.removed,
            if outcome.removed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[derive(Serialize)]
pub(crate) struct ContainerJson<'a> {
    topology: &'a str,
    service: &'a str,
    replica: u32,
    name: &'a str,
    state: &'a str,
    status: &'a str,
    ports: Vec<String>,
}

impl<'a> From<&'a ContainerListing> for ContainerJson<'a> {
    fn from(c: &'a ContainerListing) -> Self {
        ContainerJson {
            topology: &c.topology.topology,
            service: &c.container.service,
            replica: c.container.replica,
            name: &c.container.name,
            state: &c.state,
            status: &c.status,
            ports: c
                .container
                .host_ports
                .iter()
                .map(|(ip, p)| format!("{ip}:{p}"))
                .collect(),
        }
    }
}

pub(crate) async fn ps(cli: &Cli, all: bool) -> Result<(), Failure> {
    let name = if all { None } else { Some(topology_name(cli)?) };
    if let Some(remote) = cli.remote()? {
        let name = name.ok_or_else(|| Failure {
            exit: Exit::Invalid,
            message: "--all is not available with --endpoint yet".into(),
        })?;
        let status = remote.status(&name).await?;
        if cli.json {
            print_json(&status);
        } else {
            remote::print_replicas(&status.replicas);
        }
        return Ok(());
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let containers = plane.ps(name.as_deref()).await?;
    if cli.json {
        print_json(
            &containers
                .iter()
                .map(ContainerJson::from)
                .collect::<Vec<_>>(),
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<28} {:<10} {:<28} PORTS",
        "TOPOLOGY", "NAME", "STATE", "STATUS"
    );
    for c in &containers {
        let json = ContainerJson::from(c);
        println!(
            "{:<16} {:<28} {:<10} {:<28} {}",
            json.topology,
            json.name,
            json.state,
            json.status,
            json.ports.join(", ")
        );
    }
    Ok(())
}

pub(crate) async fn scale(cli: &Cli, services: &[(String, u32)]) -> Result<(), Failure> {
    let loaded = load(cli)?;
    let replicas: std::collections::BTreeMap<String, u32> = services.iter().cloned().collect();
    // Every service named must be in the file, wherever it runs.
    let topology =
        berth_deployments::with_replicas(loaded.topology, &replicas).map_err(|e| Failure {
            exit: Exit::Invalid,
            message: e.to_string(),
        })?;
    if let Some(remote) = cli.remote()? {
        let deployed = remote.scale(&topology.name, &replicas).await?;
        if cli.json {
            print_json(&deployed);
        } else {
            println!(
                "topology {:?} scaled in tenant {:?}: revision {}, {} replica(s) placed",
                topology.name,
                cli.tenant,
                deployed.revision,
                deployed.replicas.len()
            );
        }
        return Ok(());
    }
    let plane = LocalPlane::open(&data_dir()).await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.up(&topology, events).await;
    let _ = shown.await;
    let outcome = result?;
    if cli.json {
        print_json(&serde_json::json!({
            "topology": topology.name,
            "created": outcome.created,
            "unchanged": outcome.unchanged,
            "removed": outcome.removed,
        }));
    } else {
        println!(
            "topology {:?} scaled: {} created, {} unchanged, {} removed",
            topology.name, outcome.created, outcome.unchanged, outcome.removed
        );
    }
    Ok(())
}
