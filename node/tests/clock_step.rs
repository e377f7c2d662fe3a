//! A node's own clock stepping ahead and back (DESIGN.md §10), with an injected clock: two real
//! nodes over QUIC on 127.0.0.1, each on its own redb file. One put while the clock is an hour
//! ahead must not cut the node off: its later writes reach the peer, and a fresh node
//! bootstrapping only from it gets every key.

use lethe_engine::{KeyRange, PutOptions, SystemClock, WallClock};
use lethe_node::{DataDir, Node, NodeConfig, NodeError, PeerAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

/// The system clock shifted by an offset the test sets.
#[derive(Default)]
struct SteppedClock(AtomicI64);

impl WallClock for SteppedClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.0.load(Ordering::SeqCst))
    }
}

async fn keys(node: &Node) -> Vec<String> {
    node.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

async fn wait_for_keys(node: &Node, want: &[&str]) {
    for _ in 0..300 {
        if keys(node).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} holds {:?}, want {want:?}", node.id(), keys(node).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_during_a_clock_step_ahead_does_not_cut_the_node_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b", "c"].map(|n| DataDir::new(tmp.path().join(n)));
    let ids: Vec<_> = dirs.iter().map(|d| d.init().unwrap().id()).collect();
    let clock = Arc::new(SteppedClock::default());
    let quick = |c: NodeConfig| NodeConfig {
        reconnect_max: Duration::from_millis(300),
        anti_entropy_interval: Duration::from_millis(500),
        ..c.with_gc_interval(Duration::from_millis(200))
    };
    let a = quick(NodeConfig::new(dirs[0].clone(), "127.0.0.1:0".parse().unwrap()).with_trust(ids[1]))
        .start()
        .await
        .unwrap();
    let a_addr = PeerAddr { id: a.id(), addr: a.local_addr() };
    let b = quick(NodeConfig::new(dirs[1].clone(), "127.0.0.1:0".parse().unwrap()))
        .with_peer(a_addr)
        .with_trust(ids[2])
        .with_clock(clock.clone())
        .start()
        .await
        .unwrap();
    b.put("before", "v", PutOptions::default()).await.unwrap();
    wait_for_keys(&a, &["before"]).await;

    // b's clock steps an hour ahead for one put, then is set right.
    clock.0.store(HOUR_MS, Ordering::SeqCst);
    let during = b.put("during", "v", PutOptions::default()).await.unwrap();
    clock.0.store(0, Ordering::SeqCst);
    let mut after = None;
    for _ in 0..100 {
        match b.put("after", "v", PutOptions::default()).await {
            Ok(receipt) => {
                after = Some(receipt);
                break;
            }
            // Refused only while the node still believes its clock ahead: say so clearly.
            Err(NodeError::Engine(e @ lethe_engine::Error::ClockAheadOfPeers { .. })) => {
                assert!(e.to_string().contains("clock"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("put after the step back failed: {e}"),
        }
    }
    assert!(after.is_some(), "b never took a write again after its clock was set right");
    wait_for_keys(&a, &["after", "before", "during"]).await;
    let held = a.get(b"during").unwrap().unwrap();
    assert!(held.stamp < during.stamp, "a holds the re-stamped write, not the future one");
    assert!(b.status().unwrap().reissued_writes >= 1);

    // A fresh node bootstrapping only from b gets every key.
    let b_addr = PeerAddr { id: b.id(), addr: b.local_addr() };
    let c = quick(NodeConfig::new(dirs[2].clone(), "127.0.0.1:0".parse().unwrap()))
        .with_peer(b_addr)
        .start()
        .await
        .unwrap();
    wait_for_keys(&c, &["after", "before", "during"]).await;
    for n in [&c, &b, &a] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ahead_of_its_peer_refuses_local_writes_with_a_clear_error_and_says_so_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b"].map(|n| DataDir::new(tmp.path().join(n)));
    let ids: Vec<_> = dirs.iter().map(|d| d.init().unwrap().id()).collect();
    let clock = Arc::new(SteppedClock(AtomicI64::new(HOUR_MS)));
    let a = NodeConfig::new(dirs[0].clone(), "127.0.0.1:0".parse().unwrap()).with_trust(ids[1]).start().await.unwrap();
    let a_addr = PeerAddr { id: a.id(), addr: a.local_addr() };
    let b = NodeConfig::new(dirs[1].clone(), "127.0.0.1:0".parse().unwrap())
        .with_peer(a_addr)
        .with_clock(clock.clone())
        .start()
        .await
        .unwrap();
    // Once the handshake has shown b that a's clock is an hour behind, b refuses writes.
    let mut refused = None;
    for _ in 0..100 {
        match b.put("k", "v", PutOptions::default()).await {
            Err(NodeError::Engine(e @ lethe_engine::Error::ClockAheadOfPeers { .. })) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    let refused = refused.expect("b never noticed that its clock was an hour ahead");
    assert!(refused.to_string().contains("check the system clock"), "{refused}");
    let ahead = b.status().unwrap().clock_ahead_ms.expect("status says the clock is ahead");
    assert!(ahead > 3_000_000, "{ahead}");
    for n in [&b, &a] {
        n.shutdown().await;
    }
}
