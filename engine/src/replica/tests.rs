use super::*;
use crate::hlc::{Hlc, ManualClock};
use crate::storage::MemoryStore;

const T0: u64 = 1_700_000_000_000;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap()
}

fn value(r: &Replica<MemoryStore>, key: &[u8]) -> Option<Vec<u8>> {
    r.get(key).unwrap().map(|i| i.value)
}

fn sync(from: &Replica<MemoryStore>, to: &mut Replica<MemoryStore>) -> Delta {
    let delta = from.delta_for(to.vector()).unwrap();
    to.apply_remote(delta.entries.clone(), Some((&delta.vector, delta.clock))).unwrap();
    delta
}

#[test]
fn put_get_delete_and_scan() {
    let clock = ManualClock::new(T0);
    let mut r = replica(1, &clock);
    let a = r.put("a", "1", PutOptions::default()).unwrap();
    r.put("b", "2", PutOptions { ttl_ms: None, metadata: Some(b"m".to_vec()) }).unwrap();
    r.put("c", "3", PutOptions::default()).unwrap();
    assert_eq!(a.dot, Dot { replica: ReplicaId(1), seq: Seq(1) });
    assert_eq!(value(&r, b"a"), Some(b"1".to_vec()));
    assert_eq!(r.get(b"b").unwrap().unwrap().metadata, Some(b"m".to_vec()));
    let d = r.delete("b").unwrap();
    assert_eq!(d.dot.seq, Seq(4));
    assert!(d.stamp > a.stamp);
    assert_eq!(value(&r, b"b"), None);
    let keys: Vec<_> = r.scan(&KeyRange::all(), 10).unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
    assert_eq!(r.scan(&KeyRange::all(), 1).unwrap().len(), 1);
    assert_eq!(r.counts(), Counts { live: 2, tombstones: 1, expired: 0 });
    assert_eq!(r.vector().get(ReplicaId(1)), Seq(4));
}

#[test]
fn bad_writes_are_refused_with_their_sizes_and_change_nothing() {
    let clock = ManualClock::new(T0);
    let mut r = replica(1, &clock);
    let mut config = Config::default();
    config.limits.value_bytes_max = 8;
    r.config = config;
    assert!(matches!(r.put("", "v", PutOptions::default()), Err(Error::KeyEmpty { .. })));
    assert!(matches!(
        r.put(vec![b'k'; 1025], "v", PutOptions::default()),
        Err(Error::KeyTooLarge { len: 1025, max: 1024 })
    ));
    assert!(matches!(r.put("k", vec![0; 9], PutOptions::default()), Err(Error::ValueTooLarge { len: 9, max: 8 })));
    let big_meta = PutOptions { ttl_ms: None, metadata: Some(vec![0; 5000]) };
    assert!(matches!(r.put("k", "v", big_meta), Err(Error::MetadataTooLarge { .. })));
    let no_ttl = PutOptions { ttl_ms: Some(0), metadata: None };
    assert!(matches!(r.put("k", "v", no_ttl), Err(Error::TtlOutOfRange { ttl_ms: 0 })));
    // One bad write in a batch stops the whole batch.
    let mut batch = WriteBatch::new();
    batch.put("ok", "v", PutOptions::default()).put("bad", vec![0; 9], PutOptions::default());
    assert!(r.write(batch).is_err());
    assert_eq!(r.vector(), &VersionVector::new());
    assert_eq!(r.store().snapshot().unwrap().entry_count().unwrap(), 0);
}

#[test]
fn a_remote_stamp_beyond_max_drift_is_rejected_and_leaves_the_store_unchanged() {
    let clock = ManualClock::new(T0);
    let ahead = ManualClock::new(T0 + 1_001);
    let mut writer = replica(1, &ahead);
    let mut reader = replica(2, &clock);
    reader.put("mine", "x", PutOptions::default()).unwrap();
    writer.put("k", "future", PutOptions::default()).unwrap();
    let before_vector = reader.vector().clone();
    let before_clock = reader.clock();
    let before_entries = reader.scan(&KeyRange::all(), 100).unwrap();

    let delta = writer.delta_for(reader.vector()).unwrap();
    let err = reader.apply_remote(delta.entries.clone(), Some((&delta.vector, delta.clock))).unwrap_err();
    assert!(
        matches!(err, Error::ClockDrift { remote_ms, local_ms, max_drift_ms: 1000 } if remote_ms == T0 + 1_001 && local_ms == T0),
        "{err}"
    );
    assert_eq!(reader.drift_rejections(), 1);
    assert_eq!(reader.vector(), &before_vector, "vector not merged");
    assert_eq!(reader.clock(), before_clock, "future stamp not adopted");
    assert_eq!(reader.scan(&KeyRange::all(), 100).unwrap(), before_entries);
    // A local write afterwards is stamped from the local clock, not the rejected one.
    assert_eq!(reader.put("next", "y", PutOptions::default()).unwrap().stamp.hlc.wall_ms(), T0);

    // Once the local clock is within the tolerance, the same delta applies.
    clock.advance(1);
    reader.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
    assert_eq!(value(&reader, b"k"), Some(b"future".to_vec()));
}

#[test]
fn ttl_expiry_is_local_and_sends_nothing() {
    let clock = ManualClock::new(T0);
    let mut writer = replica(1, &clock);
    let mut peer = replica(2, &clock);
    let ttl = PutOptions { ttl_ms: Some(5_000), metadata: None };
    let w = writer.put("session", "token", ttl).unwrap();
    writer.put("stays", "v", PutOptions::default()).unwrap();
    sync(&writer, &mut peer);
    assert_eq!(value(&peer, b"session"), Some(b"token".to_vec()));
    assert_eq!(peer.get(b"session").unwrap().unwrap().expires_at_ms, Some(w.stamp.hlc.wall_ms() + 5_000));

    clock.advance(5_000);
    assert_eq!(value(&writer, b"session"), None);
    assert_eq!(value(&peer, b"session"), None);
    let vector_at_expiry = writer.vector().clone();
    assert_eq!(writer.purge_expired().unwrap(), 1);
    assert_eq!(peer.purge_expired().unwrap(), 1);
    assert_eq!(writer.vector(), &vector_at_expiry, "expiry issued no dot");

    // Nothing goes from writer to peer for the expired key; a later write goes alone.
    assert!(writer.delta_for(peer.vector()).unwrap().entries.is_empty());
    writer.put("later", "v", PutOptions::default()).unwrap();
    let delta = sync(&writer, &mut peer);
    let keys: Vec<_> = delta.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, vec![b"later".to_vec()]);
    assert_eq!(writer.counts(), Counts { live: 2, tombstones: 0, expired: 1 });
    assert_eq!(peer.counts(), Counts { live: 2, tombstones: 0, expired: 1 });
}

#[test]
fn a_write_that_arrives_already_expired_is_stored_as_an_expired_record() {
    let clock = ManualClock::new(T0);
    let mut writer = replica(1, &clock);
    let mut late = replica(2, &clock);
    writer.put("k", "old", PutOptions::default()).unwrap();
    let old = writer.delta_for(late.vector()).unwrap();
    writer.put("k", "short", PutOptions { ttl_ms: Some(10), metadata: None }).unwrap();
    clock.advance(10);
    let delta = writer.delta_for(late.vector()).unwrap();
    assert_eq!(delta.entries[0].payload, Payload::Expired { expires_at_ms: T0 + 10 }, "sent without bytes");
    late.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
    // The expired record still beats the older version it overwrote.
    late.apply_remote(old.entries, None).unwrap();
    assert_eq!(value(&late, b"k"), None);
    assert_eq!(late.counts().expired, 1);
}

#[test]
fn covered_and_absent_means_dead() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    let mut b = replica(2, &clock);
    a.put("k", "v1", PutOptions::default()).unwrap();
    let stale = a.delta_for(b.vector()).unwrap();
    a.put("k", "v2", PutOptions::default()).unwrap();
    sync(&a, &mut b);
    // b's vector covers a:1, and b holds a:2 for the key: a late copy of a:1 is dropped.
    let report = b.apply_remote(stale.entries.clone(), None).unwrap();
    assert_eq!((report.applied, report.stale), (0, 1));
    assert_eq!(value(&b, b"k"), Some(b"v2".to_vec()));

    // Even when b holds nothing for the key at all (as after a tombstone is collected).
    let mut c = replica(3, &clock);
    let mut vector = VersionVector::new();
    vector.advance(ReplicaId(1), Seq(2));
    c.apply_remote(Vec::new(), Some((&vector, Hlc::new(T0, 0)))).unwrap();
    let report = c.apply_remote(stale.entries, None).unwrap();
    assert_eq!(report.stale, 1);
    assert_eq!(value(&c, b"k"), None);
}

#[test]
fn a_partial_transfer_applies_entries_but_does_not_advance_the_vector() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    let mut b = replica(2, &clock);
    a.put("x", "1", PutOptions::default()).unwrap();
    a.put("y", "2", PutOptions::default()).unwrap();
    let delta = a.delta_for(b.vector()).unwrap();
    let report = b.apply_remote(delta.entries[..1].to_vec(), None).unwrap();
    assert!(!report.vector_merged);
    assert_eq!(value(&b, b"x"), Some(b"1".to_vec()));
    assert!(b.vector().is_empty());
    // The next delta still carries y (and x again, harmlessly).
    let delta = a.delta_for(b.vector()).unwrap();
    assert_eq!(delta.entries.len(), 2);
    let report = b.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
    assert_eq!((report.applied, report.superseded), (1, 1));
    assert_eq!(b.vector(), a.vector());
}

#[test]
fn delta_sends_only_what_the_peer_lacks_one_entry_per_key() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    let mut b = replica(2, &clock);
    for i in 0..10 {
        a.put(format!("k{i}"), "v", PutOptions::default()).unwrap();
    }
    sync(&a, &mut b);
    for _ in 0..5 {
        a.put("k3", "again", PutOptions::default()).unwrap();
    }
    a.delete("k4").unwrap();
    b.put("theirs", "v", PutOptions::default()).unwrap();
    let delta = a.delta_for(b.vector()).unwrap();
    let keys: Vec<_> = delta.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, vec![b"k3".to_vec(), b"k4".to_vec()], "superseded versions of k3 are not sent");
    b.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
    assert_eq!(value(&b, b"k3"), Some(b"again".to_vec()));
    assert_eq!(value(&b, b"k4"), None);
    // Both directions: a learns b's write.
    sync(&b, &mut a);
    assert_eq!(a.vector(), b.vector());
    assert!(a.delta_for(b.vector()).unwrap().entries.is_empty());
}

#[test]
fn write_seq_is_acknowledged_once_a_peer_vector_covers_it() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    let mut b = replica(2, &clock);
    let w1 = a.put("k", "1", PutOptions::default()).unwrap();
    assert!(!a.is_acknowledged(w1.dot.seq, b.vector()));
    sync(&a, &mut b);
    let w2 = a.put("k", "2", PutOptions::default()).unwrap();
    assert!(a.is_acknowledged(w1.dot.seq, b.vector()));
    assert!(!a.is_acknowledged(w2.dot.seq, b.vector()));
}

#[test]
fn concurrent_writes_with_equal_clocks_resolve_by_replica_id_everywhere() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    let mut b = replica(2, &clock);
    let wa = a.put("k", "from-a", PutOptions::default()).unwrap();
    let wb = b.put("k", "from-b", PutOptions::default()).unwrap();
    assert_eq!(wa.stamp.hlc, wb.stamp.hlc);
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(value(&a, b"k"), Some(b"from-b".to_vec()));
    assert_eq!(value(&b, b"k"), Some(b"from-b".to_vec()));
}

#[test]
fn a_reopened_replica_resumes_its_vector_and_never_reissues_a_stamp() {
    let clock = ManualClock::new(T0);
    let mut r = replica(1, &clock);
    let last = r.put("k", "v", PutOptions::default()).unwrap();
    // The wall clock goes backwards across the restart.
    clock.set(T0 - 60_000);
    let store = r.into_store();
    let mut r = Replica::open(store, ReplicaId(1), Config::default(), Arc::new(clock.clone())).unwrap();
    assert_eq!(r.vector().get(ReplicaId(1)), Seq(1));
    let next = r.put("k", "w", PutOptions::default()).unwrap();
    assert_eq!(next.dot.seq, Seq(2));
    assert!(next.stamp > last.stamp);
    assert_eq!(value(&r, b"k"), Some(b"w".to_vec()));
    let store = r.into_store();
    let err = Replica::open(store, ReplicaId(9), Config::default(), Arc::new(clock)).unwrap_err();
    assert!(matches!(err, Error::WrongReplica { stored: ReplicaId(1), requested: ReplicaId(9) }));
}

#[test]
fn malformed_remote_entries_are_rejected_whole() {
    let clock = ManualClock::new(T0);
    let mut r = replica(1, &clock);
    let good = Entry {
        key: b"ok".to_vec(),
        stamp: Stamp { hlc: Hlc::new(T0, 0), replica: ReplicaId(2) },
        dot: Dot { replica: ReplicaId(2), seq: Seq(1) },
        payload: Payload::Tombstone,
    };
    let zero = Entry { dot: Dot { replica: ReplicaId(2), seq: Seq(0) }, key: b"z".to_vec(), ..good.clone() };
    assert!(matches!(r.apply_remote(vec![good.clone(), zero], None), Err(Error::ZeroSeq { .. })));
    let empty = Entry { key: Vec::new(), ..good.clone() };
    assert!(matches!(r.apply_remote(vec![good.clone(), empty], None), Err(Error::KeyEmpty { .. })));
    let mine = Entry {
        stamp: Stamp { hlc: Hlc::new(T0, 0), replica: ReplicaId(1) },
        dot: Dot { replica: ReplicaId(1), seq: Seq(1) },
        ..good.clone()
    };
    assert_eq!(r.store().snapshot().unwrap().entry_count().unwrap(), 0);
    assert!(r.vector().is_empty());
    r.apply_remote(vec![good], None).unwrap();
    assert_eq!(r.counts().tombstones, 1);
    // A write of this replica beyond its counter, from a peer that holds it beyond its vector
    // (a partial transfer): this store is an older copy. The recovery begins and the write,
    // an original the copy lost, is kept (docs/design.md §10).
    let mine = Entry { key: b"mine".to_vec(), ..mine };
    r.apply_remote(vec![mine.clone()], None).unwrap();
    assert!(r.recovery().is_some_and(|rec| rec.counter >= Seq(1)), "{:?}", r.recovery());
    assert_eq!(r.store().snapshot().unwrap().entry(b"mine").unwrap(), Some(mine.clone()));
    // With a vector, as a complete transfer's, it is refused: the vector was computed against
    // the old one.
    let far = Entry { dot: Dot { replica: ReplicaId(1), seq: Seq(9) }, ..mine };
    let v: VersionVector = vec![(ReplicaId(1), Seq(9))].into();
    let refused = r.apply_remote(vec![far], Some((&v, Hlc::new(T0, 0))));
    assert!(matches!(refused, Err(Error::OwnWriteFromTheFuture { .. })), "{refused:?}");
}
