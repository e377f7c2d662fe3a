//! The storage conformance suite: the same checks against every backend.
//!
//! Each check takes a [`Harness`] that opens a fresh store and can reopen it (for redb: close the
//! file and open it again), and states one rule of the [`Storage`] contract.

use super::{Batch, KeyRange, MemoryStore, Meta, RedbStore, Snapshot, Storage};
use crate::entry::{Entry, Payload, Value};
use crate::hlc::{Hlc, Stamp};
use crate::ids::{Dot, ReplicaId, Seq};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

trait Harness {
    type S: Storage;
    fn open(&mut self) -> Self::S;
    fn reopen(&mut self, store: Self::S) -> Self::S;
}

struct Memory;

impl Harness for Memory {
    type S = MemoryStore;
    fn open(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        store
    }
}

struct Redb(tempfile::TempDir);

impl Redb {
    fn new() -> Redb {
        Redb(tempfile::tempdir().unwrap())
    }
}

impl Harness for Redb {
    type S = RedbStore;
    fn open(&mut self) -> RedbStore {
        RedbStore::open(self.0.path().join("store.redb")).unwrap()
    }
    fn reopen(&mut self, store: RedbStore) -> RedbStore {
        drop(store);
        self.open()
    }
}

fn entry(key: &str, replica: u64, seq: u64, payload: Payload) -> Entry {
    Entry {
        key: key.as_bytes().to_vec(),
        stamp: Stamp { hlc: Hlc::new(1000 + seq, 0), replica: ReplicaId(replica) },
        dot: Dot { replica: ReplicaId(replica), seq: Seq(seq) },
        payload,
    }
}

fn value(bytes: &str) -> Payload {
    Payload::Value(Value { bytes: bytes.as_bytes().to_vec(), expires_at_ms: None, metadata: None })
}

fn dot(replica: u64, seq: u64) -> Dot {
    Dot { replica: ReplicaId(replica), seq: Seq(seq) }
}

fn commit(store: &mut impl Storage, entries: &[Entry]) {
    let mut batch = Batch::new();
    for e in entries {
        batch.put(e.clone());
    }
    store.commit(&batch).unwrap();
}

fn all_entries(snap: &impl Snapshot, range: &KeyRange) -> Vec<Entry> {
    let mut out = Vec::new();
    snap.scan_keys(range, &mut |e| {
        out.push(e);
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn all_dots(snap: &impl Snapshot, from: Dot, to: Dot) -> Vec<(Dot, Vec<u8>)> {
    let mut out = Vec::new();
    snap.scan_dots(from, to, &mut |d, k| {
        out.push((d, k.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn every_dot(snap: &impl Snapshot) -> Vec<(Dot, Vec<u8>)> {
    all_dots(snap, dot(0, 0), dot(u64::MAX, u64::MAX))
}

fn stores_every_payload_kind_exactly(h: &mut impl Harness) {
    let mut s = h.open();
    let with_all =
        Payload::Value(Value { bytes: vec![0, 255, 7], expires_at_ms: Some(42), metadata: Some(b"meta".to_vec()) });
    let entries = [
        entry("a", 1, 1, with_all),
        entry("b", 1, 2, value("")),
        entry("c", 2, 1, Payload::Expired { expires_at_ms: 9 }),
        entry("d", 2, 2, Payload::Tombstone),
    ];
    commit(&mut s, &entries);
    let snap = s.snapshot().unwrap();
    for e in &entries {
        assert_eq!(snap.entry(&e.key).unwrap().as_ref(), Some(e));
        assert_eq!(snap.key_at(e.dot()).unwrap(), Some(e.key.clone()));
    }
    assert_eq!(snap.entry(b"zz").unwrap(), None);
    assert_eq!(snap.key_at(dot(9, 9)).unwrap(), None);
    assert_eq!(snap.entry_count().unwrap(), 4);
}

fn an_overwrite_moves_the_dot_index_row(h: &mut impl Harness) {
    let mut s = h.open();
    commit(&mut s, &[entry("k", 1, 1, value("v1"))]);
    commit(&mut s, &[entry("k", 2, 5, value("v2"))]);
    let snap = s.snapshot().unwrap();
    assert_eq!(every_dot(&snap), vec![(dot(2, 5), b"k".to_vec())]);
    assert_eq!(snap.entry_count().unwrap(), 1);
    // Rewriting an entry under the same dot (as purge does) keeps its row.
    commit(&mut s, &[entry("k", 2, 5, Payload::Expired { expires_at_ms: 1 })]);
    assert_eq!(every_dot(&s.snapshot().unwrap()), vec![(dot(2, 5), b"k".to_vec())]);
}

fn a_deferred_put_writes_no_dot_row(h: &mut impl Harness) {
    let mut s = h.open();
    commit(&mut s, &[entry("k", 1, 1, value("v1")), entry("j", 1, 2, value("v"))]);
    // A deferred put replacing an indexed entry removes the old row and writes none.
    let mut batch = Batch::new();
    batch.put_deferred(entry("k", 2, 7, value("v2"))).put_deferred(entry("i", 2, 3, Payload::Tombstone));
    s.commit(&batch).unwrap();
    let s = h.reopen(s);
    let snap = s.snapshot().unwrap();
    assert_eq!(every_dot(&snap), vec![(dot(1, 2), b"j".to_vec())]);
    assert_eq!(snap.entry(b"k").unwrap(), Some(entry("k", 2, 7, value("v2"))));
    assert_eq!(snap.entry(b"i").unwrap(), Some(entry("i", 2, 3, Payload::Tombstone)));
    // The rows written later; writing one twice changes nothing.
    let mut s = s;
    let mut batch = Batch::new();
    batch.index_dot(dot(2, 7), b"k".to_vec()).index_dot(dot(2, 3), b"i".to_vec()).index_dot(dot(2, 7), b"k".to_vec());
    s.commit(&batch).unwrap();
    let rows = vec![(dot(1, 2), b"j".to_vec()), (dot(2, 3), b"i".to_vec()), (dot(2, 7), b"k".to_vec())];
    assert_eq!(every_dot(&s.snapshot().unwrap()), rows);
    // An ordinary overwrite then moves the row as usual.
    commit(&mut s, &[entry("k", 3, 1, value("v3"))]);
    let s = h.reopen(s);
    let rows = vec![(dot(1, 2), b"j".to_vec()), (dot(2, 3), b"i".to_vec()), (dot(3, 1), b"k".to_vec())];
    assert_eq!(every_dot(&s.snapshot().unwrap()), rows);
}

fn remove_clears_the_entry_and_its_dot(h: &mut impl Harness) {
    let mut s = h.open();
    commit(&mut s, &[entry("k", 1, 1, Payload::Tombstone), entry("j", 1, 2, value("v"))]);
    let mut batch = Batch::new();
    batch.remove(b"k".to_vec()).remove(b"never-there".to_vec());
    s.commit(&batch).unwrap();
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.entry(b"k").unwrap(), None);
    assert_eq!(every_dot(&snap), vec![(dot(1, 2), b"j".to_vec())]);
}

fn ops_in_a_batch_apply_in_order(h: &mut impl Harness) {
    let mut s = h.open();
    let mut batch = Batch::new();
    batch.put(entry("a", 1, 1, value("1"))).put(entry("a", 1, 2, value("2"))).put(entry("b", 1, 3, value("3")));
    batch.remove(b"b".to_vec());
    s.commit(&batch).unwrap();
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.entry(b"a").unwrap(), Some(entry("a", 1, 2, value("2"))));
    assert_eq!(every_dot(&snap), vec![(dot(1, 2), b"a".to_vec())]);
}

fn a_snapshot_does_not_see_later_commits(h: &mut impl Harness) {
    let mut s = h.open();
    commit(&mut s, &[entry("a", 1, 1, value("old"))]);
    let before = s.snapshot().unwrap();
    let mut batch = Batch::new();
    batch.put(entry("a", 1, 2, value("new"))).put(entry("b", 1, 3, value("b")));
    batch.set_meta(Meta::Clock, vec![1; 8]);
    s.commit(&batch).unwrap();
    assert_eq!(before.entry(b"a").unwrap(), Some(entry("a", 1, 1, value("old"))));
    assert_eq!(before.entry(b"b").unwrap(), None);
    assert_eq!(every_dot(&before), vec![(dot(1, 1), b"a".to_vec())]);
    assert_eq!(before.meta(Meta::Clock).unwrap(), None);
    assert_eq!(before.entry_count().unwrap(), 1);
    assert_eq!(s.snapshot().unwrap().entry_count().unwrap(), 2);
}

fn key_scans_are_ordered_and_bounded(h: &mut impl Harness) {
    let mut s = h.open();
    let keys = ["b", "a", "ab", "abc", "b\u{7f}", "c"];
    let entries: Vec<_> = keys.iter().enumerate().map(|(i, k)| entry(k, 1, i as u64 + 1, value(k))).collect();
    commit(&mut s, &entries);
    let snap = s.snapshot().unwrap();
    let names = |r: &KeyRange| -> Vec<String> {
        all_entries(&snap, r).into_iter().map(|e| String::from_utf8(e.key).unwrap()).collect()
    };
    assert_eq!(names(&KeyRange::all()), ["a", "ab", "abc", "b", "b\u{7f}", "c"]);
    assert_eq!(names(&KeyRange::prefix(b"ab".to_vec())), ["ab", "abc"]);
    assert_eq!(names(&KeyRange::between(b"ab".to_vec(), b"b\x7f".to_vec())), ["ab", "abc", "b"]);
    let mut first_two = Vec::new();
    snap.scan_keys(&KeyRange::all(), &mut |e| {
        first_two.push(e.key);
        if first_two.len() == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!(first_two, vec![b"a".to_vec(), b"ab".to_vec()]);
}

fn dot_scans_are_ordered_and_bounded(h: &mut impl Harness) {
    let mut s = h.open();
    commit(
        &mut s,
        &[
            entry("x", 2, 7, value("")),
            entry("y", 1, 3, value("")),
            entry("z", 2, 2, value("")),
            entry("w", u64::MAX, 1, value("")),
        ],
    );
    let snap = s.snapshot().unwrap();
    let dots: Vec<_> = every_dot(&snap).into_iter().map(|(d, _)| d).collect();
    assert_eq!(dots, vec![dot(1, 3), dot(2, 2), dot(2, 7), dot(u64::MAX, 1)]);
    let replica_2_after_2: Vec<_> = all_dots(&snap, dot(2, 3), dot(2, u64::MAX)).into_iter().map(|(d, _)| d).collect();
    assert_eq!(replica_2_after_2, vec![dot(2, 7)]);
}

fn metadata_round_trips(h: &mut impl Harness) {
    let mut s = h.open();
    let mut batch = Batch::new();
    batch.set_meta(Meta::Vector, b"v1".to_vec()).set_meta(Meta::Vector, b"v2".to_vec());
    s.commit(&batch).unwrap();
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.meta(Meta::Vector).unwrap(), Some(b"v2".to_vec()));
    assert_eq!(snap.meta(Meta::ReplicaId).unwrap(), None);
}

fn device_records_are_set_removed_scanned_in_id_order_and_survive_reopening(h: &mut impl Harness) {
    let mut s = h.open();
    let mut batch = Batch::new();
    batch.set_device(9, b"nine".to_vec()).set_device(u64::MAX, b"max".to_vec()).set_device(3, b"three".to_vec());
    batch.set_device(9, b"nine again".to_vec()).remove_device(u64::MAX).remove_device(7);
    s.commit(&batch).unwrap();
    let s = h.reopen(s);
    let mut seen = Vec::new();
    s.snapshot()
        .unwrap()
        .scan_devices(&mut |id, record| {
            seen.push((id, record.to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, vec![(3, b"three".to_vec()), (9, b"nine again".to_vec())]);
}

fn committed_batches_survive_reopening(h: &mut impl Harness) {
    let mut s = h.open();
    commit(&mut s, &[entry("a", 1, 1, value("a")), entry("b", 1, 2, Payload::Tombstone)]);
    let mut batch = Batch::new();
    batch.set_meta(Meta::Clock, vec![7; 8]);
    s.commit(&batch).unwrap();
    let s = h.reopen(s);
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.entry(b"a").unwrap(), Some(entry("a", 1, 1, value("a"))));
    assert_eq!(snap.entry(b"b").unwrap(), Some(entry("b", 1, 2, Payload::Tombstone)));
    assert_eq!(every_dot(&snap).len(), 2);
    assert_eq!(snap.meta(Meta::Clock).unwrap(), Some(vec![7; 8]));
}

/// Random batches against a model (a plain map): after each commit and after reopening, the
/// store's entries equal the model's, and the dot index holds exactly one row per entry.
fn matches_a_model_under_random_batches(h: &mut impl Harness) {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut s = h.open();
    let mut model: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    let mut seq = 0;
    for round in 0..60 {
        let mut batch = Batch::new();
        for _ in 0..next(8) {
            let key = format!("k{}", next(20));
            if next(4) == 0 {
                model.remove(key.as_bytes());
                batch.remove(key.into_bytes());
            } else {
                seq += 1;
                let e = entry(&key, next(3), seq, if next(3) == 0 { Payload::Tombstone } else { value(&key) });
                model.insert(e.key.clone(), e.clone());
                batch.put(e);
            }
        }
        s.commit(&batch).unwrap();
        if round % 20 == 19 {
            s = h.reopen(s);
        }
        let snap = s.snapshot().unwrap();
        let stored = all_entries(&snap, &KeyRange::all());
        assert_eq!(stored, model.values().cloned().collect::<Vec<_>>(), "round {round}");
        let mut expected_dots: Vec<_> = model.values().map(|e| (e.dot(), e.key.clone())).collect();
        expected_dots.sort();
        assert_eq!(every_dot(&snap), expected_dots, "round {round}");
        assert_eq!(snap.entry_count().unwrap(), model.len() as u64);
    }
}

macro_rules! conformance {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;
            #[test]
            fn stores_every_payload_kind_exactly() {
                super::stores_every_payload_kind_exactly(&mut $harness);
            }
            #[test]
            fn an_overwrite_moves_the_dot_index_row() {
                super::an_overwrite_moves_the_dot_index_row(&mut $harness);
            }
            #[test]
            fn a_deferred_put_writes_no_dot_row() {
                super::a_deferred_put_writes_no_dot_row(&mut $harness);
            }
            #[test]
            fn remove_clears_the_entry_and_its_dot() {
                super::remove_clears_the_entry_and_its_dot(&mut $harness);
            }
            #[test]
            fn ops_in_a_batch_apply_in_order() {
                super::ops_in_a_batch_apply_in_order(&mut $harness);
            }
            #[test]
            fn a_snapshot_does_not_see_later_commits() {
                super::a_snapshot_does_not_see_later_commits(&mut $harness);
            }
            #[test]
            fn key_scans_are_ordered_and_bounded() {
                super::key_scans_are_ordered_and_bounded(&mut $harness);
            }
            #[test]
            fn dot_scans_are_ordered_and_bounded() {
                super::dot_scans_are_ordered_and_bounded(&mut $harness);
            }
            #[test]
            fn metadata_round_trips() {
                super::metadata_round_trips(&mut $harness);
            }
            #[test]
            fn device_records_are_set_removed_scanned_in_id_order_and_survive_reopening() {
                super::device_records_are_set_removed_scanned_in_id_order_and_survive_reopening(&mut $harness);
            }
            #[test]
            fn committed_batches_survive_reopening() {
                super::committed_batches_survive_reopening(&mut $harness);
            }
            #[test]
            fn matches_a_model_under_random_batches() {
                super::matches_a_model_under_random_batches(&mut $harness);
            }
        }
    };
}

conformance!(memory, Memory);
conformance!(redb, Redb::new());
