//! The device tier (docs/design.md §8): member-assigned dots, the upload queue and its capped
//! acknowledgement, device records and removal, the horizon bootstrap, and what a device may
//! not do (I9–I12). Tests with figures print them (run with `--nocapture`).

use lethe_engine::device::{DeviceService, DeviceSession, sync_device_in_process};
use lethe_engine::session::{Message, SyncError, sync_in_process};
use lethe_engine::{
    Config, Dot, Entry, Hlc, InsecureTestSigner, ManualClock, MemoryStore, Payload, PutOptions, Replica, ReplicaId,
    Role, Seq, Stamp, Value, WriteBatch,
};
use std::sync::Arc;

mod common;
use common::sync_losing_answers;

const T0: u64 = 1_700_000_000_000;
const HUB: ReplicaId = ReplicaId(1);

/// Every replica here signs its acknowledgements with the stand-in (`sign.rs`), so the byte
/// figures include a signature per member record, device handshake and `Ack`.
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

fn vv(pairs: &[(u64, u64)]) -> lethe_engine::VersionVector {
    pairs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
}

fn key(i: u64) -> Vec<u8> {
    let h = blake3::hash(&i.to_le_bytes());
    format!("user:{}", &h.to_hex()[..19]).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let h = blake3::hash(&(i ^ 0x5555).to_le_bytes());
    h.to_hex().as_str().repeat(2).as_bytes()[..100].to_vec()
}

fn write_keys(r: &mut Replica<MemoryStore>, keys: std::ops::Range<u64>) {
    let mut batch = WriteBatch::new();
    for i in keys {
        batch.put(key(i), value(i), PutOptions::default());
        if batch.len() == 1000 {
            r.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    if !batch.is_empty() {
        r.write(batch).unwrap();
    }
}

fn delete_keys(r: &mut Replica<MemoryStore>, keys: std::ops::Range<u64>) {
    let mut batch = WriteBatch::new();
    for i in keys {
        batch.delete(key(i));
        if batch.len() == 1000 {
            r.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    if !batch.is_empty() {
        r.write(batch).unwrap();
    }
}

#[test]
fn a_device_write_is_stamped_by_the_device_numbered_by_the_member_and_read_at_once() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    let receipt = phone.put("note", "written offline", PutOptions::default()).unwrap();
    assert_eq!(phone.get(b"note").unwrap().unwrap().value, b"written offline", "reads see it at once");
    assert_eq!(phone.pending_uploads().unwrap(), 1);

    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!((out.member.uploaded, out.member.admitted), (1, 1));
    let at_hub = hub.get(b"note").unwrap().unwrap();
    assert_eq!(at_hub.stamp, receipt.stamp, "the device's stamp: LWW stays real-time order");
    assert_eq!(at_hub.dot.replica, HUB, "the member's dot");
    assert_eq!(phone.get(b"note").unwrap().unwrap().dot, at_hub.dot, "the device took the member's dot");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert!(hub.vector().get(phone.id()) == Seq(0), "vectors have no component per device");
    assert!(!phone.members_vector().iter().any(|(r, _)| r == phone.id()));

    // A write from elsewhere reaches the phone at its next session.
    hub.put("from-server", "hello", PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(phone.get(b"from-server").unwrap().unwrap().value, b"hello");
    assert_eq!(out.device.download.live_received, 1);
    assert_eq!(hub.devices().get(phone.id()).unwrap().acked.as_ref(), Some(hub.vector()));
}

#[test]
fn an_upload_whose_answer_is_lost_is_applied_once() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    for i in 0..3 {
        phone.put(key(i), value(i), PutOptions::default()).unwrap();
    }
    sync_losing_answers(&mut phone, &mut hub);
    assert_eq!(hub.vector().get(HUB), Seq(3), "admitted once");
    assert_eq!(phone.pending_uploads().unwrap(), 3, "the device never heard");
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!((out.member.uploaded, out.member.known, out.member.admitted), (3, 0, 3));
    assert_eq!(hub.vector().get(HUB), Seq(3), "applied once: the cursor answered with the dots held");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    for i in 0..3 {
        assert_eq!(phone.get(&key(i)).unwrap().unwrap().dot, hub.get(&key(i)).unwrap().unwrap().dot);
    }
}

#[test]
fn a_queued_write_that_lost_to_something_newer_is_never_uploaded() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    phone.put("k", "old", PutOptions::default()).unwrap();
    phone.put("k", "new", PutOptions::default()).unwrap();
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the first write was replaced: not queued");
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.uploaded, 1);
    assert_eq!(hub.get(b"k").unwrap().unwrap().value, b"new");
}

#[test]
fn the_acknowledgement_waits_for_the_oldest_queued_write_so_a_concurrent_delete_stays() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.put("k", "v1", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    // Concurrent: the hub deletes k while the offline phone writes k2 (it has not seen the delete).
    clock.advance(10);
    hub.delete("k").unwrap();
    phone.put("k2", "offline", PutOptions::default()).unwrap();
    // The phone syncs, but the answers to its upload are lost: its write stays queued, so its
    // acknowledgement stays at the base of that write and the delete is not stable.
    sync_losing_answers(&mut phone, &mut hub);
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.known + out.member.admitted, 1);
    for _ in 0..3 {
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 0, "collected once the phone's queue emptied and it acknowledged");

    // A write made while a session runs (after its handshake, so not uploaded in it) stays
    // queued when the session's download brings a delete the write did not see: the device's
    // acknowledgement stays at the write's base, and the delete is not stable.
    let mut tablet = device(101, &clock);
    hub.enrol_device(tablet.id()).unwrap();
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    clock.advance(10);
    let delete = hub.delete("k2").unwrap();
    let mut ds = DeviceSession::new(&mut tablet, Some(HUB)).unwrap();
    let mut ms = DeviceService::new(&mut hub, Some(tablet.id())).unwrap();
    while let Some(f) = ds.poll_transmit(&tablet).unwrap() {
        ms.handle(&mut hub, &f).unwrap();
    }
    tablet.put("k3", "written during the session", PutOptions::default()).unwrap();
    for _ in 0..4 {
        while let Some(f) = ms.poll_transmit(&hub).unwrap() {
            ds.handle(&mut tablet, &f).unwrap();
        }
        while let Some(f) = ds.poll_transmit(&tablet).unwrap() {
            ms.handle(&mut hub, &f).unwrap();
        }
    }
    assert!(ds.is_finished() && ms.is_finished());
    assert!(tablet.vector().covers(delete.dot), "the tablet has the delete");
    let acked = hub.devices().get(tablet.id()).unwrap().acked.clone().unwrap();
    assert!(!acked.covers(delete.dot), "but its acknowledgement stops at its queued write's base: {acked:?}");
    for _ in 0..3 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 1, "the delete of k2 waits for the tablet's queued write");
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    for _ in 0..2 {
        // The second step waits for every device to cover the admitted write, the phone too.
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 0, "collected once the write is admitted and acknowledged");
}

#[test]
fn a_device_cannot_upload_another_replicas_writes_and_nothing_changes() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.enrol_device(ReplicaId(101)).unwrap();
    phone.put("mine", "v", PutOptions::default()).unwrap();
    let mut ms = DeviceService::new(&mut hub, Some(phone.id())).unwrap();
    let mut ds = DeviceSession::new(&mut phone, Some(HUB)).unwrap();
    let hello = ds.poll_transmit(&phone).unwrap().unwrap();
    ms.handle(&mut hub, &hello).unwrap();
    let before = (hub.vector().clone(), hub.digest());
    let forged = |stamped: u64, numbered: u64| Entry {
        key: b"theirs".to_vec(),
        stamp: Stamp { hlc: Hlc::new(T0, 0), replica: ReplicaId(stamped) },
        dot: Dot { replica: ReplicaId(numbered), seq: Seq(1) },
        payload: Payload::Value(Value { bytes: b"forged".to_vec(), expires_at_ms: None, metadata: None }),
    };
    for (stamped, numbered) in [(101, 101), (101, 100), (100, 1), (1, 1)] {
        let frame = Message::Upload { entries: vec![forged(stamped, numbered)], last: true }.encode().unwrap();
        let err = ms.handle(&mut hub, &frame).unwrap_err();
        assert!(matches!(err, SyncError::Malformed(_)), "{err}");
    }
    assert_eq!((hub.vector().clone(), hub.digest()), before);
    assert_eq!(hub.get(b"theirs").unwrap(), None);
}

#[test]
fn a_removed_device_is_refused_and_stops_holding_collection_back_at_once() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut lost = device(100, &clock);
    hub.enrol_device(lost.id()).unwrap();
    sync_device_in_process(&mut lost, &mut hub).unwrap();
    write_keys(&mut hub, 0..100);
    delete_keys(&mut hub, 0..100);
    for _ in 0..3 {
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 100, "the lost device has not acknowledged the deletes");
    assert!(hub.remove_device(lost.id()).unwrap());
    hub.collect_garbage().unwrap();
    hub.collect_garbage().unwrap();
    assert_eq!(hub.tombstone_count(), 0, "two GC rounds after the removal");
    lost.put("after", "removal", PutOptions::default()).unwrap();
    let err = sync_device_in_process(&mut lost, &mut hub).unwrap_err();
    assert!(matches!(err, SyncError::NotEnrolled(d) if d == lost.id()), "{err}");
    assert_eq!(hub.get(b"after").unwrap(), None, "its writes reach no one");
    // Nothing brings it back but the operator.
    assert!(hub.devices().is_revoked(lost.id()));
    let mut reopened = Replica::open(hub.into_store(), HUB, Config::default(), Arc::new(clock.clone())).unwrap();
    assert!(reopened.devices().is_revoked(ReplicaId(100)), "removal is durable");
    assert!(matches!(sync_device_in_process(&mut lost, &mut reopened), Err(SyncError::NotEnrolled(_))));
}

#[test]
fn a_device_restored_from_an_older_copy_renumbers_its_queue_past_the_cursor() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    let backup = phone.store().clone();
    for i in 0..3 {
        phone.put(key(i), value(i), PutOptions::default()).unwrap();
    }
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.devices().cursor(phone.id()), Seq(3));
    // Restored from the backup: its next write reuses upload seq 1.
    let config = Config { role: Role::Device, ..Config::default() };
    let mut restored = Replica::open(backup, ReplicaId(100), config, Arc::new(clock.clone())).unwrap();
    clock.advance(5);
    restored.put("after-restore", "must not be lost", PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut restored, &mut hub).unwrap();
    assert!(out.device.renumbered);
    assert_eq!(out.member.admitted, 1);
    assert_eq!(hub.get(b"after-restore").unwrap().unwrap().value, b"must not be lost");
    assert_eq!(hub.devices().cursor(ReplicaId(100)), Seq(4));
    assert_eq!(restored.get(&key(0)).unwrap().unwrap().value, value(0), "the lost writes come back down");
}

#[test]
fn a_device_with_a_horizon_takes_entries_only_from_a_member_that_covers_it() {
    let clock = ManualClock::new(T0);
    let mut a = member(1, &clock);
    let mut b = member(2, &clock);
    a.enrol_member(b.id()).unwrap();
    b.enrol_member(a.id()).unwrap();
    let mut phone = device(100, &clock);
    a.enrol_device(phone.id()).unwrap();
    b.enrol_device(phone.id()).unwrap();
    a.put("only-at-a", "v", PutOptions::default()).unwrap();
    b.put("only-at-b", "v", PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut phone, &mut a).unwrap();
    assert_eq!(out.device.download.tombstones_received, 0);
    assert_eq!(phone.horizon(), Some(a.vector()), "a fresh bootstrap records its horizon");
    // b has not seen a's writes: its vector does not cover the horizon, so it sends nothing.
    let out = sync_device_in_process(&mut phone, &mut b).unwrap();
    assert_eq!(out.device.download.live_received, 0);
    assert_eq!(phone.get(b"only-at-b").unwrap(), None);
    // Once b has a's writes, it covers the horizon.
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_device_in_process(&mut phone, &mut b).unwrap();
    assert!(phone.get(b"only-at-b").unwrap().is_some());
}

#[test]
fn an_idle_device_session_costs_o_members_bytes_with_ten_thousand_devices_enrolled() {
    let clock = ManualClock::new(T0);
    let mut hubs: Vec<_> = (1..=3).map(|id| member(id, &clock)).collect();
    for h in &mut hubs {
        for other in 1..=3 {
            h.enrol_member(ReplicaId(other)).unwrap();
        }
    }
    // Enrolled at the first member only: the records travel to the others.
    for d in 0..10_000 {
        hubs[0].enrol_device(ReplicaId(1000 + d)).unwrap();
    }
    for (i, h) in hubs.iter_mut().enumerate() {
        h.put(format!("from-{i}"), "v", PutOptions::default()).unwrap();
    }
    let (first, rest) = hubs.split_at_mut(1);
    let busy = sync_in_process(&mut first[0], &mut rest[0], false).unwrap();
    println!("member session carrying 10,000 new device records: {} bytes", busy.a.bytes_sent);
    for h in rest.iter_mut() {
        sync_in_process(&mut first[0], h, false).unwrap();
    }
    sync_in_process(&mut first[0], &mut rest[0], false).unwrap();
    assert_eq!(hubs[2].devices().len(), 10_000, "every enrolment reached every member");
    let mut phone = device(1000, &clock);
    sync_device_in_process(&mut phone, &mut hubs[2]).unwrap();
    let idle = sync_device_in_process(&mut phone, &mut hubs[2]).unwrap();
    let bytes = idle.device.total_sent() + idle.device.total_received();
    println!(
        "idle device session, 10,000 devices and 3 members enrolled: {bytes} bytes both ways, {} trips",
        idle.trips
    );
    assert!(bytes <= 1024, "{bytes} bytes");
    // The phone's acknowledgement changed one record at the third member: it travels.
    let (first, rest) = hubs.split_at_mut(2);
    let one_changed = sync_in_process(&mut first[0], &mut rest[0], false).unwrap();
    println!(
        "member session with one device record changed: {} bytes both ways",
        one_changed.a.bytes_sent + one_changed.a.bytes_received
    );
    let idle = sync_in_process(&mut first[0], &mut rest[0], false).unwrap();
    let member_bytes = idle.a.bytes_sent + idle.a.bytes_received;
    println!("idle member session with 10,000 devices enrolled: {member_bytes} bytes both ways");
    assert!(member_bytes <= 4096, "{member_bytes} bytes");
}

#[test]
fn a_device_enrolled_at_one_member_syncs_with_another_and_a_removal_reaches_every_member() {
    let clock = ManualClock::new(T0);
    let mut a = member(1, &clock);
    let mut b = member(2, &clock);
    a.enrol_member(b.id()).unwrap();
    b.enrol_member(a.id()).unwrap();
    let mut phone = device(100, &clock);
    a.enrol_device(phone.id()).unwrap();
    assert!(matches!(sync_device_in_process(&mut phone, &mut b), Err(SyncError::NotEnrolled(_))));
    sync_in_process(&mut a, &mut b, false).unwrap();
    phone.put("k", "via b", PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut phone, &mut b).unwrap();
    assert_eq!(out.member.admitted, 1);
    // b's cursor for the phone reaches a: a re-upload there is not applied again.
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert_eq!(a.devices().cursor(phone.id()), Seq(1));
    assert_eq!(a.get(b"k").unwrap().unwrap().value, b"via b");
    // Removed at b, refused at a after one member session, and an older record from a does
    // not bring it back.
    b.remove_device(phone.id()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(a.devices().is_revoked(phone.id()));
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(b.devices().is_revoked(phone.id()) && a.devices().is_revoked(phone.id()));
    assert!(matches!(sync_device_in_process(&mut phone, &mut a), Err(SyncError::NotEnrolled(_))));
    // Enrolled again at a (a new epoch), it is back at a; b learned the removal, and there it
    // is final: a member's relayed epoch does not undo it (docs/design.md §9), only b's own
    // operator does.
    a.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(a.devices().is_enrolled(phone.id()) && b.devices().is_revoked(phone.id()));
    b.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(b.devices().is_enrolled(phone.id()));
    assert_eq!(b.devices().get(phone.id()).unwrap().epoch, a.devices().get(phone.id()).unwrap().epoch);
}

#[test]
fn a_fresh_device_gets_no_dead_record_while_another_device_holds_the_tombstones() {
    const N: u64 = 10_000;
    const D: u64 = 100_000;
    let clock = ManualClock::new(T0);
    // With history: N live after D deletes, and an offline device holding collection back.
    let mut hub = member(1, &clock);
    let mut offline = device(100, &clock);
    hub.enrol_device(offline.id()).unwrap();
    sync_device_in_process(&mut offline, &mut hub).unwrap();
    write_keys(&mut hub, 0..N + D);
    delete_keys(&mut hub, N..N + D);
    for _ in 0..3 {
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count() as u64, D, "pending: the offline device has not acknowledged");
    let mut fresh = device(101, &clock);
    hub.enrol_device(fresh.id()).unwrap();
    let with_history = sync_device_in_process(&mut fresh, &mut hub).unwrap();
    // Without history: the same N live keys, nothing deleted.
    let mut plain = member(1, &clock);
    write_keys(&mut plain, 0..N);
    let mut fresh2 = device(101, &clock);
    plain.enrol_device(fresh2.id()).unwrap();
    let no_history = sync_device_in_process(&mut fresh2, &mut plain).unwrap();
    let bytes = |o: &lethe_engine::device::DeviceOutcome| o.device.total_sent() + o.device.total_received();
    let (h, p) = (bytes(&with_history), bytes(&no_history));
    println!(
        "fresh device, N = {N} live after D = {D} deletes pending: {h} bytes, {} dead records; no history: {p} bytes ({:+.2}%)",
        with_history.device.download.tombstones_received,
        (h as f64 / p as f64 - 1.0) * 100.0
    );
    assert_eq!(with_history.device.download.tombstones_received, 0);
    assert_eq!(fresh.counts().live, N);
    assert!((h as f64) <= p as f64 * 1.02, "{h} against {p}");
    assert_eq!(fresh.digest(), plain.digest());
    // Removing the offline device lets two GC rounds collect every tombstone.
    hub.remove_device(offline.id()).unwrap();
    hub.collect_garbage().unwrap();
    hub.collect_garbage().unwrap();
    assert_eq!(hub.tombstone_count(), 0);
}

/// Found by the simulation (seed 74 of `lethe-sim`, I2 and I3): a device's GC step collected its
/// own queued delete before it was uploaded (a device's frontier was its own vector, which covers
/// its upload seqs), so the delete was lost and the older value came back from the member.
#[test]
fn a_device_gc_step_never_collects_a_queued_delete() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.put("k", "v1", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    clock.advance(10);
    phone.delete("k").unwrap();
    for _ in 0..3 {
        phone.collect_garbage().unwrap();
    }
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the delete is still queued");
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.get(b"k").unwrap(), None, "the delete reached the member");
    assert_eq!(phone.get(b"k").unwrap(), None, "and the old value did not come back");
}

#[test]
fn a_device_handshake_cannot_start_a_recovery_or_acknowledge_what_no_member_holds() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.put("k", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let claims = |vector: lethe_engine::VersionVector| {
        let hello = lethe_engine::device::DeviceHello(
            lethe_engine::session::PROTOCOL_VERSION,
            ReplicaId(100),
            vector.clone(),
            vector,
            None,
            false,
            false,
            T0,
            false,
            Vec::new(),
            None,
            Vec::new(),
        );
        Message::DeviceHello(hello).encode().unwrap()
    };
    // Writes of the hub beyond its counter: from a device, no evidence of a restore.
    let mut ms = DeviceService::new(&mut hub, Some(ReplicaId(100))).unwrap();
    assert!(ms.handle(&mut hub, &claims(vv(&[(1, 1_000)]))).is_err());
    assert!(hub.recovery().is_none(), "a device's claim started a recovery");
    hub.put("still", "writable", PutOptions::default()).unwrap();
    // A component of a replica that is not a member, or beyond what any member holds: the
    // acknowledgement must not hold collection back forever. Left out, not refused (R5-9: a
    // member removed since may be one).
    let mut ms = DeviceService::new(&mut hub, Some(ReplicaId(100))).unwrap();
    assert!(ms.handle(&mut hub, &claims(vv(&[(1, 2), (101, 971)]))).is_ok());
    let acked = hub.devices().get(ReplicaId(100)).unwrap().acked.clone().unwrap();
    assert_eq!(acked.get(ReplicaId(101)), Seq(0), "{acked:?}");
    hub.delete("k").unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    for _ in 0..3 {
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 0);
}

#[test]
fn a_device_ack_cannot_start_a_recovery_or_hold_collection_back_for_good() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.put("k", "v", PutOptions::default()).unwrap();
    // The session runs honestly up to the member's `Done`; the device then answers a forged Ack.
    let forge = |hub: &mut Replica<MemoryStore>, phone: &mut Replica<MemoryStore>, ack: lethe_engine::VersionVector| {
        let mut ds = DeviceSession::new(phone, Some(HUB)).unwrap();
        let mut ms = DeviceService::new(hub, Some(phone.id())).unwrap();
        while let Some(f) = ds.poll_transmit(phone).unwrap() {
            ms.handle(hub, &f).unwrap();
        }
        while let Some(f) = ms.poll_transmit(hub).unwrap() {
            ds.handle(phone, &f).unwrap();
        }
        ms.handle(hub, &Message::Ack(ack, None).encode().unwrap())
    };
    assert!(forge(&mut hub, &mut phone, vv(&[(1, 1_000)])).is_err());
    assert!(hub.recovery().is_none(), "a device's Ack started a recovery");
    hub.put("still", "writable", PutOptions::default()).unwrap();
    // Its own upload counter, a replica the hub knows no writes of: left out (R5-9).
    assert!(forge(&mut hub, &mut phone, vv(&[(1, 2), (100, 5)])).is_ok(), "its own upload counter");
    let acked = hub.devices().get(phone.id()).unwrap().acked.clone().unwrap();
    assert_eq!(acked.get(phone.id()), Seq(0), "{acked:?}");
    hub.delete("k").unwrap();
    clock.advance(1);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    for _ in 0..3 {
        hub.collect_garbage().unwrap();
    }
    assert_eq!(hub.tombstone_count(), 0, "collection goes on");
}

#[test]
fn a_re_uploaded_write_that_members_replaced_and_collected_since_is_dropped_at_the_device() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    phone.put("k", "old", PutOptions::default()).unwrap();
    phone.delete("gone").unwrap();
    sync_losing_answers(&mut phone, &mut hub);
    assert_eq!(phone.pending_uploads().unwrap(), 2, "the phone never heard the answers");
    // The hub deletes k, the phone stays silent past its lease, and the deletes are collected.
    hub.delete("k").unwrap();
    clock.advance(lethe_engine::device::DEVICE_LEASE_MS_DEFAULT + 1);
    for _ in 0..3 {
        hub.collect_garbage().unwrap();
    }
    assert_eq!((hub.tombstone_count(), hub.get(b"k").unwrap()), (0, None));
    // Back, the phone uploads both again: applied before, replaced and collected since.
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!((out.member.uploaded, out.member.known), (2, 2));
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(phone.get(b"k").unwrap(), None, "not kept live under the phone's own upload seq");
    assert_eq!(phone.tombstone_count(), 0, "nor its delete, which no member would ever collect for it");
    assert_eq!(phone.digest(), hub.digest());
}

#[test]
fn a_device_gets_an_anti_entropy_session_at_most_once_a_minute_at_a_member() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    write_keys(&mut hub, 0..50);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let mode = |out: &lethe_engine::device::DeviceOutcome| out.member.download.mode;
    let ae = lethe_engine::device::anti_entropy_device_in_process;
    assert_eq!(mode(&ae(&mut phone, &mut hub).unwrap()), Some(lethe_engine::session::Mode::Reconcile));
    // Asked again at once, it gets a delta: empty, it is in sync.
    let again = ae(&mut phone, &mut hub).unwrap();
    assert_eq!(mode(&again), Some(lethe_engine::session::Mode::Delta));
    assert_eq!(again.device.download.live_received, 0);
    clock.advance(lethe_engine::device::DEVICE_ANTI_ENTROPY_MIN_MS);
    assert_eq!(mode(&ae(&mut phone, &mut hub).unwrap()), Some(lethe_engine::session::Mode::Reconcile));
}

#[test]
fn a_member_refuses_uploads_from_a_device_that_does_not_read_the_answers() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    phone.put("mine", "v", PutOptions::default()).unwrap();
    let mut ms = DeviceService::new(&mut hub, Some(phone.id())).unwrap();
    let mut ds = DeviceSession::new(&mut phone, Some(HUB)).unwrap();
    let hello = ds.poll_transmit(&phone).unwrap().unwrap();
    ms.handle(&mut hub, &hello).unwrap();
    let upload = |seq: u64| {
        let entry = Entry {
            key: format!("k{seq}").into_bytes(),
            stamp: Stamp { hlc: Hlc::new(T0, seq as u16), replica: phone.id() },
            dot: Dot { replica: phone.id(), seq: Seq(seq) },
            payload: Payload::Value(Value { bytes: b"v".to_vec(), expires_at_ms: None, metadata: None }),
        };
        Message::Upload { entries: vec![entry], last: false }.encode().unwrap()
    };
    // The handshake's answer and two answers may wait; a third upload with them unread is refused
    // and changes nothing.
    for seq in 1..=2 {
        ms.handle(&mut hub, &upload(seq)).unwrap();
    }
    let before = (hub.vector().clone(), hub.digest(), hub.devices().cursor(phone.id()));
    let err = ms.handle(&mut hub, &upload(3)).unwrap_err();
    assert!(err.to_string().contains("answers unread"), "{err}");
    assert_eq!((hub.vector().clone(), hub.digest(), hub.devices().cursor(phone.id())), before);
}

#[test]
fn a_store_keeps_the_role_it_was_first_opened_with() {
    let clock = ManualClock::new(T0);
    let mut phone = device(100, &clock);
    phone.put("note", "queued", PutOptions::default()).unwrap();
    let store = phone.into_store();
    // Opened as a member, a device's store would drop its upload queue from sight for good.
    let err = Replica::open(store.clone(), ReplicaId(100), Config::default(), Arc::new(clock.clone())).unwrap_err();
    assert!(matches!(err, lethe_engine::Error::WrongRole { .. }), "{err}");
    assert!(err.to_string().contains("device"), "{err}");
    let config = Config { role: Role::Device, ..Config::default() };
    let phone = Replica::open(store, ReplicaId(100), config, Arc::new(clock.clone())).unwrap();
    assert_eq!(phone.pending_uploads().unwrap(), 1, "as a device again, the queue is there");
    let hub = member(1, &clock);
    let err = Replica::open(hub.into_store(), HUB, config, Arc::new(clock.clone())).unwrap_err();
    assert!(matches!(err, lethe_engine::Error::WrongRole { .. }), "{err}");
}

#[test]
fn a_device_still_syncs_after_a_member_whose_writes_it_holds_is_removed() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let mut other = member(2, &clock);
    let mut phone = device(100, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    hub.put("from-hub", "1", PutOptions::default()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    sync_device_in_process(&mut phone, &mut other).unwrap();
    assert_eq!(phone.get(b"from-hub").unwrap().unwrap().value, b"1");
    // The operator retires the hub: its writes stay, under its dots, in every vector.
    assert!(other.remove_member(hub.id()).unwrap());
    phone.put("after", "2", PutOptions::default()).unwrap();
    let outcome = sync_device_in_process(&mut phone, &mut other).expect("the device is not cut off");
    assert_eq!(outcome.member.admitted, 1, "{outcome:?}");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(other.get(b"after").unwrap().unwrap().value, b"2");
}
