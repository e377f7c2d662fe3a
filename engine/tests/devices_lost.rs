//! Lost ranges told by a third member (docs/design.md §9, review finding 3): what a member's
//! handshake says a *third* member lost to a restore counts only if that member signed it, and
//! what a member heard of others' lost ranges survives a restart (review finding 10).

use lethe_engine::device::{DeviceSession, MemberHello, sync_device_in_process};
use lethe_engine::membership::MemberInfo;
use lethe_engine::replica::LostStatement;
use lethe_engine::session::{Hello, Message, PROTOCOL_VERSION, Session};
use lethe_engine::sign::lost_message;
use lethe_engine::{
    AckSigner, Config, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role, Seq,
};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const A: ReplicaId = ReplicaId(1);
const B: ReplicaId = ReplicaId(2);
const C: ReplicaId = ReplicaId(3);

/// Member `id`, signing with the stand-in, with members 1 to 3 enrolled.
fn member(id: ReplicaId, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), id, Config::default(), Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(id)));
    for m in [A, B, C] {
        r.enrol_member(m).unwrap();
    }
    r
}

/// A statement of `member`'s lost `ranges`, signed by `signer` (`None`: unsigned).
fn statement(member: ReplicaId, ranges: &[(u64, u64)], signer: Option<ReplicaId>) -> LostStatement {
    let ranges: Vec<(Seq, Seq)> = ranges.iter().map(|&(f, t)| (Seq(f), Seq(t))).collect();
    let signature = signer.map_or_else(Vec::new, |s| InsecureTestSigner::new(s).sign(&lost_message(member, &ranges)));
    LostStatement(member, ranges, signature)
}

/// `b` opens a session with `a` whose handshake tells `lost`.
fn tell_lost(a: &mut Replica<MemoryStore>, b: &Replica<MemoryStore>, lost: Vec<LostStatement>) {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        replica: b.id(),
        vector: b.vector().clone(),
        members: vec![MemberInfo::from(b.sign_ack(b.vector().clone()))],
        values: 0,
        anti_entropy: false,
        wall_ms: T0,
        records_seen: b.records_seen(a.id()),
        lost,
    };
    let mut s = Session::new(a, Some(b.id())).unwrap();
    s.handle(a, &Message::Hello(hello).encode().unwrap()).unwrap();
}

#[test]
fn a_lost_range_a_member_tells_of_a_third_member_unsigned_is_not_taken() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    // B says C lost every seq up to 2^30: believed, A would take every admission C made of a
    // device's uploads as lost, answer none of them "known", and tell its devices to upload
    // again every write they hold under C's dots.
    tell_lost(&mut a, &b, vec![statement(C, &[(0, 1 << 30)], None)]);
    assert!(a.lost_of(C).is_empty(), "A took B's unsigned word for what C lost: {:?}", a.lost_of(C));
    // Signed by B, not C: the same.
    tell_lost(&mut a, &b, vec![statement(C, &[(0, 1 << 30)], Some(B))]);
    assert!(a.lost_of(C).is_empty(), "A took B's signature for C's: {:?}", a.lost_of(C));
    assert_eq!(a.lost_unverified(), 2, "both refusals are counted");
    assert!(a.lost_gossip().is_empty(), "and neither is relayed");
    // What B says of itself is B's own word (the connection authenticates it).
    tell_lost(&mut a, &b, vec![statement(B, &[(5, 9)], None)]);
    assert_eq!(a.lost_of(B), &[(Seq(5), Seq(9))]);
}

#[test]
fn a_lost_range_signed_by_its_member_is_taken_relayed_and_superseded_by_a_wider_one() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    tell_lost(&mut a, &b, vec![statement(C, &[(10, 20)], Some(C))]);
    assert_eq!(a.lost_of(C), &[(Seq(10), Seq(20))], "C's own signed word, relayed by B");
    // C's later statement covers the earlier one: it replaces it.
    tell_lost(&mut a, &b, vec![statement(C, &[(10, 20), (30, 40)], Some(C))]);
    assert_eq!(a.lost_of(C), &[(Seq(10), Seq(20)), (Seq(30), Seq(40))]);
    assert_eq!(a.lost_gossip(), vec![statement(C, &[(10, 20), (30, 40)], Some(C))], "relayed as C signed it");
    // An older one (covered) changes nothing; one that is not covered (C restored from a copy
    // older than its first restore, which forgot it) is kept beside it, and both count.
    tell_lost(&mut a, &b, vec![statement(C, &[(10, 20)], Some(C)), statement(C, &[(50, 60)], Some(C))]);
    assert_eq!(a.lost_of(C), &[(Seq(10), Seq(20)), (Seq(30), Seq(40)), (Seq(50), Seq(60))]);
    assert_eq!(a.lost_gossip().len(), 2);
    assert_eq!(a.lost_unverified(), 0);
}

#[test]
fn lost_ranges_heard_of_another_member_survive_a_restart() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    tell_lost(&mut a, &b, vec![statement(B, &[(5, 9)], None), statement(C, &[(1, 3)], Some(C))]);
    assert_eq!(a.lost_of(B), &[(Seq(5), Seq(9))]);
    let mut a = Replica::open(a.into_store(), A, Config::default(), Arc::new(clock.clone())).unwrap();
    a.set_signer(Arc::new(InsecureTestSigner::new(A)));
    // Forgotten, A would take B's admissions in (5, 9] as seen again, answer a device's
    // re-upload of a write B lost "known", and tell its devices nothing to re-upload.
    assert_eq!(a.lost_of(B), &[(Seq(5), Seq(9))], "A forgot what B lost when it restarted");
    assert_eq!(a.lost_of(C), &[(Seq(1), Seq(3))]);
    assert_eq!(a.lost_gossip().len(), 2, "and relays it as before");
}

/// `member`'s handshake to `phone`, honest but for `lost`; returns how many writes the phone
/// queued again on its word.
fn hello_to_phone(phone: &mut Replica<MemoryStore>, member: &Replica<MemoryStore>, lost: Vec<LostStatement>) -> u64 {
    let mut ds = DeviceSession::new(phone, Some(member.id())).unwrap();
    while ds.poll_transmit(phone).unwrap().is_some() {}
    let hello = MemberHello(
        PROTOCOL_VERSION,
        member.id(),
        member.vector().clone(),
        member.membership().collected().clone(),
        member.devices().cursor(phone.id()),
        T0,
        None,
        lost,
        lethe_engine::Hlc::UNKNOWN,
        false,
    );
    ds.handle(phone, &Message::MemberHello(hello).encode().unwrap()).unwrap();
    ds.stats().requeued
}

#[test]
fn a_device_uploads_again_under_a_third_members_lost_range_only_if_that_member_signed_it() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (member(A, &clock), member(B, &clock));
    let config = Config { role: Role::Device, ..Config::default() };
    let mut phone = Replica::open(MemoryStore::new(), ReplicaId(100), config, Arc::new(clock.clone())).unwrap();
    phone.set_signer(Arc::new(InsecureTestSigner::new(phone.id())));
    a.enrol_device(phone.id()).unwrap();
    b.enrol_device(phone.id()).unwrap();
    clock.advance(1);
    phone.put("w", "w", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    let dot = phone.get(b"w").unwrap().unwrap().dot;
    assert_eq!(dot.replica, A, "admitted by A");
    let range = [(dot.seq.0 - 1, dot.seq.0)];
    // B says A lost the dot: unsigned, or signed by B, the phone does not act on it.
    assert_eq!(hello_to_phone(&mut phone, &b, vec![statement(A, &range, None)]), 0, "taken on B's word");
    assert_eq!(hello_to_phone(&mut phone, &b, vec![statement(A, &range, Some(B))]), 0, "taken on B's signature");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(phone.lost_unverified(), 2);
    // A's own signed statement, relayed by B: the phone uploads its write again.
    assert_eq!(hello_to_phone(&mut phone, &b, vec![statement(A, &range, Some(A))]), 1);
    assert_eq!(phone.pending_uploads().unwrap(), 1);
}
