//! Device cursors, epochs and answers a hostile review found wrong (docs/design.md §8, §9): a
//! member's own cursor claim, bounds on cursors and epochs from the wire, and what a device
//! holds for a key after an upload answered `Refused` or `Known`.

use lethe_engine::device::{DeviceService, DeviceSession};
use lethe_engine::session::{Message, Session, sync_in_process};
use lethe_engine::{Config, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn signed(mut r: Replica<MemoryStore>) -> Replica<MemoryStore> {
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

fn open_member(id: u64, config: Config, clock: &ManualClock) -> Replica<MemoryStore> {
    signed(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn open_device(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    signed(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn put(r: &mut Replica<MemoryStore>, key: &str, value: &str, clock: &ManualClock) {
    clock.advance(1);
    r.put(key, value, PutOptions::default()).unwrap();
}

/// Two members that know each other and a phone enrolled at both.
fn two_members_and_a_phone(clock: &ManualClock) -> (Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>) {
    let mut hub = open_member(1, Config::default(), clock);
    let mut other = open_member(2, Config::default(), clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let phone = open_device(100, clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    (hub, other, phone)
}

/// Runs a device session in which every frame from the member is lost once the member's
/// handshake has gone (the answers to the uploads among them).
fn sync_losing_answers(d: &mut Replica<MemoryStore>, m: &mut Replica<MemoryStore>) {
    let mut ds = DeviceSession::new(d, Some(m.id())).unwrap();
    let mut ms = DeviceService::new(m, Some(d.id())).unwrap();
    let mut handshake_delivered = false;
    for _ in 0..10 {
        while let Some(f) = ds.poll_transmit(d).unwrap() {
            ms.handle(m, &f).unwrap();
        }
        while let Some(f) = ms.poll_transmit(m).unwrap() {
            if !handshake_delivered {
                ds.handle(d, &f).unwrap();
                handshake_delivered = true;
            }
        }
    }
}

/// A member session from `a` to `b` cut right after `a`'s device records arrived: `b` has the
/// records (the cursors), not the entries.
fn send_records_only(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>) {
    let mut sa = Session::new(a, Some(b.id())).unwrap();
    let mut sb = Session::new(b, Some(a.id())).unwrap();
    while let Some(f) = sa.poll_transmit(a).unwrap() {
        sb.handle(b, &f).unwrap();
    }
    while let Some(f) = sb.poll_transmit(b).unwrap() {
        sa.handle(a, &f).unwrap();
    }
    while let Some(f) = sa.poll_transmit(a).unwrap() {
        match Message::decode(&f).unwrap() {
            Message::Records(_, last, _) => {
                sb.handle(b, &f).unwrap();
                if last {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Finding 2. The hub admits the phone's write at upload seq 1 and the answer is lost; only the
/// hub's cursor claim reaches the other member, which then admits the write itself on the "not
/// seen" path (under a fresh dot, its cursor not moving), the answer lost again. It deletes the
/// key and collects the delete alone (hub and phone past their leases). The re-uploaded write
/// is one it applied itself: it must not apply it a second time (I11), nor bring it back.
#[test]
fn a_write_a_member_admitted_on_the_not_seen_path_is_not_applied_again_after_its_delete_is_collected() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    put(&mut phone, "w", "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    assert!(hub.get(b"w").unwrap().is_some(), "the hub admitted it");
    send_records_only(&mut hub, &mut other);
    assert_eq!(other.devices().cursor(phone.id()).0, 1, "the other member has the hub's claim");
    assert!(other.get(b"w").unwrap().is_none(), "and not the hub's entries");

    sync_losing_answers(&mut phone, &mut other);
    assert!(other.get(b"w").unwrap().is_some(), "the other member admitted it on the not-seen path");
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
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
