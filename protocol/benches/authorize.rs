//! Authorization time of one node-API call: a token seen for the first time (parse,
//! verify its signatures, authorize) against a repeat served by the verified-token
//! cache a node keeps (hash the token, look it up, then revocation, and the decision:
//! remembered for a token as the allocator mints it, run again for one a holder
//! attenuated). Same machine, same run.
//!
//! Run: `cargo bench -p berth-protocol --bench authorize`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use berth_protocol::capability::Keyring;
use berth_protocol::delegation::{self, Call, Grant, NodeOperation};
use biscuit_auth::KeyPair;
use sha2::Digest;

const CALLS: usize = 2_000;
const ROUNDS: usize = 5;

fn main() {
    let root = KeyPair::new();
    let ring = Keyring::new(1, root.public());
    let now = SystemTime::now();
    let caller_key = [9u8; 32];
    let grant = Grant {
        caller: "n1".into(),
        caller_key: caller_key.to_vec(),
        target: "n2".into(),
        operation: NodeOperation::Tunnel,
        tenant: "acme".into(),
        topology: "shop".into(),
        service: "db".into(),
        port: 5432,
        expires: now + Duration::from_secs(600),
    };
    // As the allocator mints it, and with a block a holder appended.
    let minted = delegation::mint(&root, 1, &grant).expect("mint");
    let attenuated = minted
        .append(
            biscuit_auth::BlockBuilder::new()
                .code("check if time($t), $t < 2100-01-01T00:00:00Z;")
                .expect("block"),
        )
        .expect("append")
        .to_vec()
        .expect("encode");
    let minted = minted.to_vec().expect("encode");
    let call = Call {
        presenter_key: &caller_key,
        node: "n2",
        operation: NodeOperation::Tunnel,
        tenant: "acme",
        topology: "shop",
        service: "db",
        port: 5432,
        now,
    };
    let revoked = |_: &[String]| false;

    let first = median(|| {
        let allowed = delegation::authorize(&minted, |id| ring.key(id), revoked, &call);
        assert!(allowed.is_ok());
    });
    // What a node does on a repeat: hash the token, find it verified, ask that its
    // key is still trusted, then revocation and the decision.
    let mut cache: HashMap<[u8; 32], delegation::Verified> = HashMap::new();
    for token in [&minted, &attenuated] {
        let digest: [u8; 32] = sha2::Sha256::digest(token).into();
        let verified = delegation::verify(token, |id| ring.key(id)).expect("verify");
        cache.insert(digest, verified);
    }
    let repeat = |token: &[u8]| {
        let digest: [u8; 32] = sha2::Sha256::digest(black_box(token)).into();
        let verified = cache.get(&digest).expect("cached");
        assert!(ring.key(verified.root_key_id()).is_ok());
        let allowed = delegation::authorize_verified(verified, revoked, &call);
        assert!(allowed.is_ok());
    };
    let repeat_minted = median(|| repeat(&minted));
    let repeat_attenuated = median(|| repeat(&attenuated));
    println!("authorization of one node-API call, median of {ROUNDS} rounds of {CALLS}:");
    println!("  first sight (parse + verify + authorize)      : {first:>8.1} µs");
    println!(
        "  repeat, token as minted (decision remembered) : {repeat_minted:>8.1} µs  ({:.1}× faster than first sight)",
        first / repeat_minted
    );
    println!(
        "  repeat, attenuated token (decided every time) : {repeat_attenuated:>8.1} µs  ({:.1}× faster than first sight)",
        first / repeat_attenuated
    );
}

/// Median over rounds of the mean time per call, in microseconds.
fn median(mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            started.elapsed().as_secs_f64() * 1e6 / CALLS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}
