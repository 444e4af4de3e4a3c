//! Golden test vectors of the capability vocabulary: a session token and a delegation
//! token minted from fixed keys (Ed25519 signatures are deterministic), checked in
//! under `tests/golden/`, with the readable datalog of each. A change to the facts,
//! checks or encoding of any token fails here, so it cannot happen by accident;
//! tokens in flight must keep verifying. Other implementations (biscuit-cli, other
//! languages) can check their reading of Berth's tokens against these files.
//!
//! After an intended change: `BERTH_UPDATE_GOLDEN=1 cargo test -p berth-protocol --test golden`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_protocol::capability::{self, Role, Session};
use berth_protocol::delegation::{self, Grant, NodeOperation};
use biscuit_auth::datalog::SymbolTable;
use biscuit_auth::{Algorithm, Biscuit, KeyPair, PrivateKey};

fn key(byte: u8) -> KeyPair {
    KeyPair::from(&PrivateKey::from_bytes(&[byte; 32], Algorithm::Ed25519).expect("key"))
}

/// 2033-05-18T03:33:20Z: far enough that the vectors stay valid tokens.
fn expiry() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(2_000_000_000)
}

fn check(name: &str, token: &Biscuit) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let encoded = token.to_base64().expect("encode");
    let datalog: Vec<String> = (0..token.block_count())
        .map(|i| token.print_block_source(i).expect("datalog"))
        .collect();
    let datalog = datalog.join("\n// next block\n") + "\n";
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        std::fs::write(dir.join(format!("{name}.b64")), format!("{encoded}\n")).expect("write");
        std::fs::write(dir.join(format!("{name}.datalog")), &datalog).expect("write");
    }
    let stored = std::fs::read_to_string(dir.join(format!("{name}.b64"))).unwrap_or_default();
    assert_eq!(
        stored.trim(),
        encoded,
        "{name}: the token's encoding changed"
    );
    let stored = std::fs::read_to_string(dir.join(format!("{name}.datalog"))).unwrap_or_default();
    assert_eq!(stored, datalog, "{name}: the token's datalog changed");
    // The checked-in token verifies with the root's public key and its id.
    Biscuit::from_base64(stored_token(name), |id| {
        assert_eq!(id, Some(7), "{name}: root key id");
        Ok(key(1).public())
    })
    .expect("the golden token verifies");
}

fn stored_token(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    std::fs::read_to_string(dir.join(format!("{name}.b64")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_session_token_is_what_it_always_was() {
    let session = Session {
        user: "dev".into(),
        tenant: "acme".into(),
        role: Role::Developer,
    };
    let token = capability::session_builder(&session, expiry(), 7)
        .expect("builder")
        .build_with_key_pair(&key(1), SymbolTable::new(), &key(2))
        .expect("mint");
    check("session", &token);
    // And it still authorizes what it did.
    let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let allowed = capability::authorize(
        &stored_token("session"),
        |_| Ok(key(1).public()),
        &capability::Request {
            operation: capability::Operation::Deploy,
            tenant: "acme",
            topology: Some("web"),
            now,
        },
    )
    .expect("authorized");
    assert_eq!(allowed.session, session);
}

#[test]
fn a_session_token_minted_before_its_expiry_was_a_fact_still_authorizes() {
    // Sessions minted before the authority block stated `expires(...)`: still valid,
    // decided on every request (nothing tells how long an answer about them holds).
    let old = stored_token("session-without-expires-fact");
    let verified = capability::verify(&old, |_| Ok(key(1).public())).expect("verifies");
    let request = capability::Request {
        operation: capability::Operation::Read,
        tenant: "acme",
        topology: Some("web"),
        now: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
    };
    let allowed = capability::authorize_verified(&verified, &request).expect("authorized");
    assert_eq!(allowed.session.user, "dev");
    verified.remember_allowed(&request, &allowed);
    assert_eq!(verified.allowed_before(&request), None);
    // The token minted now is remembered until its expiry.
    let new =
        capability::verify(&stored_token("session"), |_| Ok(key(1).public())).expect("verifies");
    let allowed = capability::authorize_verified(&new, &request).expect("authorized");
    new.remember_allowed(&request, &allowed);
    assert_eq!(new.allowed_before(&request), Some(allowed));
}

#[test]
fn a_delegation_token_and_its_attenuation_are_what_they_always_were() {
    let grant = Grant {
        caller: "n1".into(),
        caller_key: key(3).public().to_bytes().to_vec(),
        target: "n2".into(),
        operation: NodeOperation::Tunnel,
        tenant: "acme".into(),
        topology: "shop".into(),
        service: "db".into(),
        port: 5432,
        expires: expiry(),
    };
    let token = delegation::builder(&grant, 7)
        .expect("builder")
        .build_with_key_pair(&key(1), SymbolTable::new(), &key(2))
        .expect("mint");
    check("delegation", &token);
    let narrowed = token
        .append_with_keypair(
            &key(4),
            biscuit_auth::BlockBuilder::new()
                .code(r#"check if time($t), $t < 2030-01-01T00:00:00Z;"#)
                .expect("block"),
        )
        .expect("append");
    check("delegation-attenuated", &narrowed);
}

#[test]
fn a_delegation_minted_before_its_expiry_was_a_fact_still_authorizes() {
    // Minted before the authority block stated `expires(...)`: still valid, decided
    // on every call. The one minted now is remembered until its expiry.
    let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let holder = key(3).public().to_bytes();
    let call = delegation::Call {
        presenter_key: &holder,
        node: "n2",
        operation: NodeOperation::Tunnel,
        tenant: "acme",
        topology: "shop",
        service: "db",
        port: 5432,
        now,
    };
    for name in ["delegation-without-expires-fact", "delegation"] {
        let token = biscuit_auth::Biscuit::from_base64(stored_token(name), |_| Ok(key(1).public()))
            .expect("verifies")
            .to_vec()
            .expect("encode");
        let verified = delegation::verify(&token, |_| Ok(key(1).public())).expect("verifies");
        let allowed =
            delegation::authorize_verified(&verified, |_| false, &call).expect("authorized");
        assert_eq!(allowed.caller, "n1", "{name}");
    }
}
