//! What a datalog bomb costs the gateway: a developer's session token with sixteen
//! facts and a check that joins them six ways appended. Before the shape check, the
//! gateway ran that datalog (biscuit-auth's run limits are compared between checks, so
//! the one check runs to its end); now `capability::verify` refuses the token by its
//! shape before any datalog runs. Both measured here, in one run, beside an ordinary
//! session's full authorization.
//!
//! Run: `cargo bench -p berth-protocol --bench datalog_bomb`.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use berth_protocol::capability::{self, Operation, Request, Role, Session};
use biscuit_auth::{Biscuit, BlockBuilder, KeyPair};

const ROUNDS: usize = 200;

fn main() {
    let root = KeyPair::new();
    let now = SystemTime::now();
    let session = Session {
        user: "mallory".into(),
        tenant: "acme".into(),
        role: Role::Developer,
    };
    let token =
        capability::mint_session(&root, 1, &session, now + Duration::from_secs(600)).expect("mint");
    let facts: String = (0..16).map(|i| format!("f({i});")).collect();
    let bomb = Biscuit::from_base64(&token, |_| Ok(root.public()))
        .expect("parse")
        .append(
            BlockBuilder::new()
                .code(format!(
                    "{facts} check if f($a), f($b), f($c), f($d), f($e), f($f), $a + $b + $c + $d + $e + $f < 0;"
                ))
                .expect("block"),
        )
        .expect("append");
    let bomb_text = bomb.to_base64().expect("encode");
    let request = Request {
        operation: Operation::Read,
        tenant: "acme",
        topology: None,
        now,
    };
    let key = |_| Ok(root.public());

    let ordinary = median(ROUNDS, || {
        black_box(capability::authorize(&token, key, &request).is_ok());
    });
    let refused = median(ROUNDS, || {
        black_box(capability::verify(&bomb_text, key).is_err());
    });
    // The path before: the token's datalog run with the gateway's limits. Once: it is
    // slow by construction.
    let started = Instant::now();
    let mut authorizer = biscuit_auth::AuthorizerBuilder::new()
        .set_limits(capability::limits())
        .code(capability::POLICIES)
        .and_then(|b| b.build(&bomb))
        .expect("authorizer");
    black_box(authorizer.authorize().is_ok());
    let evaluated = started.elapsed();

    println!("ordinary session, full authorization: {ordinary:?} (median of {ROUNDS})");
    println!("datalog bomb refused by its shape:     {refused:?} (median of {ROUNDS})");
    println!("datalog bomb evaluated (the path before): {evaluated:?} (once)");
    println!(
        "the bomb costs {:.0}x less than before, and {:.2}x an ordinary authorization",
        evaluated.as_secs_f64() / refused.as_secs_f64(),
        refused.as_secs_f64() / ordinary.as_secs_f64()
    );
}

fn median(rounds: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[rounds / 2]
}
