//! A replica's own clock stepping ahead and back (docs/design.md §10): it must not cut itself off.
//! Peers refuse stamps beyond `max_drift_ms`, so a write stamped during a step forward would make
//! every batch holding it refused, for as long as the step. The handshake carries wall time; a
//! replica that finds itself ahead of its peers refuses local writes, and what it already stamped
//! in their future is held back from them (the rest goes) until their clocks reach it.

use lethe_engine::session::sync_in_process;
use lethe_engine::{Config, Error, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap()
}

fn keys(r: &Replica<MemoryStore>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

#[test]
fn a_write_stamped_during_a_step_ahead_waits_for_the_peers_clocks_and_cuts_nothing_off() {
    let (ca, cb) = (ManualClock::new(T0), ManualClock::new(T0));
    let (mut a, mut b) = (replica(1, &ca), replica(2, &cb));
    b.put("before", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();

    // b's clock steps an hour ahead for one put, then is set right again.
    cb.set(T0 + HOUR_MS);
    let future = b.put("during", "v", PutOptions::default()).unwrap();
    assert_eq!(future.stamp.hlc.wall_ms(), T0 + HOUR_MS, "b could not know its clock was wrong");
    ca.advance(1_000);
    cb.set(T0 + 1_000);
    a.put("from-a", "v", PutOptions::default()).unwrap();
    // b's clock is right again but its HLC is an hour ahead: it says so instead of stamping the
    // future.
    let refused = b.put("after", "v", PutOptions::default()).unwrap_err();
    assert!(matches!(refused, Error::ClockAheadOfPeers { .. }), "{refused}");

    // Sessions still run both ways: the future write is held back, nothing is refused whole.
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(keys(&a), ["before", "from-a"]);
    assert_eq!(keys(&b), ["before", "during", "from-a"]);
    let cc = ManualClock::new(T0 + 1_000);
    let mut c = replica(3, &cc);
    sync_in_process(&mut c, &mut b, false).unwrap();
    assert_eq!(keys(&c), ["before", "from-a"], "a fresh replica gets everything it accepts");

    // An hour later every clock has reached the write: it goes, and b writes again.
    for clock in [&ca, &cb, &cc] {
        clock.advance(HOUR_MS);
    }
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut c, &mut b, false).unwrap();
    b.put("after", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut c, &mut b, false).unwrap();
    for r in [&a, &b, &c] {
        assert_eq!(keys(r), ["after", "before", "during", "from-a"]);
    }
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn a_replica_whose_clock_is_ahead_of_its_peers_refuses_local_writes_until_it_is_set_right() {
    let (ca, cb) = (ManualClock::new(T0), ManualClock::new(T0));
    let (mut a, mut b) = (replica(1, &ca), replica(2, &cb));
    cb.set(T0 + HOUR_MS);
    // The handshake shows b that a's clock is an hour behind its own.
    sync_in_process(&mut a, &mut b, false).unwrap();
    let refused = b.put("k", "v", PutOptions::default()).unwrap_err();
    assert!(matches!(refused, Error::ClockAheadOfPeers { .. }), "{refused}");
    assert!(refused.to_string().contains("check the system clock"), "{refused}");
    assert!(keys(&b).is_empty(), "nothing was written");
    // a's clock is the one that is right; set b's right and it writes again.
    cb.set(T0 + 500);
    b.put("k", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(keys(&a), ["k"]);
}

#[test]
fn a_replica_whose_clock_stepped_back_keeps_its_stamps_when_its_peers_agree_with_them() {
    let (ca, cb) = (ManualClock::new(T0), ManualClock::new(T0));
    let (mut a, mut b) = (replica(1, &ca), replica(2, &cb));
    let first = b.put("k", "v1", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    // b's clock falls an hour behind; its peers' clocks are right, so its stamps are not in their
    // future and nothing is re-stamped: the HLC carries on from where it was.
    cb.set(T0 - HOUR_MS);
    ca.advance(10);
    sync_in_process(&mut a, &mut b, false).unwrap();
    let second = b.put("k", "v2", PutOptions::default()).unwrap();
    assert!(second.stamp > first.stamp);
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(a.get(b"k").unwrap().unwrap().value, b"v2");
}

#[test]
fn a_step_ahead_after_a_handshake_is_seen_at_the_next_write_not_at_the_next_handshake() {
    let (ca, cb) = (ManualClock::new(T0), ManualClock::new(T0));
    let (mut a, mut b) = (replica(1, &ca), replica(2, &cb));
    sync_in_process(&mut a, &mut b, false).unwrap();
    b.put("before", "v", PutOptions::default()).unwrap();
    // b's wall clock steps an hour ahead with no time passing: a's clock, as b measured it a
    // moment ago, has not moved an hour, so b's next stamp would be an hour in a's future.
    cb.step(i64::try_from(HOUR_MS).unwrap());
    let refused = b.put("during", "v", PutOptions::default()).unwrap_err();
    assert!(matches!(refused, Error::ClockAheadOfPeers { .. }), "{refused}");
    assert_eq!(keys(&b), ["before"], "nothing was written");
    // Set right again, b writes at once.
    cb.step(-i64::try_from(HOUR_MS).unwrap());
    b.put("after", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(keys(&a), ["after", "before"]);
}
