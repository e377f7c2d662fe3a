//! A store that fails as a full disk does (an injected redb backend on a real file, see
//! `lethe_tests::failing_disk`; no mount needed): redb refuses every commit after one I/O error
//! until reopened; a replica reopened from its store holds exactly what was durable; a node
//! acknowledges nothing while its store fails, says so in `status`, and writes again once the
//! disk has room, without a restart. `disk_full.rs` does the same with a real full tmpfs.

use lethe_engine::{Batch, Config, Meta, RedbStore, Replica, ReplicaId, Snapshot, Storage, SystemClock};
use lethe_engine::{KeyRange, PutOptions};
use lethe_node::{DataDir, Node, NodeConfig, PeerAddr};
use lethe_tests::failing_disk::{DiskSwitch, open_store};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn redb_refuses_every_commit_after_an_io_error_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskSwitch::default();
    let mut store = open_store(&dir.path().join("store.redb"), &disk).unwrap();
    let mut batch = Batch::new();
    batch.set_meta(Meta::Clock, b"before".to_vec());
    store.commit(&batch).unwrap();
    disk.fill();
    assert!(store.commit(&batch).is_err(), "a commit on a full disk succeeded");
    disk.free();
    // The disk has room again, but redb stays poisoned: this is why the node must reopen it.
    let poisoned = store.commit(&batch).unwrap_err().to_string();
    assert!(poisoned.contains("Previous I/O error"), "{poisoned}");
    store.reopen().unwrap();
    batch.set_meta(Meta::Clock, b"after".to_vec());
    store.commit(&batch).unwrap();
    assert_eq!(store.snapshot().unwrap().meta(Meta::Clock).unwrap(), Some(b"after".to_vec()));
}

#[test]
fn a_replica_reopened_after_its_store_failed_holds_exactly_what_was_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let disk = DiskSwitch::default();
    let id = ReplicaId(7);
    let mut replica =
        Replica::open(open_store(&path, &disk).unwrap(), id, Config::default(), Arc::new(SystemClock)).unwrap();
    for i in 0..20 {
        replica.put(format!("k{i:02}"), vec![b'v'; 1000], PutOptions::default()).unwrap();
    }
    replica.delete("k00").unwrap();
    let (vector, clock) = (replica.vector().clone(), replica.clock());
    let items = replica.scan(&KeyRange::all(), usize::MAX).unwrap();

    disk.fill();
    let err = replica.put("lost", "never acknowledged", PutOptions::default()).unwrap_err();
    assert!(err.is_storage(), "{err}");
    let failure = replica.store_failure().expect("the failure is recorded").clone();
    assert!(failure.needs_reopen && failure.error.contains("No space left on device"), "{failure:?}");
    // Nothing moved in memory.
    assert_eq!((replica.vector(), replica.clock()), (&vector, clock));
    disk.free();
    // Until reopened, commits are refused without touching the poisoned store.
    let refused = replica.put("lost", "x", PutOptions::default()).unwrap_err().to_string();
    assert!(refused.contains("unavailable") && refused.contains("No space left"), "{refused}");

    replica.reopen_store().unwrap();
    assert_eq!((replica.vector(), replica.clock()), (&vector, clock));
    assert_eq!(replica.scan(&KeyRange::all(), usize::MAX).unwrap(), items);
    assert_eq!(replica.get(b"lost").unwrap(), None);
    assert_eq!(replica.counts().tombstones, 1);
    assert!(replica.store_failure().is_some_and(|f| !f.needs_reopen), "the failure stays until a commit succeeds");
    let receipt = replica.put("after", "room again", PutOptions::default()).unwrap();
    assert_eq!(receipt.dot.seq, vector.get(id).next(), "the failed write's seq is issued again, once");
    assert_eq!(replica.store_failure(), None);

    // And the file says the same to a fresh open.
    drop(replica);
    let reopened =
        Replica::open(RedbStore::open(&path).unwrap(), id, Config::default(), Arc::new(SystemClock)).unwrap();
    let mut expected = vector.clone();
    expected.advance(id, receipt.dot.seq);
    assert_eq!(reopened.vector(), &expected);
    assert_eq!(reopened.scan(&KeyRange::all(), usize::MAX).unwrap().len(), items.len() + 1);
    assert_eq!(reopened.get(b"lost").unwrap(), None);
}

#[test]
fn a_write_whose_sync_failed_is_taken_from_the_store_at_reopen_and_its_seq_never_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let disk = DiskSwitch::default();
    let id = ReplicaId(9);
    let mut replica =
        Replica::open(open_store(&path, &disk).unwrap(), id, Config::default(), Arc::new(SystemClock)).unwrap();
    for i in 0..5 {
        replica.put(format!("k{i}"), "v", PutOptions::default()).unwrap();
    }
    let seq_before = replica.vector().get(id);
    disk.fail_syncs();
    // Not acknowledged: its pages reached the file, but not the disk for sure.
    assert!(replica.put("unsure", "maybe stored", PutOptions::default()).is_err());
    assert_eq!(replica.vector().get(id), seq_before, "memory moved without a durable commit");
    disk.free();
    replica.reopen_store().unwrap();
    // Whatever the file holds now is what the replica holds: the in-memory state from before the
    // failed commit is not kept.
    let (vector, clock) = (replica.vector().clone(), replica.clock());
    let items = replica.scan(&KeyRange::all(), usize::MAX).unwrap();
    let landed = replica.get(b"unsure").unwrap().is_some();
    assert_eq!(vector.get(id) > seq_before, landed, "vector {vector:?} disagrees with the store (landed: {landed})");
    let next = replica.put("next", "v", PutOptions::default()).unwrap();
    assert_eq!(next.dot.seq, vector.get(id).next(), "a seq the store holds was issued again");
    drop(replica);
    let fresh = Replica::open(RedbStore::open(&path).unwrap(), id, Config::default(), Arc::new(SystemClock)).unwrap();
    let mut expected = vector;
    expected.advance(id, next.dot.seq);
    assert_eq!(fresh.vector(), &expected);
    assert!(fresh.clock() > clock);
    assert_eq!(fresh.scan(&KeyRange::all(), usize::MAX).unwrap().len(), items.len() + 1);
    eprintln!("the write whose sync failed {} the store", if landed { "is in" } else { "is not in" });
}

/// Polls `check` until it holds; panics with `what` and the last value after [`WAIT`].
async fn eventually<T: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, state) = check();
        if ok {
            return state;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}; last: {state:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_fails_acknowledges_nothing_says_so_and_writes_again_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (DataDir::new(root.path().join("a")), DataDir::new(root.path().join("b")));
    let (id_a, id_b) = (data_a.init().unwrap().id(), data_b.init().unwrap().id());
    let disk = DiskSwitch::default();
    let listen = "127.0.0.1:0".parse().unwrap();
    let config = NodeConfig::new(data_a.clone(), listen).with_trust(id_b).with_gc_interval(Duration::from_millis(100));
    let a = Node::start_with_store(config, open_store(&data_a.store_path(), &disk).unwrap()).await.unwrap();
    let b = NodeConfig::new(data_b, listen)
        .with_peer(PeerAddr { id: id_a, addr: a.local_addr() })
        .with_gc_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    for i in 0..10 {
        a.put(format!("k{i}"), "durable", PutOptions::default()).await.unwrap();
    }
    eventually("b has a's writes", || (b.status().unwrap().live == 10, b.status().unwrap())).await;
    let before = a.status().unwrap();
    assert_eq!(before.store_error, None);

    disk.fill();
    let err = a.put("lost", "never acknowledged", PutOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    let failed = a.status().unwrap();
    let why = failed.store_error.clone().expect("status says the store failed");
    assert!(why.contains("No space left on device"), "{why}");
    assert!(failed.store_failed_since_ms.is_some());
    assert_eq!(failed.vector, before.vector, "a failed write moved the vector");
    // While the disk stays full, writes keep being refused (and data from b cannot be stored).
    b.put("from-b", "while a is full", PutOptions::default()).await.unwrap();
    for _ in 0..3 {
        assert!(a.put("lost", "x", PutOptions::default()).await.is_err(), "a write was acknowledged on a full disk");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a.status().unwrap().store_error.is_some());
    // Sessions that fail on the full disk are retried with a backoff, not every 200 ms.
    let failed_sessions = || a.status().unwrap().sessions_failed + b.status().unwrap().sessions_failed;
    let failed_before = failed_sessions();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let failed_in_6s = failed_sessions() - failed_before;
    assert!(failed_in_6s <= 12, "{failed_in_6s} sessions failed in 6 s while the disk was full: no backoff");

    disk.free();
    // The same node, not restarted, takes writes again.
    let deadline = Instant::now() + WAIT;
    while let Err(e) = a.put("after", "room again", PutOptions::default()).await {
        assert!(Instant::now() < deadline, "a still refuses writes after the disk has room: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = a.status().unwrap();
    assert_eq!(recovered.store_error, None);
    assert!(recovered.store_reopens >= 1, "{recovered:#?}");
    // Sync resumes both ways, and what was acknowledged before the failure is all there.
    eventually("a and b converge", || {
        let (sa, sb) = (a.status().unwrap(), b.status().unwrap());
        (sa.digest == sb.digest && sa.live == 12, (sa, sb))
    })
    .await;
    for i in 0..10 {
        assert!(a.get(format!("k{i}").as_bytes()).unwrap().is_some());
    }
    assert!(a.get(b"from-b").unwrap().is_some() && b.get(b"after").unwrap().is_some());
    assert_eq!(a.get(b"lost").unwrap(), None);
    assert_eq!(b.get(b"lost").unwrap(), None);
    a.shutdown().await;
    b.shutdown().await;
}
