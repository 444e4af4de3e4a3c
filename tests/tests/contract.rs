//! The API keeps its documented contract: schemathesis, with every check, generates
//! requests from `/openapi.json` against a real `berth server` (over a real SQLite
//! database), as the admin and as a developer, and the run fails on any response the
//! document does not allow, any 5xx, and any request the document calls valid that is
//! refused for its form. Its output, and the server's memory before and after, are
//! kept in `target/contract/`.

use std::process::Command;
use std::time::Duration;

use berth_tests::plane::Server;
use berth_tests::workspace;

/// The server's resident memory, KiB.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs schemathesis against `server` with `token`; its output and whether it passed.
fn schemathesis(server: &Server, token: &str, who: &str) -> (bool, String) {
    let seconds = std::env::var("BERTH_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "100".into());
    let config = workspace().join("tests/schemathesis/schemathesis.toml");
    let run = Command::new("st")
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", &format!("{}/openapi.json", server.api)])
        .args(["--checks", "all", "--workers", "1", "--max-examples", "40"])
        .args(["--max-time", &seconds, "--seed", "20261204"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .output()
        .unwrap_or_else(|e| {
            panic!("schemathesis (`st`) cannot run ({e}): `pip install schemathesis`, as infra/test.sh does")
        });
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let dir = workspace().join("target/contract");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("schemathesis-{who}.txt")), &output);
    (run.status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_as_the_admin_or_as_a_developer() {
    let server = Server::start(&[]).await;
    let (api, http, admin) = (server.api.clone(), server.http.clone(), server.admin);
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(status.is_success(), "{status}: {body}");
        body
    };
    send(
        http.post(format!("{api}/v1/tenants"))
            .bearer_auth(admin)
            .json(&serde_json::json!({ "name": "acme" })),
    )
    .await;
    send(
        http.post(format!("{api}/v1/tenants/acme/users"))
            .bearer_auth(admin)
            .json(&serde_json::json!({ "name": "dev", "password": "a-developer-password", "role": "developer" })),
    )
    .await;
    let logged_in = send(
        http.post(format!("{api}/v1/login"))
            .json(&serde_json::json!({
                "tenant": "acme", "user": "dev", "password": "a-developer-password"
            })),
    )
    .await;
    let developer = logged_in["token"].as_str().expect("a token").to_owned();

    let before = resident_kib(server.pid());
    let mut report = format!("resident before: {before} KiB\n");
    let mut failed = Vec::new();
    for (who, token) in [("admin", admin.to_owned()), ("developer", developer)] {
        let (passed, output) = schemathesis(&server, &token, who);
        let summary: String = output
            .lines()
            .skip_while(|l| !l.contains("SUMMARY"))
            .collect::<Vec<_>>()
            .join("\n");
        report.push_str(&format!(
            "as {who}: {}, resident after: {} KiB\n{summary}\n",
            if passed { "passed" } else { "FAILED" },
            resident_kib(server.pid())
        ));
        if !passed {
            failed.push(output);
        }
    }
    println!("{report}");
    let _ = std::fs::write(workspace().join("target/contract/report.txt"), &report);
    // The server is still up and answering.
    let health = http
        .get(format!("{api}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the server answers after the run");
    assert!(health.status().is_success());
    assert!(failed.is_empty(), "{report}\n{}", failed.join("\n\n"));
}
