//! A store that fails as a full disk does (an injected redb backend on a real file, see
//! `lethe_tests::failing_disk`; no mount needed): redb refuses everything after one I/O error
//! until reopened; a replica reopened from its store holds exactly what was durable; a node
//! acknowledges nothing while its store fails, says so in `status`, and writes again once the
//! disk has room, without a restart. `disk_full.rs` does the same with a real full tmpfs.

use lethe_engine::{Batch, Config, Meta, RedbStore, Replica, ReplicaId, Snapshot, Storage, SystemClock};
use lethe_engine::{KeyRange, PutOptions};
use lethe_tests::failing_disk::{DiskSwitch, open_store};
use std::sync::Arc;

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
