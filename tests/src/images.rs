//! Images built in this machine's engine for tests and benchmarks: layers of random
//! bytes on the test image, so no two runs share them.

/// Images built in this machine's engine by a test, removed when it ends.
#[derive(Debug)]
pub struct LocalImages(pub Vec<String>);

impl Drop for LocalImages {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["image", "rm", "-f"])
            .args(&self.0)
            .output();
    }
}

/// Builds, in this machine's engine only, an image `name` on top of the test image
/// with a layer of `mebibytes` MiB of random bytes; its id.
pub fn build_local_image(name: &str, mebibytes: usize) -> String {
    build_on("berth/busybox:latest", name, mebibytes * 1024)
}

/// Builds, in this machine's engine, an image `name` on top of `base` with a layer
/// of `kibibytes` KiB of random bytes at `/payload`; its id.
pub fn build_on(base: &str, name: &str, kibibytes: usize) -> String {
    let dir = tempfile::tempdir().expect("a build context");
    let mut payload = vec![0u8; kibibytes * 1024];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut payload)
        .expect("random bytes");
    std::fs::write(dir.path().join("payload"), &payload).expect("payload");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY payload /payload\n"),
    )
    .expect("Dockerfile");
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", name])
        .arg(dir.path())
        .output()
        .expect("docker runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let id = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", name])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&id.stdout).trim().to_owned()
}

/// A topology `name` whose one service `app` runs `replicas` of `image` under
/// `constraints`, each replica checking that the image's `/payload` is there, then
/// sleeping.
pub fn payload_app(
    name: &str,
    image: &str,
    replicas: usize,
    constraints: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "services": { "app": {
            "image": image, "replicas": replicas, "init": true,
            "command": ["sh", "-c", "test -s /payload && sleep 3600"],
            "networks": { "default": {} }, "constraints": constraints
        } },
        "networks": { "default": {} }
    })
}
