//! Authorized requests per second and latency percentiles through the gateway, for a
//! status read and for a deploy, against a real `berth server` process on loopback.
//!
//! A developer session (a biscuit, verified and authorized on every request) drives
//! `CLIENTS` keep-alive connections for `SECONDS` per scenario. The deploy sends the
//! same topology again and again, so it measures the control plane's path (parse,
//! authorize, re-check, store or recognise the revision, the allocator's transaction)
//! rather than Docker; its topology has no replicas, so no node is needed.
//!
//! The peer, measured first in the same run by the same clients: a bare actix-web
//! route on the same machine (two workers, as the server has), answering a fixed JSON
//! body of the status read's size without authentication or storage. It is the
//! ceiling: what the HTTP stack and these clients allow on this machine.
//!
//! Run: `cargo bench -p berth-cli --bench gateway`. `BENCH_SECONDS`, `BENCH_CLIENTS`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let state = tempfile::tempdir().expect("tempdir");
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    };
    let (api_port, node_port) = (port(()), port(()));
    let admin = "bat_bench_admin";
    let mut server = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--node-listen",
            &format!("127.0.0.1:{node_port}"),
        ])
        .env("BERTH_DATA_DIR", state.path())
        .env("BERTH_ADMIN_TOKEN", admin)
        .stdout(Stdio::null())
        .spawn()
        .expect("berth server starts");
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let call = |method: reqwest::Method, path: &str, token: &str, body: serde_json::Value| {
        http.request(method, format!("{api}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    call(
        reqwest::Method::POST,
        "/v1/tenants",
        admin,
        serde_json::json!({ "name": "bench" }),
    )
    .await
    .expect("tenant");
    // The bench measures the path, not the per-tenant rates that protect a shared
    // pool: the admin lifts them for this tenant, as for a tenant that needs more.
    let limits = call(
        reqwest::Method::PUT,
        "/v1/tenants/bench/limits",
        admin,
        serde_json::json!({ "requests_per_second": 1_000_000, "deploys_per_minute": 1_000_000 }),
    )
    .await
    .expect("limits");
    assert!(limits.status().is_success(), "limits: {}", limits.status());
    call(reqwest::Method::POST, "/v1/tenants/bench/users", admin, serde_json::json!({ "name": "dev", "password": "bench-password-1234", "role": "developer" }))
        .await
        .expect("user");
    let login: serde_json::Value = http
        .post(format!("{api}/v1/login"))
        .json(&serde_json::json!({ "tenant": "bench", "user": "dev", "password": "bench-password-1234" }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token").to_owned();
    let topology = serde_json::json!({
        "name": "app",
        "services": { "web": { "image": "berth/busybox:latest", "replicas": 0, "networks": { "default": {} } } },
        "networks": { "default": {} }
    });
    let first = call(
        reqwest::Method::PUT,
        "/v1/tenants/bench/topologies/app",
        &token,
        topology.clone(),
    )
    .await
    .expect("deploy");
    assert!(
        first.status().is_success(),
        "deploy failed: {}",
        first.text().await.unwrap_or_default()
    );

    let status = http
        .get(format!("{api}/v1/tenants/bench/topologies/app"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status")
        .bytes()
        .await
        .expect("status body");
    let ceiling = bare_route(status.to_vec());

    println!(
        "gateway on this machine: {clients} clients, {seconds} s per scenario, developer biscuit on every request"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "scenario", "req/s", "p50", "p99", "errors", "of ceiling"
    );
    let topology_url = format!("{api}/v1/tenants/bench/topologies/app");
    let mut ceiling_rate = None;
    for (name, url, method, body) in [
        (
            "bare actix-web",
            ceiling.clone(),
            reqwest::Method::GET,
            None,
        ),
        (
            "status read",
            topology_url.clone(),
            reqwest::Method::GET,
            None,
        ),
        (
            "deploy",
            topology_url.clone(),
            reqwest::Method::PUT,
            Some(topology),
        ),
    ] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (http, url, token, method, body) = (
                http.clone(),
                url.clone(),
                token.clone(),
                method.clone(),
                body.clone(),
            );
            tasks.spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let mut request = http.request(method.clone(), &url).bearer_auth(&token);
                    if let Some(body) = &body {
                        request = request.json(body);
                    }
                    let start = Instant::now();
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(start.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            });
        }
        let (mut all, mut errors) = (Vec::new(), 0);
        while let Some(joined) = tasks.join_next().await {
            let (latencies, e) = joined.expect("client");
            all.extend(latencies);
            errors += e;
        }
        all.sort();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let rate = all.len() as f64 / seconds as f64;
        let ceiling = *ceiling_rate.get_or_insert(rate);
        println!(
            "{name:<16} {rate:>10.0} {:>9.2}ms {:>9.2}ms {errors:>10} {:>11.2}x",
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            rate / ceiling,
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Serves `body` at a bare actix-web route on loopback, from a thread of its own with
/// two workers; returns its URL.
fn bare_route(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!("http://{}/ok", listener.local_addr().expect("bound"));
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let body = actix_web::web::Bytes::from(body);
            actix_web::HttpServer::new(move || {
                let body = body.clone();
                actix_web::App::new().route(
                    "/ok",
                    actix_web::web::get().to(move || {
                        let body = body.clone();
                        async move {
                            actix_web::HttpResponse::Ok()
                                .content_type("application/json")
                                .body(body)
                        }
                    }),
                )
            })
            .workers(2)
            .listen(listener)
            .expect("listens")
            .run()
            .await
            .expect("serves");
        });
    });
    url
}
