//! Membership as the node sets it up: real `lethe serve` processes on 127.0.0.1. The engine
//! counts only enrolled replicas as members (docs/design.md §2.4); the node enrols its `--peer` and
//! `--trust` ids at start.

use lethe_tests::cluster::{NodeProc, wait_until};
use std::time::Duration;

#[test]
fn a_node_enrols_its_peers_and_trusted_nodes_and_they_become_members() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&["--gc-interval".to_string(), "200ms".to_string(), "--trust".to_string(), b.id.to_string()]);
    b.start(&["--gc-interval".to_string(), "200ms".to_string(), "--peer".to_string(), a.peer_arg()]);
    assert_eq!(a.cli(&["put", "k", "v"]).0, 0);
    let counts = |node: &NodeProc, other: &NodeProc| {
        node.status().members.iter().any(|m| m.node_id.as_deref() == Some(other.id.to_string().as_str()))
    };
    wait_until("each node counts the other as a member", Duration::from_secs(60), || {
        let (ab, ba) = (counts(&a, &b), counts(&b, &a));
        (ab && ba, (ab, ba))
    });
    a.stop();
    b.stop();
}
