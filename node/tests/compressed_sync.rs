//! Compressed sync between real nodes over QUIC on 127.0.0.1, each on its own redb file: the
//! status counts the frames' bytes both before compression and as they crossed the stream, and
//! a peer that sends a zstd bomb loses its connection while the node goes on syncing with the
//! others. A node with compression off (`NodeConfig::compression`) syncs with one that has it on,
//! with raw frames both ways.

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

/// 3,000 keys of compressible text, named after `prefix`, written on `node`.
fn write_text(node: &Node, prefix: &str) {
    let mut batch = WriteBatch::new();
    for i in 0..3_000 {
        batch.put(
            format!("{prefix}:{i:06}"),
            format!("value {i} of the compressed sync test, with some text"),
            PutOptions::default(),
        );
    }
    node.write_batch(batch).unwrap();
}

/// `b` bootstraps from `a`, then `a` receives `b`'s writes, each node allowing compression as
/// given; returns both statuses.
async fn sync_both_ways(a_compresses: bool, b_compresses: bool) -> (lethe_node::Status, lethe_node::Status) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b"].map(|n| DataDir::new(tmp.path().join(n)));
    dirs[0].init().unwrap();
    let b_id = dirs[1].init().unwrap().id();
    let a = node(&dirs[0], |c| c.with_trust(b_id).with_compression(a_compresses)).await;
    write_text(&a, "a");
    let b =
        node(&dirs[1], |c| c.with_peer(PeerAddr { id: a.id(), addr: a.local_addr() }).with_compression(b_compresses))
            .await;
    let target = a.status().unwrap().digest;
    wait_until("b holds a's keys", || b.status().unwrap().digest == target).await;
    // Then writes on b reach a: long frames flow the other way too.
    write_text(&b, "b");
    let target = b.status().unwrap().digest;
    wait_until("a holds b's keys", || a.status().unwrap().digest == target).await;
    let statuses = (a.status().unwrap(), b.status().unwrap());
    b.shutdown().await;
    a.shutdown().await;
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_compression_syncs_with_raw_frames_both_ways() {
    let (a, b) = sync_both_ways(true, true).await;
    for s in [&a, &b] {
        assert!(s.bytes_received > 3_000 * 60 && s.bytes_sent > 3_000 * 60, "both on: {s:#?}");
        assert!(s.wire_bytes_received < s.bytes_received / 2, "both on: compressed in {s:#?}");
        assert!(s.wire_bytes_sent < s.bytes_sent / 2, "both on: compressed out {s:#?}");
    }
    for (a_on, b_on) in [(false, true), (true, false)] {
        let (a, b) = sync_both_ways(a_on, b_on).await;
        for s in [&a, &b] {
            // Raw frames: each costs its CBOR and a 4-byte prefix on the wire, never less.
            assert!(s.bytes_received > 3_000 * 60 && s.bytes_sent > 3_000 * 60, "a {a_on}, b {b_on}: {s:#?}");
            assert!(s.wire_bytes_received > s.bytes_received, "a {a_on}, b {b_on}: raw in {s:#?}");
            assert!(s.wire_bytes_sent > s.bytes_sent, "a {a_on}, b {b_on}: raw out {s:#?}");
        }
    }
}
