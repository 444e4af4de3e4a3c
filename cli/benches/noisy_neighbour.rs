//! One tenant attacks the control plane; another's latency is measured at rest and
//! under the attack, against a real `berth server` process on loopback.
//!
//! The victim, with a developer session, reads its topology's status (20 a second) and
//! deploys it again (5 a second), paced, so that the figures are the server's latency
//! and not a queue the client built. The attacker, meanwhile, on as many connections:
//!
//! - datalog bombs: its own session attenuated with 16 facts and a check joining them
//!   six ways (`f($a), ..., f($f), $a + ... < 0`);
//! - oversized deploys: 1,000 services of 10,000 replicas each (88 KiB);
//! - a login flood: wrong passwords for made-up users, each from a source of its own
//!   (`X-Forwarded-For`, which the server believes from its own host), so that every
//!   one reaches the database and the password hasher;
//! - a request flood on its own valid session.
//!
//! The figures are the victim's p50 and p99 at rest and under attack, and their ratio.
//! The load generator shares the machine's cores with the server, so the ratio is an
//! upper bound on what the server alone would show.
//!
//! Run: `cargo bench -p berth-cli --bench noisy_neighbour`. `BENCH_SECONDS` per phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_tests::plane::Server;

const PASSWORD: &str = "a-bench-password-1";

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let server = Server::start_bin(std::path::Path::new(env!("CARGO_BIN_EXE_berth")), &[]).await;
    let (api, http, admin) = (server.api.clone(), server.http.clone(), server.admin);
    let mut sessions = Vec::new();
    for tenant in ["victim", "attacker"] {
        for (path, body) in [
            (
                "/v1/tenants".to_owned(),
                serde_json::json!({ "name": tenant }),
            ),
            (
                format!("/v1/tenants/{tenant}/users"),
                serde_json::json!({ "name": "dev", "password": PASSWORD, "role": "developer" }),
            ),
        ] {
            let answer = http
                .post(format!("{api}{path}"))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .expect("setup");
            assert!(answer.status().is_success(), "{path}: {}", answer.status());
        }
        let login: serde_json::Value = http
            .post(format!("{api}/v1/login"))
            .json(&serde_json::json!({ "tenant": tenant, "user": "dev", "password": PASSWORD }))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        sessions.push(login["token"].as_str().expect("token").to_owned());
    }
    let (victim, attacker) = (sessions[0].clone(), sessions[1].clone());
    // The victim deploys more than the default rate allows; the attacker keeps the
    // defaults.
    let roomy = http
        .put(format!("{api}/v1/tenants/victim/limits"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "requests_per_second": 100000, "deploys_per_minute": 100000 }))
        .send()
        .await
        .expect("limits");
    assert!(roomy.status().is_success());
    let topology = serde_json::json!({
        "name": "app",
        "services": { "web": { "image": "berth/busybox:latest", "replicas": 0, "networks": { "default": {} } } },
        "networks": { "default": {} }
    });
    let deployed = http
        .put(format!("{api}/v1/tenants/victim/topologies/app"))
        .bearer_auth(&victim)
        .json(&topology)
        .send()
        .await
        .expect("deploy");
    assert!(deployed.status().is_success(), "{}", deployed.status());

    println!("the victim's latency, {seconds} s a phase, at rest and while another tenant attacks");
    let rest = victim_phase(&http, &api, &victim, &topology, seconds).await;
    let stop = Arc::new(AtomicBool::new(false));
    let attacks = attack(&http, &api, &attacker, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let under = victim_phase(&http, &api, &victim, &topology, seconds).await;
    stop.store(true, Ordering::Release);
    let mut answered: std::collections::BTreeMap<(String, u16), u64> = Default::default();
    for attack in attacks {
        for (key, n) in attack.await.expect("attacker") {
            *answered.entry(key).or_default() += n;
        }
    }
    println!(
        "{:<14} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "request", "p50 rest", "p99 rest", "p50 attack", "p99 attack", "p99 ratio"
    );
    for ((name, rest), (_, under)) in rest.iter().zip(&under) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<14} {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>8.2}x",
            ms(rest.p50),
            ms(rest.p99),
            ms(under.p50),
            ms(under.p99),
            under.p99.as_secs_f64() / rest.p99.as_secs_f64().max(1e-9)
        );
        assert_eq!(
            under.failed, 0,
            "{name}: the victim was refused under attack"
        );
    }
    println!("what the attacker got:");
    for ((attack, status), n) in answered {
        println!("  {attack:<18} {status} x{n}");
    }
    let resident = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    println!("server resident memory after: {resident}");
}

/// The victim's latencies for one request kind.
struct Latency {
    p50: Duration,
    p99: Duration,
    failed: u64,
}

/// The victim's status reads and deploys, paced, for `seconds`.
async fn victim_phase(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    topology: &serde_json::Value,
    seconds: u64,
) -> Vec<(&'static str, Latency)> {
    let url = format!("{api}/v1/tenants/victim/topologies/app");
    let read = paced(
        http.clone(),
        url.clone(),
        token.to_owned(),
        None,
        20,
        seconds,
    );
    let deploy = paced(
        http.clone(),
        url,
        token.to_owned(),
        Some(topology.clone()),
        5,
        seconds,
    );
    vec![("status read", read.await), ("deploy", deploy.await)]
}

/// `per_second` requests a second to `url` for `seconds`, each timed.
async fn paced(
    http: reqwest::Client,
    url: String,
    token: String,
    body: Option<serde_json::Value>,
    per_second: u64,
    seconds: u64,
) -> Latency {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
    let (mut all, mut failed) = (Vec::new(), 0);
    for _ in 0..per_second * seconds {
        tick.tick().await;
        let request = match &body {
            Some(body) => http.put(&url).json(body),
            None => http.get(&url),
        };
        let started = Instant::now();
        match request.bearer_auth(&token).send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                all.push(started.elapsed());
            }
            _ => failed += 1,
        }
    }
    all.sort();
    let at = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        failed,
    }
}

type Answers = std::collections::BTreeMap<(String, u16), u64>;

/// The attacker's loops, until `stop`; each returns how its requests were answered.
fn attack(
    http: &reqwest::Client,
    api: &str,
    session: &str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Answers>> {
    let facts: String = (0..16).map(|i| format!("f({i});")).collect();
    let bomb = biscuit_auth::UnverifiedBiscuit::from_base64(session)
        .expect("parse")
        .append(
            biscuit_auth::builder::BlockBuilder::new()
                .code(format!(
                    "{facts} check if f($a), f($b), f($c), f($d), f($e), f($f), $a + $b + $c + $d + $e + $f < 0;"
                ))
                .expect("block"),
        )
        .expect("append")
        .to_base64()
        .expect("encode");
    let services: serde_json::Map<String, serde_json::Value> = (0..1000)
        .map(|i| {
            (
                format!("s{i}"),
                serde_json::json!({ "image": "berth/busybox:latest", "replicas": 10000, "networks": { "default": {} } }),
            )
        })
        .collect();
    // Written once: the attacker's own costs are not the server's.
    let huge = serde_json::to_vec(
        &serde_json::json!({ "name": "huge", "services": services, "networks": { "default": {} } }),
    )
    .expect("json");
    let mut loops = Vec::new();
    for copy in 0..2u32 {
        for kind in [
            "datalog bomb",
            "oversized deploy",
            "login flood",
            "login flood",
            "request flood",
        ] {
            let (http, api, stop) = (http.clone(), api.to_owned(), stop.clone());
            let (bomb, session, huge) = (bomb.clone(), session.to_owned(), huge.clone());
            loops.push(tokio::spawn(async move {
                let mut answers = Answers::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let request = match kind {
                        "datalog bomb" => http
                            .get(format!("{api}/v1/tenants/attacker/topologies"))
                            .bearer_auth(&bomb),
                        "oversized deploy" => http
                            .put(format!("{api}/v1/tenants/attacker/topologies/huge"))
                            .bearer_auth(&session)
                            .header("content-type", "application/json")
                            .body(huge.clone()),
                        "login flood" => http
                            .post(format!("{api}/v1/login"))
                            .header(
                                "x-forwarded-for",
                                format!("10.{copy}.{}.{}", (n >> 8) & 255, n & 255),
                            )
                            .json(&serde_json::json!({
                                "tenant": "victim", "user": format!("u{copy}-{n}"), "password": "wrong-password-0"
                            })),
                        _ => http
                            .get(format!("{api}/v1/tenants/attacker/topologies"))
                            .bearer_auth(&session),
                    };
                    let status = match request.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *answers.entry((kind.to_owned(), status)).or_default() += 1;
                }
                answers
            }));
        }
    }
    loops
}
