//! The two rules that keep collection safe, each pinned by a scenario that breaks without it.
//!
//! - Two-step collection (docs/design.md §2): a write concurrent with a delete, delivered late after
//!   the delete's collection, does not come back.
//! - Admission: an evicted replica re-introduced by gossip is not taken back as a member until it
//!   has seen every collected tombstone, so it reconciles instead of receiving a delta and keeping
//!   what was deleted while it was away.

use lethe_engine::membership::MemberInfo;
use lethe_engine::session::{Mode, sync_in_process};
use lethe_engine::{
    Config, Entry, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Snapshot, Storage,
};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(ReplicaId(id))));
    enrolled(r)
}

/// Enrols replicas 1 to 8 (all the tests use) as members of `r`.
fn enrolled<S: lethe_engine::Storage>(mut r: Replica<S>) -> Replica<S> {
    for id in 1..=8 {
        r.enrol_member(ReplicaId(id)).unwrap();
    }
    r
}

fn stored(r: &Replica<MemoryStore>, key: &[u8]) -> Option<Entry> {
    r.store().snapshot().unwrap().entry(key).unwrap()
}

#[test]
fn a_concurrent_write_delivered_after_collection_does_not_come_back() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (replica(1, &clock), replica(2, &clock), replica(3, &clock));
    a.put("k", "v0", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut a, &mut c, false).unwrap();
    sync_in_process(&mut b, &mut c, false).unwrap();

    // c writes k, then a deletes it without having seen c's write: the two are concurrent, and
    // the delete wins (its stamp is later).
    let late = c.put("k", "concurrent", PutOptions::default()).unwrap();
    clock.advance(10);
    a.delete("k").unwrap();
    let late_write = stored(&c, b"k").unwrap();

    // The delete reaches b and c; c's acknowledgement reaches a, but c's own write does not (its
    // flow towards a was lost): a hears c's vector, which covers both the delete and c's write.
    let delta = a.delta_for(c.vector()).unwrap();
    c.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
    let delta = a.delta_for(b.vector()).unwrap();
    b.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
    let (b_vector, c_vector) = (b.vector().clone(), c.vector().clone());
    a.acknowledge(ReplicaId(2), &b_vector);
    a.acknowledge(ReplicaId(3), &c_vector);
    assert!(a.frontier().covers(a.store().snapshot().unwrap().entry(b"k").unwrap().unwrap().dot()));

    // The delete is stable. Collection must still wait: c's write is concurrent with it and a has
    // not seen it, so the frontier does not cover the join noted with the checkpoint.
    a.collect_garbage().unwrap();
    a.collect_garbage().unwrap();
    assert_eq!(a.tombstone_count(), 1, "collected while a concurrent write was still on its way");

    // The late write arrives: the tombstone beats it.
    a.apply_remote(vec![late_write.clone()], None).unwrap();
    assert_eq!(a.get(b"k").unwrap(), None);

    // Once everyone has seen everything, the tombstone goes, and a late copy of the write is
    // "covered and absent": dead.
    for _ in 0..2 {
        sync_in_process(&mut a, &mut b, false).unwrap();
        sync_in_process(&mut a, &mut c, false).unwrap();
        sync_in_process(&mut b, &mut c, false).unwrap();
        a.collect_garbage().unwrap();
    }
    assert_eq!(a.tombstone_count(), 0);
    assert!(a.vector().covers(late.dot));
    a.apply_remote(vec![late_write], None).unwrap();
    assert_eq!(a.get(b"k").unwrap(), None, "the concurrent write came back after collection");
}

#[test]
fn an_evicted_replica_gossiped_back_reconciles_and_keeps_nothing_deleted_meanwhile() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (replica(1, &clock), replica(2, &clock), replica(3, &clock));
    for i in 0..20 {
        a.put(format!("k{i:02}"), "v", PutOptions::default()).unwrap();
    }
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut a, &mut c, false).unwrap();
    sync_in_process(&mut b, &mut c, false).unwrap();

    // b goes quiet; a evicts it, deletes half the keys, and collects with c.
    assert!(a.evict(ReplicaId(2)));
    assert!(c.evict(ReplicaId(2)));
    for i in 0..10 {
        a.delete(format!("k{i:02}")).unwrap();
    }
    for _ in 0..3 {
        sync_in_process(&mut a, &mut c, false).unwrap();
        a.collect_garbage().unwrap();
        c.collect_garbage().unwrap();
    }
    assert_eq!((a.tombstone_count(), c.tombstone_count()), (0, 0));

    // A replica that still counts b gossips b's last signed acknowledgement back to a: a must
    // not take it as a member, since b has not seen the collected deletes.
    let stale_view = vec![MemberInfo::from(b.sign_ack(b.vector().clone()))];
    a.merge_gossip(ReplicaId(4), &stale_view);
    assert!(!a.membership().contains(ReplicaId(2)));

    // So b reconciles: it drops what was deleted, and becomes a member again.
    let out = sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(out.a.mode, Some(Mode::Reconcile));
    for i in 0..10 {
        assert_eq!(b.get(format!("k{i:02}").as_bytes()).unwrap(), None, "k{i:02} came back at b");
    }
    assert_eq!(b.scan(&lethe_engine::KeyRange::all(), 100).unwrap().len(), 10);
    assert!(a.membership().contains(ReplicaId(2)));
}
