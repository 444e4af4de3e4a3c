//! The web UI in a real browser (headless Chromium through chromedriver) against a real
//! control plane and real Docker: each role signs in and does its main task end to end,
//! and no role reaches another role's pages or another tenant's data by URL.
//! Screenshots are saved in `target/test-output/ui/`.

use std::time::Duration;

use berth_tests::browser::Browser;
use berth_tests::plane::{Node, Server};
use berth_tests::proxy::Proxy;
use berth_tests::{docker_lines, ensure_images, free_port};

const PASSWORD: &str = "correct horse battery";
const DESKTOP: u32 = 1280;
const PHONE: u32 = 390;

/// A control plane with tenants `acme` (a developer `dev`, an auditor `aud`) and `ops`
/// (an admin `boss`).
async fn plane(envs: &[(&str, &str)]) -> Server {
    ensure_images();
    let server = Server::start(envs).await;
    with_users(&server).await;
    server
}

/// Makes the tenants and users of [`plane`] on `server`.
async fn with_users(server: &Server) {
    for tenant in ["acme", "ops", "globex"] {
        admin_post(server, "/v1/tenants", serde_json::json!({ "name": tenant })).await;
    }
    for (tenant, user, role) in [
        ("acme", "dev", "developer"),
        ("acme", "aud", "auditor"),
        ("ops", "boss", "admin"),
        ("globex", "gdev", "developer"),
    ] {
        admin_post(
            server,
            &format!("/v1/tenants/{tenant}/users"),
            serde_json::json!({ "name": user, "password": PASSWORD, "role": role }),
        )
        .await;
    }
}

async fn admin_post(server: &Server, path: &str, body: serde_json::Value) -> serde_json::Value {
    let response = server
        .http
        .post(format!("{}{path}", server.api))
        .bearer_auth(server.admin)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_default()
}

async fn admin_get(server: &Server, path: &str) -> serde_json::Value {
    server
        .http
        .get(format!("{}{path}", server.api))
        .bearer_auth(server.admin)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

/// The running containers of `tenant`'s `topology`, service `service`, on `node`.
fn containers(node: &Node, tenant: &str, topology: &str, service: &str) -> Vec<String> {
    let mut args = vec!["ps".to_owned(), "-q".to_owned()];
    for (label, value) in [
        ("berth.node", node.name.as_str()),
        ("berth.tenant", tenant),
        ("berth.topology", topology),
        ("berth.service", service),
    ] {
        args.extend(["--filter".to_owned(), format!("label={label}={value}")]);
    }
    docker_lines(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

const BAD_TOPOLOGY: &str = "\
name: shop
services:
  web:
    image: berth/busybox:latest
    deploy:
      replicas: many
";

const SHOP: &str = "\
name: shop
services:
  web:
    image: berth/busybox:latest
    init: true
    command: [\"sh\", \"-c\", \"echo hello-from-web; exec sleep 3600\"]
    deploy:
      replicas: 2
";

#[tokio::test(flavor = "multi_thread")]
async fn a_developer_deploys_and_watches_it_run_and_an_admin_quota_refuses_more() {
    let server = plane(&[]).await;
    let node = server
        .join(&format!("uidev{}", std::process::id()), &[], &[])
        .await;
    let base = server.api.clone();
    let browser = Browser::start(DESKTOP).await;

    // The developer signs in and lands on their tenant's topologies.
    browser.sign_in(&base, "acme", "dev", PASSWORD).await;
    browser.wait_path("/ui/tenants/acme/topologies").await;

    // A bad file: the loader's error stands right under the line it is about.
    browser.paste("#source", BAD_TOPOLOGY).await;
    browser.click("#deploy-button").await;
    let problem = browser
        .wait_text("#deploy-problem", "nothing was deployed")
        .await;
    assert!(problem.contains("nothing was deployed"), "{problem}");
    let diagnostic = browser.text(r#"tr.diagnostic[data-line="6"]"#).await;
    assert!(
        diagnostic.contains("line 6") && diagnostic.contains("replicas"),
        "{diagnostic}"
    );
    let above: String = browser
        .client
        .execute(
            r#"return document.querySelector('tr.diagnostic[data-line="6"]').previousElementSibling.id"#,
            vec![],
        )
        .await
        .expect("script runs")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(above, "line-6", "the error sits beside the offending line");
    assert!(
        browser
            .find("#source")
            .await
            .prop("value")
            .await
            .expect("value")
            .unwrap_or_default()
            .contains("replicas: many"),
        "the form keeps what was pasted"
    );
    browser.screenshot("developer-invalid-topology").await;
    assert!(
        containers(&node, "acme", "shop", "web").is_empty(),
        "nothing ran"
    );

    // A good file: deployed, and the page shows both replicas running without a reload.
    browser.paste("#source", SHOP).await;
    browser.click("#deploy-button").await;
    browser.wait_path("/ui/tenants/acme/topologies/shop").await;
    assert!(
        browser
            .wait_for(r#"#replicas tr[data-state="running"]"#, 2, 90)
            .await,
        "the replicas never showed running: {}",
        browser.client.source().await.unwrap_or_default()
    );
    assert_eq!(
        browser
            .count(r#"#topology-graph g.service[data-service="web"] g.replica"#)
            .await,
        2
    );
    assert_eq!(
        containers(&node, "acme", "shop", "web").len(),
        2,
        "two real containers run"
    );
    // Events: each replica placed, then started, as the node reported it.
    assert!(
        browser
            .wait_for(
                r#"#events tr[data-kind="started"][data-service="web"]"#,
                2,
                30
            )
            .await,
        "no started events: {}",
        browser.text("#live").await
    );
    assert_eq!(
        browser
            .count(r#"#events tr[data-kind="placed"][data-service="web"]"#)
            .await,
        2
    );
    browser.screenshot("developer-topology-running").await;

    // A replica's output.
    browser.click(r#"#replicas tr[data-service="web"] a"#).await;
    assert!(browser.wait_for("pre.logs", 2, 10).await);
    let mut logs = String::new();
    for _ in 0..50 {
        logs = browser.text("main").await;
        if logs.contains("hello-from-web") {
            break;
        }
        browser.client.refresh().await.expect("reload");
    }
    assert!(logs.contains("hello-from-web"), "{logs}");
    browser.sign_out().await;

    // The admin sees acme's usage and caps its containers at what it uses.
    browser.sign_in(&base, "ops", "boss", PASSWORD).await;
    browser.wait_path("/ui/admin/tenants").await;
    browser.fill("#containers-acme", "2").await;
    browser
        .click(r#"form[action="/ui/admin/tenants/acme/quota"] button"#)
        .await;
    let acme = browser
        .wait_text(r#"section[data-tenant="acme"]"#, "2 / 2")
        .await;
    assert!(acme.contains("2 / 2"), "{acme}");
    assert_eq!(
        browser
            .count(r#"section[data-tenant="acme"] .bar.full"#)
            .await,
        1
    );
    browser.screenshot("admin-tenants-quota").await;
    let quota = admin_get(&server, "/v1/tenants/acme/quota").await;
    assert_eq!(quota["limit"]["containers"], 2, "{quota}");

    // Nodes: state, cordon and back, and a join command.
    browser.goto(&format!("{base}/ui/admin/nodes")).await;
    let row = format!(r#"#nodes tr[data-node="{}"]"#, node.name);
    assert_eq!(
        browser.attr(&row, "data-state").await.as_deref(),
        Some("active")
    );
    browser
        .click(&format!(
            r#"form[action="/ui/admin/nodes/{}/cordon"] button"#,
            node.name
        ))
        .await;
    assert_eq!(
        browser
            .wait_attr(&row, "data-state", "cordoned")
            .await
            .as_deref(),
        Some("cordoned")
    );
    browser
        .click(&format!(
            r#"form[action="/ui/admin/nodes/{}/uncordon"] button"#,
            node.name
        ))
        .await;
    assert_eq!(
        browser
            .wait_attr(&row, "data-state", "active")
            .await
            .as_deref(),
        Some("active")
    );
    browser.click("#join-token").await;
    let join = browser.text("#join-command").await;
    assert!(
        join.contains("berth-node join") && join.contains("--token"),
        "{join}"
    );
    browser.screenshot("admin-nodes").await;
    browser.sign_out().await;

    // The developer asks for a third replica: refused by the quota, and nothing changed.
    browser.sign_in(&base, "acme", "dev", PASSWORD).await;
    browser
        .goto(&format!("{base}/ui/tenants/acme/topologies/shop"))
        .await;
    browser.fill("#replicas-web", "3").await;
    browser.click(r#"form[action$="/scale"] button"#).await;
    let refused = browser.wait_text("#scale-problem", "quota").await;
    assert!(refused.contains("quota"), "{refused}");
    browser.screenshot("developer-quota-refused").await;
    assert_eq!(
        containers(&node, "acme", "shop", "web").len(),
        2,
        "no third replica"
    );
    drop(node);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auditor_sees_who_can_call_what_revokes_a_link_and_sees_the_node_refuse_it() {
    // Node 1 will be cut off from the control plane while it keeps presenting its link
    // token, as a compromised or partitioned node would: the failure detector must not
    // step in during the test.
    let server = plane(&[
        ("BERTH_SUSPECT_AFTER", "100s"),
        ("BERTH_FENCE_AFTER", "200s"),
        ("BERTH_DEAD_AFTER", "300s"),
        ("BERTH_WITNESS_EVERY", "1s"),
    ])
    .await;
    let prefix = format!("uiaud{}", std::process::id());
    let (n1, n2) = (format!("{prefix}-n1"), format!("{prefix}-n2"));
    let proxy = Proxy::start(
        format!("127.0.0.1:{}", server.node_port)
            .parse()
            .expect("addr"),
    )
    .await;
    let (peer1, peer2) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let nodes: Vec<Node> = vec![
        server
            .join_through(proxy.port, &n1, &["--peer-listen", &peer1], &[])
            .await,
        server.join(&n2, &["--peer-listen", &peer2], &[]).await,
    ];
    // web on node 1 asks db on node 2 for a file every second, through the tunnel.
    let shop = serde_json::json!({
        "name": "shop",
        "services": {
            "db": {
                "image": "berth/busybox:latest", "replicas": 1, "init": true,
                "command": ["sh", "-c", "mkdir -p /www && echo secret-rows > /www/rows && httpd -f -p 8080 -h /www"],
                "networks": { "default": {} },
                "expose": [{ "port": 8080 }],
                "constraints": [{ "attribute": "hostname", "equal": true, "value": n2 }]
            },
            "web": {
                "image": "berth/busybox:latest", "replicas": 1, "init": true,
                "command": ["sh", "-c", "while true; do printf 'GET /rows HTTP/1.0\\r\\n\\r\\n' | nc -w 2 db 8080; sleep 1; done"],
                "networks": { "default": {} },
                "constraints": [{ "attribute": "hostname", "equal": true, "value": n1 }]
            }
        },
        "networks": { "default": {} }
    });
    server.deploy_when_placeable("acme", &shop).await;
    let base = server.api.clone();
    let browser = Browser::start(DESKTOP).await;

    // The auditor lands on the ledger, whose chain is intact.
    browser.sign_in(&base, "acme", "aud", PASSWORD).await;
    browser.wait_path("/ui/audit").await;
    let verification = browser.text("#verification").await;
    assert!(verification.contains("intact"), "{verification}");
    // The server's witness anchors the head every second here: the page says that
    // the chain was checked against its last anchor.
    let mut witnessed = 0;
    for _ in 0..20 {
        witnessed = browser.count("#witnessed").await;
        if witnessed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        browser.goto(&format!("{base}/ui/audit")).await;
    }
    assert_eq!(witnessed, 1, "the page never named the witness's anchor");
    let said = browser.text("#witnessed").await;
    assert!(
        said.contains("Checked against the anchor the server's witness took"),
        "{said}"
    );
    // The anchor the page shows, checked back through the form.
    let anchor = browser.text("#anchor-now").await;
    browser.fill("#anchor", &anchor).await;
    browser.click("#anchor + button").await;
    let held = browser
        .wait_text("#verification", "holds the anchored entry")
        .await;
    assert!(held.contains("holds the anchored entry"), "{held}");
    browser.screenshot("auditor-ledger").await;

    // Who can call what: node 1 may tunnel to db:8080 on node 2 once the link is up.
    let arrow = format!(r#"#reach-graph g.delegation[data-caller="{n1}"][data-target="{n2}"]"#);
    let mut shown = false;
    for _ in 0..150 {
        browser.goto(&format!("{base}/ui/audit/graph")).await;
        if browser.count(&arrow).await == 1 {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        shown,
        "the delegation never appeared: {}",
        browser.client.source().await.unwrap_or_default()
    );
    let table = browser.text("#delegations").await;
    assert!(table.contains("acme/shop/db:8080"), "{table}");
    browser.screenshot("auditor-who-can-call-what").await;
    // Calls go through before anything is revoked.
    let mut allowed = false;
    for _ in 0..150 {
        browser
            .goto(&format!("{base}/ui/audit?kind=decision"))
            .await;
        if browser.count("#entries .state.allowed").await > 0 {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(allowed, "node 2 never allowed a call");

    // The token, explained, then revoked while node 1 cannot hear about it.
    browser.goto(&format!("{base}/ui/audit/graph")).await;
    browser.click("#delegations td a").await;
    let datalog = browser.text("#datalog").await;
    assert!(
        datalog.contains(r#"right("tunnel", "acme", "shop", "db", 8080)"#),
        "{datalog}"
    );
    proxy.cut();
    browser.fill("#reason", "node 1 is suspect").await;
    browser.click("#revoke").await;
    let state = browser.wait_text("main", "This token is revoked").await;
    assert!(state.contains("This token is revoked"), "{state}");
    browser.screenshot("auditor-token-revoked").await;

    // Node 1 still presents it; node 2 refuses it, and says why.
    let mut refused = false;
    for _ in 0..150 {
        browser
            .goto(&format!("{base}/ui/audit?kind=decision"))
            .await;
        if browser.count("#entries .state.denied").await > 0 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(refused, "node 2 never refused the revoked token");
    browser.click("#entries tr:has(.state.denied) td a").await;
    let outcome = browser.text("#decision-outcome").await;
    assert!(outcome.contains("denied"), "{outcome}");
    let reason = browser.text("#decision-reason").await;
    assert!(reason.contains("revoked"), "{reason}");
    browser.screenshot("auditor-refusal-explained").await;
    proxy.restore();
    drop(nodes);
}

/// Signs in through the form with a plain HTTP client: the session cookie.
async fn cookie_of(base: &str, tenant: &str, user: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = http
        .post(format!("{base}/ui/login"))
        .form(&[("tenant", tenant), ("user", user), ("password", PASSWORD)])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 303, "{user} signs in");
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap_or_default().to_owned()
}

/// GETs `path` with `cookie`: the status and the page.
async fn try_get(base: &str, cookie: &str, path: &str) -> (u16, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = http
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_role_reaches_another_roles_pages_or_another_tenants_data() {
    let server = plane(&[]).await;
    let node = server
        .join(&format!("uiiso{}", std::process::id()), &[], &[])
        .await;
    let base = server.api.clone();
    // globex has a topology whose name must not leak.
    let secret = serde_json::json!({
        "name": "secret-plans",
        "services": { "vault": { "image": "berth/busybox:latest", "replicas": 1, "init": true,
            "command": ["sleep", "3600"], "networks": { "default": {} } } },
        "networks": { "default": {} }
    });
    let mut placed = false;
    let mut answer = String::new();
    for _ in 0..150 {
        let response = server
            .http
            .put(format!(
                "{}/v1/tenants/globex/topologies/secret-plans",
                server.api
            ))
            .bearer_auth(server.admin)
            .json(&secret)
            .send()
            .await
            .expect("request");
        if response.status().is_success() {
            placed = true;
            break;
        }
        answer = response.text().await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(placed, "globex's topology was never placed: {answer}");
    let gdev = cookie_of(&base, "globex", "gdev").await;
    let globex_token = admin_get(&server, "/v1/audit/entries?tenant=globex&kind=minted").await[0]
        ["revocation_ids"][0]
        .as_str()
        .expect("gdev's session is in the ledger")
        .to_owned();
    let dev = cookie_of(&base, "acme", "dev").await;
    let aud = cookie_of(&base, "acme", "aud").await;

    let forbidden = [
        (&dev, "/ui/admin/tenants"),
        (&dev, "/ui/admin/nodes"),
        (&dev, "/ui/audit"),
        (&dev, "/ui/audit/graph"),
        (&dev, "/ui/tenants/globex/topologies"),
        (&dev, "/ui/tenants/globex/topologies/secret-plans"),
        (&dev, "/ui/tenants/globex/topologies/secret-plans/logs"),
        (&aud, "/ui/admin/tenants"),
        (&aud, "/ui/admin/nodes"),
        (&aud, "/ui/tenants/globex/topologies"),
        (&aud, &format!("/ui/audit/tokens/{globex_token}")),
        (&gdev, "/ui/tenants/acme/topologies"),
    ];
    for (cookie, path) in forbidden {
        let (status, page) = try_get(&base, cookie, path).await;
        assert_eq!(status, 403, "{path}: {page}");
        assert!(
            !page.contains("secret-plans") || path.contains("secret-plans"),
            "{path} shows globex's data: {page}"
        );
        assert!(
            !page.contains("vault"),
            "{path} shows globex's data: {page}"
        );
    }
    // An auditor asking for another tenant's ledger gets their own.
    let (status, page) = try_get(&base, &aud, "/ui/audit?tenant=globex").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Audit ledger of acme") && !page.contains("globex"),
        "{page}"
    );
    // No session: to the login page, wherever one starts.
    let (status, _) = try_get(&base, "", "/ui/admin/tenants").await;
    assert_eq!(status, 303);

    // Posting forms by hand changes nothing either.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let quota = http
        .post(format!("{base}/ui/admin/tenants/acme/quota"))
        .header("cookie", &dev)
        .form(&[("cpu", ""), ("memory", ""), ("containers", "1000")])
        .send()
        .await
        .expect("request");
    assert_eq!(quota.status(), 403);
    let deploy = http
        .post(format!("{base}/ui/tenants/acme/topologies"))
        .header("cookie", &aud)
        .form(&[(
            "source",
            "name: x\nservices:\n  a:\n    image: berth/busybox:latest\n",
        )])
        .send()
        .await
        .expect("request");
    assert_eq!(deploy.status(), 403, "an auditor cannot deploy");
    assert_eq!(
        admin_get(&server, "/v1/tenants/acme/quota").await["limit"]["containers"],
        serde_json::Value::Null
    );

    // In the browser, at a phone's width, a developer trying the admin page is told no.
    let browser = Browser::start(PHONE).await;
    browser.sign_in(&base, "acme", "dev", PASSWORD).await;
    browser.goto(&format!("{base}/ui/admin/tenants")).await;
    assert_eq!(browser.wait_text("h1", "Not allowed").await, "Not allowed");
    browser
        .screenshot("developer-refused-admin-page-phone")
        .await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_drains_a_host_from_the_nodes_page_and_its_replicas_move_to_the_other() {
    // Two test hosts, each with its own engine and a node keeping its firewall.
    let hosts = berth_tests::hosts::Hosts::up(2);
    let server = hosts.server(&[]).await;
    with_users(&server).await;
    let nodes = [
        hosts.join(&server, 0, "host1", &[]).await,
        hosts.join(&server, 1, "host2", &[]).await,
    ];
    for _ in 0..150 {
        let listed = admin_get(&server, "/v1/nodes").await;
        if listed
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["state"] == "active"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // web's two replicas go to host1 (host2 cordoned while they are placed).
    admin_post(&server, "/v1/nodes/host2/cordon", serde_json::json!({})).await;
    let shop = serde_json::json!({
        "name": "shop",
        "services": { "web": {
            "image": "berth/busybox:latest", "replicas": 2, "init": true,
            "command": ["sleep", "3600"], "networks": { "default": {} }
        } },
        "networks": { "default": {} }
    });
    server.deploy_when_placeable("default", &shop).await;
    admin_post(&server, "/v1/nodes/host2/uncordon", serde_json::json!({})).await;
    let on = |i: usize| {
        let prefix = nodes[i].prefix();
        hosts
            .docker(i, &["ps", "--format", "{{.Names}}"])
            .lines()
            .filter(|n| n.starts_with(&format!("{prefix}.default.shop.web.")))
            .count()
    };
    let mut placed = false;
    for _ in 0..300 {
        if on(0) == 2 {
            placed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(placed, "web never ran on host1");

    let base = server.api.clone();
    let browser = Browser::start(DESKTOP).await;
    browser.sign_in(&base, "ops", "boss", PASSWORD).await;
    browser.goto(&format!("{base}/ui/admin/nodes")).await;
    for name in ["host1", "host2"] {
        let cell = format!(r#"#nodes tr[data-node="{name}"] td.firewall"#);
        let firewall = browser.text(&cell).await;
        assert_eq!(firewall.trim(), "enforced", "{name}");
    }
    browser
        .click(r#"form[action="/ui/admin/nodes/host1/drain"] button"#)
        .await;
    assert_eq!(
        browser
            .wait_attr(r#"#nodes tr[data-node="host1"]"#, "data-state", "draining")
            .await
            .as_deref(),
        Some("draining")
    );
    browser.screenshot("admin-nodes-hosts-drained").await;
    // The replicas now run on host2's engine, and none on host1's.
    let mut moved = false;
    for _ in 0..300 {
        if on(1) == 2 && on(0) == 0 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(moved, "host1 runs {}, host2 runs {}", on(0), on(1));
}
