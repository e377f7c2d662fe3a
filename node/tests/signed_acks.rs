//! Acknowledgements signed with the nodes' Ed25519 keys (docs/design.md §9): in a line A–B–C
//! where A and C never connect, each counts the other as a member only through what the other
//! signed and B relayed. Real QUIC on 127.0.0.1, redb.

use lethe_node::{DataDir, Node, NodeConfig, PeerAddr};
use std::time::{Duration, Instant};

fn members(node: &Node) -> Vec<String> {
    node.status().unwrap().members.into_iter().map(|m| m.replica).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ends_of_a_line_count_each_other_through_signed_relays() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| DataDir::new(tmp.path().join(n))).collect();
    let ids: Vec<_> = dirs.iter().map(|d| d.init().unwrap().id()).collect();
    let quick = |c: NodeConfig| NodeConfig {
        anti_entropy_interval: Duration::from_millis(300),
        gc_interval: Duration::from_millis(200),
        ..c
    };
    let listen = "127.0.0.1:0".parse().unwrap();
    // b listens; a and c dial it; a and c trust (so enrol) each other but never connect.
    let b =
        quick(NodeConfig::new(dirs[1].clone(), listen).with_trust(ids[0]).with_trust(ids[2])).start().await.unwrap();
    let dial_b = PeerAddr { id: ids[1], addr: b.local_addr() };
    let a = quick(NodeConfig::new(dirs[0].clone(), listen).with_peer(dial_b).with_trust(ids[2])).start().await.unwrap();
    let c = quick(NodeConfig::new(dirs[2].clone(), listen).with_peer(dial_b).with_trust(ids[0])).start().await.unwrap();
    let (ra, rc) = (ids[0].replica_id().to_string(), ids[2].replica_id().to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (at_a, at_c) = (members(&a), members(&c));
        if at_a.contains(&rc) && at_c.contains(&ra) {
            break;
        }
        assert!(Instant::now() < deadline, "a's members {at_a:?}, c's {at_c:?}; a is {ra}, c is {rc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected: Vec<String> = a.status().unwrap().connected;
    assert_eq!(connected, vec![ids[1].to_string()], "a talks to b only");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
