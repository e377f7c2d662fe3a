//! Rejoin (docs/design.md §2.5): a replica that the others stopped counting comes back by
//! reconciliation. What it holds that a peer's vector covers and the peer lacks is dropped, so
//! keys deleted and collected while it was away are gone everywhere; its own offline writes are
//! kept and spread.

use lethe_engine::session::{Mode, sync_in_process};
use lethe_engine::{Config, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const LEASE_MS: u64 = 60_000;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { lease_ms: LEASE_MS, ..Config::default() };
    enrolled(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

/// Enrols replicas 1 to 8 (all the tests use) as members of `r`.
fn enrolled<S: lethe_engine::Storage>(mut r: Replica<S>) -> Replica<S> {
    for id in 1..=8 {
        r.enrol_member(ReplicaId(id)).unwrap();
    }
    r
}

fn keys(r: &Replica<MemoryStore>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

fn sync(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>) -> Mode {
    sync_in_process(a, b, false).unwrap().a.mode.unwrap()
}

#[test]
fn a_replica_evicted_by_lease_rejoins_without_the_keys_deleted_meanwhile() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (replica(1, &clock), replica(2, &clock), replica(3, &clock));
    for i in 0..30 {
        a.put(format!("k{i:02}"), "v", PutOptions::default()).unwrap();
    }
    sync(&mut a, &mut b);
    sync(&mut a, &mut c);
    sync(&mut b, &mut c);
    assert!(a.membership().contains(ReplicaId(3)) && b.membership().contains(ReplicaId(3)));

    // c goes offline past the lease; a and b keep talking, evict c, delete and collect.
    clock.advance(LEASE_MS / 2);
    sync(&mut a, &mut b);
    clock.advance(LEASE_MS / 2 + 1);
    for i in 0..10 {
        a.delete(format!("k{i:02}")).unwrap();
    }
    for _ in 0..3 {
        sync(&mut a, &mut b);
        a.collect_garbage().unwrap();
        b.collect_garbage().unwrap();
    }
    assert!(!a.membership().contains(ReplicaId(3)), "c was not evicted by the lease");
    assert_eq!((a.tombstone_count(), b.tombstone_count()), (0, 0), "collection waited for c");

    // Offline, c still holds the deleted keys and writes its own.
    assert_eq!(keys(&c).len(), 30);
    c.put("c-offline", "mine", PutOptions::default()).unwrap();

    // c comes back through b, then the round completes.
    assert_eq!(sync(&mut b, &mut c), Mode::Reconcile, "b does not count c any more");
    sync(&mut a, &mut b);
    sync(&mut a, &mut c);
    let expected: Vec<String> =
        std::iter::once("c-offline".to_string()).chain((10..30).map(|i| format!("k{i:02}"))).collect();
    for (name, r) in [("a", &a), ("b", &b), ("c", &c)] {
        let mut got = keys(r);
        got.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got, want, "replica {name}");
    }
    assert!(b.membership().contains(ReplicaId(3)), "c is a member again after catching up");
}

#[test]
fn a_replica_one_peer_never_heard_of_is_handled_the_same_way() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut d) = (replica(1, &clock), replica(2, &clock), replica(4, &clock));
    for i in 0..20 {
        b.put(format!("k{i:02}"), "v", PutOptions::default()).unwrap();
    }
    // d got b's data long ago; a has never heard of d.
    sync(&mut b, &mut d);
    sync(&mut a, &mut b);
    b.evict(ReplicaId(4));
    a.evict(ReplicaId(4));
    assert!(!a.membership().contains(ReplicaId(4)));

    // a deletes and collects with b alone.
    for i in 0..5 {
        a.delete(format!("k{i:02}")).unwrap();
    }
    for _ in 0..3 {
        sync(&mut a, &mut b);
        a.collect_garbage().unwrap();
        b.collect_garbage().unwrap();
    }
    assert_eq!(a.tombstone_count(), 0);
    d.put("d-own", "x", PutOptions::default()).unwrap();

    // d meets a first: a reconciles, d drops what a collected, a takes d's write.
    assert_eq!(sync(&mut a, &mut d), Mode::Reconcile);
    for i in 0..5 {
        assert_eq!(d.get(format!("k{i:02}").as_bytes()).unwrap(), None);
    }
    assert_eq!(a.get(b"d-own").unwrap().map(|i| i.value), Some(b"x".to_vec()));
    sync(&mut a, &mut b);
    assert_eq!(keys(&a), keys(&b));
    assert_eq!(keys(&a), keys(&d));
}
