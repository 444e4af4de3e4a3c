//! `berth up -d` against `docker-compose up -d` on the same file, wall time, same run.
//!
//! For 10 and 50 services (a dependency tree: service i depends on service i/2, so both
//! tools may start independent branches in parallel) each tool brings the topology up
//! from nothing, then again with nothing to change, then takes it down; the median of
//! several rounds is reported with the ratio compose / berth (above 1: Berth is faster).
//!
//! The floor, measured in the same run: the same containers (same image, command and
//! network) created and started all at once straight through the engine's API
//! (bollard), with no dependency order, then stopped and removed the same way. What
//! Berth takes above it is what Berth adds; `berth / floor` is printed. A second floor
//! keeps the file's order: every container created at once, each started as soon as
//! the one it depends on has started (what `depends_on` asks of any tool);
//! `berth / ordered` is printed too.
//!
//! Run: `cargo bench -p berth-cli --bench up_vs_compose` (needs Docker and the
//! `docker-compose` command; builds the images itself). `BENCH_ROUNDS` sets the rounds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("bash")
        .arg(workspace.join("infra/build-images.sh"))
        .status()
        .expect("bash");
    assert!(status.success(), "building images failed");
    let compose = if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        vec!["docker-compose".to_owned()]
    } else {
        vec!["docker".to_owned(), "compose".to_owned()]
    };
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let version = Command::new(&compose[0])
        .args(&compose[1..])
        .arg("version")
        .output()
        .expect("compose runs");
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    println!(
        "peer: {} ({version}); {rounds} rounds; median wall time",
        compose.join(" ")
    );
    println!(
        "{:<10} {:<12} {:>10} {:>10} {:>10} {:>10} {:>15} {:>13} {:>15}",
        "services",
        "phase",
        "berth",
        "compose",
        "floor",
        "ordered",
        "compose/berth",
        "berth/floor",
        "berth/ordered"
    );
    for services in [10, 50] {
        bench(&compose, services, rounds);
    }
}

/// The file both tools run. docker-compose 1.x wants `version` and no `name`; both
/// tools then name the project after its directory.
fn topology(services: usize) -> String {
    let mut yaml = String::from("version: \"2.4\"\nservices:\n");
    for i in 0..services {
        // A process that exits on SIGTERM, so neither tool waits out a grace period.
        yaml.push_str(&format!(
            "  s{i}:\n    image: berth/busybox:latest\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    depends_on: [s{}]\n", (i - 1) / 2));
        }
    }
    yaml
}

fn timed(program: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Duration {
    let start = Instant::now();
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn bench(compose: &[String], services: usize, rounds: usize) {
    let berth = env!("CARGO_BIN_EXE_berth");
    let root = tempfile::tempdir().expect("tempdir");
    let berth_dir = root.path().join(format!("benchberth{services}"));
    let compose_dir = root.path().join(format!("benchcompose{services}"));
    for dir in [&berth_dir, &compose_dir] {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("compose.yaml"), topology(services)).expect("write");
    }
    let state = root.path().join(".state");
    let state = state.to_str().expect("utf-8 path");
    let env = [("BERTH_DATA_DIR", state)];
    let (c0, c1) = (
        compose[0].as_str(),
        compose[1..].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let compose_args = |rest: &[&'static str]| -> Vec<&str> {
        c1.iter()
            .copied()
            .chain(["-f", "compose.yaml"])
            .chain(rest.iter().copied())
            .collect()
    };

    let (mut b_up, mut b_noop, mut b_down, mut c_up, mut c_noop, mut c_down) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut f_up, mut f_down, mut o_up) = (vec![], vec![], vec![]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for _ in 0..rounds {
        let (up, down) = runtime.block_on(floor(services, false));
        f_up.push(up);
        f_down.push(down);
        o_up.push(runtime.block_on(floor(services, true)).0);
        b_up.push(timed(berth, &["up", "-d"], &berth_dir, &env));
        b_noop.push(timed(berth, &["up", "-d"], &berth_dir, &env));
        b_down.push(timed(berth, &["down"], &berth_dir, &env));
        c_up.push(timed(c0, &compose_args(&["up", "-d"]), &compose_dir, &[]));
        c_noop.push(timed(c0, &compose_args(&["up", "-d"]), &compose_dir, &[]));
        c_down.push(timed(c0, &compose_args(&["down"]), &compose_dir, &[]));
    }
    for (phase, b, c, f, o) in [
        ("up", b_up, c_up, Some(f_up), Some(o_up)),
        ("up again", b_noop, c_noop, None, None),
        ("down", b_down, c_down, Some(f_down), None),
    ] {
        let (b, c) = (median(b), median(c));
        let (f, o) = (f.map(median), o.map(median));
        let seconds =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        let ratio = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{:.2}x", b.as_secs_f64() / d.as_secs_f64())
            })
        };
        println!(
            "{services:<10} {phase:<12} {:>9.2}s {:>9.2}s {:>10} {:>10} {:>14.2}x {:>13} {:>15}",
            b.as_secs_f64(),
            c.as_secs_f64(),
            seconds(f),
            seconds(o),
            c.as_secs_f64() / b.as_secs_f64(),
            ratio(f),
            ratio(o),
        );
    }
}

/// The engine's floor for `services` containers: a network, then every container
/// created and started at once (`ordered`: each started as soon as the one the file
/// has it depend on has started); then every one stopped and removed at once, and the
/// network. Returns the two wall times.
async fn floor(services: usize, ordered: bool) -> (Duration, Duration) {
    use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
    use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    // A network of this run's own: one an earlier run could not remove (see below)
    // keeps its name.
    let network = format!(
        "benchfloor{services}{ordered}{}_default",
        std::process::id()
    );
    let names: Vec<String> = (0..services)
        .map(|i| format!("benchfloor{services}{ordered}-s{i}-1"))
        .collect();
    // What an interrupted run left behind would collide with this one.
    for name in &names {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(name, Some(options)).await;
    }
    let start = Instant::now();
    docker
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await
        .expect("network");
    // Each container's start, told to the ones that depend on it.
    let (started, starts): (Vec<_>, Vec<_>) = (0..services)
        .map(|_| tokio::sync::watch::channel(false))
        .unzip();
    futures_util::future::join_all(names.iter().enumerate().map(|(i, name)| {
        let (docker, network) = (&docker, &network);
        let (started, mut after) = (
            &started[i],
            (ordered && i > 0).then(|| starts[(i - 1) / 2].clone()),
        );
        async move {
            let body = ContainerCreateBody {
                image: Some("berth/busybox:latest".into()),
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "trap 'exit 0' TERM; sleep 3600 & wait".into(),
                ]),
                host_config: Some(HostConfig {
                    network_mode: Some(network.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::default().name(name).build();
            docker
                .create_container(Some(options), body)
                .await
                .expect("create");
            if let Some(after) = after.as_mut() {
                after.wait_for(|started| *started).await.expect("waited");
            }
            docker.start_container(name, None).await.expect("start");
            started.send_replace(true);
        }
    }))
    .await;
    let up = start.elapsed();
    let start = Instant::now();
    futures_util::future::join_all(names.iter().map(|name| {
        let docker = &docker;
        async move {
            docker.stop_container(name, None).await.expect("stop");
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            docker
                .remove_container(name, Some(options))
                .await
                .expect("remove");
        }
    }))
    .await;
    let down = start.elapsed();
    // The engine may still be releasing the containers' endpoints when their removal
    // returns, and Docker 20.10 sometimes never does after many stops at once; it
    // then refuses to remove the network, which is said and left.
    let mut tries = 0;
    while let Err(e) = docker.remove_network(&network).await {
        tries += 1;
        if tries == 30 {
            eprintln!("network {network} not removed: {e}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (up, down)
}
