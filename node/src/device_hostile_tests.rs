//! A member's device side under a hostile review (review 13): what only the crate's insides can
//! set up (the engine's device records changed with no trust refresh, as a Records merge in a
//! member session that fails does).

use crate::{DataDir, Node, NodeConfig, PeerAddr};
use lethe_engine::PutOptions;
use std::time::{Duration, Instant};

fn listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn quick(c: NodeConfig) -> NodeConfig {
    NodeConfig {
        gc_interval: Duration::from_millis(100),
        anti_entropy_interval: Duration::from_secs(3600),
        reconnect_max: Duration::from_millis(300),
        ..c
    }
}

fn addr(n: &Node) -> PeerAddr {
    PeerAddr { id: n.id(), addr: n.local_addr() }
}

/// The engine has the device revoked (a Records merge from another member in a session that then
/// failed, so no trust refresh ran), but the trust list still holds its key: that key, run as a
/// member node, must be refused, never served as a member peer, and its writes never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_but_still_trusted_device_is_not_served_as_a_member() {
    let tmp = tempfile::tempdir().unwrap();
    let md = DataDir::new(tmp.path().join("server"));
    md.init().unwrap();
    let dd = DataDir::new(tmp.path().join("dev"));
    let dev_id = dd.init().unwrap().id();
    let server = quick(NodeConfig::new(md.clone(), listen())).start().await.unwrap();
    server.enrol_device(dev_id, None).unwrap();
    // What a Records merge from another member does to the engine (no trust refresh).
    server.inner.with_replica(|r| r.remove_device(dev_id.replica_id())).unwrap();
    assert!(server.inner.endpoint.trust().contains(&dev_id), "still trusted");
    // The stolen key, run as a member with the server as its peer.
    let hostile = quick(NodeConfig::new(dd.clone(), listen()).with_peer(addr(&server))).start().await.unwrap();
    hostile.put("evil", "x", PutOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert!(
            server.get(b"evil").unwrap().is_none(),
            "a revoked device's write was applied by the member through a member session"
        );
        assert!(
            !server.inner.with_replica(|r| r.membership().is_enrolled(dev_id.replica_id())),
            "a revoked device's key became a member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
