//! A trusted peer that sends what no honest replica would (docs/design.md §9): every bound
//! is checked where the data enters, before it is allocated or persisted; exceeding one ends the
//! session with a reason and changes nothing.

use lethe_engine::fingerprint::ItemId;
use lethe_engine::limits::{
    ENTRIES_PER_FRAME_MAX, HELLO_MEMBERS_MAX, RANGE_PARTS_MAX, REPLY_ITEMS_MAX, VECTOR_COMPONENTS_MAX,
};
use lethe_engine::membership::{MEMBERS_MAX, MemberInfo};
use lethe_engine::session::message::{PartContent, RangeGroup, RangePart};
use lethe_engine::session::{FRAME_BYTES_MAX, Hello, KeyBounds, Message, PROTOCOL_VERSION, Session, SyncError};
use lethe_engine::{
    Batch, Config, Entry, Error, Hlc, InsecureTestSigner, ManualClock, MemoryStore, Meta, Payload, PutOptions, Replica,
    ReplicaId, Seq, SignedAck, Snapshot, Stamp, Storage, StorageError, VersionVector,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const T0: u64 = 1_700_000_000_000;
const ME: ReplicaId = ReplicaId(1);
const PEER: ReplicaId = ReplicaId(2);

fn replica(clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), ME, Config::default(), Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(ME)));
    r
}

fn vv(pairs: &[(u64, u64)]) -> VersionVector {
    pairs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
}

fn hello(vector: VersionVector, members: Vec<MemberInfo>, values: u64) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        replica: PEER,
        vector,
        members,
        values,
        anti_entropy: false,
        wall_ms: T0,
        records_seen: 0,
        lost: Vec::new(),
    }
}

/// A member record as `replica` itself signed it (relayed by the hostile peer: what is tested
/// here is what the bounds do with records that would count; `signed_acks.rs` tests forgeries).
fn member(replica: u64, acked: VersionVector, last_heard_ms: u64) -> MemberInfo {
    let r = ReplicaId(replica);
    MemberInfo::from(SignedAck::sign(&InsecureTestSigner::new(r), r, acked, last_heard_ms))
}

fn frame(msg: &Message) -> Vec<u8> {
    msg.encode().unwrap()
}

/// Every frame the session has queued, decoded.
fn drain(session: &mut Session, r: &Replica<MemoryStore>) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(f) = session.poll_transmit(r).unwrap() {
        out.push(Message::decode(&f).unwrap());
    }
    out
}

fn stored_members(r: &Replica<MemoryStore>) -> Option<Vec<u8>> {
    r.store().snapshot().unwrap().meta(Meta::Members).unwrap()
}

#[test]
fn gossip_never_creates_a_member() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    r.enrol_member(PEER).unwrap();
    let fakes: Vec<_> = (100..150).map(|i| member(i, VersionVector::new(), T0)).collect();
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &frame(&Message::Hello(hello(VersionVector::new(), fakes, 0)))).unwrap();
    let members: Vec<_> = r.membership().iter().map(|(id, _)| id).collect();
    assert_eq!(members, vec![PEER], "only the enrolled peer counts");
    r.collect_garbage().unwrap();
    let reopened = Replica::open(r.into_store(), ME, Config::default(), Arc::new(clock)).unwrap();
    assert_eq!(reopened.membership().len(), 1, "no fake member was persisted");
}

#[test]
fn a_handshake_with_more_members_than_the_limit_is_refused_and_changes_nothing() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    r.enrol_member(PEER).unwrap();
    r.enrol_member(ReplicaId(3)).unwrap();
    let before = stored_members(&r);
    let members: Vec<_> = (0..=HELLO_MEMBERS_MAX as u64).map(|i| member(3 + i, VersionVector::new(), T0)).collect();
    let hostile = frame(&Message::Hello(hello(VersionVector::new(), members, 0)));
    assert!(hostile.len() < FRAME_BYTES_MAX);
    assert!(matches!(Message::decode(&hostile), Err(SyncError::Malformed(_))));
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    assert!(s.handle(&mut r, &hostile).is_err());
    assert!(r.membership().is_empty(), "not even the peer's own record was taken");
    assert_eq!(stored_members(&r), before);
    // One record fewer is an honest handshake.
    let members: Vec<_> = (0..HELLO_MEMBERS_MAX as u64).map(|i| member(3 + i, VersionVector::new(), T0)).collect();
    let honest = frame(&Message::Hello(hello(VersionVector::new(), members, 0)));
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &honest).unwrap();
    assert_eq!(r.membership().len(), 2);
}

#[test]
fn gossiped_last_heard_from_the_future_is_not_counted_so_a_silent_member_is_still_evicted() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    let silent = ReplicaId(3);
    r.enrol_member(PEER).unwrap();
    r.enrol_member(silent).unwrap();
    let heard = vec![member(3, VersionVector::new(), T0)];
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &frame(&Message::Hello(hello(VersionVector::new(), heard, 0)))).unwrap();
    assert_eq!(r.membership().get(silent).map(|m| m.last_heard_ms), Some(T0));
    // A genuine signature on a time past this replica's clock and every drift bound.
    let future = vec![member(3, VersionVector::new(), u64::MAX)];
    let unverified = r.acks_unverified();
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &frame(&Message::Hello(hello(VersionVector::new(), future, 0)))).unwrap();
    assert_eq!(r.membership().get(silent).map(|m| m.last_heard_ms), Some(T0), "not heard in the future");
    assert_eq!(r.acks_unverified(), unverified + 1, "the claim is counted as unverified");
    clock.advance(r.config().lease_ms + 1);
    let report = r.collect_garbage().unwrap();
    assert!(report.evicted.contains(&silent), "evicted once the lease passed: {report:?}");
}

#[test]
fn enrolment_is_durable_bounded_and_removable() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    assert!(!r.enrol_member(ME).unwrap(), "a replica does not enrol itself");
    for i in 0..(MEMBERS_MAX as u64 - 1) {
        assert!(r.enrol_member(ReplicaId(100 + i)).unwrap());
    }
    assert!(!r.enrol_member(ReplicaId(100)).unwrap(), "enrolling twice changes nothing");
    let err = r.enrol_member(PEER).unwrap_err();
    assert!(matches!(err, Error::TooManyMembers(_)), "{err}");
    assert!(err.to_string().contains("remove a member first"), "{err}");
    assert!(r.remove_member(ReplicaId(100)).unwrap());
    r.enrol_member(PEER).unwrap();
    let r = Replica::open(r.into_store(), ME, Config::default(), Arc::new(clock)).unwrap();
    assert!(r.membership().is_enrolled(PEER));
    assert!(!r.membership().is_enrolled(ReplicaId(100)));
    assert_eq!(r.membership().enrolled().count(), MEMBERS_MAX - 1);
}

#[test]
fn a_vector_with_more_components_than_the_limit_is_refused_while_decoding() {
    let big = vv(&(1..=VECTOR_COMPONENTS_MAX as u64 + 1).map(|r| (r, 1)).collect::<Vec<_>>());
    assert!(Message::decode(&frame(&Message::Ack(big.clone(), None))).is_err());
    assert!(Message::decode(&frame(&Message::Done(big.clone(), Hlc(1)))).is_err());
    assert!(Message::decode(&frame(&Message::Hello(hello(big, vec![], 0)))).is_err());
    let fits = vv(&(1..=VECTOR_COMPONENTS_MAX as u64).map(|r| (r, 1)).collect::<Vec<_>>());
    assert!(Message::decode(&frame(&Message::Ack(fits, None))).is_ok());
}

#[test]
fn a_done_that_would_grow_the_vector_past_the_limit_is_refused() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    r.put("x", "1", PutOptions::default()).unwrap();
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &frame(&Message::Hello(hello(vv(&[(2, 1)]), vec![], 1)))).unwrap();
    drain(&mut s, &r);
    // Within the decoding bound, but merged with this replica's own component, one too many.
    let theirs = vv(&(10..10 + VECTOR_COMPONENTS_MAX as u64).map(|w| (w, 1)).collect::<Vec<_>>());
    let err = s.handle(&mut r, &frame(&Message::Done(theirs, Hlc::new(T0, 0)))).unwrap_err();
    assert!(err.to_string().contains("components"), "{err}");
    assert_eq!(r.vector(), &vv(&[(1, 1)]), "nothing merged");
}

/// A replica holding `n` keys, with a session in range reconciliation toward a hostile peer
/// (not a member, with values of its own): the source's first `Ranges` has been sent.
fn reconciling(clock: &ManualClock, n: usize) -> (Replica<MemoryStore>, Session, Vec<Message>) {
    let mut r = replica(clock);
    for i in 0..n {
        r.put(format!("k{i:04}"), "v", PutOptions::default()).unwrap();
    }
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &frame(&Message::Hello(hello(vv(&[(2, 1)]), vec![], 1)))).unwrap();
    let out = drain(&mut s, &r);
    (r, s, out)
}

fn entries_in(msgs: &[Message]) -> usize {
    msgs.iter().map(|m| if let Message::Entries(e) = m { e.len() } else { 0 }).sum()
}

fn reply(split: Vec<KeyBounds>, send: Vec<KeyBounds>, want: Vec<ItemId>) -> Message {
    Message::Reply { split, send, want, keys: vec![] }
}

#[test]
fn a_reply_naming_ranges_that_were_not_offered_or_twice_is_refused_before_anything_is_queued() {
    let clock = ManualClock::new(T0);
    let (mut r, mut s, out) = reconciling(&clock, 500);
    let Some(Message::Ranges(groups)) = out.iter().find(|m| matches!(m, Message::Ranges(_))) else {
        panic!("no ranges: {out:?}")
    };
    let first = KeyBounds(groups[0].0.clone(), groups[0].1[0].0.clone());
    // The whole range, 400 times over: today's code queued every entry 400 times.
    let whole = vec![KeyBounds(None, None); 400];
    let err = s.handle(&mut r, &frame(&reply(vec![], whole, vec![]))).unwrap_err();
    assert!(err.to_string().contains("not offered"), "{err}");
    assert_eq!(entries_in(&drain(&mut s, &r)), 0, "nothing queued");

    let (mut r, mut s, _) = reconciling(&clock, 500);
    let err = s.handle(&mut r, &frame(&reply(vec![first.clone()], vec![first.clone()], vec![]))).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert_eq!(entries_in(&drain(&mut s, &r)), 0, "nothing queued");

    // Each offered part once is what an honest sink does.
    let (mut r, mut s, _) = reconciling(&clock, 500);
    s.handle(&mut r, &frame(&reply(vec![], vec![first], vec![]))).unwrap();
    assert!(entries_in(&drain(&mut s, &r)) <= 500 / 16 + 1);
}

#[test]
fn a_reply_naming_an_item_many_times_gets_it_once() {
    let clock = ManualClock::new(T0);
    let (mut r, mut s, out) = reconciling(&clock, 3);
    let Some(Message::Ranges(groups)) = out.iter().find(|m| matches!(m, Message::Ranges(_))) else {
        panic!("no ranges: {out:?}")
    };
    let PartContent::Items(ids) = &groups[0].1[0].1 else { panic!("three items go as a list") };
    let want: Vec<ItemId> = std::iter::repeat_n(ids.clone(), 1000).flatten().collect();
    s.handle(&mut r, &frame(&reply(vec![], vec![], want))).unwrap();
    assert_eq!(entries_in(&drain(&mut s, &r)), 3);
}

#[test]
fn reconciliation_messages_beyond_their_bounds_are_refused_while_decoding() {
    let part = |i: usize| RangePart(Some(format!("{i:08}").into_bytes()), PartContent::Items(vec![]));
    let ranges = |n: usize| Message::Ranges(vec![RangeGroup(None, (0..n).map(part).collect())]);
    assert!(Message::decode(&frame(&ranges(RANGE_PARTS_MAX))).is_err(), "one group and MAX parts");
    assert!(Message::decode(&frame(&ranges(RANGE_PARTS_MAX - 2))).is_ok());
    let many_groups = Message::Ranges(vec![RangeGroup(None, vec![]); RANGE_PARTS_MAX + 1]);
    assert!(Message::decode(&frame(&many_groups)).is_err());
    let listed =
        Message::Ranges(vec![RangeGroup(None, vec![RangePart(None, PartContent::Items(vec![ItemId(1); 33]))])]);
    assert!(Message::decode(&frame(&listed)).is_err(), "a part lists at most 32 items");
    let want = reply(vec![], vec![], vec![ItemId(0); REPLY_ITEMS_MAX + 1]);
    assert!(Message::decode(&frame(&want)).is_err());
    let send = reply(vec![], vec![KeyBounds(None, None); RANGE_PARTS_MAX + 1], vec![]);
    assert!(Message::decode(&frame(&send)).is_err());
}

fn tombstone(i: u64) -> Entry {
    Entry {
        key: format!("{i:x}").into_bytes(),
        stamp: Stamp { hlc: Hlc::new(T0, 0), replica: ReplicaId(7) },
        dot: lethe_engine::Dot { replica: ReplicaId(7), seq: Seq(i + 1) },
        payload: Payload::Tombstone,
    }
}

#[test]
fn an_entries_frame_beyond_its_bounds_is_refused_while_decoding() {
    let n = ENTRIES_PER_FRAME_MAX as u64;
    let over = frame(&Message::Entries((0..=n).map(tombstone).collect()));
    assert!(over.len() < FRAME_BYTES_MAX / 4, "small on the wire: {} bytes", over.len());
    assert!(matches!(Message::decode(&over), Err(SyncError::Malformed(_))));
    assert!(Message::decode(&frame(&Message::Entries((0..n).map(tombstone).collect()))).is_ok());
}

#[test]
fn a_bootstrap_of_many_tiny_entries_is_cut_into_frames_a_receiver_accepts() {
    let clock = ManualClock::new(T0);
    let mut a = replica(&clock);
    let mut batch = lethe_engine::WriteBatch::new();
    for i in 0..(ENTRIES_PER_FRAME_MAX + 100) {
        batch.put(format!("{i:x}"), "", PutOptions::default());
    }
    a.write(batch).unwrap();
    let mut b = Replica::open(MemoryStore::new(), PEER, Config::default(), Arc::new(clock)).unwrap();
    let out = lethe_engine::session::sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(out.a.messages_sent >= 3, "two chunks and more: {:?}", out.a);
    assert_eq!(b.counts().live, (ENTRIES_PER_FRAME_MAX + 100) as u64);
}

#[test]
fn a_peer_claiming_the_largest_seq_gets_no_overflow() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    r.put("x", "1", PutOptions::default()).unwrap();
    r.delete("gone").unwrap();
    // A write from a third replica the peer lacks, so the peer's vector covers nothing here
    // whole, and the source sends dead records beyond it.
    let third = Entry {
        key: b"t".to_vec(),
        stamp: Stamp { hlc: Hlc::new(T0, 0), replica: ReplicaId(9) },
        dot: lethe_engine::Dot { replica: ReplicaId(9), seq: Seq(1) },
        payload: Payload::Tombstone,
    };
    r.apply_remote(vec![third], Some((&vv(&[(9, 1)]), Hlc::new(T0, 0)))).unwrap();
    // A claim of this replica's own writes up to u64::MAX is refused as a lie (restore.rs), and
    // changes nothing.
    let before = r.vector().clone();
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    let lie = vv(&[(1, u64::MAX), (2, u64::MAX)]);
    let refused = s.handle(&mut r, &frame(&Message::Hello(hello(lie, vec![], 1)))).unwrap_err();
    assert!(refused.to_string().contains("broken or lying"), "{refused}");
    assert_eq!(r.vector(), &before);
    assert_eq!(r.recovery(), None);
    // u64::MAX for the other writers: the dead records beyond it are computed without overflow.
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    let claim = vv(&[(2, u64::MAX), (9, u64::MAX)]);
    s.handle(&mut r, &frame(&Message::Hello(hello(claim, vec![], 1)))).unwrap();
    let out = drain(&mut s, &r);
    let third =
        out.iter().any(|m| matches!(m, Message::Entries(e) if e.iter().any(|e| e.stamp.replica == ReplicaId(9))));
    assert!(!third, "the peer covers the third replica's writes: {out:?}");
    assert!(entries_in(&out) >= 1, "this replica's own tombstone goes: {out:?}");
}

/// A store that counts its commits.
struct Counting {
    inner: MemoryStore,
    commits: Arc<AtomicUsize>,
}

impl Storage for Counting {
    type Snapshot = <MemoryStore as Storage>::Snapshot;

    fn snapshot(&self) -> Result<Self::Snapshot, StorageError> {
        self.inner.snapshot()
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StorageError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(batch)
    }
}

#[test]
fn a_gc_step_with_nothing_to_do_commits_nothing() {
    let clock = ManualClock::new(T0);
    let commits = Arc::new(AtomicUsize::new(0));
    let store = Counting { inner: MemoryStore::new(), commits: commits.clone() };
    let mut r = Replica::open(store, ME, Config::default(), Arc::new(clock.clone())).unwrap();
    let mut peer = Replica::open(MemoryStore::new(), PEER, Config::default(), Arc::new(clock.clone())).unwrap();
    r.enrol_member(PEER).unwrap();
    peer.enrol_member(ME).unwrap();
    r.put("x", "1", PutOptions::default()).unwrap();
    r.delete("y").unwrap();
    lethe_engine::session::sync_in_process(&mut r, &mut peer, false).unwrap();
    // Collect until settled: the tombstone goes, the checkpoint and membership are written.
    for _ in 0..3 {
        r.collect_garbage().unwrap();
    }
    assert_eq!(r.tombstone_count(), 0);
    let settled = commits.load(Ordering::SeqCst);
    for _ in 0..5 {
        clock.advance(2000);
        r.collect_garbage().unwrap();
    }
    assert_eq!(commits.load(Ordering::SeqCst), settled, "an idle GC step wrote to the store");
    // Something to write is still written: a peer's acknowledgement moves its record.
    peer.put("z", "1", PutOptions::default()).unwrap();
    lethe_engine::session::sync_in_process(&mut r, &mut peer, false).unwrap();
    let before = commits.load(Ordering::SeqCst);
    r.collect_garbage().unwrap();
    assert!(commits.load(Ordering::SeqCst) > before);
}

#[test]
fn ranges_this_side_did_not_ask_for_are_refused_before_any_walk() {
    let clock = ManualClock::new(T0);
    let mut r = replica(&clock);
    for i in 0..100 {
        r.put(format!("k{i:03}"), "v", PutOptions::default()).unwrap();
    }
    let before = (r.vector().clone(), r.digest());
    let mut s = Session::new(&mut r, Some(PEER)).unwrap();
    s.handle(&mut r, &frame(&Message::Hello(hello(vv(&[(2, 5)]), vec![], 1)))).unwrap();
    // Two groups each claiming the whole key space (empty item lists: "I hold nothing"), where
    // this side asked for one.
    let whole = RangeGroup(None, vec![RangePart(None, PartContent::Items(vec![]))]);
    let refused = s.handle(&mut r, &frame(&Message::Ranges(vec![whole.clone(), whole]))).unwrap_err();
    assert!(matches!(refused, SyncError::Malformed(_)), "{refused}");
    assert_eq!((r.vector().clone(), r.digest()), before);
}
