//! Restores with devices, from a hostile review (docs/design.md §8, §10): each test is one
//! finding, reproduced before it was fixed.

use lethe_engine::device::sync_device_in_process;
use lethe_engine::session::sync_in_process;
use lethe_engine::{
    Config, Dot, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role,
    Snapshot, Stamp, Storage,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
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

/// No dot names two different writes, anywhere.
fn assert_no_dot_reused(replicas: &[&Replica<MemoryStore>]) {
    let mut by_dot: BTreeMap<Dot, (Vec<u8>, Stamp)> = BTreeMap::new();
    for r in replicas {
        r.store()
            .snapshot()
            .unwrap()
            .scan_keys(&KeyRange::all(), &mut |e| {
                let seen = by_dot.entry(e.dot()).or_insert_with(|| (e.key.clone(), e.stamp));
                assert_eq!(*seen, (e.key.clone(), e.stamp), "dot {} names two writes (at {})", e.dot(), r.id());
                ControlFlow::Continue(())
            })
            .unwrap();
    }
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
    put(&mut hub, "x", &clock); // hub:2 again: the other member holds v under it
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
        assert_eq!(keys(r), ["h", "v", "w", "x"], "at {}", r.id());
    }
    assert_eq!(hub.digest(), other.digest());
    assert_eq!(hub.digest(), phone.digest());
    assert_no_dot_reused(&[&hub, &other, &phone]);
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

/// Finding 6. The hub is restored from a backup older than device-record changes the other
/// member merged (the other member's `records_seen` for the hub is beyond the restored hub's
/// records clock). A removal made at the restored hub must still reach the other member: its
/// records clock must not stay below what the other member already merged from it.
#[test]
fn a_removal_at_a_member_restored_from_an_older_copy_reaches_its_peer() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    let mut tablet = open_device(MemoryStore::new(), 101, &clock);
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let backup = hub.store().clone();
    hub.enrol_device(tablet.id()).unwrap();
    for _ in 0..3 {
        clock.advance(1);
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut tablet, &mut hub).unwrap();
    }
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let merged = other.records_seen(hub.id());
    drop(hub);

    let mut hub = open_member(backup, 1, &clock);
    assert!(hub.devices().clock() < merged, "the copy's records clock is behind what the peer merged");
    assert!(hub.remove_device(phone.id()).unwrap());
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
    }
    assert!(other.devices().is_revoked(phone.id()), "the removal at the restored hub never reached its peer");
    assert!(hub.devices().clock() > merged, "the restored hub's records clock passed what the peer merged");
}

/// Runs a member session from `a` to `b` in which `b`'s handshake says it merged `a`'s device
/// records up to `records_seen`.
fn sync_claiming_records_seen(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>, records_seen: u64) {
    use lethe_engine::session::{Message, Session};
    let mut sa = Session::new(a, Some(b.id())).unwrap();
    let mut sb = Session::new(b, Some(a.id())).unwrap();
    for _ in 0..20 {
        while let Some(f) = sa.poll_transmit(a).unwrap() {
            sb.handle(b, &f).unwrap();
        }
        while let Some(f) = sb.poll_transmit(b).unwrap() {
            let f = match Message::decode(&f).unwrap() {
                Message::Hello(mut hello) => {
                    hello.records_seen = records_seen;
                    Message::Hello(hello).encode().unwrap()
                }
                _ => f,
            };
            sa.handle(a, &f).unwrap();
        }
    }
}

/// Finding 6's bound: a peer claiming to have merged this member's records more than
/// `RECORDS_CLOCK_CLAIM_MAX` beyond its records clock is refused and counted, and the clock does
/// not move; one within the bound moves it `RECORDS_CLOCK_GAP_MAX` past the claim.
#[test]
fn a_records_claim_beyond_the_gap_bound_is_refused_and_counted() {
    use lethe_engine::device::records::{RECORDS_CLOCK_CLAIM_MAX, RECORDS_CLOCK_GAP_MAX};
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, _phone) = two_members_and_a_phone(&clock);
    let before = hub.devices().clock();
    sync_claiming_records_seen(&mut hub, &mut other, before + RECORDS_CLOCK_CLAIM_MAX + 1);
    assert_eq!(hub.records_clock_claims_refused(), 1);
    assert_eq!(hub.devices().clock(), before, "a refused claim moves nothing");
    sync_claiming_records_seen(&mut hub, &mut other, u64::MAX);
    assert_eq!(hub.records_clock_claims_refused(), 2);
    sync_claiming_records_seen(&mut hub, &mut other, before + RECORDS_CLOCK_CLAIM_MAX);
    assert_eq!(hub.records_clock_claims_refused(), 2);
    assert!(hub.devices().clock() > before + RECORDS_CLOCK_CLAIM_MAX + RECORDS_CLOCK_GAP_MAX, "jumped past the claim");
}

/// Finding 7's remaining gap (docs/design.md §8): a backup of a device's store taken after a
/// run (not its first to write) made writes and before that run's first session holds the
/// run's open point. Restored, the device takes those writes for its own run's, re-numbers
/// them above the hub's cursor, and one the hub admitted, deleted and collected since comes
/// back. The restored device cannot tell that copy from a restart of the run.
#[test]
fn a_backup_of_a_later_runs_unsent_writes_brings_back_no_collected_delete() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    put(&mut phone, "a", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let store = phone.store().clone();
    drop(phone);
    let mut phone = open_device(store, 100, &clock);
    put(&mut phone, "kept", &clock);
    put(&mut phone, "deleted", &clock);
    let backup = phone.store().clone();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    hub.delete("deleted").unwrap();
    for _ in 0..3 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 0, "the delete is collected");
    drop(phone);

    let mut phone = open_device(backup, 100, &clock);
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    assert_eq!(hub.get(b"deleted").unwrap(), None, "a deleted, collected write came back");
    assert_eq!(keys(&hub), ["a", "kept"]);
}

/// Finding 6 with a third member: the restored hub jumps its records clock past what the
/// other member merged, and the third member had merged one change more. Jumping just past
/// the first claim would give the re-sent records clock values the third member takes for
/// merged; the removal must reach both.
#[test]
fn a_removal_at_a_restored_member_reaches_a_peer_that_merged_more_than_the_first_one_met() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    let mut third = open_member(MemoryStore::new(), 3, &clock);
    for m in [&mut hub, &mut other] {
        m.enrol_member(third.id()).unwrap();
        third.enrol_member(m.id()).unwrap();
    }
    sync_in_process(&mut hub, &mut third, false).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let backup = hub.store().clone();
    for _ in 0..3 {
        clock.advance(1);
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    sync_in_process(&mut hub, &mut other, false).unwrap();
    hub.enrol_device(ReplicaId(101)).unwrap();
    sync_in_process(&mut hub, &mut third, false).unwrap();
    assert!(other.records_seen(hub.id()) < third.records_seen(hub.id()), "the third member merged more");
    drop(hub);

    let mut hub = open_member(backup, 1, &clock);
    assert!(hub.remove_device(phone.id()).unwrap());
    sync_in_process(&mut hub, &mut other, false).unwrap();
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut third, false).unwrap();
    }
    assert!(other.devices().is_revoked(phone.id()), "the removal never reached the other member");
    assert!(third.devices().is_revoked(phone.id()), "the removal never reached the third member");
}
