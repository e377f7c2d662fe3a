//! What the node's integration tests share: data directories, a quick config, addresses and
//! waiting on a condition. Each test crate uses part of it.
#![allow(dead_code)]

use lethe_node::{DataDir, Node, NodeConfig, PeerAddr};
use lethe_transport::NodeId;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long [`until`] waits: far longer than any condition takes on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A free port on 127.0.0.1.
pub fn listen() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A new data directory `name` under `root`, initialised, and its node id.
pub fn dir(root: &Path, name: &str) -> (DataDir, NodeId) {
    let d = DataDir::new(root.join(name));
    let id = d.init().unwrap().id();
    (d, id)
}

/// `c` with a fast GC, no anti-entropy within a test and quick reconnects.
pub fn quick(c: NodeConfig) -> NodeConfig {
    NodeConfig {
        gc_interval: Duration::from_millis(100),
        anti_entropy_interval: Duration::from_secs(3600),
        reconnect_max: Duration::from_millis(300),
        ..c
    }
}

/// Where `n` listens, as a peer address.
pub fn addr(n: &Node) -> PeerAddr {
    PeerAddr { id: n.id(), addr: n.local_addr() }
}

/// Waits until `cond` holds, or fails saying `what` after [`DEADLINE`].
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
