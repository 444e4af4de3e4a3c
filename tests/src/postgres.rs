//! A PostgreSQL server for the database tests.
//!
//! With `BERTH_TEST_POSTGRES_URL` set (a server URL such as
//! `postgres://postgres@127.0.0.1:5432`), that server is used. Otherwise the harness
//! starts a throwaway server from the installed PostgreSQL binaries, on a free port with
//! its data in a temporary directory, watched by a shell that stops it and deletes the
//! data as soon as this test process exits. Each test gets a database of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The URL of a PostgreSQL server, without a database name.
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("BERTH_TEST_POSTGRES_URL") {
        Ok(url) => url.trim_end_matches('/').to_owned(),
        Err(_) => start_throwaway_server(),
    })
    .clone()
}

/// Where the installed PostgreSQL's programs are (the newest version's).
pub fn bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does), or set BERTH_TEST_POSTGRES_URL to a server")
    })
}

fn start_throwaway_server() -> String {
    let dir = tempfile::Builder::new()
        .prefix("berth-pg-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    let port = crate::free_port();
    start_cluster(&dir, "127.0.0.1", port, None, None);
    // Stopped, and its data deleted, as soon as this test process exits.
    let watcher = format!(
        "( while kill -0 {parent} 2>/dev/null; do sleep 1; done
  {as_user} {bin}/pg_ctl -D {dir}/data -m immediate stop >/dev/null 2>&1; rm -rf {dir} ) >/dev/null 2>&1 &",
        parent = std::process::id(),
        as_user = as_user(),
        bin = bin_dir().display(),
        dir = dir.display(),
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(&watcher)
        .stdin(Stdio::null())
        .status();
    format!("postgres://postgres@127.0.0.1:{port}")
}

/// The prefix that runs a PostgreSQL program as the `postgres` user when this process
/// is root (PostgreSQL refuses to run as root), else nothing.
fn as_user() -> &'static str {
    static PREFIX: OnceLock<&'static str> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if is_root {
            "runuser -u postgres --"
        } else {
            ""
        }
    })
}

/// Makes a PostgreSQL cluster in `dir` (its data in `dir/data`, handed to the
/// `postgres` user when this process is root) trusting every local connection and
/// those from `trust` (a network, `ADDRESS/PREFIX`), and starts it listening at
/// `listen:port`, in the network namespace `netns` if given. Panics with its logs when
/// it does not start.
pub fn start_cluster(
    dir: &std::path::Path,
    listen: &str,
    port: u16,
    netns: Option<&str>,
    trust: Option<&str>,
) {
    let as_user = as_user();
    if !as_user.is_empty() {
        let status = Command::new("chown")
            .args(["-R", "postgres", dir.to_str().expect("utf-8 path")])
            .status()
            .expect("chown");
        assert!(
            status.success(),
            "cannot hand {} to the postgres user",
            dir.display()
        );
    }
    let trust = trust
        .map(|net| {
            format!(
                "echo 'host all all {net} trust' >> {}/data/pg_hba.conf",
                dir.display()
            )
        })
        .unwrap_or_default();
    let enter = netns
        .map(|ns| format!("nsenter --net=/var/run/netns/{ns}"))
        .unwrap_or_default();
    let script = format!(
        r#"set -e
{as_user} {bin}/initdb -D {dir}/data --auth=trust --username=postgres --no-sync >{dir}/initdb.log 2>&1
{trust}
{enter} {as_user} {bin}/pg_ctl -D {dir}/data -l {dir}/server.log -w -o "-p {port} -k {dir} -c listen_addresses={listen} -c fsync=off -c max_connections=200" start >/dev/null
"#,
        bin = bin_dir().display(),
        dir = dir.display(),
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs");
    assert!(
        output.status.success(),
        "could not start PostgreSQL ({}): {}{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    );
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_database(test: &str) -> String {
    use sea_orm::{ConnectionTrait, Database};
    let server = server_url();
    let admin = Database::connect(format!("{server}/postgres"))
        .await
        .expect("connect to PostgreSQL");
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("t{}_{n}_{}", std::process::id(), test.replace('-', "_"));
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database");
    admin.close().await.expect("close");
    format!("{server}/{name}")
}

/// Waits (up to five seconds) until a session of `db`'s database waits for a lock:
/// a test that holds a row in one transaction knows then that the call it started
/// meanwhile is blocked on it. Panics, saying `what`, if none does.
pub async fn until_one_waits_for_a_lock(db: &sea_orm::DatabaseConnection, what: &str) {
    use sea_orm::ConnectionTrait;
    for _ in 0..250 {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
            ))
            .await
            .expect("pg_stat_activity")
            .expect("a row");
        if row.try_get::<i64>("", "n").expect("a count") > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{what} never waited for a lock");
}
