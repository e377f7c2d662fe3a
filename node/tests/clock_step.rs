//! A node's own clock stepping ahead and back (docs/design.md §10), with an injected clock: two real
//! nodes over QUIC on 127.0.0.1, each on its own redb file. One put while the clock is an hour
//! ahead must not cut the node off: it refuses local writes with a clear error while its clock is
//! ahead of its peers', everything else still syncs both ways (the future write waits), and a
//! fresh node bootstrapping only from it gets every key it can accept.

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
    // Every node reads the same shifted time (so the test can let an hour pass); b reads an
    // extra step of its own. Neither clock tells a step from time passing (their monotonic
    // reading is their wall time, as for a clock resumed from a suspend), so b stamps a write
    // an hour ahead before it can know.
    let everyone = Arc::new(SteppedClock::default());
    let b_clock = Arc::new(PlusClock(everyone.clone(), AtomicI64::new(0)));
    let quick = |c: NodeConfig| NodeConfig {
        reconnect_max: Duration::from_millis(300),
        anti_entropy_interval: Duration::from_millis(500),
        ..c.with_gc_interval(Duration::from_millis(200))
    };
    let a = quick(NodeConfig::new(dirs[0].clone(), "127.0.0.1:0".parse().unwrap()).with_trust(ids[1]))
        .with_clock(everyone.clone())
        .start()
        .await
        .unwrap();
    let a_addr = PeerAddr { id: a.id(), addr: a.local_addr() };
    let b = quick(NodeConfig::new(dirs[1].clone(), "127.0.0.1:0".parse().unwrap()))
        .with_peer(a_addr)
        .with_trust(ids[2])
        .with_clock(b_clock.clone())
        .start()
        .await
        .unwrap();
    b.put("before", "v", PutOptions::default()).await.unwrap();
    wait_for_keys(&a, &["before"]).await;

    // b's clock steps an hour ahead for one put, then is set right.
    b_clock.1.store(HOUR_MS, Ordering::SeqCst);
    b.put("during", "v", PutOptions::default()).await.unwrap();
    b_clock.1.store(0, Ordering::SeqCst);
    // Its HLC is an hour ahead of its peers now: it refuses writes, and says so.
    match b.put("after", "v", PutOptions::default()).await {
        Err(NodeError::Engine(e @ lethe_engine::Error::ClockAheadOfPeers { .. })) => {
            assert!(e.to_string().contains("check the system clock"), "{e}");
        }
        other => panic!("b took a write stamped an hour ahead of its peer: {other:?}"),
    }
    assert!(b.status().unwrap().clock_ahead_ms.is_some());
    // It is not cut off: a's writes reach it, and a fresh node bootstrapping only from b gets
    // everything but the write its clock cannot take yet.
    a.put("from-a", "v", PutOptions::default()).await.unwrap();
    wait_for_keys(&b, &["before", "during", "from-a"]).await;
    let b_addr = PeerAddr { id: b.id(), addr: b.local_addr() };
    let c = quick(NodeConfig::new(dirs[2].clone(), "127.0.0.1:0".parse().unwrap()))
        .with_peer(b_addr)
        .with_clock(everyone.clone())
        .start()
        .await
        .unwrap();
    wait_for_keys(&c, &["before", "from-a"]).await;

    // An hour later for everyone: the held write goes, and b writes again.
    everyone.0.store(HOUR_MS + 2_000, Ordering::SeqCst);
    let mut wrote = false;
    for _ in 0..100 {
        if b.put("after", "v", PutOptions::default()).await.is_ok() {
            wrote = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(wrote, "b never took a write again once the clocks passed its HLC");
    for n in [&a, &c] {
        wait_for_keys(n, &["after", "before", "during", "from-a"]).await;
    }
    for n in [&c, &b, &a] {
        n.shutdown().await;
    }
}

/// The system clock with a step the test sets, and the system's monotonic clock: a step is seen
/// as one.
#[derive(Default)]
struct StepClock(AtomicI64);

impl WallClock for StepClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms().saturating_add_signed(self.0.load(Ordering::SeqCst))
    }

    fn monotonic_ms(&self) -> u64 {
        SystemClock.monotonic_ms()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_ahead_is_refused_at_the_next_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b"].map(|n| DataDir::new(tmp.path().join(n)));
    let ids: Vec<_> = dirs.iter().map(|d| d.init().unwrap().id()).collect();
    let a = NodeConfig::new(dirs[0].clone(), "127.0.0.1:0".parse().unwrap()).with_trust(ids[1]).start().await.unwrap();
    let b_clock = Arc::new(StepClock::default());
    let b = NodeConfig::new(dirs[1].clone(), "127.0.0.1:0".parse().unwrap())
        .with_peer(PeerAddr { id: a.id(), addr: a.local_addr() })
        .with_clock(b_clock.clone())
        .start()
        .await
        .unwrap();
    b.put("before", "v", PutOptions::default()).await.unwrap();
    wait_for_keys(&a, &["before"]).await;
    // b's wall clock steps an hour ahead: its first write after the step is refused, not
    // stamped an hour in its peer's future (no new handshake is needed to see it).
    b_clock.0.store(HOUR_MS, Ordering::SeqCst);
    match b.put("during", "v", PutOptions::default()).await {
        Err(NodeError::Engine(lethe_engine::Error::ClockAheadOfPeers { .. })) => {}
        other => panic!("b took a write stamped an hour ahead of its peer: {other:?}"),
    }
    b_clock.0.store(0, Ordering::SeqCst);
    b.put("after", "v", PutOptions::default()).await.unwrap();
    wait_for_keys(&a, &["after", "before"]).await;
    assert_eq!(keys(&b).await, ["after", "before"]);
    b.shutdown().await;
    a.shutdown().await;
}

/// Another clock plus an offset of its own.
struct PlusClock(Arc<SteppedClock>, AtomicI64);

impl WallClock for PlusClock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms().saturating_add_signed(self.1.load(Ordering::SeqCst))
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
