//! One hostile member against a device (docs/design.md §9): an arbitrary sequence of frames,
//! built from the fuzzer's bytes with lists repeated up to far beyond every bound, played
//! against a device's side of device sessions (opened again after each failure or end, as a
//! device reconnecting would). The member's handshakes carry any vector, `collected`, cursor and
//! wall time; its answers to uploads are any admissions; its download frames are any of the
//! sync flow's, entries stamped and numbered by anyone. Between them: GC steps, clock moves and
//! local writes on the device.
//!
//! A device trusts a member with what it admits and sends, so this checks what no member can
//! make a device do: handling a frame allocates at most `MEMORY_FIXED_BYTES` plus
//! `MEMORY_PER_FRAME_BYTE` times its length; no key's stamp goes back while the key is held
//! (last-writer-wins), and a key leaves only once it is dead or expired; the upload queue never
//! holds more writes than the device made; every vector is within `VECTOR_COMPONENTS_MAX`; the
//! device's own handshake still encodes. At the end, the same of the device reopened from its
//! store, and every stored entry within the limits. Nothing panics.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::{Offered, Step, bounded_by_frame, bytes, flow_message, hlc, repeat, replica_id, seq, time_ms, vector};
use lethe_engine::device::message::{Admission, MemberHello, SeqProof};
use lethe_engine::device::{DeviceSession, Role, sync_device_in_process};
use lethe_engine::limits::VECTOR_COMPONENTS_MAX;
use lethe_engine::session::{Message, PROTOCOL_VERSION};
use lethe_engine::{
    Config, Dot, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, Payload, PutOptions, Replica, ReplicaId,
    Snapshot, Stamp, Storage,
};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

const T0: u64 = common::T0;
/// The hostile member (honest for the first session).
const MEMBER: ReplicaId = ReplicaId(1);
/// The device under attack.
const ME: ReplicaId = ReplicaId(100);

/// Someone a hostile frame may name: mostly the member itself.
fn who(u: &mut Unstructured<'_>) -> ArbResult<ReplicaId> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => ME,
        1 => replica_id(u)?,
        _ => MEMBER,
    })
}

fn admissions(u: &mut Unstructured<'_>) -> ArbResult<Vec<Admission>> {
    let one = match u.int_in_range(0u8..=3)? {
        0 => Admission::Admitted(Dot { replica: who(u)?, seq: lethe_engine::Seq(seq(u)?.0.max(1)) }),
        1 => Admission::Superseded,
        2 => Admission::Known,
        _ => Admission::Pending,
    };
    Ok(vec![one; repeat(u, 2000)?])
}

/// Statements of seqs a member (this one, or a third, forged) lost to a restore: any, often
/// malformed (unordered or empty ranges, too many, bad signatures).
fn lost_ranges(u: &mut Unstructured<'_>) -> ArbResult<Vec<lethe_engine::replica::LostStatement>> {
    let ranges = vec![(seq(u)?, seq(u)?); repeat(u, 20)?];
    let one = lethe_engine::replica::LostStatement(who(u)?, ranges, bytes(u, 200)?);
    Ok(vec![one; repeat(u, 300)?])
}

fn message(u: &mut Unstructured<'_>, offered: &Offered) -> ArbResult<Message> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Message::MemberHello(MemberHello(
            if u.int_in_range(0u8..=7)? > 0 { PROTOCOL_VERSION } else { u.arbitrary()? },
            who(u)?,
            vector(u)?,
            vector(u)?,
            seq(u)?,
            time_ms(u)?,
            if u.arbitrary()? { Some(SeqProof(seq(u)?, time_ms(u)?, bytes(u, 200)?)) } else { None },
            lost_ranges(u)?,
            hlc(u)?,
            u.arbitrary()?,
        )),
        1 => Message::Admitted(admissions(u)?),
        2 => Message::Done(vector(u)?, hlc(u)?),
        _ => flow_message(u, offered)?,
    })
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

/// What the device held at the last check, and how many writes it made.
struct Held {
    entries: BTreeMap<Vec<u8>, (Stamp, Payload)>,
    writes: u64,
}

fn check_state<S: Storage>(r: &mut Replica<S>, clock: &ManualClock, held: &mut Held) {
    let now = lethe_engine::WallClock::now_ms(clock);
    let entries = entries_of(r);
    for (k, (stamp, payload)) in &held.entries {
        match entries.get(k) {
            Some((s, _)) => assert!(s >= stamp, "key {k:?} went back from {stamp:?} to {s:?}"),
            None => {
                let may_leave = match payload {
                    Payload::Value(v) => v.expires_at_ms.is_some_and(|at| at <= now),
                    _ => true,
                };
                assert!(may_leave, "key {k:?} left while it held a live value");
            }
        }
    }
    held.entries = entries;
    let pending = r.pending_uploads().expect("the queue reads");
    assert!(pending <= held.writes, "{pending} queued writes, {} made", held.writes);
    assert!(r.vector().len() <= VECTOR_COMPONENTS_MAX, "vector of {} components", r.vector().len());
    let members = r.members_vector();
    assert!(members.len() <= VECTOR_COMPONENTS_MAX, "members' vector of {} components", members.len());
    if let Some(h) = r.horizon() {
        assert!(h.len() <= VECTOR_COMPONENTS_MAX, "horizon of {} components", h.len());
    }
    // Its own handshake still encodes within the frame limit and passes the bounds.
    let mut s = DeviceSession::new(r, Some(MEMBER)).expect("a session opens");
    let hello = s.poll_transmit(r).expect("the handshake encodes").expect("a handshake");
    assert!(matches!(Message::decode(&hello), Ok(Message::DeviceHello(_))), "own handshake refused by the bounds");
}

/// Frames the device sends (drained), noting what its `Ranges` offer.
fn drain<S: Storage>(session: &mut DeviceSession, r: &Replica<S>, offered: &mut Offered) {
    while let Ok(Some(frame)) = session.poll_transmit(r) {
        offered.note(&frame);
    }
}

fn open_device(store: MemoryStore, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    let mut r = Replica::open(store, ME, config, Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(ME)));
    r
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let clock = ManualClock::new(T0);
    let mut member = Replica::open(MemoryStore::new(), MEMBER, Config::default(), Arc::new(clock.clone())).unwrap();
    member.set_signer(Arc::new(InsecureTestSigner::new(MEMBER)));
    member.enrol_device(ME).unwrap();
    for i in 0..100 {
        member.put(format!("k{i:04}"), "v", PutOptions::default()).unwrap();
    }
    member.delete("k0007").unwrap();
    let mut d = open_device(MemoryStore::new(), &clock);
    sync_device_in_process(&mut d, &mut member).unwrap();
    let mut held = Held { entries: BTreeMap::new(), writes: 0 };
    for i in 0..20 {
        d.put(format!("k{:04}", i * 5), "mine", PutOptions::default()).unwrap();
        held.writes += 1;
    }
    d.delete("k0003").unwrap();
    d.put("ttl", "v", PutOptions { ttl_ms: Some(50), metadata: None }).unwrap();
    held.writes += 2;
    check_state(&mut d, &clock, &mut held);

    let mut session = DeviceSession::new(&mut d, Some(MEMBER)).unwrap();
    let mut offered = Offered::default();
    drain(&mut session, &d, &mut offered);
    for _ in 0..64 {
        let Some(step) = common::step(&mut u, &offered, message) else { break };
        let frame = match step {
            Step::Frame(frame) => frame,
            Step::Skip => continue,
            Step::Advance(ms) => {
                clock.advance(ms);
                let _ = d.collect_garbage();
                check_state(&mut d, &clock, &mut held);
                continue;
            }
            Step::Own(8) => {
                let n = u.int_in_range(0..=3u8).unwrap_or(0);
                let key = format!("k{:04}", u.int_in_range(0..=120u8).unwrap_or(0));
                let written = if n == 0 { d.delete(key) } else { d.put(key, "later", PutOptions::default()) };
                held.writes += u64::from(written.is_ok());
                check_state(&mut d, &clock, &mut held);
                continue;
            }
            Step::Own(_) => {
                session = if u.arbitrary().unwrap_or(false) {
                    DeviceSession::anti_entropy(&mut d, Some(MEMBER)).unwrap()
                } else {
                    DeviceSession::new(&mut d, Some(MEMBER)).unwrap()
                };
                offered = Offered::default();
                drain(&mut session, &d, &mut offered);
                continue;
            }
        };
        let failed = bounded_by_frame(frame.len(), || {
            let failed = session.handle(&mut d, &frame).is_err();
            drain(&mut session, &d, &mut offered);
            failed
        });
        if failed || session.is_finished() {
            // The device reconnects.
            session = DeviceSession::new(&mut d, Some(MEMBER)).unwrap();
            offered = Offered::default();
            drain(&mut session, &d, &mut offered);
        }
        check_state(&mut d, &clock, &mut held);
    }
    drop(session);
    // What was persisted: the device reopened from its store.
    let mut reopened = open_device(d.into_store(), &clock);
    check_state(&mut reopened, &clock, &mut held);
    common::stored_within_limits(&reopened);
});
