//! Two nodes that each hold much the other lacks sync both ways in one session: each side's
//! flow is more than the QUIC windows hold, so a side that sent its whole flow before reading
//! would wait for the other to read, as the other waits for it. Real QUIC on 127.0.0.1, redb.

use lethe_engine::{KeyRange, PutOptions};
use lethe_node::{DataDir, Node, NodeConfig, PeerAddr};
use std::time::{Duration, Instant};

const KEYS: usize = 3_000;
const VALUE_BYTES: usize = 4_096;

fn write_many(node: &Node, prefix: &str) {
    for chunk in 0..KEYS / 100 {
        let mut batch = lethe_engine::WriteBatch::new();
        for i in 0..100 {
            let n = chunk * 100 + i;
            batch.put(format!("{prefix}{n:05}"), noise(n as u64), PutOptions::default());
        }
        node.write_batch(batch).unwrap();
    }
}

/// Bytes that do not compress (the windows count compressed bytes).
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn count(node: &Node) -> usize {
    node.scan(&KeyRange::all(), usize::MAX).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_each_far_ahead_of_the_other_converge_in_both_directions() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, db) = (DataDir::new(tmp.path().join("a")), DataDir::new(tmp.path().join("b")));
    let (ia, ib) = (da.init().unwrap().id(), db.init().unwrap().id());
    let quick = |c: NodeConfig| NodeConfig { session_stall_timeout: Duration::from_secs(5), ..c };
    let a = quick(NodeConfig::new(da, "127.0.0.1:0".parse().unwrap()).with_trust(ib)).start().await.unwrap();
    write_many(&a, "a");
    // b writes as much while it knows no peer, then is restarted dialing a.
    let b = quick(NodeConfig::new(db.clone(), "127.0.0.1:0".parse().unwrap()).with_trust(ia)).start().await.unwrap();
    write_many(&b, "b");
    b.shutdown().await;
    drop(b);
    // Its tasks let go of the store shortly after the shutdown.
    let mut reopened = None;
    for _ in 0..100 {
        let config = quick(NodeConfig::new(db.clone(), "127.0.0.1:0".parse().unwrap()))
            .with_peer(PeerAddr { id: ia, addr: a.local_addr() });
        match config.start().await {
            Ok(node) => {
                reopened = Some(node);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let b = reopened.expect("b's store reopens after its shutdown");
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&a) < 2 * KEYS || count(&b) < 2 * KEYS {
        assert!(
            Instant::now() < deadline,
            "no convergence in 120 s: a holds {}, b {} of {} (sessions failed: a {}, b {})",
            count(&a),
            count(&b),
            2 * KEYS,
            a.status().unwrap().sessions_failed,
            b.status().unwrap().sessions_failed
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.shutdown().await;
    a.shutdown().await;
}
