//! Token parsing and authorization must never panic and never allow what they should
//! not, whatever bytes arrive: arbitrary bytes, arbitrary strings, and single-byte
//! edits and truncations of a valid delegation (a tampered token is refused, never
//! accepted as something else; an edit that decodes to the very same token may pass).
//! The node API's request body decodes without panicking too. Run in CI with proptest's default budget (256 cases each).

use std::time::{Duration, SystemTime};

use berth_protocol::capability::{self, Operation};
use berth_protocol::delegation::{self, Call, Grant, NodeOperation};
use berth_protocol::node_api::{PeerCall, PeerCallBody, TunnelAnswer};
use biscuit_auth::KeyPair;
use proptest::prelude::*;
use prost::Message;

const CALLER_KEY: [u8; 32] = [1; 32];

fn call(now: SystemTime) -> Call<'static> {
    Call {
        presenter_key: &CALLER_KEY,
        node: "n2",
        operation: NodeOperation::Tunnel,
        tenant: "acme",
        topology: "shop",
        service: "db",
        port: 5432,
        now,
    }
}

fn valid(root: &KeyPair, now: SystemTime) -> Vec<u8> {
    delegation::mint(
        root,
        1,
        &Grant {
            caller: "n1".into(),
            caller_key: CALLER_KEY.to_vec(),
            target: "n2".into(),
            operation: NodeOperation::Tunnel,
            tenant: "acme".into(),
            topology: "shop".into(),
            service: "db".into(),
            port: 5432,
            expires: now + Duration::from_secs(60),
        },
    )
    .expect("mint")
    .to_vec()
    .expect("encode")
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused_as_delegations(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let root = KeyPair::new();
        let result = delegation::authorize(&bytes, |_| Ok(root.public()), |_| false, &call(SystemTime::now()));
        prop_assert!(result.is_err());
    }

    #[test]
    fn arbitrary_strings_are_refused_as_sessions(text in ".{0,512}") {
        let root = KeyPair::new();
        let request = capability::Request { operation: Operation::Read, tenant: "acme", topology: None, now: SystemTime::now() };
        prop_assert!(capability::authorize(&text, |_| Ok(root.public()), &request).is_err());
        let _ = capability::datalog(&text);
    }

    #[test]
    fn an_edited_or_truncated_delegation_is_refused(at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<bool>()) {
        let root = KeyPair::new();
        let now = SystemTime::now();
        // Verified as nodes do: the key chosen by the token's (unsigned) key id.
        let ring = capability::Keyring::new(1, root.public());
        let mut token = valid(&root, now);
        prop_assert!(delegation::authorize(&token, |id| ring.key(id), |_| false, &call(now)).is_ok());
        let original = token.clone();
        let i = at.index(token.len());
        if cut { token.truncate(i) } else { token[i] ^= flip }
        if delegation::authorize(&token, |id| ring.key(id), |_| false, &call(now)).is_ok() {
            // Protobuf lets a few edits leave the message it decodes to unchanged (a
            // field's tag renumbered to an unknown one when its value is the default:
            // the key algorithm's, Ed25519). Such a token is the same token, with the
            // same signatures and revocation ids; anything it decodes to other than
            // the original is refused.
            let decoded = biscuit_auth::UnverifiedBiscuit::from(&token)
                .and_then(|t| t.to_vec())
                .expect("an accepted token decodes");
            prop_assert_eq!(decoded, original, "an edited token was accepted as another");
        }
    }

    #[test]
    fn the_node_api_decodes_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = PeerCall::decode(bytes.as_slice());
        let _ = PeerCallBody::decode(bytes.as_slice());
        let _ = TunnelAnswer::decode(bytes.as_slice());
    }
}
