//! What a device may collect (docs/design.md §2.3, §8): only dead records under the members'
//! `collected` **that its own vector covers**, so that a collected delete stays known there
//! ("covered and absent") and a stale copy of an older version from a member that has not seen
//! the delete loses, as it does at the member that collected it.

use lethe_engine::device::{DeviceService, DeviceSession, sync_device_in_process};
use lethe_engine::session::{Message, sync_in_process};
use lethe_engine::{Config, Dot, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 3600 * 1000;

fn signed(mut r: Replica<MemoryStore>) -> Replica<MemoryStore> {
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

fn member(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    signed(Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap())
}

fn device(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    signed(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

/// A device session that ends before its download completes: every frame of the device reaches
/// the member, and the member's frames reach the device while `deliver` allows them; the first
/// one refused, and everything after it, is lost (the session is cut there).
fn cut_session(d: &mut Replica<MemoryStore>, m: &mut Replica<MemoryStore>, deliver: impl Fn(&Message) -> bool) {
    let mut ds = DeviceSession::new(d, Some(m.id())).unwrap();
    let mut ms = DeviceService::new(m, Some(d.id())).unwrap();
    for _ in 0..10 {
        while let Some(f) = ds.poll_transmit(d).unwrap() {
            ms.handle(m, &f).unwrap();
        }
        while let Some(f) = ms.poll_transmit(m).unwrap() {
            if !deliver(&Message::decode(&f).unwrap()) {
                return;
            }
            ds.handle(d, &f).unwrap();
        }
    }
    panic!("the session did not reach the frame to cut at");
}

/// Found by the simulation (seed 4107 of `lethe-sim`, I2 at a device): a device that received a
/// tombstone in a download that was cut before its end (its vector did not move past it) then
/// learnt from the member's handshake that the members had collected it, and collected it too.
/// The delete was then known nowhere on the device, neither as a record nor under its vector,
/// and an older version of the key, written by that very member before its delete, came back
/// from a second member that had been outside the first one's membership and never saw the
/// delete. At the member that collected the delete, that copy is covered and absent, so dead;
/// the write is a member's and not concurrent with the delete, so no exception excuses it.
#[test]
fn a_device_keeps_a_collected_tombstone_its_vector_does_not_cover() {
    let clock = ManualClock::new(T0);
    let mut a = member(1, &clock);
    let mut b = member(2, &clock);
    a.enrol_member(b.id()).unwrap();
    b.enrol_member(a.id()).unwrap();
    let mut phone = device(100, &clock);
    a.enrol_device(phone.id()).unwrap();
    b.enrol_device(phone.id()).unwrap();
    a.put("k", "old", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(b.get(b"k").unwrap().unwrap().value, b"old");
    // b goes silent; a deletes k; the phone, which has a write of its own queued (so it does not
    // bootstrap fresh), receives the tombstone but not the end of the download.
    clock.advance(10);
    a.delete("k").unwrap();
    let delete = Dot { replica: a.id(), seq: a.vector().get(a.id()) };
    phone.put("mine", "p", PutOptions::default()).unwrap();
    cut_session(&mut phone, &mut a, |m| !matches!(m, Message::Done(..)));
    assert_eq!(phone.get(b"k").unwrap(), None);
    assert_eq!(phone.tombstone_count(), 1, "the phone holds the tombstone");
    assert!(!phone.members_vector().covers(delete), "but its vector does not cover it");
    // Past both leases b is evicted at a and the phone's record lapses: a collects alone.
    clock.advance(31 * DAY_MS);
    for _ in 0..3 {
        a.collect_garbage().unwrap();
    }
    assert_eq!(a.tombstone_count(), 0, "a collected the delete");
    // The phone hears a's handshake (and its `collected`), and the session is cut there.
    cut_session(&mut phone, &mut a, |m| matches!(m, Message::MemberHello(_)));
    // Then it syncs with b, which still holds a's older value and never saw the delete.
    sync_device_in_process(&mut phone, &mut b).unwrap();
    assert_eq!(phone.get(b"k").unwrap(), None, "a's write from before its delete came back at the phone");
}
