//! A trusted peer that opens a session and then neither answers nor reads must not hold the
//! session (and the store snapshot it reads) for ever: real QUIC on 127.0.0.1, a raw peer built
//! from the transport, a real node on redb.

use lethe_node::{DataDir, NodeConfig};
use lethe_transport::{Endpoint, Identity, TrustList};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_peer_stops_answering_is_ended_after_the_stall_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::new(tmp.path().join("node"));
    data.init().unwrap();
    let stalling = Identity::generate().unwrap();
    let config = NodeConfig {
        session_stall_timeout: Duration::from_secs(1),
        ..NodeConfig::new(data, "127.0.0.1:0".parse().unwrap()).with_trust(stalling.id())
    };
    let node = config.start().await.unwrap();
    let raw = Endpoint::bind("127.0.0.1:0".parse().unwrap(), stalling, TrustList::new([node.id()])).unwrap();
    let conn = raw.connect(node.local_addr(), node.id()).await.unwrap();
    // A session stream (its kind byte), then silence: no handshake, nothing read.
    let (mut w, _r) = conn.open().await.unwrap();
    w.send(&[0]).await.unwrap();
    w.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.status().unwrap().sessions_failed == 0 {
        assert!(Instant::now() < deadline, "the node still waits on a peer that stopped answering 30 s ago");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
}
