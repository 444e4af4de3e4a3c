//! Compose files as people write them, run on the user's own engine: bind mounts
//! relative to the project, a fixed container name, capabilities, a host name,
//! `extends`, `profiles`, a secret from a file and `.env` interpolation; and the same
//! file checked against a pool's default policy, which lists every refused line.

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
    command: ["sh", "-c", "cat /srv/index /run/secrets/token > /out/copy; echo \"$$GREETING\" >> /out/copy; hostname >> /out/copy; sleep 600"]
    volumes:
      - ./site:/srv:ro
      - ./out:/out
    secrets: [token]
  debug:
    <<: *common
    command: ["sleep", "600"]
    profiles: [debug]
secrets:
  token:
    file: ./token.txt
"#;

#[test]
fn a_compose_file_with_host_keys_runs_locally_and_a_pool_lists_what_it_refuses() {
    ensure_images();
    let project = Project::new("compose-local", APP);
    let dir = project.dir();
    std::fs::create_dir(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index"), "from-the-site\n").unwrap();
    std::fs::write(dir.join("token.txt"), "the-token\n").unwrap();
    // `.env` values are expanded as Compose expands them.
    std::fs::write(dir.join(".env"), "GREETING=${UNSET_HERE:-hello-from-env}\n").unwrap();

    project.berth(&["up", "-d"]).ok();
    let fixed = format!("{}-the-web", project.name);
    let copy = wait_for_file(&dir.join("out/copy"));
    assert_eq!(
        copy.lines().collect::<Vec<_>>(),
        ["from-the-site", "the-token", "hello-from-env", "webhost"],
        "{copy}"
    );
    let caps = docker_lines(&["inspect", &fixed, "--format", "{{.HostConfig.CapAdd}}"]);
    assert_eq!(caps, ["[NET_ADMIN]"]);
    // The service of an inactive profile did not run.
    let ps = project.ps();
    assert!(ps.iter().all(|c| c["service"] != "debug"), "{ps:?}");

    // The same file against a pool: every refused line, with the policy and a way out.
    let refused = project.berth(&[
        "--endpoint",
        "http://127.0.0.1:9",
        "--tenant",
        "acme",
        "validate",
    ]);
    assert_ne!(refused.code, 0);
    for (line, key) in [
        (12, "container_name"),
        (14, "cap_add[0]"),
        (17, "volumes[0]"),
        (18, "volumes[1]"),
        (19, "secrets[0]"),
    ] {
        assert!(
            refused
                .stderr
                .lines()
                .any(|l| l.contains(&format!("compose.yaml:{line}:"))
                    && l.contains(&format!("services.web.{key}"))
                    && l.contains("refused by the pool (tenant acme) policy")),
            "line {line} {key}:\n{}",
            refused.stderr
        );
    }

    project.berth(&["down"]).ok();
    assert!(docker_lines(&["ps", "-aq", "--filter", &format!("name={fixed}")]).is_empty());
}

fn wait_for_file(path: &std::path::Path) -> String {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.lines().count() >= 4
        {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{} was never written", path.display());
}
