//! One enrolled but hostile device (docs/design.md §9, I10: a device can change nothing but its
//! own writes): an arbitrary sequence of frames, built from the fuzzer's bytes with lists
//! repeated up to far beyond every bound, played against a member's side of device sessions
//! (opened again after each failure, as a reconnecting device would). Its handshakes name
//! itself, another device, a member or anyone, with vectors, acknowledgements, horizons, wall
//! times and signatures true or forged; its uploads carry its own writes or writes stamped by
//! anyone; its download frames are any of the sync flow's. Between them: GC steps, clock moves,
//! and an honest device's sessions with the member.
//!
//! Holds, after every frame: handling it allocated at most `MEMORY_FIXED_BYTES` plus
//! `MEMORY_PER_FRAME_BYTE` times its length; the member's members and devices are the enrolled
//! ones, unchanged; the honest device's record and the other member's are what their own
//! sessions left; every stored entry the honest replicas did not write is as it was, or the
//! member's local expiry or collection of it, or a write stamped by the hostile device and
//! numbered by the member; every vector is within `VECTOR_COMPONENTS_MAX`; the member's
//! handshakes still encode. At the end, the same of the member reopened from its store, and
//! every stored entry within the limits. Nothing panics (the fuzz build has overflow checks on).

#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::{Offered, Step, bounded_by_frame, bytes, entries_by, flow_message, replica_id, time_ms, vector};
use lethe_engine::device::message::{DeviceHello, SeqProof};
use lethe_engine::device::{DeviceService, Role, sync_device_in_process};
use lethe_engine::limits::VECTOR_COMPONENTS_MAX;
use lethe_engine::session::{Message, PROTOCOL_VERSION, Session};
use lethe_engine::sign::AckProof;
use lethe_engine::{
    Config, Entry, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, Payload, PutOptions, Replica, ReplicaId,
    SignedAck, Snapshot, Stamp, Storage,
};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;

const T0: u64 = common::T0;
/// The member under attack.
const ME: ReplicaId = ReplicaId(1);
/// Another member, enrolled and never heard from.
const OTHER: ReplicaId = ReplicaId(3);
/// The hostile device: the authenticated peer of every session it opens.
const HOSTILE: ReplicaId = ReplicaId(100);
/// An honest device.
const HONEST: ReplicaId = ReplicaId(101);

/// Someone a hostile frame may name: mostly the hostile device itself.
fn who(u: &mut Unstructured<'_>) -> ArbResult<ReplicaId> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => HONEST,
        1 => ME,
        2 => OTHER,
        3 => replica_id(u)?,
        _ => HOSTILE,
    })
}

/// A signature over `vector` and `time`: the hostile device's own (valid), the honest
/// device's computed by the hostile one (the stand-in signer authenticates nothing), garbage,
/// or none.
fn signature(u: &mut Unstructured<'_>, vector: &lethe_engine::VersionVector, time: u64) -> ArbResult<Vec<u8>> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Vec::new(),
        1 => bytes(u, 200)?,
        2 => SignedAck::sign(&InsecureTestSigner::new(HONEST), HONEST, vector.clone(), time).signature,
        _ => SignedAck::sign(&InsecureTestSigner::new(HOSTILE), HOSTILE, vector.clone(), time).signature,
    })
}

/// A hostile device's writes: mostly stamped and numbered as its own, sometimes as anyone's.
fn uploads(u: &mut Unstructured<'_>) -> ArbResult<Vec<Entry>> {
    let own = u.arbitrary::<bool>()?;
    let mut list = entries_by(u, &mut |u| who(u))?;
    if own {
        let mut seq = u.int_in_range(0..=50u64)?;
        for e in &mut list {
            seq += 1;
            e.stamp.replica = HOSTILE;
            e.dot.replica = HOSTILE;
            e.dot.seq = lethe_engine::Seq(seq);
        }
    }
    Ok(list)
}

/// A member's signed seq as the hostile device shows it: the member's own (forged with the
/// stand-in signer, which authenticates nothing), garbage or unsigned.
fn proof(u: &mut Unstructured<'_>) -> ArbResult<SeqProof> {
    let s = common::seq(u)?;
    let time = time_ms(u)?;
    let signature = match u.int_in_range(0u8..=2)? {
        0 => Vec::new(),
        1 => bytes(u, 200)?,
        _ => {
            let v: lethe_engine::VersionVector = vec![(ME, s)].into();
            SignedAck::sign(&InsecureTestSigner::new(ME), ME, v, time).signature
        }
    };
    Ok(SeqProof(s, time, signature))
}

/// Keys the hostile device names as unsettled: a few of the member's own, garbage, or one
/// longer than any key (refused).
fn unsettled(u: &mut Unstructured<'_>) -> ArbResult<Vec<serde_bytes::ByteBuf>> {
    let n = u.int_in_range(0usize..=4)?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(serde_bytes::ByteBuf::from(match u.int_in_range(0u8..=7)? {
            0 => vec![b'k'; lethe_engine::limits::KEY_BYTES_MAX + 1],
            1 | 2 => bytes(u, 64)?,
            _ => format!("k{:04}", u.int_in_range(0u16..=20)?).into_bytes(),
        }));
    }
    Ok(keys)
}

fn message(u: &mut Unstructured<'_>, offered: &Offered) -> ArbResult<Message> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 | 1 => {
            let vector = vector(u)?;
            let ack = if u.arbitrary()? { vector.clone() } else { common::vector(u)? };
            let wall = time_ms(u)?;
            let sig = signature(u, &ack, wall)?;
            Message::DeviceHello(DeviceHello(
                if u.int_in_range(0u8..=7)? > 0 { PROTOCOL_VERSION } else { u.arbitrary()? },
                who(u)?,
                vector,
                ack,
                if u.arbitrary()? { Some(common::vector(u)?) } else { None },
                u.arbitrary()?,
                u.arbitrary()?,
                wall,
                u.arbitrary()?,
                sig,
                if u.arbitrary()? { Some(proof(u)?) } else { None },
                unsettled(u)?,
            ))
        }
        2 => Message::Upload { entries: uploads(u)?, last: u.arbitrary()? },
        3 => {
            let v = vector(u)?;
            let time = time_ms(u)?;
            let proof = if u.arbitrary()? { Some(AckProof(time, signature(u, &v, time)?)) } else { None };
            Message::Ack(v, proof)
        }
        _ => flow_message(u, offered)?,
    })
}

/// What the honest replicas left: the records and entries the hostile device must not change.
struct Honest {
    device: Option<(Option<lethe_engine::VersionVector>, lethe_engine::Seq, u64, Option<SignedAck>)>,
    member: Option<(lethe_engine::VersionVector, u64)>,
    entries: BTreeMap<Vec<u8>, (Stamp, Payload)>,
}

fn entries_of<S: Storage>(r: &Replica<S>) -> BTreeMap<Vec<u8>, (Stamp, Payload)> {
    let mut out = BTreeMap::new();
    r.store()
        .snapshot()
        .expect("a snapshot")
        .scan_keys(&KeyRange::all(), &mut |e| {
            out.insert(e.key.clone(), (e.stamp, e.payload.clone()));
            ControlFlow::Continue(())
        })
        .expect("a scan");
    out
}

impl Honest {
    fn of<S: Storage>(r: &Replica<S>) -> Honest {
        let mut honest = Honest { device: None, member: None, entries: entries_of(r) };
        honest.take_records(r);
        honest
    }

    /// Takes the honest device's and the other member's records as they are now: after a GC
    /// step (a lease lapsed, a member evicted), which is the member's own doing.
    fn take_records<S: Storage>(&mut self, r: &Replica<S>) {
        self.device = r.devices().get(HONEST).map(|d| (d.acked.clone(), d.cursor, d.last_seen_ms, d.signed.clone()));
        self.member = r.membership().get(OTHER).map(|m| (m.acked.clone(), m.last_heard_ms));
    }

    /// Keeps what the hostile device wrote since, so its own writes' later expiry or
    /// collection is not taken for a change of someone else's.
    fn take_hostile_writes<S: Storage>(&mut self, r: &Replica<S>) {
        for (k, (stamp, payload)) in entries_of(r) {
            if stamp.replica == HOSTILE {
                self.entries.insert(k, (stamp, payload));
            }
        }
    }
}

fn check_state<S: Storage>(r: &mut Replica<S>, clock: &ManualClock, honest: &Honest) {
    let now = lethe_engine::WallClock::now_ms(clock);
    assert_eq!(r.membership().enrolled().collect::<BTreeSet<_>>(), BTreeSet::from([OTHER]), "members changed");
    let devices: BTreeSet<_> = r.devices().iter().map(|(id, _)| id).collect();
    assert_eq!(devices, BTreeSet::from([HOSTILE, HONEST]), "the enrolled devices changed");
    assert!(!r.devices().is_revoked(HONEST) && !r.devices().is_revoked(HOSTILE), "a device was revoked");
    let device = r.devices().get(HONEST).map(|d| (d.acked.clone(), d.cursor, d.last_seen_ms, d.signed.clone()));
    assert_eq!(device, honest.device, "the hostile device changed the honest device's record");
    let member = r.membership().get(OTHER).map(|m| (m.acked.clone(), m.last_heard_ms));
    assert_eq!(member, honest.member, "the hostile device changed a member's record");
    assert!(r.vector().len() <= VECTOR_COMPONENTS_MAX, "vector of {} components", r.vector().len());
    for (id, d) in r.devices().iter() {
        let acked = d.acked.as_ref().map_or(0, |a| a.len());
        assert!(acked <= VECTOR_COMPONENTS_MAX, "device {id}: {acked} components");
        assert!(d.last_seen_ms <= now.saturating_add(r.config().max_drift_ms), "device {id} seen in the future");
    }
    let entries = entries_of(r);
    for (k, (stamp, payload)) in &entries {
        match honest.entries.get(k) {
            Some((s, p)) if s == stamp && (p == payload || matches!(payload, Payload::Expired { .. })) => {}
            _ => assert_eq!(stamp.replica, HOSTILE, "key {k:?} changed to a write the hostile device did not make"),
        }
    }
    for (k, (_, p)) in &honest.entries {
        let collectable = match p {
            Payload::Value(v) => v.expires_at_ms.is_some_and(|at| at <= now),
            _ => true,
        };
        assert!(entries.contains_key(k) || collectable, "key {k:?} lost its live value");
    }
    // Its own handshakes still encode within the frame limit and pass the bounds.
    let mut s = Session::new(r, None).expect("a session opens");
    let hello = s.poll_transmit(r).expect("the handshake encodes").expect("a handshake");
    assert!(matches!(Message::decode(&hello), Ok(Message::Hello(_))), "own handshake refused by the bounds");
}

/// Frames the member sends (drained), noting what its `Ranges` offer.
fn drain<S: Storage>(service: &mut DeviceService, r: &Replica<S>, offered: &mut Offered) {
    while let Ok(Some(frame)) = service.poll_transmit(r) {
        offered.note(&frame);
    }
}

fn open_member(store: MemoryStore, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { device_anti_entropy_min_ms: 0, ..Config::default() };
    let mut r = Replica::open(store, ME, config, Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(ME)));
    r
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let clock = ManualClock::new(T0);
    let mut r = open_member(MemoryStore::new(), &clock);
    r.enrol_member(OTHER).unwrap();
    r.enrol_device(HOSTILE).unwrap();
    r.enrol_device(HONEST).unwrap();
    let mut batch = lethe_engine::WriteBatch::new();
    for i in 0..300 {
        batch.put(format!("k{i:04}"), "v", PutOptions::default());
    }
    batch.delete("k0007");
    r.write(batch).unwrap();
    r.put("ttl", "v", PutOptions { ttl_ms: Some(50), metadata: None }).unwrap();
    let device_config = Config { role: Role::Device, device_anti_entropy_min_ms: 0, ..Config::default() };
    let mut phone = Replica::open(MemoryStore::new(), HONEST, device_config, Arc::new(clock.clone())).unwrap();
    phone.set_signer(Arc::new(InsecureTestSigner::new(HONEST)));
    phone.put("phone", "mine", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut r).unwrap();
    let mut honest = Honest::of(&r);

    let mut service = DeviceService::new(&mut r, Some(HOSTILE)).unwrap();
    let mut offered = Offered::default();
    for _ in 0..64 {
        let Some(step) = common::step(&mut u, &offered, message) else { break };
        let frame = match step {
            Step::Frame(frame) => frame,
            Step::Skip => continue,
            Step::Advance(ms) => {
                clock.advance(ms);
                let _ = r.collect_garbage();
                honest.take_records(&r);
                check_state(&mut r, &clock, &honest);
                continue;
            }
            Step::Own(8) => {
                service = DeviceService::new(&mut r, Some(HOSTILE)).unwrap();
                offered = Offered::default();
                continue;
            }
            Step::Own(_) => {
                // The honest device writes and syncs; what it changes is its own to change.
                let _ = phone.put(format!("phone{}", u.int_in_range(0..=9u8).unwrap_or(0)), "v", PutOptions::default());
                let _ = sync_device_in_process(&mut phone, &mut r);
                honest.take_hostile_writes(&r);
                let hostile = std::mem::take(&mut honest.entries);
                honest = Honest::of(&r);
                for (k, v) in hostile {
                    honest.entries.entry(k).or_insert(v);
                }
                continue;
            }
        };
        let failed = bounded_by_frame(frame.len(), || {
            let failed = service.handle(&mut r, &frame).is_err();
            drain(&mut service, &r, &mut offered);
            failed
        });
        if failed {
            // The device reconnects.
            service = DeviceService::new(&mut r, Some(HOSTILE)).unwrap();
            offered = Offered::default();
        }
        check_state(&mut r, &clock, &honest);
        honest.take_hostile_writes(&r);
    }
    drop(service);
    // A device's acknowledgement is made durable by the next GC step (with the collection it
    // allows), not by the session: until then a restart forgets it, which only holds more back.
    let _ = r.collect_garbage();
    honest.take_records(&r);
    check_state(&mut r, &clock, &honest);
    // What was persisted: the member reopened from its store.
    let mut reopened = open_member(r.into_store(), &clock);
    check_state(&mut reopened, &clock, &honest);
    common::stored_within_limits(&reopened);
});
