//! Restore from an older copy of a data directory (docs/design.md §10), with real `lethe serve`
//! processes, real redb files and `cp -a`: every write acknowledged before the copy, after it
//! and after the restore ends up on every node, and the restored node does not reconnect in a
//! loop.

use lethe_tests::cluster::{NodeProc, wait_converged, wait_until};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

fn serve_args(peers: &[&NodeProc], trust: &[&NodeProc]) -> Vec<String> {
    let mut a: Vec<String> = ["--gc-interval", "200ms", "--anti-entropy-interval", "1s"].map(String::from).into();
    for p in peers {
        a.extend(["--peer".to_string(), p.peer_arg()]);
    }
    for t in trust {
        a.extend(["--trust".to_string(), t.id.to_string()]);
    }
    a
}

fn keys(node: &NodeProc) -> BTreeSet<String> {
    let (code, out, err) = node.cli(&["list", "--limit", "100000"]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| l.split('\t').next().unwrap_or_default().to_string()).collect()
}

/// Puts `key`, retrying while the node refuses writes because it is recovering from the
/// restore (the refusal must say so); returns how many times it was refused.
fn put_acknowledged(node: &NodeProc, key: &str) -> u32 {
    let mut refused = 0;
    loop {
        let (code, _, err) = node.cli(&["put", key, "v"]);
        if code == 0 {
            return refused;
        }
        assert!(err.contains("restored from an older copy"), "put {key} failed: {err}");
        refused += 1;
        assert!(refused < 200, "the restored node never took writes again:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_restored_from_a_copied_data_directory_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&serve_args(&[], &[&b]));
    b.start(&serve_args(&[&a], &[]));
    let mut written = BTreeSet::new();
    for i in 0..3 {
        put_acknowledged(&b, &format!("before-copy-{i}"));
        written.insert(format!("before-copy-{i}"));
    }
    wait_converged(&[&a, &b], Duration::from_secs(60));

    // A copy of b's data directory, taken while b is stopped, as a backup would be.
    b.stop();
    let copy = root.path().join("b-copy");
    let status = Command::new("cp").arg("-a").arg(&b.dir).arg(&copy).status().unwrap();
    assert!(status.success());
    b.start(&serve_args(&[&a], &[]));
    for i in 0..5 {
        put_acknowledged(&b, &format!("after-copy-{i}"));
        written.insert(format!("after-copy-{i}"));
    }
    wait_converged(&[&a, &b], Duration::from_secs(60));

    // The copy is restored over b's data directory: b's counter goes back 5 writes.
    b.stop();
    std::fs::remove_dir_all(&b.dir).unwrap();
    let status = Command::new("cp").arg("-a").arg(&copy).arg(&b.dir).status().unwrap();
    assert!(status.success());
    b.start(&serve_args(&[&a], &[]));
    for i in 0..8 {
        put_acknowledged(&b, &format!("after-restore-{i}"));
        written.insert(format!("after-restore-{i}"));
    }

    wait_until("every write on both nodes", Duration::from_secs(60), || {
        let (ka, kb) = (keys(&a), keys(&b));
        (ka == written && kb == written, (ka.len(), kb.len(), written.len()))
    });
    wait_converged(&[&a, &b], Duration::from_secs(60));
    // The restore was noticed and handled, not fought by reconnecting.
    let log = b.log_text();
    assert!(log.contains("restored from an older copy"), "b's log says nothing of the restore:\n{log}");
    let connects = log.matches("connected to").count();
    assert!(connects < 20, "b connected {connects} times:\n{log}");
}
