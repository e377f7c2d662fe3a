//! A disk that fills up (docs/design.md §10): a real `lethe serve` whose data directory is a
//! 3 MB tmpfs. No write is acknowledged without being durable, the node says in `status` that its
//! store failed and why, the peer that sends it data is not blamed, and once the filesystem grows
//! the node writes again without a restart.
//!
//! Needs to mount a tmpfs (root, or CAP_SYS_ADMIN); where that is not permitted the test says so
//! and skips. `node/tests/store_failure.rs` covers the same recovery with an injected failing
//! store, without mounting anything.

use lethe_tests::cluster::{NodeProc, Owner, wait_converged, wait_until};
use lethe_tests::tmpfs::Tmpfs;
use std::collections::BTreeSet;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);
/// The filesystem the node's data directory starts on: a few dozen 64 KiB values fill it.
const TMPFS_SIZE: &str = "size=3m";
/// What it grows to.
const VALUE_BYTES: usize = 64 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn serve_args(peer: Option<&NodeProc>, trust: Option<&NodeProc>) -> Vec<String> {
    let mut a = vec!["--gc-interval".to_string(), "200ms".to_string()];
    if let Some(p) = peer {
        a.extend(["--peer".to_string(), p.peer_arg()]);
    }
    if let Some(t) = trust {
        a.extend(["--trust".to_string(), t.id.to_string()]);
    }
    a
}

fn list(node: &NodeProc, prefix: &str) -> BTreeSet<String> {
    let (code, out, err) = node.cli(&["list", "--prefix", prefix, "--limit", "100000"]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| l.split('\t').next().unwrap_or_default().to_string()).collect()
}

#[test]
fn a_full_disk_acknowledges_nothing_blames_no_peer_and_recovers_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount_or_skip(&root.path().join("a"), TMPFS_SIZE, "this test of a real full disk") else {
        return;
    };
    // a's data directory is the tmpfs (its log is beside it, on the ordinary disk); b's is not.
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&serve_args(None, Some(&b)));
    b.start(&serve_args(Some(&a), None));
    let value = "x".repeat(VALUE_BYTES);
    let rt = runtime();
    let (acked, refusal) = rt.block_on(async {
        let owner = Owner::connect(&a).await.unwrap();
        let mut acked = BTreeSet::new();
        for i in 0..1000 {
            let key = format!("a{i:04}");
            match owner.put(&key, &value).await {
                Ok(_) => {
                    acked.insert(key);
                }
                Err(e) => return (acked, e),
            }
        }
        panic!("1,000 values of 64 KiB fit on a 3 MB tmpfs: is it mounted? log:\n{}", a.log_text());
    });
    assert!(!acked.is_empty(), "not even one value fit: {refusal}");
    // Status says the store failed, and why.
    let failed = a.status();
    let why = failed.store_error.clone().unwrap_or_else(|| panic!("status shows no store failure: {failed:#?}"));
    assert!(why.contains("No space left on device"), "status gives another reason: {why}");
    assert!(refusal.contains("No space left on device"), "the writer was told: {refusal}");
    // Writes on b while a's disk is full reach a as pushes and sessions that a cannot store.
    rt.block_on(async {
        let owner = Owner::connect(&b).await.unwrap();
        for i in 0..5 {
            owner.put(&format!("b{i}"), "small").await.unwrap();
        }
        owner.close().await;
    });
    std::thread::sleep(Duration::from_secs(2));
    let log = a.log_text();
    assert!(!log.contains("(Refused)"), "a blamed its peer for its own full disk; log:\n{log}");
    assert!(!b.log_text().contains("refused"), "b was told its data was refused; log:\n{}", b.log_text());

    disk.grow();
    // No restart: the same process writes again once the filesystem has room.
    let written = wait_until("a takes writes again", CONVERGE, || {
        let r = rt.block_on(async { Owner::connect(&a).await?.put("after", "room again").await });
        (r.is_ok(), r)
    });
    assert!(written.is_ok());
    let recovered = a.status();
    assert!(recovered.store_error.is_none() && recovered.store_reopens >= 1, "{recovered:#?}");
    wait_converged(&[&a, &b], CONVERGE);
    let keys = list(&a, "");
    let lost: Vec<_> = acked.difference(&keys).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), lost.first());
    assert!((0..5).all(|i| keys.contains(&format!("b{i}"))) && keys.contains("after"), "{keys:?}");
    a.stop();
    b.stop();
}
