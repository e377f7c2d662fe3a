//! Session drivers the device tests share: a device session whose answers are lost, a
//! member session cut after the device records, and forged records from a member. Each test
//! crate uses part of it.
#![allow(dead_code)]

use lethe_engine::device::records::RecordWire;
use lethe_engine::device::{DeviceService, DeviceSession};
use lethe_engine::membership::MemberInfo;
use lethe_engine::session::{Hello, Message, PROTOCOL_VERSION, Session};
use lethe_engine::{
    Batch, Config, Hlc, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, Replica, ReplicaId, Role, Storage,
};
use std::sync::Arc;

/// Runs a device session in which every frame from the member is lost once the member's
/// handshake has gone (the answers to the uploads among them); the device's frames all arrive.
pub fn sync_losing_answers(d: &mut Replica<MemoryStore>, m: &mut Replica<MemoryStore>) {
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

/// A member session from `a` to `b` cut right after `a`'s device records arrived: `b` has
/// `a`'s handshake (its signed acknowledgement) and records (the cursors), not its entries.
pub fn send_records_only(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>) {
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

/// A hostile `b` opens a session with `a` and sends `records` as its device records.
pub fn hostile_records(a: &mut Replica<MemoryStore>, b: &Replica<MemoryStore>, records: Vec<RecordWire>) {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        replica: b.id(),
        vector: b.vector().clone(),
        members: vec![MemberInfo::from(b.sign_ack(b.vector().clone()))],
        values: 1,
        anti_entropy: false,
        wall_ms: 1_700_000_000_000,
        records_seen: b.records_seen(a.id()),
        lost: Vec::new(),
    };
    let mut s = Session::new(a, Some(b.id())).unwrap();
    s.handle(a, &Message::Hello(hello).encode().unwrap()).unwrap();
    s.handle(a, &Message::Records(b.devices().clock() + 1, true, records).encode().unwrap()).unwrap();
}

/// `r` signing with the deterministic stand-in signer.
pub fn signed(mut r: Replica<MemoryStore>) -> Replica<MemoryStore> {
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

/// A signing member `id` on `store`, with the default configuration.
pub fn open_member_in(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    signed(Replica::open(store, ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap())
}

/// A signing device `id` on `store`.
pub fn open_device_in(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    signed(Replica::open(store, ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

/// The live keys of `r`, in order.
pub fn keys(r: &Replica<MemoryStore>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

/// `member`'s store with its own cursor claim for `device` as a member of the previous version
/// stored it (no stamp: `Hlc::UNKNOWN`); the member is closed, reopen it on the store.
pub fn store_with_legacy_own_claim(member: Replica<MemoryStore>, device: ReplicaId) -> MemoryStore {
    let mut record = member.devices().record(device).cloned().unwrap();
    record.cursors.get_mut(&member.id()).unwrap().4 = Hlc::UNKNOWN;
    let mut bytes = Vec::new();
    ciborium::into_writer(&record, &mut bytes).unwrap();
    let mut store = member.store().clone();
    drop(member);
    let mut batch = Batch::new();
    batch.set_device(device.0, bytes);
    store.commit(&batch).unwrap();
    store
}
