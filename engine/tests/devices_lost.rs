//! Lost ranges told by a third member (docs/design.md §9, review finding 3): what a member's
//! handshake says a *third* member lost to a restore counts only if that member signed it, and
//! what a member heard of others' lost ranges survives a restart (review finding 10).

use lethe_engine::session::{Hello, Message, PROTOCOL_VERSION, Session};
use lethe_engine::membership::MemberInfo;
use lethe_engine::{Config, InsecureTestSigner, ManualClock, MemoryStore, Replica, ReplicaId, Seq};
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

/// `b` opens a session with `a` whose handshake tells `lost`.
fn tell_lost(a: &mut Replica<MemoryStore>, b: &Replica<MemoryStore>, lost: Vec<(ReplicaId, Seq, Seq)>) {
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
    tell_lost(&mut a, &b, vec![(C, Seq(0), Seq(1 << 30))]);
    assert!(a.lost_of(C).is_empty(), "A took B's unsigned word for what C lost: {:?}", a.lost_of(C));
    // What B says of itself is B's own word (the connection authenticates it).
    tell_lost(&mut a, &b, vec![(B, Seq(5), Seq(9))]);
    assert_eq!(a.lost_of(B), &[(Seq(5), Seq(9))]);
}

#[test]
fn lost_ranges_heard_of_another_member_survive_a_restart() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    tell_lost(&mut a, &b, vec![(B, Seq(5), Seq(9))]);
    assert_eq!(a.lost_of(B), &[(Seq(5), Seq(9))]);
    let mut a = Replica::open(a.into_store(), A, Config::default(), Arc::new(clock.clone())).unwrap();
    a.set_signer(Arc::new(InsecureTestSigner::new(A)));
    // Forgotten, A would take B's admissions in (5, 9] as seen again, answer a device's
    // re-upload of a write B lost "known", and tell its devices nothing to re-upload.
    assert_eq!(a.lost_of(B), &[(Seq(5), Seq(9))], "A forgot what B lost when it restarted");
}
