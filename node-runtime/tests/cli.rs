//! `berth-node` fails clearly when it cannot run, and never panics.

use std::process::Command;

fn berth_node(args: &[&str], state: &std::path::Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_berth-node"))
        .args(args)
        .env("BERTH_NODE_DIR", state)
        .output()
        .expect("runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn run_before_join_says_to_join() {
    let state = tempfile::tempdir().expect("tempdir");
    let (code, err) = berth_node(&["run"], state.path());
    assert_ne!(code, 0);
    assert!(err.contains("join first with `berth-node join`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn join_with_no_allocator_says_where_it_tried() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, err) = berth_node(
        &["join", "--allocator", &url, "--token", "t", "--name", "n1"],
        state.path(),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("cannot reach the allocator at {url}")),
        "{err}"
    );
    assert!(
        !state.path().join("identity.json").exists(),
        "an identity was saved for a node that never joined"
    );
}
