//! A replica restored from an older copy of its store (docs/design.md §10): it never issues a dot
//! twice, and every write, from before the copy, from after it and from after the restore, ends
//! up everywhere.

use lethe_engine::session::sync_in_process;
use lethe_engine::{
    Config, Dot, Entry, Error, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Snapshot, Storage,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn open(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    Replica::open(store, ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap()
}

fn keys(r: &Replica<MemoryStore>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

fn entries(r: &Replica<MemoryStore>) -> Vec<Entry> {
    let mut out = Vec::new();
    r.store()
        .snapshot()
        .unwrap()
        .scan_keys(&KeyRange::all(), &mut |e| {
            out.push(e);
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

fn put(r: &mut Replica<MemoryStore>, key: &str, clock: &ManualClock) {
    clock.advance(1);
    r.put(key, key, PutOptions::default()).unwrap();
}

#[test]
fn a_replica_restored_from_an_older_copy_reissues_its_writes_and_loses_none() {
    let clock = ManualClock::new(T0);
    let mut a = open(MemoryStore::new(), 1, &clock);
    let mut b = open(MemoryStore::new(), 2, &clock);
    put(&mut b, "r1", &clock);
    put(&mut b, "r2", &clock);
    sync_in_process(&mut a, &mut b, false).unwrap();
    let backup = b.store().clone();
    for k in ["r3", "r4", "r5"] {
        put(&mut b, k, &clock);
    }
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(a.vector().get(ReplicaId(2)).0, 5);

    // b is restored from the copy (its counter back at 2) and acknowledges a write at once,
    // before it hears from anyone: seq 3, which a already holds as r3.
    drop(b);
    let mut b = open(backup, 2, &clock);
    put(&mut b, "new1", &clock);
    assert_eq!(b.vector().get(ReplicaId(2)).0, 3);

    // The handshake shows b that a holds its writes up to 5: b stops taking writes, re-issues
    // new1 under a fresh dot above 5 and asks for what it lost.
    sync_in_process(&mut a, &mut b, false).unwrap();
    let recovery = b.recovery().expect("b noticed the restore");
    assert_eq!(recovery.target.0, 5);
    let refused = b.put("new2", "new2", PutOptions::default()).unwrap_err();
    assert!(matches!(refused, Error::Restored { .. }), "{refused}");
    assert!(refused.to_string().contains("restored from an older copy"), "{refused}");

    // The next session brings r3..r5 back and ends the recovery; writes resume above them.
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(b.recovery(), None);
    put(&mut b, "new2", &clock);
    for anti_entropy in [false, true, false] {
        sync_in_process(&mut a, &mut b, anti_entropy).unwrap();
    }
    let all = ["new1", "new2", "r1", "r2", "r3", "r4", "r5"];
    assert_eq!(keys(&a), all);
    assert_eq!(keys(&b), all);
    assert_eq!(a.digest(), b.digest());
    // No dot names two different writes anywhere.
    let mut by_dot: BTreeMap<Dot, Vec<u8>> = BTreeMap::new();
    for e in entries(&a).into_iter().chain(entries(&b)) {
        let key = by_dot.entry(e.dot()).or_insert_with(|| e.key.clone());
        assert_eq!(*key, e.key, "dot {} names two writes", e.dot());
    }
    // And a restart keeps all of it.
    let store = b.into_store();
    let b = open(store, 2, &clock);
    assert_eq!(keys(&b), all);
}

#[test]
fn a_restored_replica_learns_what_peers_hold_of_it_through_a_third_and_reuses_no_seq() {
    let clock = ManualClock::new(T0);
    let mut a = open(MemoryStore::new(), 1, &clock);
    let mut b = open(MemoryStore::new(), 2, &clock);
    let mut c = open(MemoryStore::new(), 3, &clock);
    put(&mut b, "r1", &clock);
    let backup = b.store().clone();
    put(&mut b, "r2", &clock);
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut a, &mut c, false).unwrap();
    drop(b);
    let mut b = open(backup, 2, &clock);
    // Gossip through c shows the restored b what a holds of it.
    sync_in_process(&mut c, &mut b, false).unwrap();
    assert!(b.recovery().is_some());
    sync_in_process(&mut c, &mut b, false).unwrap();
    assert_eq!(b.recovery(), None);
    clock.advance(1);
    let r3 = b.put("r3", "r3", PutOptions::default()).unwrap();
    assert!(r3.dot.seq.0 > 2, "counted on from what peers hold: {}", r3.dot);
    sync_in_process(&mut a, &mut b, true).unwrap();
    sync_in_process(&mut b, &mut c, true).unwrap();
    sync_in_process(&mut a, &mut c, true).unwrap();
    for r in [&a, &b, &c] {
        assert_eq!(keys(r), ["r1", "r2", "r3"]);
    }
}

#[test]
fn a_claim_of_own_writes_far_beyond_the_counter_is_refused_and_changes_nothing() {
    let clock = ManualClock::new(T0);
    let mut b = open(MemoryStore::new(), 2, &clock);
    put(&mut b, "k", &clock);
    let lie = b.notice_own_seq(lethe_engine::Seq(u64::MAX)).unwrap_err();
    assert!(matches!(lie, Error::OwnSeqImplausible { .. }), "{lie}");
    assert_eq!(b.recovery(), None);
    assert_eq!(b.vector().get(ReplicaId(2)).0, 1);
    put(&mut b, "still-writes", &clock);
}

#[test]
fn a_second_peer_holding_more_of_the_lost_writes_moves_the_reissued_ones_again() {
    let clock = ManualClock::new(T0);
    let (mut a, mut c) = (open(MemoryStore::new(), 1, &clock), open(MemoryStore::new(), 3, &clock));
    let mut b = open(MemoryStore::new(), 2, &clock);
    put(&mut b, "r1", &clock);
    sync_in_process(&mut a, &mut b, false).unwrap();
    let backup = b.store().clone();
    put(&mut b, "r2", &clock);
    put(&mut b, "r3", &clock);
    sync_in_process(&mut a, &mut b, false).unwrap(); // a holds b's writes up to 3
    put(&mut b, "r4", &clock);
    sync_in_process(&mut c, &mut b, false).unwrap(); // c holds them up to 4
    drop(b);
    let mut b = open(backup, 2, &clock);
    put(&mut b, "new1", &clock);
    // a shows 3: new1 moves to 4, which c holds as r4; c then shows 4 and new1 moves again.
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut c, &mut b, false).unwrap();
    assert!(b.recovery().unwrap().target.0 >= 4);
    for _ in 0..3 {
        sync_in_process(&mut c, &mut b, false).unwrap();
        sync_in_process(&mut a, &mut b, false).unwrap();
        sync_in_process(&mut a, &mut c, false).unwrap();
    }
    assert_eq!(b.recovery(), None);
    for anti_entropy in [true, false] {
        sync_in_process(&mut a, &mut b, anti_entropy).unwrap();
        sync_in_process(&mut b, &mut c, anti_entropy).unwrap();
        sync_in_process(&mut a, &mut c, anti_entropy).unwrap();
    }
    let mut by_dot: BTreeMap<Dot, Vec<u8>> = BTreeMap::new();
    for r in [&a, &b, &c] {
        assert_eq!(keys(r), ["new1", "r1", "r2", "r3", "r4"], "at {}", r.id());
        for e in entries(r) {
            let key = by_dot.entry(e.dot()).or_insert_with(|| e.key.clone());
            assert_eq!(*key, e.key, "dot {} names two writes", e.dot());
        }
    }
}

/// A recovery whose target no member can meet any more: `a` learns from `b` that peers hold
/// its writes up to seq 3 (a session cut after `b`'s handshake), then `b` is itself restored
/// from a copy that holds none of them. No transfer can bring `a`'s own component back to 3;
/// once every enrolled replica (`b`, the only one) has completed a transfer since the recovery
/// began (an anti-entropy session: `b`'s vector holds nothing beyond `a`'s),
/// whatever members hold of `a`'s writes is at `a`, and the recovery ends: `a` takes writes
/// again, under seqs it never issued (`lethe-sim --restores`, seed 910: a member waited for
/// ever, refusing every write and every device upload).
#[test]
fn a_recovery_ends_once_every_member_has_transferred_even_if_none_holds_the_target() {
    use lethe_engine::session::{Message, Session};
    let clock = ManualClock::new(T0);
    let mut a = open(MemoryStore::new(), 1, &clock);
    let mut b = open(MemoryStore::new(), 2, &clock);
    a.enrol_member(b.id()).unwrap();
    b.enrol_member(a.id()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    let a_copy = a.store().clone();
    let b_copy = b.store().clone();
    for k in ["x1", "x2", "x3"] {
        put(&mut a, k, &clock);
    }
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(b.vector().get(a.id()).0, 3);
    drop(a);

    // a restored; only b's handshake reaches it.
    let mut a = open(a_copy, 1, &clock);
    {
        let mut sb = Session::new(&mut b, Some(a.id())).unwrap();
        let hello = sb.poll_transmit(&b).unwrap().unwrap();
        assert!(matches!(Message::decode(&hello).unwrap(), Message::Hello(_)));
        let mut sa = Session::new(&mut a, Some(b.id())).unwrap();
        sa.handle(&mut a, &hello).unwrap();
    }
    let recovery = a.recovery().expect("a began a recovery");
    eprintln!("a's recovery: {recovery:?}");
    assert_eq!(recovery.target.0, 3);

    // b restored from a copy with none of a's writes.
    drop(b);
    let mut b = open(b_copy, 2, &clock);
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(a.recovery().is_some(), "b's vector holds nothing beyond a's, but b may hold entries beyond it");
    // An anti-entropy session reconciles whatever the vectors say: a complete transfer.
    sync_in_process(&mut a, &mut b, true).unwrap();
    eprintln!(
        "after two sessions: a's recovery {:?}, vector {:?}, b a member of a: {}",
        a.recovery(),
        a.vector(),
        a.membership().contains(b.id())
    );
    assert!(a.recovery().is_none(), "a waits for ever for a target no member holds");
    put(&mut a, "after", &clock);
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(keys(&b), ["after"]);
    assert_eq!(keys(&a), ["after"]);
}
