//! Compose files as people write them, run on the user's own engine: bind mounts
//! relative to the project (read and written), a local `build`, a fixed container
//! name, capabilities, a host name, `extends`, `profiles`, secrets from a file and from
//! the environment, and `.env` interpolation, brought up, changed and taken down; and the same file sent to
//! a pool, which refuses it with every offending line and stores nothing, until an
//! admin allows one key for the tenant: that key then passes and the others do not.

use berth_tests::plane::Server;
use berth_tests::{Project, docker_lines, ensure_images};

const APP: &str = r#"
name: NAME
x-common: &common
  image: berth/busybox:latest
services:
  base:
    <<: *common
    environment:
      GREETING: ${GREETING}
  web:
    extends: base
    container_name: NAME-the-web
    hostname: webhost
    cap_add: [NET_ADMIN]
    command: ["sh", "-c", "cat /srv/index /run/secrets/token > /out/copy; echo \"$$GREETING\" >> /out/copy; hostname >> /out/copy; cat /baked /run/secrets/api_key >> /out/copy; sleep 600"]
    volumes:
      - ./site:/srv:ro
      - ./out:/out
    secrets: [token, api_key]
  maker:
    build:
      context: ./maker
      args:
        FLAVOUR: from-the-build-arg
    command: ["sh", "-c", "cat /made > /out/made; sleep 600"]
    volumes: ["./out:/out"]
  debug:
    <<: *common
    command: ["sleep", "600"]
    profiles: [debug]
secrets:
  token:
    file: ./token.txt
  api_key:
    environment: API_KEY
"#;

const DOCKERFILE: &str = "FROM berth/busybox:latest
LABEL berth.test=NAME
ARG FLAVOUR=unset
RUN echo \"$FLAVOUR\" > /made
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_file_with_host_keys_runs_locally_and_a_pool_lists_what_it_refuses() {
    ensure_images();
    // The images this test builds go with it, even when it fails (after its
    // containers, which the project removes first).
    let name = format!("t{}-compose-local", std::process::id());
    let _images = Images(name.clone());
    let mut project = Project::new("compose-local", APP);
    assert_eq!(project.name, name);
    project.set_env("API_KEY", "key-from-the-environment");
    let dir = project.dir();
    std::fs::create_dir(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index"), "from-the-site\n").unwrap();
    std::fs::write(dir.join("token.txt"), "the-token\n").unwrap();
    std::fs::create_dir(dir.join("maker")).unwrap();
    std::fs::write(
        dir.join("maker/Dockerfile"),
        DOCKERFILE.replace("NAME", &name),
    )
    .unwrap();
    // `.env` values are expanded as Compose expands them.
    std::fs::write(dir.join(".env"), "GREETING=${UNSET_HERE:-hello-from-env}\n").unwrap();
    // The image `web` reads from `/baked` comes from a build of its own.
    std::fs::write(
        dir.join("baked.Dockerfile"),
        format!("FROM berth/busybox:latest\nLABEL berth.test={name}\nRUN echo baked-in > /baked\n"),
    )
    .unwrap();
    let image = format!("{}-web-base:latest", project.name);
    let baked = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &image, "-f", "baked.Dockerfile", "."])
        .current_dir(dir)
        .output()
        .expect("docker build");
    assert!(baked.status.success(), "{baked:?}");
    project.write(&APP.replace(
        "  base:\n    <<: *common\n",
        &format!("  base:\n    image: {image}\n"),
    ));

    // Up: the absent image of `maker` is built first, through the engine.
    project.berth(&["up", "-d"]).ok();
    let fixed = format!("{}-the-web", project.name);
    let copy = wait_for_file(&dir.join("out/copy"), 6);
    assert_eq!(
        copy.lines().collect::<Vec<_>>(),
        [
            "from-the-site",
            "the-token",
            "hello-from-env",
            "webhost",
            "baked-in",
            "key-from-the-environment"
        ],
        "{copy}"
    );
    let made = wait_for_file(&dir.join("out/made"), 1);
    assert_eq!(made.trim(), "from-the-build-arg");
    let caps = docker_lines(&["inspect", &fixed, "--format", "{{.HostConfig.CapAdd}}"]);
    assert_eq!(caps, ["[NET_ADMIN]"]);
    // The service of an inactive profile did not run.
    let ps = project.ps();
    assert!(ps.iter().all(|c| c["service"] != "debug"), "{ps:?}");

    // Changed: a new value reaches the container through the bind-mounted directory,
    // and `berth build` builds again with the new argument.
    std::fs::remove_file(dir.join("out/copy")).unwrap();
    std::fs::write(dir.join(".env"), "GREETING=changed\n").unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        std::fs::read_to_string(dir.join("compose.yaml"))
            .unwrap()
            .replace("from-the-build-arg", "rebuilt"),
    )
    .unwrap();
    let rebuilt = project.berth(&["build", "maker"]).ok();
    assert!(rebuilt.stdout.contains("built"), "{}", rebuilt.stdout);
    std::fs::remove_file(dir.join("out/made")).unwrap();
    project.berth(&["up", "-d"]).ok();
    let copy = wait_for_file(&dir.join("out/copy"), 6);
    assert_eq!(copy.lines().nth(2), Some("changed"), "{copy}");
    // The image was rebuilt under the same name: the container made from the old one
    // is replaced, as Compose does.
    let made = wait_for_file(&dir.join("out/made"), 1);
    assert_eq!(made.trim(), "rebuilt");

    // The same file against a pool: every refused line, with the policy and a way out,
    // and nothing stored.
    let server = Server::start(&[]).await;
    let mut pool = Project::new("compose-local", "");
    std::fs::write(
        pool.dir().join("compose.yaml"),
        std::fs::read_to_string(dir.join("compose.yaml")).unwrap(),
    )
    .unwrap();
    for f in [".env", "token.txt"] {
        std::fs::copy(dir.join(f), pool.dir().join(f)).unwrap();
    }
    pool.set_env("BERTH_ENDPOINT", &server.api);
    pool.set_env("BERTH_TOKEN", server.admin);
    pool.set_env("API_KEY", "key-from-the-environment");
    pool.berth(&["tenant", "create", "acme"]).ok();
    let expected = [
        (12, "web.container_name", true),
        (14, "web.cap_add[0]", true),
        (17, "web.volumes[0]", true),
        (18, "web.volumes[1]", true),
        (19, "web.secrets[0]", true),
        (19, "web.secrets[1]", true),
        (21, "maker.build", true),
        (26, "maker.volumes[0]", true),
    ];
    let refused = pool.berth(&["--tenant", "acme", "validate"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert_refused(&refused.stderr, &expected);
    let deployed = pool.berth(&["--tenant", "acme", "up", "-d"]);
    assert_eq!(deployed.code, 3, "{}", deployed.stderr);
    assert_refused(&deployed.stderr, &expected);
    let stored = server
        .api(reqwest::Method::GET, "/tenants/acme/topologies")
        .await;
    assert_eq!(stored.as_array().map(Vec::len), Some(0), "{stored}");

    // The admin allows one capability for the tenant: that line passes, the others
    // are still refused, and the decision is in the ledger.
    pool.berth(&["policy", "set", "acme", "--allow", "cap_add:NET_ADMIN"])
        .ok();
    let refused = pool.berth(&["--tenant", "acme", "validate"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let mut allowed = expected;
    allowed[1].2 = false;
    assert_eq!(allowed[1].1, "web.cap_add[0]");
    assert_refused(&refused.stderr, &allowed);
    let entries = server
        .api(reqwest::Method::GET, "/audit/entries?kind=policy")
        .await;
    let entry = &entries.as_array().expect("entries")[0];
    assert_eq!(entry["tenant"], "acme");
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .starts_with("allow: cap_add:NET_ADMIN"),
        "{entry}"
    );

    project.berth(&["down"]).ok();
    assert!(docker_lines(&["ps", "-aq", "--filter", &format!("name={fixed}")]).is_empty());
}

/// The images this test built (every one carries the label `berth.test=NAME`, the
/// ones a rebuild left untagged too), removed when dropped.
struct Images(String);

impl Drop for Images {
    fn drop(&mut self) {
        let filter = format!("label=berth.test={}", self.0);
        for image in docker_lines(&["images", "-aq", "--filter", &filter]) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &image])
                .output();
        }
    }
}

/// Each `(line, key, refused)`: refused keys are listed at their line of the file,
/// with the tenant's policy; the others are not listed.
fn assert_refused(stderr: &str, expected: &[(usize, &str, bool)]) {
    for &(line, key, refused) in expected {
        let listed = stderr.lines().any(|l| {
            l.contains(&format!("compose.yaml:{line}:"))
                && l.contains(&format!("services.{key}:"))
                && l.contains("refused by the pool (tenant acme) policy")
        });
        assert_eq!(listed, refused, "line {line} {key}:\n{stderr}");
    }
}

fn wait_for_file(path: &std::path::Path, lines: usize) -> String {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.lines().count() >= lines
        {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{} was never written", path.display());
}
