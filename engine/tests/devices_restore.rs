//! Operations the device tier must survive (docs/design.md §8, §10): a member restored from an
//! older copy while devices hold writes it admitted since the copy; a device restored from a
//! backup of its own store; writes answered `Pending` whose admitting member went away.

use lethe_engine::device::{anti_entropy_device_in_process, sync_device_in_process};
use lethe_engine::session::sync_in_process;
use lethe_engine::{
    Config, Dot, Entry, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role,
    Snapshot, Storage,
};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

mod common;
use common::{send_records_only, sync_losing_answers};

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

/// No dot names two different writes, anywhere.
fn assert_no_dot_reused(replicas: &[&Replica<MemoryStore>]) {
    let mut by_dot: BTreeMap<Dot, (Vec<u8>, lethe_engine::Stamp)> = BTreeMap::new();
    for r in replicas {
        for e in entries(r) {
            let seen = by_dot.entry(e.dot()).or_insert_with(|| (e.key.clone(), e.stamp));
            assert_eq!(*seen, (e.key.clone(), e.stamp), "dot {} names two writes (at {})", e.dot(), r.id());
        }
    }
}

/// One server H with two devices; H is restored from a copy made after the phone's first write.
/// Since the copy, H admitted more of the phone's writes and one of the tablet's, all under its
/// own dots, and the devices hold them; the restored H also takes a local write before it
/// meets any of them (a dot it already issued). No member holds any of it: the devices are the
/// only peers that know.
#[test]
fn a_single_server_restored_from_an_older_copy_takes_back_its_devices_writes_and_reuses_no_dot() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    let mut tablet = open_device(MemoryStore::new(), 101, &clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.enrol_device(tablet.id()).unwrap();
    put(&mut phone, "p1", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let backup = hub.store().clone();

    put(&mut phone, "p2", &clock);
    put(&mut phone, "p3", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    put(&mut tablet, "t1", &clock);
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.vector().get(hub.id()).0, 4);
    assert_eq!(keys(&phone), ["p1", "p2", "p3", "t1"]);

    drop(hub);
    let mut hub = open_member(backup, 1, &clock);
    put(&mut hub, "h1", &clock); // seq 2: the phone holds p2 under it

    // The phone's handshake shows the hub its writes up to 4.
    sync_device_in_process(&mut phone, &mut hub).expect("a restored hub serves the device that knows its writes");
    let all_keys = |r: &Replica<MemoryStore>| {
        let delta = r.delta_for(&lethe_engine::VersionVector::new()).unwrap();
        (delta.entries.len(), entries(r).len())
    };
    let (d, e) = all_keys(&phone);
    assert_eq!(d, e, "the phone's delta from nothing holds every entry it stores");
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut tablet, &mut hub).unwrap();
    }
    assert_eq!(hub.recovery(), None, "the recovery ended: no member can send anything back");
    put(&mut hub, "h2", &clock);
    put(&mut phone, "p4", &clock);
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut tablet, &mut hub).unwrap();
    }
    anti_entropy_device_in_process(&mut phone, &mut hub).unwrap();
    anti_entropy_device_in_process(&mut tablet, &mut hub).unwrap();
    let all = ["h1", "h2", "p1", "p2", "p3", "p4", "t1"];
    assert_eq!(keys(&hub), all, "every acknowledged device write is back at the hub");
    assert_eq!(keys(&phone), all);
    assert_eq!(keys(&tablet), all);
    assert_eq!(hub.digest(), phone.digest());
    assert_eq!(hub.digest(), tablet.digest());
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(tablet.pending_uploads().unwrap(), 0);
    assert_no_dot_reused(&[&hub, &phone, &tablet]);
}

/// Two members: the hub H is restored while the other member M holds some of H's later writes
/// (it synced after p2) but not the last ones, which only the phone holds.
#[test]
fn a_restored_member_with_a_second_member_loses_no_device_write_and_reuses_no_dot() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut other = open_member(MemoryStore::new(), 2, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    put(&mut phone, "p1", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let backup = hub.store().clone();
    put(&mut phone, "p2", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap(); // other holds hub's writes up to 2
    put(&mut phone, "p3", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap(); // only the phone holds p3 (hub:3)
    put(&mut other, "o1", &clock);

    drop(hub);
    let mut hub = open_member(backup, 1, &clock);
    put(&mut hub, "h1", &clock); // hub:2 again

    // The phone meets the restored hub first; then the members sync; then everyone, twice.
    let _ = sync_device_in_process(&mut phone, &mut hub);
    for _ in 0..3 {
        let _ = sync_in_process(&mut hub, &mut other, false);
        let _ = sync_device_in_process(&mut phone, &mut hub);
        let _ = sync_device_in_process(&mut phone, &mut other);
    }
    assert_eq!(hub.recovery(), None);
    put(&mut hub, "h2", &clock);
    for anti_entropy in [false, true, false] {
        sync_in_process(&mut hub, &mut other, anti_entropy).unwrap();
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut phone, &mut other).unwrap();
    }
    anti_entropy_device_in_process(&mut phone, &mut hub).unwrap();
    let all = ["h1", "h2", "o1", "p1", "p2", "p3"];
    assert_eq!(keys(&hub), all);
    assert_eq!(keys(&other), all);
    assert_eq!(keys(&phone), all);
    assert_eq!(hub.digest(), other.digest());
    assert_eq!(hub.digest(), phone.digest());
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_no_dot_reused(&[&hub, &other, &phone]);
}

/// A device and its backup: the device writes `kept` and `deleted`, is copied, writes
/// `after-backup`, and the hub admits all three; the hub then deletes `deleted` and collects
/// the delete. Returns the hub, the copy and the hub's counter.
fn hub_and_device_backup(clock: &ManualClock) -> (Replica<MemoryStore>, MemoryStore, Dot) {
    let mut hub = open_member(MemoryStore::new(), 1, clock);
    let mut phone = open_device(MemoryStore::new(), 100, clock);
    hub.enrol_device(phone.id()).unwrap();
    put(&mut phone, "kept", clock);
    put(&mut phone, "deleted", clock);
    let backup = phone.store().clone();
    put(&mut phone, "after-backup", clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let kept_dot = hub.get(b"kept").unwrap().unwrap().dot;
    hub.delete("deleted").unwrap();
    for _ in 0..3 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 0, "the delete is collected");
    (hub, backup, kept_dot)
}

/// The device restored from its backup: its queue holds `kept` and `deleted`, which the hub
/// processed already. Neither is applied twice, the deleted one does not come back, and a
/// write made afterwards is admitted.
#[test]
fn a_restored_device_re_uploads_what_members_processed_without_applying_it_twice_or_resurrecting_it() {
    let clock = ManualClock::new(T0);
    let (mut hub, backup, kept_dot) = hub_and_device_backup(&clock);
    let issued = hub.vector().get(hub.id());
    let mut phone = open_device(backup, 100, &clock);
    assert_eq!(phone.pending_uploads().unwrap(), 2, "the copy's queue: kept and deleted");
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.get(b"deleted").unwrap(), None, "a deleted, collected write came back");
    assert_eq!(hub.get(b"kept").unwrap().unwrap().dot, kept_dot, "a processed write was applied again");
    assert_eq!(hub.vector().get(hub.id()), issued, "no new dot");
    put(&mut phone, "new", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    anti_entropy_device_in_process(&mut phone, &mut hub).unwrap();
    let all = ["after-backup", "kept", "new"];
    assert_eq!(keys(&hub), all);
    assert_eq!(keys(&phone), all);
    assert_eq!(hub.digest(), phone.digest());
    assert_eq!(phone.pending_uploads().unwrap(), 0);
}

/// The restored device writes before it meets the hub, up to the hub's cursor again: upload
/// seq 3, which the hub took for `after-backup`. The new write is not taken for that one.
#[test]
fn a_restored_device_that_writes_up_to_the_cursor_again_loses_no_write() {
    let clock = ManualClock::new(T0);
    let (mut hub, backup, kept_dot) = hub_and_device_backup(&clock);
    let issued = hub.vector().get(hub.id());
    let mut phone = open_device(backup, 100, &clock);
    put(&mut phone, "new", &clock);
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    anti_entropy_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.get(b"deleted").unwrap(), None);
    assert_eq!(hub.get(b"kept").unwrap().unwrap().dot, kept_dot);
    assert_eq!(hub.vector().get(hub.id()).0, issued.0 + 1, "one new dot: the new write's");
    let all = ["after-backup", "kept", "new"];
    assert_eq!(keys(&hub), all);
    assert_eq!(keys(&phone), all);
    assert_eq!(hub.digest(), phone.digest());
    assert_eq!(phone.pending_uploads().unwrap(), 0);
}

/// The hub admits the phone's write, the answer is lost, and only the hub's device records (the
/// cursor) reach the other member before the operator removes the hub. The other member cannot
/// ever see the hub's admission: it must not answer `Pending` for ever, and admits it once.
#[test]
fn a_write_pending_on_a_removed_members_admission_is_admitted_by_another_member_once() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut other = open_member(MemoryStore::new(), 2, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    sync_device_in_process(&mut phone, &mut other).unwrap();
    put(&mut phone, "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    assert!(hub.get(b"w").unwrap().is_some(), "the hub admitted it");
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
    send_records_only(&mut hub, &mut other);
    assert_eq!(other.devices().cursor(phone.id()).0, 1, "the other member has the hub's cursor");
    assert!(other.get(b"w").unwrap().is_none(), "and not the write");
    other.remove_member(hub.id()).unwrap();
    drop(hub);

    sync_losing_answers(&mut phone, &mut other);
    let issued = other.vector().get(other.id());
    for _ in 0..3 {
        sync_device_in_process(&mut phone, &mut other).unwrap();
    }
    assert_eq!(phone.pending_uploads().unwrap(), 0, "settled, not pending for ever");
    assert_eq!(other.get(b"w").unwrap().unwrap().value, b"w");
    assert_eq!(other.vector().get(other.id()), issued, "admitted once: the lost answer's upload, not again");
    assert_eq!(phone.digest(), other.digest());
}

/// The hub admits the phone's write after its backup was made, the answer is lost, the hub's
/// records (the cursor) reach the other member, and the hub is restored from the backup: no
/// peer holds the write's dot, so nothing shows the hub it lost it. Neither member may answer
/// the phone's upload as "known" (it would drop the write) or leave it pending for ever.
/// (Known gap: had the phone come to the other member only after the restored hub reused the
/// dot and the other member took it, the other member would answer "known": it cannot tell.)
#[test]
fn a_write_whose_admitting_member_was_restored_before_anyone_saw_it_is_admitted_again() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut other = open_member(MemoryStore::new(), 2, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let backup = hub.store().clone();
    put(&mut phone, "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    send_records_only(&mut hub, &mut other);
    drop(hub);
    let mut hub = open_member(backup, 1, &clock);
    // The phone meets the other member: it never saw the hub's admission, and never will.
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut other).unwrap();
    }
    assert_eq!(phone.pending_uploads().unwrap(), 0, "settled, not pending for ever");
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut phone, &mut other).unwrap();
    }
    for r in [&hub, &other, &phone] {
        assert_eq!(keys(r), ["w"], "at {}", r.id());
    }
    assert_no_dot_reused(&[&hub, &other, &phone]);
}

/// The phone's first write is admitted by the hub, whose cursor claim (not its entries) reaches
/// the other member; the other member admits the phone's second write itself, the answer is
/// lost, and it deletes the key and collects the tombstone alone (hub evicted, phone lapsed).
/// The re-uploaded write is at or below the other member's *own* claim: it applied it itself,
/// so it must not apply it again (I11), let alone bring it back after its delete, even though
/// it has not seen the hub's admission of the first write (seq 1, below the write's seq).
#[test]
fn a_member_never_admits_again_a_write_its_own_cursor_claim_covers() {
    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    let clock = ManualClock::new(T0);
    let mut hub = open_member(MemoryStore::new(), 1, &clock);
    let mut other = open_member(MemoryStore::new(), 2, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let mut phone = open_device(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    put(&mut phone, "a", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    send_records_only(&mut hub, &mut other);
    assert_eq!(other.devices().cursor(phone.id()).0, 1, "the other member has the hub's claim");
    assert!(other.get(b"a").unwrap().is_none(), "and not the hub's entries");

    put(&mut phone, "w", &clock);
    sync_losing_answers(&mut phone, &mut other);
    assert!(other.get(b"w").unwrap().is_some(), "the other member admitted the second write");
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
    assert_eq!(other.devices().cursor(phone.id()).0, 2);
    clock.advance(10);
    other.delete("w").unwrap();
    clock.advance(31 * DAY_MS);
    for _ in 0..3 {
        other.collect_garbage().unwrap();
    }
    assert_eq!(other.tombstone_count(), 0, "the other member collected its delete");

    let issued = other.vector().get(other.id());
    sync_losing_answers(&mut phone, &mut other);
    assert_eq!(other.vector().get(other.id()), issued, "the write was applied a second time");
    assert!(other.get(b"w").unwrap().is_none(), "the write came back after its delete");
}
