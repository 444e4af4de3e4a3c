//! The commands on one topology: validate, config, build, up, down, ps and scale, on
//! this machine or against a pool.

use std::collections::BTreeMap;

use berth_api::client::ClientError;
use berth_deployments::DeployError;

use crate::args::Cli;
use crate::commands::logs::follow;
use crate::commands::print_json;
use crate::failure::{Exit, Failure};
use crate::local::{LocalError, LocalPlane, data_dir};
use crate::plane::{Plane, PlaneError, Replica, Status};
use crate::progress;
use crate::project::{ProjectError, find_file, load_project};
use crate::remote::RemoteError;

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

/// A failure; settings refused by the plane's policy are shown at their lines of
/// `file`.
pub(crate) fn located(
    cli: &Cli,
    loaded: &berth_protocol::topology::Loaded,
    file: &std::path::Path,
    e: impl Into<PlaneError>,
) -> Failure {
    let e = e.into();
    let refusals = match &e {
        PlaneError::Remote(RemoteError::Client(ClientError::Api {
            code: Some(berth_api::ErrorCode::RefusedByPolicy),
            refusals,
            ..
        })) => refusals,
        PlaneError::Local(LocalError::Deploy(DeployError::Refused(refusals))) => refusals,
        _ => return e.into(),
    };
    let Some(first) = refusals.first() else {
        return e.into();
    };
    let name = file.display().to_string();
    let mut located: Vec<_> = refusals.iter().map(|r| loaded.locate(&name, r)).collect();
    located.sort_by_key(|d| (d.line, d.column));
    show_refusals(cli, file, &first.policy, located)
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

pub(crate) async fn up(
    cli: &Cli,
    detach: bool,
    always_build: bool,
    push_images: bool,
) -> Result<(), Failure> {
    let file = find_file(cli.file())?;
    let loaded = load(cli)?;
    let topology = &loaded.topology;
    let remote = cli.remote()?;
    if push_images {
        let Some(remote) = &remote else {
            return Err(Failure {
                exit: Exit::Invalid,
                message: "--push sends images to a pool: give --endpoint (locally the engine has them already)".into(),
            });
        };
        let images: std::collections::BTreeSet<String> = topology
            .services
            .values()
            .map(|s| s.image.clone())
            .collect();
        let images: Vec<String> = images.into_iter().collect();
        super::push::push(remote, &images, cli.json).await?;
    }
    let plane = Plane::open(remote).await?;
    if let Plane::Local(local) = &plane {
        // Images a service builds: absent ones (all of them with --build), before any
        // check or change, as Compose does.
        local
            .build(topology, &[], always_build, |service, line| {
                if !cli.json {
                    eprintln!("{service}  | {line}");
                }
            })
            .await?;
    }
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.up(topology, events).await;
    let _ = shown.await;
    let status = result.map_err(|e| located(cli, &loaded, &file, e))?;
    print_status(cli, &status, "is up");
    // A token that may deploy but not read learns only that the deploy is placed.
    let running = status.replicas.iter().all(|r| r.state.is_running());
    if detach || cli.json || !running {
        return Ok(());
    }
    println!(
        "following logs; Ctrl-C stops following and leaves the topology running (`berth down` removes it)"
    );
    let width = status
        .replicas
        .iter()
        .map(|r| format!("{}.{}", r.service, r.replica).len())
        .max()
        .unwrap_or(0);
    follow(cli, &plane, &topology.name, None, 10, width).await
}

/// What `up` and `scale` say when they are done: the revision, the replicas and where
/// this machine reaches them.
fn print_status(cli: &Cli, status: &Status, done: &str) {
    if cli.json {
        print_json(status);
        return;
    }
    let running = status.replicas.iter().all(|r| r.state.is_running());
    let mut said = format!(
        "topology {:?} {done} in tenant {:?}: revision {}, {} replica(s) {}",
        status.topology,
        status.tenant,
        status.revision.unwrap_or_default(),
        status.replicas.len(),
        if running { "running" } else { "placed" },
    );
    if let Some(c) = status.containers {
        said.push_str(&format!(
            " ({} created, {} unchanged, {} removed)",
            c.created, c.unchanged, c.removed
        ));
    }
    println!("{said}");
    print_reachable(&status.replicas);
}

/// Where this machine reaches each published port.
fn print_reachable(replicas: &[Replica]) {
    for r in replicas {
        let published: Vec<(&str, &str)> =
            r.ports.iter().filter_map(|p| p.rsplit_once(':')).collect();
        for &(ip, port) in &published {
            // One line per port: `::` repeats what `0.0.0.0` says.
            if ip == "::" && published.contains(&("0.0.0.0", port)) {
                continue;
            }
            let host = if ip.is_empty() || ip == "0.0.0.0" || ip == "::" {
                "localhost"
            } else {
                ip
            };
            println!("  {}.{} reachable at {host}:{port}", r.service, r.replica);
        }
    }
}

pub(crate) async fn down(cli: &Cli, volumes: bool) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    let plane = Plane::open(cli.remote()?).await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.down(&name, volumes, events).await;
    let _ = shown.await;
    let down = result?;
    if cli.json {
        print_json(&down);
        return Ok(());
    }
    let mut said = format!("topology {name:?} is down in tenant {:?}", down.tenant);
    match down.removed {
        Some(n) => said.push_str(&format!(
            ": {n} container{} removed",
            if n == 1 { "" } else { "s" }
        )),
        None if !down.nodes.is_empty() => {
            said.push_str(&format!(
                ": its nodes ({}) remove its containers",
                down.nodes.join(", ")
            ));
        }
        None => {}
    }
    println!("{said}");
    Ok(())
}

/// An image as `ps` shows it: digests cut to their first 12 hex digits, as the
/// engine shows ids (`--json` has them whole).
fn short_image(image: &str) -> String {
    match image.split_once("sha256:") {
        Some((before, hex)) => format!("{before}sha256:{}", &hex[..hex.len().min(12)]),
        None => image.to_owned(),
    }
}

pub(crate) async fn ps(cli: &Cli, all: bool) -> Result<(), Failure> {
    let name = if all { None } else { Some(topology_name(cli)?) };
    let plane = Plane::open(cli.remote()?).await?;
    let statuses = match &name {
        Some(name) => {
            let status = plane.status(name).await?;
            if cli.json {
                print_json(&status);
                return Ok(());
            }
            vec![status]
        }
        None => {
            let statuses = plane.statuses().await?;
            if cli.json {
                print_json(&statuses);
                return Ok(());
            }
            statuses
        }
    };
    println!(
        "{:<16} {:<24} {:<16} {:<10} {:<28} {:<32} PORTS",
        "TOPOLOGY", "REPLICA", "NODE", "STATE", "DETAIL", "IMAGE"
    );
    for status in &statuses {
        for r in &status.replicas {
            println!(
                "{:<16} {:<24} {:<16} {:<10} {:<28} {:<32} {}",
                status.topology,
                format!("{}.{}", r.service, r.replica),
                r.node,
                r.state.as_str(),
                r.detail,
                short_image(&r.image),
                r.ports.join(", ")
            );
        }
    }
    Ok(())
}

pub(crate) async fn scale(cli: &Cli, services: &[(String, u32)]) -> Result<(), Failure> {
    let name = topology_name(cli)?;
    let replicas: BTreeMap<String, u32> = services.iter().cloned().collect();
    let plane = Plane::open(cli.remote()?).await?;
    let (events, shown) = progress::show(progress::Mode::pick(cli.json));
    let result = plane.scale(&name, &replicas, events).await;
    let _ = shown.await;
    print_status(cli, &result?, "scaled");
    Ok(())
}

/// `berth push IMAGE...`.
/// `berth registry`: the tenant's registry logins in the pool.
pub(crate) async fn registry(
    cli: &Cli,
    command: &crate::args::RegistryCommand,
) -> Result<(), Failure> {
    use crate::args::RegistryCommand;
    let remote = cli.remote()?.ok_or_else(|| Failure {
        exit: Exit::Invalid,
        message: "registry logins are kept by a pool: give --endpoint (or BERTH_ENDPOINT) and a token; locally, `docker login` is used".into(),
    })?;
    let client = remote.client();
    let tenant = remote.tenant();
    let shown = match command {
        RegistryCommand::Login { registry, username } => {
            let password = match std::env::var("BERTH_REGISTRY_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map_err(|e| Failure {
                        exit: Exit::Invalid,
                        message: format!("reading the password from standard input: {e}"),
                    })?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let login = berth_api::registries::RegistryLogin {
                username: username.clone(),
                password,
            };
            vec![client.registry_login(tenant, registry, &login).await?]
        }
        RegistryCommand::List => client.registries(tenant).await?,
        RegistryCommand::Logout { registry } => client.registry_logout(tenant, registry).await?,
    };
    if cli.json {
        crate::commands::print_json(&shown);
    } else {
        for view in &shown {
            println!("{}\t{}", view.registry, view.username);
        }
    }
    Ok(())
}

pub(crate) async fn push(cli: &Cli, images: &[String]) -> Result<(), Failure> {
    let remote = cli.remote()?.ok_or_else(|| Failure {
        exit: Exit::Invalid,
        message: "push sends images to a pool: give --endpoint (or BERTH_ENDPOINT) and a token"
            .into(),
    })?;
    let pushed = super::push::push(&remote, images, cli.json).await?;
    if cli.json {
        crate::commands::print_json(&pushed);
    }
    Ok(())
}
