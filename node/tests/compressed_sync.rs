//! Compressed sync between real nodes over QUIC on 127.0.0.1, each on its own redb file: the
//! status counts the frames' bytes both before compression and as they crossed the stream, and
//! a peer that sends a zstd bomb loses its connection while the node goes on syncing with the
//! others.

use lethe_engine::{PutOptions, WriteBatch};
use lethe_node::{DataDir, Node, NodeConfig, PeerAddr};
use lethe_transport::endpoint::{ConnectionError, VarInt};
use lethe_transport::frame::COMPRESSED_FLAG;
use lethe_transport::{CloseCode, Endpoint, Identity, TrustList};
use std::time::Duration;

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

fn quick(c: NodeConfig) -> NodeConfig {
    NodeConfig { reconnect_max: Duration::from_millis(300), ..c }
}

async fn node(dir: &DataDir, f: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    f(quick(NodeConfig::new(dir.clone(), "127.0.0.1:0".parse().unwrap()))).start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_crosses_compressed_and_a_bomb_closes_only_its_senders_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b"].map(|n| DataDir::new(tmp.path().join(n)));
    dirs[0].init().unwrap();
    let b_id = dirs[1].init().unwrap().id();
    let hostile = Identity::generate().unwrap();
    let a = node(&dirs[0], |c| c.with_trust(b_id).with_trust(hostile.id())).await;
    // Values that compress (text with a counter), as most application data does.
    let mut batch = WriteBatch::new();
    for i in 0..5_000 {
        batch.put(
            format!("key:{i:06}"),
            format!("value {i} of the compressed sync test, with some text"),
            PutOptions::default(),
        );
    }
    a.write_batch(batch).unwrap();
    let b = node(&dirs[1], |c| c.with_peer(PeerAddr { id: a.id(), addr: a.local_addr() })).await;
    let target = a.status().unwrap().digest;
    wait_until("b holds a's keys", || b.status().unwrap().digest == target).await;

    let s = b.status().unwrap();
    assert!(s.bytes_received > 5_000 * 60, "{s:#?}");
    assert!(s.wire_bytes_received > 0 && s.wire_bytes_received < s.bytes_received / 2, "compressed: {s:#?}");
    assert!(s.wire_bytes_sent > 0, "the handshake and the Done: {s:#?}");

    // A trusted peer that sends 100 MB of zeros as one compressed frame of a few KB.
    let client = Endpoint::bind("127.0.0.1:0".parse().unwrap(), hostile, TrustList::new([a.id()])).unwrap();
    let conn = client.connect(a.local_addr(), a.id()).await.unwrap();
    let bomb = zstd::bulk::compress(&vec![0u8; 100_000_000], 3).unwrap();
    let (mut send, _recv) = conn.conn.open_bi().await.unwrap();
    send.write_all(&(COMPRESSED_FLAG | u32::try_from(bomb.len()).unwrap()).to_be_bytes()).await.unwrap();
    let _ = send.write_all(&bomb).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.conn.closed()).await.unwrap();
    assert!(
        matches!(&closed, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(CloseCode::TooLarge as u32)),
        "{closed}"
    );
    assert!(closed.to_string().contains("declares 100000000 bytes"), "{closed}");

    // The node still serves b: a new write reaches it.
    a.put("after the bomb", "still syncing", PutOptions::default()).await.unwrap();
    wait_until("b gets the write made after the bomb", || b.get(b"after the bomb").unwrap().is_some()).await;
    b.shutdown().await;
    a.shutdown().await;
}
