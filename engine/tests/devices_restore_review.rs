//! Restores with devices, from a hostile review (docs/design.md §8, §10): each test is one
//! finding, reproduced before it was fixed.

use lethe_engine::device::sync_device_in_process;
use lethe_engine::session::sync_in_process;
use lethe_engine::{
    Config, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role,
};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn signed(mut r: Replica<MemoryStore>) -> Replica<MemoryStore> {
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

fn open_member(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    signed(Replica::open(store, ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap())
}

fn open_device(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    signed(Replica::open(store, ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn put(r: &mut Replica<MemoryStore>, key: &str, clock: &ManualClock) {
    clock.advance(1);
    r.put(key, key, PutOptions::default()).unwrap();
}

fn keys(r: &Replica<MemoryStore>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

/// Two members, the hub (id 1) and the other (id 2), and a phone enrolled at both.
fn two_members_and_a_phone(clock: &ManualClock) -> (Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>) {
    let mut hub = open_member(MemoryStore::new(), 1, clock);
    let mut other = open_member(MemoryStore::new(), 2, clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let phone = open_device(MemoryStore::new(), 100, clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    (hub, other, phone)
}

/// Finding 4. The hub admits the phone's `v` and `w` after its backup and the other member
/// takes them under the hub's dots; the hub is restored, and learns from the other member that
/// it lost those dots. The phone, told of the lost range, queues `v` and `w` again and uploads
/// them to the other member, whose id is higher: it holds the very writes under the hub's lost
/// dots, which win the LWW dot tie (lower member id) against a fresh copy of its own. Answered
/// "superseded", the phone would drop them, and the hub may reuse those dots for other writes.
#[test]
fn a_write_requeued_under_a_lost_dot_is_admitted_afresh_at_a_member_with_a_higher_id() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    put(&mut phone, "h", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let backup = hub.store().clone();
    put(&mut phone, "v", &clock);
    put(&mut phone, "w", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    assert_eq!(keys(&other), ["h", "v", "w"]);
    assert_eq!(other.get(b"v").unwrap().unwrap().dot.replica, hub.id(), "held under the hub's dot");

    drop(hub);
    let mut hub = open_member(backup, 1, &clock);
    // The first session shows the hub its lost dots; the second tells the other member.
    for _ in 0..2 {
        let _ = sync_in_process(&mut hub, &mut other, false);
    }
    assert!(!hub.lost_own().is_empty(), "the hub learnt it lost dots");
    assert!(!other.lost_of(hub.id()).is_empty(), "and told the other member");

    let outcome = sync_device_in_process(&mut phone, &mut other).unwrap();
    assert_eq!(outcome.device.requeued, 2, "the phone queued v and w again");
    for _ in 0..2 {
        let _ = sync_device_in_process(&mut phone, &mut other);
    }
    assert_eq!(keys(&phone), ["h", "v", "w"], "the phone dropped its re-queued writes");
    for key in [&b"v"[..], b"w"] {
        let at_other = other.get(key).unwrap().unwrap();
        assert_eq!(at_other.dot.replica, other.id(), "the other member holds it under a fresh dot of its own");
    }
    for _ in 0..3 {
        let _ = sync_in_process(&mut hub, &mut other, false);
        let _ = sync_device_in_process(&mut phone, &mut hub);
        let _ = sync_device_in_process(&mut phone, &mut other);
    }
    for r in [&hub, &other, &phone] {
        assert_eq!(keys(r), ["h", "v", "w"], "at {}", r.id());
    }
    assert_eq!(hub.digest(), other.digest());
    assert_eq!(hub.digest(), phone.digest());
}

/// Finding 7. The phone is restored from a backup made after its write `a`; the hub admitted
/// `a` and `b` since (cursor 2). The restored phone writes `new` (upload seq 2 again) and
/// restarts before its first session: what it knew when it was restored (its counter and
/// clock at open) must survive the restart, or the hub's cursor is no evidence of the reuse,
/// `new` stays at upload seq 2, is answered "known", and is dropped.
#[test]
fn a_restored_device_that_restarts_before_its_first_session_loses_no_write() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    put(&mut phone, "a", &clock);
    let backup = phone.store().clone();
    put(&mut phone, "b", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.devices().cursor(phone.id()).0, 2);
    drop(phone);

    let mut phone = open_device(backup, 100, &clock);
    put(&mut phone, "new", &clock);
    // Twice: the second run, which writes nothing, keeps the point too.
    for _ in 0..2 {
        let store = phone.store().clone();
        drop(phone);
        phone = open_device(store, 100, &clock);
    }
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    assert_eq!(keys(&hub), ["a", "b", "new"], "the restored phone's new write was lost");
    assert_eq!(keys(&phone), ["a", "b", "new"]);
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(hub.digest(), phone.digest());
}
