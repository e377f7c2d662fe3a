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

use lethe_engine::fingerprint::ItemId;
use lethe_engine::limits::VECTOR_COMPONENTS_MAX;
use lethe_engine::live::{LiveReceiver, Push, handle_ack};
use lethe_engine::membership::{MEMBERS_MAX, MemberInfo};
use lethe_engine::session::message::{PartContent, RangeGroup, RangePart, SketchMsg, WantedItem};
use lethe_engine::session::{Hello, KeyBounds, Message, PROTOCOL_VERSION, Session};
use lethe_engine::{
    Config, Entry, Hlc, KeyRange, ManualClock, MemoryStore, Payload, PutOptions, Replica, ReplicaId, Seq, Snapshot,
    Stamp, Storage, Value, VersionVector,
};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const T0: u64 = 1_700_000_000_000;
const ME: ReplicaId = ReplicaId(1);
const PEER: ReplicaId = ReplicaId(2);
/// Enrolled besides the peer.
const OTHER: ReplicaId = ReplicaId(3);
/// Allocation allowed for one frame whatever its size: a GC step, a snapshot, a handshake.
const MEMORY_FIXED_BYTES: usize = 8 << 20;
/// Allocation allowed per byte of the frame: a small entry takes some thirty times its wire
/// size decoded, and applying it copies it about twice more.
const MEMORY_PER_FRAME_BYTE: usize = 128;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the replica has offered in its last `Ranges`, for replies that name it.
#[derive(Default)]
struct Offered {
    ranges: Vec<KeyBounds>,
    items: Vec<ItemId>,
}

fn repeat(u: &mut Unstructured<'_>, max: u32) -> ArbResult<usize> {
    // Mostly small, sometimes up to far beyond every bound.
    Ok(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => u.int_in_range(1..=8)?,
        2 => u.int_in_range(1..=300)?,
        _ => u.int_in_range(1..=max)? as usize,
    })
}

fn seq(u: &mut Unstructured<'_>) -> ArbResult<Seq> {
    Ok(Seq(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => u.int_in_range(1..=40)?,
        2 => u64::MAX,
        _ => u.arbitrary()?,
    }))
}

fn replica_id(u: &mut Unstructured<'_>) -> ArbResult<ReplicaId> {
    Ok(ReplicaId(match u.int_in_range(0u8..=2)? {
        0 => u.int_in_range(1..=4)?,
        1 => u.int_in_range(0..=100_000)?,
        _ => u.arbitrary()?,
    }))
}

fn vector(u: &mut Unstructured<'_>) -> ArbResult<VersionVector> {
    let n = repeat(u, 1100)?;
    let distinct = u.arbitrary::<bool>()?;
    let mut pairs = Vec::with_capacity(n.min(4096));
    for i in 0..n {
        let r = if distinct { ReplicaId(1000 + i as u64) } else { replica_id(u)? };
        pairs.push((r, seq(u)?));
    }
    Ok(pairs.into())
}

fn time_ms(u: &mut Unstructured<'_>) -> ArbResult<u64> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => T0,
        1 => u64::MAX,
        _ => u.arbitrary()?,
    })
}

fn hlc(u: &mut Unstructured<'_>) -> ArbResult<Hlc> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Hlc::new(T0 + u.int_in_range(0..=5000)?, u.arbitrary()?),
        1 => Hlc(u64::MAX),
        _ => Hlc(u.arbitrary()?),
    })
}

fn bytes(u: &mut Unstructured<'_>, max: usize) -> ArbResult<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n.min(u.len()))?.to_vec())
}

fn key(u: &mut Unstructured<'_>) -> ArbResult<Vec<u8>> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => format!("k{:04}", u.int_in_range(0..=400)?).into_bytes(),
        1 => vec![b'x'; u.int_in_range(0..=1100)?],
        _ => bytes(u, 16)?,
    })
}

fn entries(u: &mut Unstructured<'_>) -> ArbResult<Vec<Entry>> {
    let base = u.int_in_range(1..=4)?;
    let mut proto = Vec::with_capacity(base);
    for _ in 0..base {
        let payload = match u.int_in_range(0u8..=2)? {
            0 => Payload::Value(Value {
                bytes: bytes(u, 64)?,
                expires_at_ms: if u.arbitrary()? { Some(time_ms(u)?) } else { None },
                metadata: if u.arbitrary()? { Some(bytes(u, 16)?) } else { None },
            }),
            1 => Payload::Expired { expires_at_ms: time_ms(u)? },
            _ => Payload::Tombstone,
        };
        proto.push(Entry { key: key(u)?, stamp: Stamp { hlc: hlc(u)?, replica: replica_id(u)? }, seq: seq(u)?, payload });
    }
    let n = repeat(u, 40_000)?.max(1);
    Ok((0..n)
        .map(|i| {
            let mut e = proto[i % base].clone();
            if i >= base {
                e.key.extend_from_slice(&(i as u32).to_be_bytes());
                e.dot.seq = Seq(e.dot.seq.0.wrapping_add(i as u64));
            }
            e
        })
        .collect())
}

fn bounds(u: &mut Unstructured<'_>, offered: &Offered) -> ArbResult<KeyBounds> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 if !offered.ranges.is_empty() => offered.ranges[u.choose_index(offered.ranges.len())?].clone(),
        0 | 1 => KeyBounds(None, None),
        _ => KeyBounds(Some(key(u)?), if u.arbitrary()? { Some(key(u)?) } else { None }),
    })
}

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
        1 => Message::Entries(entries(u)?),
        2 => {
            let parts = repeat(u, 40)?;
            let groups = repeat(u, 140_000 / (parts as u32 + 1))?;
            let part = RangePart(
                if u.arbitrary()? { Some(key(u)?) } else { None },
                if u.arbitrary()? {
                    PartContent::Fingerprint(u.arbitrary()?, u.arbitrary()?)
                } else {
                    PartContent::Items((0..repeat(u, 64)?).map(|i| ItemId(i as u32)).collect())
                },
            );
            let group = RangeGroup(if u.arbitrary()? { Some(key(u)?) } else { None }, vec![part; parts]);
            Message::Ranges(vec![group; groups])
        }
        3 => Message::Sketch(SketchMsg(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?, bytes(u, 4096)?)),
        4 => Message::Done(vector(u)?, hlc(u)?),
        5 => {
            let list = |u: &mut Unstructured<'_>| -> ArbResult<Vec<KeyBounds>> {
                let b = bounds(u, offered)?;
                Ok(vec![b; repeat(u, 70_000)?])
            };
            let split = list(u)?;
            let send = list(u)?;
            let id = match offered.items.len() {
                0 => ItemId(u.arbitrary()?),
                n => offered.items[u.choose_index(n)?],
            };
            let want = vec![id; repeat(u, 1 << 21)?];
            let keys = vec![WantedItem(key(u)?, u.arbitrary()?, u.arbitrary()?); repeat(u, 5000)?];
            Message::Reply { split, send, want, keys }
        }
        6 => Message::Ack(vector(u)?, None),
        _ => Message::Push(Push {
            base: vector(u)?,
            entries: entries(u)?,
            vector: if u.arbitrary()? { Some((vector(u)?, hlc(u)?)) } else { None },
        }),
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
        if let Ok(Message::Ranges(groups)) = Message::decode(&frame) {
            *offered = Offered::default();
            for RangeGroup(lower, parts) in groups {
                let mut lower = lower;
                for RangePart(upper, content) in parts {
                    offered.ranges.push(KeyBounds(lower, upper.clone()));
                    if let PartContent::Items(ids) = content {
                        offered.items.extend(ids);
                    }
                    lower = upper;
                }
            }
        }
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
        if u.is_empty() {
            break;
        }
        let Ok(step) = u.int_in_range(0u8..=9) else { break };
        let frame = match step {
            0..=5 => match message(&mut u, &offered).map(|m| m.encode()) {
                Ok(Ok(f)) => f,
                Ok(Err(_)) => continue, // over the frame limit: the transport refuses it
                Err(_) => break,
            },
            6 => match bytes(&mut u, 512) {
                Ok(b) => b,
                Err(_) => break,
            },
            7 => {
                clock.advance(u.int_in_range(0..=40_000_000_000u64).unwrap_or(0));
                let _ = r.collect_garbage();
                check_state(&mut r, &clock);
                continue;
            }
            8 => {
                session = if u.arbitrary().unwrap_or(false) {
                    Session::anti_entropy(&mut r, Some(PEER)).unwrap()
                } else {
                    Session::new(&mut r, Some(PEER)).unwrap()
                };
                offered = Offered::default();
                continue;
            }
            _ => match message(&mut u, &offered).map(|m| m.encode()) {
                Ok(Ok(f)) => {
                    let before = CURRENT.load(Ordering::Relaxed);
                    PEAK.store(before, Ordering::Relaxed);
                    let _ = handle_ack(&mut r, PEER, &f);
                    let _ = live.handle(&mut r, &f);
                    let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
                    assert!(used <= MEMORY_FIXED_BYTES + MEMORY_PER_FRAME_BYTE * f.len(), "{used} B for {} B", f.len());
                    check_state(&mut r, &clock);
                    continue;
                }
                Ok(Err(_)) => continue,
                Err(_) => break,
            },
        };
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let failed = session.handle(&mut r, &frame).is_err();
        drain(&mut session, &r, &mut offered);
        let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        assert!(
            used <= MEMORY_FIXED_BYTES + MEMORY_PER_FRAME_BYTE * frame.len(),
            "{used} B allocated for a frame of {} B",
            frame.len()
        );
        if failed {
            // The peer reconnects.
            session = Session::new(&mut r, Some(PEER)).unwrap();
            offered = Offered::default();
        }
        check_state(&mut r, &clock);
    }
    drop(session);
    // What was persisted: the replica reopened from its store.
    let limits = r.config().limits;
    let mut reopened = Replica::open(r.into_store(), ME, Config::default(), Arc::new(clock.clone())).unwrap();
    check_state(&mut reopened, &clock);
    reopened
        .store()
        .snapshot()
        .unwrap()
        .scan_keys(&KeyRange::all(), &mut |e| {
            assert!(limits.check_entry(&e).is_ok(), "stored an entry beyond the limits: {:?}", e.key.len());
            ControlFlow::Continue(())
        })
        .unwrap();
});
