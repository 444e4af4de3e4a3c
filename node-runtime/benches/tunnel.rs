//! What a cross-node link costs: the same TCP server reached directly over loopback
//! and through a link (node 1's listener, a token-guarded tunnel over TLS to node 2's node
//! API port, which authorizes the call and connects to the service), in the same run.
//!
//! Both nodes are the real node-runtime code (`Tunnels` and `PeerApi`) speaking over
//! real TLS on loopback; only the container engine is simulated, so that the service is
//! a server in this process rather than a container.
//!
//! Two more paths in the same run say what the link costs beyond its hops: the
//! service behind two plain TCP relays, and behind two relays with TLS between them
//! (the same keys and TLS as the link, the same copy loop), which is the floor for
//! any encrypted link between two nodes.
//!
//! Run: `cargo bench -p berth-node-runtime --bench tunnel`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use berth_node_runtime::agent::NodeIdentity;
use berth_node_runtime::links::Tunnels;
use berth_node_runtime::peer::{PeerApi, Trust};
use berth_node_runtime::simulated::SimulatedDriver;
use berth_node_runtime::tunnel;
use berth_protocol::assignment::{Link, Scope, TopologyAssignment, TopologyRef};
use berth_protocol::capability::Keyring;
use berth_protocol::delegation::{self, Grant, NodeOperation};
use berth_protocol::node_api::node_peer_server::NodePeerServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes sent per throughput run.
const VOLUME: usize = 256 * 1024 * 1024;
/// Connections per latency run.
const CONNECTS: usize = 300;
const ROUNDS: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The service: echoes one byte on connect, then counts what it is sent and says
    // how much when the client stops writing.
    let service = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = service.local_addr().expect("address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = service.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if total == 0 && n == 1 && buffer[0] == b'?' {
                                let _ = socket.write_all(b"!").await;
                                continue;
                            }
                            total += n as u64;
                        }
                    }
                }
                let _ = socket.write_all(&total.to_le_bytes()).await;
            });
        }
    });

    // Node 2: its node API, trusting the root key, with `db` running on its engine.
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
    let acceptor = n2.tls().expect("tls").acceptor().expect("acceptor");
    let peer_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer = format!("http://{}", peer_listener.local_addr().expect("address"));
    {
        let (served, tunnels) = (api.clone(), api.clone());
        let incoming =
            berth_node_runtime::node_tls::incoming(peer_listener, acceptor, move |connection| {
                let tunnels = tunnels.clone();
                tokio::spawn(async move { tunnels.serve_tunnel(connection).await });
            });
        tokio::spawn(async move {
            berth_node_runtime::peer::server()
                .add_service(NodePeerServer::new(served))
                .serve_with_incoming(incoming)
                .await
        });
        // What the agent does with decisions: takes them away every second.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(api.take_decisions());
            }
        });
    }

    // Node 1: its link to db, listening on another loopback address at db's port.
    let identity = NodeIdentity::generate("n1", "http://127.0.0.1:1").expect("identity");
    let signer = Arc::new(identity.signer().expect("signer"));
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
    let token = delegation::mint(&root, 1, &grant)
        .expect("mint")
        .to_base64()
        .expect("encode");
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
            peer,
            peer_key: berth_protocol::assignment::hex_encode(&n2.public_key().expect("key")),
            token,
        }],
    };
    let mut tunnels = Tunnels::new(signer);
    let gateway = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let gateways = std::collections::HashMap::from([(id.clone(), vec![gateway])]);
    tunnels.apply(&[assignment], &gateways).await;
    let direct = SocketAddr::from(([127, 0, 0, 1], port));
    let linked = SocketAddr::new(gateway, port);
    // The same hops without Berth: a relay in front of a relay in front of the
    // service, over plain TCP and over TLS (the nodes' keys, resumed sessions, one
    // connection per client connection), carrying bytes with the same copy loop.
    let plain = relays(port, None).await;
    let sealed = relays(port, Some((&identity, &n2))).await;
    let paths = [
        ("direct TCP", direct),
        ("two TCP relays", plain),
        ("two relays, TLS between", sealed),
        ("link", linked),
    ];

    // Warm up every path (the first tunnel verifies the token; later ones hit the
    // node's verified-token cache, as in steady state).
    for (_, address) in paths {
        connect_and_ping(address).await;
        send(address, 1024 * 1024).await;
    }

    let mut latencies = Vec::new();
    for (_, address) in paths {
        let mut medians = Vec::new();
        for _ in 0..ROUNDS {
            let mut times = Vec::with_capacity(CONNECTS);
            for _ in 0..CONNECTS {
                let started = Instant::now();
                connect_and_ping(address).await;
                times.push(started.elapsed());
            }
            times.sort();
            medians.push(times[CONNECTS / 2]);
        }
        medians.sort();
        latencies.push(micros(medians[ROUNDS / 2]));
    }
    let mut throughput = Vec::new();
    for (_, address) in paths {
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            send(address, VOLUME).await;
            rates.push(VOLUME as f64 / started.elapsed().as_secs_f64() / 1e6);
        }
        rates.sort_by(f64::total_cmp);
        throughput.push(rates[ROUNDS / 2]);
    }

    println!(
        "a TCP service over loopback, median of {ROUNDS} rounds ({CONNECTS} connections each; {} MiB one way):",
        VOLUME / (1024 * 1024)
    );
    println!(
        "  {:<26} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "path", "connect+1st", "added", "× direct", "throughput", "× direct"
    );
    for (i, (label, _)) in paths.iter().enumerate() {
        println!(
            "  {:<26} {:>9.1} µs {:>+7.1} µs {:>9.2}× {:>7.0} MB/s {:>9.2}×",
            label,
            latencies[i],
            latencies[i] - latencies[0],
            latencies[i] / latencies[0],
            throughput[i],
            throughput[i] / throughput[0]
        );
    }
    println!(
        "  link against two relays with TLS between: throughput {:.2}×, connect+first byte {:+.1} µs",
        throughput[3] / throughput[2],
        latencies[3] - latencies[2]
    );
}

/// Two relays in front of the service on `port`, the second connecting to it: over
/// plain TCP, or with TLS between them made with `keys` (the caller's, the callee's).
/// Where the first relay listens.
async fn relays(port: u16, keys: Option<(&NodeIdentity, &NodeIdentity)>) -> SocketAddr {
    let service = SocketAddr::from(([127, 0, 0, 1], port));
    let second = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let second_address = second.local_addr().expect("address");
    let first = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let first_address = first.local_addr().expect("address");
    match keys {
        None => {
            tokio::spawn(relay(second, move || async move {
                TcpStream::connect(service).await
            }));
            tokio::spawn(relay(first, move || async move {
                TcpStream::connect(second_address).await
            }));
        }
        Some((caller, callee)) => {
            let acceptor = callee.tls().expect("tls").acceptor().expect("acceptor");
            let incoming =
                berth_node_runtime::node_tls::incoming(second, acceptor, move |mut sealed| {
                    tokio::spawn(async move {
                        let mut socket = TcpStream::connect(service).await.expect("connect");
                        let _ = socket.set_nodelay(true);
                        let _ = tunnel::carry(&mut sealed, &mut socket).await;
                    });
                });
            tokio::spawn(async move {
                // Nothing here speaks gRPC.
                let mut incoming = Box::pin(incoming);
                while tokio_stream::StreamExt::next(&mut incoming).await.is_some() {}
            });
            let tls = caller.tls().expect("tls");
            let (peer, key) = (
                format!("http://{second_address}"),
                callee.public_key().expect("key"),
            );
            tokio::spawn(relay(first, move || {
                let (tls, peer, key) = (tls.clone(), peer.clone(), key.clone());
                async move { tls.dial_tunnel(&peer, &key).await }
            }));
        }
    }
    first_address
}

/// Accepts on `listener` and carries each connection to what `connect` makes.
async fn relay<C, F, S>(listener: TcpListener, connect: C)
where
    C: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    while let Ok((mut socket, _)) = listener.accept().await {
        let _ = socket.set_nodelay(true);
        let onward = connect();
        tokio::spawn(async move {
            let Ok(mut onward) = onward.await else {
                return;
            };
            let _ = tunnel::carry(&mut socket, &mut onward).await;
        });
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Connects, sends one byte and waits for the service's answer: what a client waits
/// for before its first request can be served.
async fn connect_and_ping(address: SocketAddr) {
    let mut socket = TcpStream::connect(address).await.expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    socket.write_all(b"?").await.expect("write");
    let mut answer = [0u8; 1];
    socket
        .read_exact(&mut answer)
        .await
        .expect("the service answers");
    assert_eq!(&answer, b"!");
}

/// Sends `bytes` and waits for the service to confirm it received every one.
async fn send(address: SocketAddr, bytes: usize) {
    let mut socket = TcpStream::connect(address).await.expect("connect");
    let chunk = vec![7u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        socket.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    socket.shutdown().await.expect("shutdown");
    let mut total = [0u8; 8];
    socket.read_exact(&mut total).await.expect("the count");
    assert_eq!(u64::from_le_bytes(total), bytes as u64, "bytes lost");
}
