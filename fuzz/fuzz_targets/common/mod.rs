//! What the hostile-peer targets share: an allocator that measures each frame's peak, and
//! generators of hostile values (ids, sequence numbers, vectors, times, keys, entries) that are
//! mostly small and sometimes far beyond every bound.

#![allow(dead_code)] // each target uses its own part

use lethe_engine::fingerprint::ItemId;
use lethe_engine::session::message::{PartContent, RangeGroup, RangePart, SketchMsg, WantedItem};
use lethe_engine::session::{KeyBounds, Message};
use lethe_engine::{
    Dot, Entry, Hlc, KeyRange, Payload, Replica, ReplicaId, Seq, Snapshot, Stamp, Storage, Value, VersionVector,
};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The time the targets start at.
pub const T0: u64 = 1_700_000_000_000;
/// Allocation allowed for one frame whatever its size: a GC step, a snapshot, a handshake.
pub const MEMORY_FIXED_BYTES: usize = 8 << 20;
/// Allocation allowed per byte of the frame: a small entry takes some thirty times its wire
/// size decoded, and applying it copies it about twice more.
pub const MEMORY_PER_FRAME_BYTE: usize = 128;

/// Forwards to `System`, counting the bytes held and their peak.
pub struct Counting;

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

/// Runs `f` and asserts it allocated at most what a frame of `frame_len` bytes is allowed at
/// its peak.
pub fn bounded_by_frame<T>(frame_len: usize, f: impl FnOnce() -> T) -> T {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        used <= MEMORY_FIXED_BYTES + MEMORY_PER_FRAME_BYTE * frame_len,
        "{used} B allocated for a frame of {frame_len} B"
    );
    out
}

/// One step of a hostile target's loop, as the fuzzer chooses it.
pub enum Step {
    /// A frame for the session under test: an encoded hostile message or random bytes.
    Frame(Vec<u8>),
    /// A message over the frame limit: the transport refuses it, nothing reaches the session.
    Skip,
    /// Time passes by this many milliseconds; the target runs a GC step and checks its state.
    Advance(u64),
    /// A step of the target's own (8 or 9): restart a session, write, sync an honest peer.
    Own(u8),
}

/// The next step of a target's loop, frames built by `message`; `None` once the input runs out.
pub fn step(
    u: &mut Unstructured<'_>,
    offered: &Offered,
    message: fn(&mut Unstructured<'_>, &Offered) -> ArbResult<Message>,
) -> Option<Step> {
    if u.is_empty() {
        return None;
    }
    Some(match u.int_in_range(0u8..=9).ok()? {
        0..=5 => match message(u, offered).ok()?.encode() {
            Ok(frame) => Step::Frame(frame),
            Err(_) => Step::Skip,
        },
        6 => Step::Frame(bytes(u, 512).ok()?),
        7 => Step::Advance(u.int_in_range(0..=40_000_000_000u64).unwrap_or(0)),
        own => Step::Own(own),
    })
}

/// A count: mostly small, sometimes up to `max` (far beyond every bound).
pub fn repeat(u: &mut Unstructured<'_>, max: u32) -> ArbResult<usize> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => u.int_in_range(1..=8)?,
        2 => u.int_in_range(1..=300)?,
        _ => u.int_in_range(1..=max)? as usize,
    })
}

/// A sequence number: 0, small, `u64::MAX` or anything.
pub fn seq(u: &mut Unstructured<'_>) -> ArbResult<Seq> {
    Ok(Seq(match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => u.int_in_range(1..=40)?,
        2 => u64::MAX,
        _ => u.arbitrary()?,
    }))
}

/// A replica id: one of the first few, a mid-sized one or anything.
pub fn replica_id(u: &mut Unstructured<'_>) -> ArbResult<ReplicaId> {
    Ok(ReplicaId(match u.int_in_range(0u8..=2)? {
        0 => u.int_in_range(1..=4)?,
        1 => u.int_in_range(0..=100_000)?,
        _ => u.arbitrary()?,
    }))
}

/// A version vector, sometimes with far more components than allowed.
pub fn vector(u: &mut Unstructured<'_>) -> ArbResult<VersionVector> {
    let n = repeat(u, 1100)?;
    let distinct = u.arbitrary::<bool>()?;
    let mut pairs = Vec::with_capacity(n.min(4096));
    for i in 0..n {
        let r = if distinct { ReplicaId(1000 + i as u64) } else { replica_id(u)? };
        pairs.push((r, seq(u)?));
    }
    Ok(pairs.into())
}

/// A wall time: now, the end of time or anything.
pub fn time_ms(u: &mut Unstructured<'_>) -> ArbResult<u64> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => T0,
        1 => u64::MAX,
        _ => u.arbitrary()?,
    })
}

/// A hybrid logical clock reading: near now, the largest or anything.
pub fn hlc(u: &mut Unstructured<'_>) -> ArbResult<Hlc> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Hlc::new(T0 + u.int_in_range(0..=5000)?, u.arbitrary()?),
        1 => Hlc(u64::MAX),
        _ => Hlc(u.arbitrary()?),
    })
}

/// Up to `max` bytes of the input.
pub fn bytes(u: &mut Unstructured<'_>, max: usize) -> ArbResult<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    Ok(u.bytes(n.min(u.len()))?.to_vec())
}

/// A key: one of the targets' own, one just past the key limit, or anything short.
pub fn key(u: &mut Unstructured<'_>) -> ArbResult<Vec<u8>> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => format!("k{:04}", u.int_in_range(0..=400)?).into_bytes(),
        1 => vec![b'x'; u.int_in_range(0..=1100)?],
        _ => bytes(u, 16)?,
    })
}

/// A payload: a value (with or without expiry and metadata), an expiry or a tombstone.
pub fn payload(u: &mut Unstructured<'_>) -> ArbResult<Payload> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => Payload::Value(Value {
            bytes: bytes(u, 64)?,
            expires_at_ms: if u.arbitrary()? { Some(time_ms(u)?) } else { None },
            metadata: if u.arbitrary()? { Some(bytes(u, 16)?) } else { None },
        }),
        1 => Payload::Expired { expires_at_ms: time_ms(u)? },
        _ => Payload::Tombstone,
    })
}

/// A list of entries, a few shapes repeated up to far beyond the per-frame bound; `writer`
/// picks each shape's stamp writer.
pub fn entries_by(
    u: &mut Unstructured<'_>,
    writer: &mut dyn FnMut(&mut Unstructured<'_>) -> ArbResult<ReplicaId>,
) -> ArbResult<Vec<Entry>> {
    let base = u.int_in_range(1..=4)?;
    let mut proto = Vec::with_capacity(base);
    for _ in 0..base {
        let payload = payload(u)?;
        let stamp = Stamp { hlc: hlc(u)?, replica: writer(u)? };
        proto.push(Entry { key: key(u)?, stamp, dot: Dot { replica: replica_id(u)?, seq: seq(u)? }, payload });
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

/// A list of entries with any writers.
pub fn entries(u: &mut Unstructured<'_>) -> ArbResult<Vec<Entry>> {
    entries_by(u, &mut |u| replica_id(u))
}

/// What the replica has offered in its last `Ranges`, for replies that name it.
#[derive(Default)]
pub struct Offered {
    ranges: Vec<KeyBounds>,
    items: Vec<ItemId>,
}

impl Offered {
    /// Notes what a frame the replica sent offers, if it is a `Ranges`.
    pub fn note(&mut self, frame: &[u8]) {
        if let Ok(Message::Ranges(groups)) = Message::decode(frame) {
            *self = Offered::default();
            for RangeGroup(lower, parts) in groups {
                let mut lower = lower;
                for RangePart(upper, content) in parts {
                    self.ranges.push(KeyBounds(lower, upper.clone()));
                    if let PartContent::Items(ids) = content {
                        self.items.extend(ids);
                    }
                    lower = upper;
                }
            }
        }
    }
}

fn bounds(u: &mut Unstructured<'_>, offered: &Offered) -> ArbResult<KeyBounds> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 if !offered.ranges.is_empty() => offered.ranges[u.choose_index(offered.ranges.len())?].clone(),
        0 | 1 => KeyBounds(None, None),
        _ => KeyBounds(Some(key(u)?), if u.arbitrary()? { Some(key(u)?) } else { None }),
    })
}

/// One message of a sync session's flow (after the handshakes, the same between members and in a
/// device's download): entries, ranges, a sketch, a reply naming what was offered, done, ack.
pub fn flow_message(u: &mut Unstructured<'_>, offered: &Offered) -> ArbResult<Message> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => Message::Entries(entries(u)?),
        1 => {
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
        2 => Message::Sketch(SketchMsg(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?, bytes(u, 4096)?)),
        3 => Message::Done(vector(u)?, hlc(u)?),
        4 => {
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
        _ => Message::Ack(vector(u)?, None),
    })
}

/// Checks every stored entry is within the replica's limits.
pub fn stored_within_limits<S: Storage>(r: &Replica<S>) {
    let limits = r.config().limits;
    r.store()
        .snapshot()
        .expect("a snapshot")
        .scan_keys(&KeyRange::all(), &mut |e| {
            assert!(limits.check_entry(&e).is_ok(), "stored an entry beyond the limits: {:?}", e.key.len());
            ControlFlow::Continue(())
        })
        .expect("a scan");
}
