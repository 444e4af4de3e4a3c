//! A control plane served over TLS (`berth server --tls`): nodes join and stream over
//! the node API, the CLI deploys and the pages sign in over the REST API, each
//! trusting the authority the server made; a client that does not trust it, or speaks
//! plain HTTP, gets nothing. Real processes, real Docker.

use berth_tests::plane::Server;
use berth_tests::{Project, berth_bin, docker_lines, ensure_images};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_served_over_tls_works_for_clients_that_trust_it_and_no_one_else() {
    ensure_images();
    let server = Server::start_with(&berth_bin(), None, &["--tls"], &[]).await;
    let ca = server.ca.clone().expect("the server made an authority");
    assert!(server.api.starts_with("https://"), "{}", server.api);
    let printed = server.printed();
    assert!(
        printed.contains(&format!("--ca {}", ca.display()))
            && printed.contains(&format!("BERTH_CA={}", ca.display())),
        "the printed commands do not say which authority to trust:\n{printed}"
    );

    // Two nodes join over TLS and take work.
    let prefix = format!("tls{}", std::process::id());
    let nodes = [
        server.join(&format!("{prefix}-n1"), &[], &[]).await,
        server.join(&format!("{prefix}-n2"), &[], &[]).await,
    ];
    let yaml = "name: NAME\nservices:\n  web:\n    image: berth/busybox:latest\n    init: true\n    command: [\"sleep\", \"3600\"]\n    deploy: {replicas: 2}\n";
    let mut project = Project::new("tls", yaml);
    project.set_env("BERTH_ENDPOINT", &server.api);
    project.set_env("BERTH_TOKEN", server.admin);

    // The CLI without the authority refuses the server's certificate, and says so.
    let untrusting = project.berth(&["up", "--json"]);
    assert_ne!(untrusting.code, 0, "{untrusting:?}");
    assert!(
        untrusting.stderr.contains("certificate"),
        "the refusal does not say it is the certificate: {}",
        untrusting.stderr
    );

    project.set_env("BERTH_CA", &ca.display().to_string());
    let placed = project.up_across(2).await;
    let replicas = placed["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("never deployed over TLS: {placed}"));
    assert!(
        replicas.len() == 2 && replicas.iter().all(|r| r["state"] == "running"),
        "{placed}"
    );
    for node in &nodes {
        let running = docker_lines(&[
            "ps",
            "--filter",
            &format!("label=berth.node={}", node.name),
            "--format",
            "{{.Names}}",
        ]);
        assert_eq!(running.len(), 1, "{} runs {running:?}", node.name);
    }

    // Plain HTTP gets no answer from either API.
    let api_port = server.api.rsplit(':').next().expect("port").to_owned();
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{api_port}/readyz"))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| !r.status().is_success()),
        "the API answered plain HTTP: {plain:?}"
    );

    // The join commands the API hands out name the authority too.
    let made = server.api(reqwest::Method::POST, "/join-tokens").await;
    let command = made["join_command"].as_str().unwrap_or_default();
    assert!(
        command.starts_with("berth-node join --allocator https://")
            && command.contains(&format!("--ca {}", ca.display())),
        "{made}"
    );

    // A node that does not trust the authority cannot join, and is told why.
    let token = server.join_token().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = std::process::Command::new(berth_tests::plane::sibling("berth-node"))
        .args(["join", "--allocator", &server.node_url(), "--token", &token])
        .args(["--name", &format!("{prefix}-untrusting")])
        .env("BERTH_NODE_DIR", dir.path())
        .env("BERTH_FIREWALL", "off")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("berth-node runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!dir.path().join("identity.json").exists());

    // The pages sign in over TLS: they call the API over the same kind of connection,
    // and the session cookie is sent back over TLS only.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("ca")).expect("PEM"),
        )
        .build()
        .expect("client");
    let created = http
        .post(format!("{}/v1/tenants/default/users", server.api))
        .bearer_auth(server.admin)
        .json(&serde_json::json!({"name": "dana", "password": "a-long-password-1", "role": "developer"}))
        .send()
        .await
        .expect("request");
    assert!(created.status().is_success(), "{created:?}");
    let signed_in = http
        .post(format!("{}/ui/login", server.api))
        .form(&[
            ("tenant", "default"),
            ("user", "dana"),
            ("password", "a-long-password-1"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(signed_in.status(), 303, "{signed_in:?}");
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
    let session = cookie.split(';').next().expect("cookie").to_owned();
    let page = http
        .get(format!("{}/ui/tenants/default/topologies", server.api))
        .header("cookie", session)
        .send()
        .await
        .expect("request");
    assert_eq!(page.status(), 200);
    let body = page.text().await.expect("body");
    assert!(body.contains(&project.name), "{body}");

    project.berth(&["down"]).ok();
    drop(nodes);
}
