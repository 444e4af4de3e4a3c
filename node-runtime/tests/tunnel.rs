//! Tunnels on connections of their own, in one process: node 1's link listener and
//! node 2's node API speaking over real TLS on loopback, node 2's service a TCP server
//! here (its container engine simulated). Bytes cross both ways with half-closes kept;
//! a call signed by another key than its connection's is refused with its code and
//! recorded; a call too long to be one is dropped unread.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use berth_node_runtime::agent::NodeIdentity;
use berth_node_runtime::links::Tunnels;
use berth_node_runtime::peer::{PeerApi, Trust};
use berth_node_runtime::simulated::SimulatedDriver;
use berth_node_runtime::tunnel;
use berth_protocol::assignment::{Link, Scope, TopologyAssignment, TopologyRef};
use berth_protocol::capability::Keyring;
use berth_protocol::delegation::{self, Grant, NodeOperation};
use berth_protocol::node_api::PeerCallBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Pair {
    api: PeerApi<SimulatedDriver>,
    /// Node 2's API, `http://host:port`, and its key.
    peer: String,
    peer_key: Vec<u8>,
    n1: NodeIdentity,
    token: Vec<u8>,
    /// Where node 1 listens for the link to `db`.
    linked: SocketAddr,
    _tunnels: Tunnels,
}

/// A service that answers "hello" at once, then, when its client stops writing, says
/// how many bytes it was sent.
async fn service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                socket
                    .write_all(b"hello")
                    .await
                    .expect("the service writes");
                let mut total = 0u64;
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = socket.write_all(&total.to_le_bytes()).await;
            });
        }
    });
    port
}

async fn pair(gateway: Ipv4Addr) -> Pair {
    let port = service().await;
    let root = biscuit_auth::KeyPair::new();
    let id = TopologyRef {
        tenant: "acme".into(),
        topology: "shop".into(),
    };
    let engine = Arc::new(SimulatedDriver::new(Scope::node("n2")));
    engine.add_running(&id, "db", 1);
    let trust = Arc::new(RwLock::new(Trust {
        keys: Keyring::new(1, root.public()),
        ..Trust::default()
    }));
    let api = PeerApi::new("n2", engine, trust);
    let n2 = NodeIdentity::generate("n2", "http://127.0.0.1:1").expect("identity");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer = format!("http://{}", listener.local_addr().expect("address"));
    let (served, grpc) = (api.clone(), api.clone());
    let incoming = berth_node_runtime::node_tls::incoming(
        listener,
        n2.tls().expect("tls").acceptor().expect("acceptor"),
        move |connection| {
            let served = served.clone();
            tokio::spawn(async move { served.serve_tunnel(connection).await });
        },
    );
    tokio::spawn(async move {
        berth_node_runtime::peer::server()
            .add_service(berth_protocol::node_api::node_peer_server::NodePeerServer::new(grpc))
            .serve_with_incoming(incoming)
            .await
    });

    let n1 = NodeIdentity::generate("n1", "http://127.0.0.1:1").expect("identity");
    let signer = Arc::new(n1.signer().expect("signer"));
    let grant = Grant {
        caller: "n1".into(),
        caller_key: signer.public_key(),
        target: "n2".into(),
        operation: NodeOperation::Tunnel,
        tenant: id.tenant.clone(),
        topology: id.topology.clone(),
        service: "db".into(),
        port,
        expires: SystemTime::now() + Duration::from_secs(3600),
    };
    let token = delegation::mint(&root, 1, &grant).expect("mint");
    let peer_key = n2.public_key().expect("key");
    let assignment = TopologyAssignment {
        id: id.clone(),
        revision: 1,
        services: Default::default(),
        networks: Default::default(),
        volumes: Default::default(),
        slots: Vec::new(),
        trace: None,
        allow: Default::default(),
        image_sources: Vec::new(),
        registry_credentials: Vec::new(),
        links: vec![Link {
            service: "db".into(),
            port,
            node: "n2".into(),
            peer: peer.clone(),
            peer_key: berth_protocol::assignment::hex_encode(&peer_key),
            token: token.to_base64().expect("encode"),
        }],
    };
    let mut tunnels = Tunnels::new(signer);
    let gateways = std::collections::HashMap::from([(id, vec![IpAddr::V4(gateway)])]);
    tunnels.apply(&[assignment], &gateways).await;
    Pair {
        api,
        peer,
        peer_key,
        n1,
        token: token.to_vec().expect("encode"),
        linked: SocketAddr::new(IpAddr::V4(gateway), port),
        _tunnels: tunnels,
    }
}

fn body(port: u16) -> PeerCallBody {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    let mut nonce = vec![1u8; 16];
    nonce[..8].copy_from_slice(&now.as_nanos().to_le_bytes()[..8]);
    PeerCallBody {
        target: "n2".into(),
        tenant: "acme".into(),
        topology: "shop".into(),
        service: "db".into(),
        port: u32::from(port),
        timestamp_ms: i64::try_from(now.as_millis()).expect("a timestamp"),
        nonce,
        digest: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cross_a_link_both_ways_and_each_side_may_stop_writing_first() {
    let pair = pair(Ipv4Addr::new(127, 0, 0, 21)).await;
    for _ in 0..3 {
        let mut socket = TcpStream::connect(pair.linked).await.unwrap();
        // Sent at once, so that it may travel with the tunnel's call.
        socket.write_all(b"first").await.unwrap();
        let mut hello = [0u8; 5];
        socket.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        let sent = vec![7u8; 3 * 1024 * 1024 + 17];
        socket.write_all(&sent).await.unwrap();
        // The client stops writing; the service still answers, then closes.
        socket.shutdown().await.unwrap();
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, (sent.len() as u64 + 5).to_le_bytes());
    }
    let allowed = pair.api.take_decisions();
    assert_eq!(allowed.len(), 3, "{allowed:?}");
    assert!(allowed.iter().all(|d| d.allowed), "{allowed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_another_nodes_tunnel_connection_is_refused_with_its_code() {
    let pair = pair(Ipv4Addr::new(127, 0, 0, 22)).await;
    let stranger = NodeIdentity::generate("stranger", "http://127.0.0.1:1").unwrap();
    let connection = stranger
        .tls()
        .unwrap()
        .dial_tunnel(&pair.peer, &pair.peer_key)
        .await
        .unwrap();
    let call = pair.n1.signer().unwrap().peer_call(
        "Tunnel",
        pair.token.clone(),
        &body(pair.linked.port()),
    );
    let Err(tunnel::NotOpened::Refused(status)) = tunnel::open(connection, &call, &[]).await else {
        panic!("the call went through");
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("another key than its connection's"),
        "{status:?}"
    );
    let decisions = pair.api.take_decisions();
    assert!(
        matches!(decisions.as_slice(), [d] if !d.allowed && d.caller.is_empty()),
        "{decisions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_any_call_is_dropped_unread() {
    let pair = pair(Ipv4Addr::new(127, 0, 0, 23)).await;
    let mut connection = pair
        .n1
        .tls()
        .unwrap()
        .dial_tunnel(&pair.peer, &pair.peer_key)
        .await
        .unwrap();
    connection.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    connection.flush().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), connection.read_to_end(&mut rest))
        .await
        .expect("the node closes the connection");
    assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
    assert!(pair.api.take_decisions().is_empty());
}
