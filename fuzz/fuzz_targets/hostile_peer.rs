//! One trusted but hostile peer (docs/design.md §9): an arbitrary sequence of messages, built
//! from the fuzzer's bytes with lists repeated up to far beyond every bound, played against a
//! replica holding some writes, through sessions (opened again after each failure, as a
//! reconnecting peer would), a live receiver and a live sender's acknowledgements, with GC steps
//! and clock moves between.
//!
//! Holds, after every frame: handling it allocated at most `MEMORY_FIXED_BYTES` plus
//! `MEMORY_PER_FRAME_BYTE` times its length (a counting allocator measures the peak); the members
//! are enrolled replicas only, at most `MEMBERS_MAX`, never heard from later than the replica's
//! clock; every vector held is within `VECTOR_COMPONENTS_MAX`; the replica's own handshake still
//! encodes within the frame limit and decodes under the bounds. At the end, the same of the
//! replica reopened from its store (what was persisted), and every stored entry within the limits.
//! Nothing panics (the fuzz build has overflow checks on).

#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::{Offered, Step, bounded_by_frame, entries, flow_message, hlc, repeat, replica_id, time_ms, vector};
use lethe_engine::limits::VECTOR_COMPONENTS_MAX;
use lethe_engine::live::{LiveReceiver, Push, handle_ack};
use lethe_engine::membership::{MEMBERS_MAX, MemberInfo};
use lethe_engine::session::{Hello, Message, PROTOCOL_VERSION, Session};
use lethe_engine::{Config, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Storage};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::sync::Arc;

const T0: u64 = common::T0;
const ME: ReplicaId = ReplicaId(1);
const PEER: ReplicaId = ReplicaId(2);
/// Enrolled besides the peer.
const OTHER: ReplicaId = ReplicaId(3);

/// A member's message: a handshake, a live push, or one of the six of the sync flow.
fn message(u: &mut Unstructured<'_>, offered: &Offered) -> ArbResult<Message> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => {
            let n = repeat(u, 100)?;
            let mut members = Vec::with_capacity(n);
            for _ in 0..n {
                members.push(MemberInfo {
                    replica: replica_id(u)?,
                    acked: vector(u)?,
                    last_heard_ms: time_ms(u)?,
                    signature: Vec::new(),
                });
            }
            let replica = if u.arbitrary()? { PEER } else { replica_id(u)? };
            let vector = vector(u)?;
            Message::Hello(Hello {
                version: if u.arbitrary()? { PROTOCOL_VERSION } else { u.arbitrary()? },
                replica,
                vector,
                members,
                values: u.arbitrary()?,
                anti_entropy: u.arbitrary()?,
                wall_ms: time_ms(u)?,
                records_seen: u.arbitrary()?,
                lost: Vec::new(),
            })
        }
        1 => Message::Push(Push {
            base: vector(u)?,
            entries: entries(u)?,
            vector: if u.arbitrary()? { Some((vector(u)?, hlc(u)?)) } else { None },
        }),
        _ => flow_message(u, offered)?,
    })
}

fn check_state<S: Storage>(r: &mut Replica<S>, clock: &ManualClock) {
    let now = lethe_engine::WallClock::now_ms(clock);
    let m = r.membership();
    assert!(m.len() < MEMBERS_MAX, "{} members", m.len());
    let enrolled: BTreeSet<_> = m.enrolled().collect();
    assert_eq!(enrolled, BTreeSet::from([PEER, OTHER]), "the enrolled set changed");
    for (id, member) in m.iter() {
        assert!(enrolled.contains(&id), "member {id} was never enrolled");
        assert!(member.last_heard_ms <= now, "member {id} heard at {} after now {now}", member.last_heard_ms);
        assert!(member.acked.len() <= VECTOR_COMPONENTS_MAX, "member {id}: {} components", member.acked.len());
    }
    assert!(r.vector().len() <= VECTOR_COMPONENTS_MAX, "vector of {} components", r.vector().len());
    // Its own handshake still fits a frame and passes every peer's bounds.
    let mut s = Session::new(r, None).expect("a session opens");
    let hello = s.poll_transmit(r).expect("the handshake encodes").expect("a handshake");
    assert!(matches!(Message::decode(&hello), Ok(Message::Hello(_))), "own handshake refused by the bounds");
}

/// Frames the replica sends (drained), noting what its `Ranges` offer.
fn drain<S: Storage>(session: &mut Session, r: &Replica<S>, offered: &mut Offered) {
    while let Ok(Some(frame)) = session.poll_transmit(r) {
        offered.note(&frame);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let clock = ManualClock::new(T0);
    let mut r = Replica::open(MemoryStore::new(), ME, Config::default(), Arc::new(clock.clone())).unwrap();
    r.enrol_member(PEER).unwrap();
    r.enrol_member(OTHER).unwrap();
    let mut batch = lethe_engine::WriteBatch::new();
    for i in 0..300 {
        batch.put(format!("k{i:04}"), "v", PutOptions::default());
    }
    batch.delete("k0007");
    r.write(batch).unwrap();
    r.put("ttl", "v", PutOptions { ttl_ms: Some(50), metadata: None }).unwrap();

    let mut session = Session::new(&mut r, Some(PEER)).unwrap();
    let mut live = LiveReceiver::new(PEER);
    let mut offered = Offered::default();
    for _ in 0..64 {
        let Some(step) = common::step(&mut u, &offered, message) else { break };
        let frame = match step {
            Step::Frame(frame) => frame,
            Step::Skip => continue,
            Step::Advance(ms) => {
                clock.advance(ms);
                let _ = r.collect_garbage();
                check_state(&mut r, &clock);
                continue;
            }
            Step::Own(8) => {
                session = if u.arbitrary().unwrap_or(false) {
                    Session::anti_entropy(&mut r, Some(PEER)).unwrap()
                } else {
                    Session::new(&mut r, Some(PEER)).unwrap()
                };
                offered = Offered::default();
                continue;
            }
            Step::Own(_) => match message(&mut u, &offered).map(|m| m.encode()) {
                Ok(Ok(f)) => {
                    bounded_by_frame(f.len(), || {
                        let _ = handle_ack(&mut r, PEER, &f);
                        let _ = live.handle(&mut r, &f);
                    });
                    check_state(&mut r, &clock);
                    continue;
                }
                Ok(Err(_)) => continue,
                Err(_) => break,
            },
        };
        let failed = bounded_by_frame(frame.len(), || {
            let failed = session.handle(&mut r, &frame).is_err();
            drain(&mut session, &r, &mut offered);
            failed
        });
        if failed {
            // The peer reconnects.
            session = Session::new(&mut r, Some(PEER)).unwrap();
            offered = Offered::default();
        }
        check_state(&mut r, &clock);
    }
    drop(session);
    // What was persisted: the replica reopened from its store.
    let mut reopened = Replica::open(r.into_store(), ME, Config::default(), Arc::new(clock.clone())).unwrap();
    check_state(&mut reopened, &clock);
    common::stored_within_limits(&reopened);
});
