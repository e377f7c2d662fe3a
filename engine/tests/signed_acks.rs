//! Signed acknowledgements (docs/design.md §9): what a member says about a *third* replica (a
//! member's acknowledged vector and when it was heard, a device's record) counts only if that
//! replica signed it. Signatures come from `AckSigner`; here the deterministic stand-in
//! (`InsecureTestSigner`), which a forgery in these tests does not use for the forged replica,
//! just as a compromised member could not use another replica's Ed25519 key.

use lethe_engine::device::records::RecordWire;
use lethe_engine::device::sync_device_in_process;
use lethe_engine::membership::MemberInfo;
use lethe_engine::session::{Hello, Message, PROTOCOL_VERSION, Session, SyncError, sync_in_process};
use lethe_engine::sign::{AckProof, SIGNATURE_BYTES_MAX};
use lethe_engine::{
    Config, InsecureTestSigner, ManualClock, MemoryStore, Meta, PutOptions, Replica, ReplicaId, Role, SignedAck,
    Snapshot, Storage, VersionVector,
};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const A: ReplicaId = ReplicaId(1);
const B: ReplicaId = ReplicaId(2);
const C: ReplicaId = ReplicaId(3);
const PHONE: ReplicaId = ReplicaId(100);

/// Member `id`, signing with the stand-in, with members 1 to 3 enrolled.
fn member(id: ReplicaId, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), id, Config::default(), Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(id)));
    for m in [A, B, C] {
        r.enrol_member(m).unwrap();
    }
    r
}

fn device(id: ReplicaId, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    let mut r = Replica::open(MemoryStore::new(), id, config, Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(id)));
    r
}

fn stored_members(r: &Replica<MemoryStore>) -> Option<Vec<u8>> {
    r.store().snapshot().unwrap().meta(Meta::Members).unwrap()
}

/// The handshake a hostile `b` sends `to`: its own vector and record as they are, then `claims`.
fn hostile_hello(b: &Replica<MemoryStore>, to: ReplicaId, claims: Vec<MemberInfo>) -> Vec<u8> {
    let mut members = vec![MemberInfo::from(b.sign_ack(b.vector().clone()))];
    members.extend(claims);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        replica: b.id(),
        vector: b.vector().clone(),
        members,
        values: 1,
        anti_entropy: false,
        wall_ms: T0,
        records_seen: b.records_seen(to),
        lost: Vec::new(),
    };
    Message::Hello(hello).encode().unwrap()
}

/// Forged claims that `victim` acknowledged `vector`: unsigned; signed by the forger's key;
/// the victim's own genuine signature over an older vector with the vector replaced.
fn forgeries(forger: ReplicaId, victim: ReplicaId, old: VersionVector, vector: &VersionVector) -> Vec<MemberInfo> {
    let unsigned = MemberInfo { replica: victim, acked: vector.clone(), last_heard_ms: T0, signature: Vec::new() };
    let mut wrong_key = MemberInfo::from(SignedAck::sign(&InsecureTestSigner::new(forger), victim, vector.clone(), T0));
    wrong_key.replica = victim;
    let mut altered = MemberInfo::from(SignedAck::sign(&InsecureTestSigner::new(victim), victim, old, T0));
    altered.acked = vector.clone();
    vec![unsigned, wrong_key, altered]
}

#[test]
fn a_member_relaying_a_forged_ack_about_a_third_member_does_not_move_the_frontier() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (member(A, &clock), member(B, &clock), member(C, &clock));
    a.put("k", "v", PutOptions::default()).unwrap();
    // c is a member at a, and has seen the write but not the delete that follows.
    sync_in_process(&mut a, &mut c, false).unwrap();
    a.delete("k").unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    let c_before = a.membership().get(C).cloned().unwrap();
    assert!(!c_before.acked.dominates(a.vector()));
    a.collect_garbage().unwrap();
    let stored = stored_members(&a);
    for (i, forged) in forgeries(B, C, c_before.acked.clone(), a.vector()).into_iter().enumerate() {
        let unverified = a.acks_unverified();
        let mut s = Session::new(&mut a, Some(B)).unwrap();
        s.handle(&mut a, &hostile_hello(&b, A, vec![forged])).unwrap();
        assert_eq!(a.membership().get(C), Some(&c_before), "forgery {i} changed c's record");
        assert_eq!(a.acks_unverified(), unverified + 1, "forgery {i} was not counted");
        assert!(!a.frontier().dominates(a.vector()), "forgery {i} moved the frontier past c");
        for _ in 0..3 {
            a.collect_garbage().unwrap();
        }
        assert_eq!(a.tombstone_count(), 1, "forgery {i}: the delete was collected before c saw it");
    }
    assert_eq!(stored_members(&a), stored, "a refused claim persisted nothing");
    // c itself then acknowledges (through b, signed): the delete goes.
    sync_in_process(&mut b, &mut c, false).unwrap();
    for _ in 0..2 {
        sync_in_process(&mut a, &mut b, false).unwrap();
        sync_in_process(&mut b, &mut c, false).unwrap();
        a.collect_garbage().unwrap();
    }
    assert_eq!(a.tombstone_count(), 0);
}

#[test]
fn a_relayed_signed_ack_lets_a_line_collect_where_the_ends_never_talk() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (member(A, &clock), member(B, &clock), member(C, &clock));
    for i in 0..10 {
        a.put(format!("k{i}"), "v", PutOptions::default()).unwrap();
    }
    let line = |a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>, c: &mut Replica<MemoryStore>| {
        sync_in_process(a, b, false).unwrap();
        sync_in_process(b, c, false).unwrap();
        for r in [a, b, c] {
            r.collect_garbage().unwrap();
        }
    };
    line(&mut a, &mut b, &mut c);
    line(&mut a, &mut b, &mut c);
    assert!(a.membership().contains(C) && c.membership().contains(A), "known through b's relays alone");
    for i in 0..10 {
        a.delete(format!("k{i}")).unwrap();
    }
    let mut rounds = 0;
    while [&a, &b, &c].iter().any(|r| r.tombstone_count() > 0) {
        assert!(rounds < 8, "not collected after {rounds} rounds: {:?}", a.membership());
        line(&mut a, &mut b, &mut c);
        rounds += 1;
    }
    println!("line A-B-C: every tombstone collected after {rounds} rounds");
    assert_eq!((a.acks_unverified(), b.acks_unverified(), c.acks_unverified()), (0, 0, 0));
    assert_eq!(a.digest(), c.digest());
}

#[test]
fn with_no_signer_a_relayed_ack_does_not_count() {
    let clock = ManualClock::new(T0);
    let open = |id| {
        let mut r = Replica::open(MemoryStore::new(), id, Config::default(), Arc::new(clock.clone())).unwrap();
        for m in [A, B, C] {
            r.enrol_member(m).unwrap();
        }
        r
    };
    let (mut a, mut b, mut c) = (open(A), open(B), open(C));
    a.put("k", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut b, &mut c, false).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(b.membership().contains(C), "a peer's word about itself counts unsigned");
    assert!(!a.membership().contains(C), "b's unsigned word about c does not");
    assert!(a.acks_unverified() > 0);
}

#[test]
fn a_member_relaying_a_forged_device_record_does_not_move_the_frontier() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (member(A, &clock), member(B, &clock));
    let mut phone = device(PHONE, &clock);
    a.enrol_device(PHONE).unwrap();
    a.put("k", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    a.delete("k").unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    let record = a.devices().get(PHONE).cloned().unwrap();
    let old = record.acked.clone().unwrap();
    assert!(!old.dominates(a.vector()), "the phone has not seen the delete");
    let genuine = record.signed.clone().expect("the phone's signed acknowledgement is kept");
    assert!(genuine.verify(&InsecureTestSigner::new(A)));
    let forged = [
        RecordWire(PHONE, 0, false, Some(a.vector().clone()), vec![], T0, T0, Vec::new()),
        RecordWire(PHONE, 0, false, Some(a.vector().clone()), vec![], T0, T0, {
            SignedAck::sign(&InsecureTestSigner::new(B), PHONE, a.vector().clone(), T0).signature
        }),
        RecordWire(PHONE, 0, false, Some(a.vector().clone()), vec![], genuine.time_ms, genuine.time_ms, {
            genuine.signature.clone()
        }),
    ];
    for (i, wire) in forged.into_iter().enumerate() {
        let unverified = a.acks_unverified();
        let mut s = Session::new(&mut a, Some(B)).unwrap();
        s.handle(&mut a, &hostile_hello(&b, A, vec![])).unwrap();
        s.handle(&mut a, &Message::Records(b.devices().clock() + 1, true, vec![wire]).encode().unwrap()).unwrap();
        assert_eq!(a.devices().get(PHONE).map(|r| &r.acked), Some(&record.acked), "forgery {i} grew the record");
        assert_eq!(a.acks_unverified(), unverified + 1, "forgery {i} was not counted");
        for _ in 0..3 {
            a.collect_garbage().unwrap();
        }
        assert_eq!(a.tombstone_count(), 1, "forgery {i}: collected before the phone saw the delete");
    }
}

#[test]
fn a_device_ack_relayed_signed_counts_at_a_member_the_device_never_met() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (member(A, &clock), member(B, &clock));
    let mut phone = device(PHONE, &clock);
    a.enrol_device(PHONE).unwrap();
    a.put("k", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    b.delete("k").unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    // b waits for the phone, which syncs only with a; its signed `Ack` reaches b through a.
    for _ in 0..3 {
        b.collect_garbage().unwrap();
    }
    assert_eq!(b.tombstone_count(), 1, "b did not wait for the phone");
    let mut rounds = 0;
    while a.tombstone_count() + b.tombstone_count() > 0 {
        assert!(rounds < 6, "not collected after {rounds} rounds");
        sync_device_in_process(&mut phone, &mut a).unwrap();
        sync_in_process(&mut a, &mut b, false).unwrap();
        a.collect_garbage().unwrap();
        b.collect_garbage().unwrap();
        rounds += 1;
    }
    assert_eq!(b.acks_unverified(), 0);
    let at_b = b.devices().get(PHONE).unwrap();
    assert!(at_b.signed.as_ref().is_some_and(|s| s.verify(&InsecureTestSigner::new(B))));
}

#[test]
fn signatures_beyond_the_bound_are_refused_as_they_decode() {
    let clock = ManualClock::new(T0);
    let b = member(B, &clock);
    let long = vec![7; SIGNATURE_BYTES_MAX + 1];
    let fits = vec![7; SIGNATURE_BYTES_MAX];
    let claim =
        |signature: Vec<u8>| MemberInfo { replica: C, acked: VersionVector::new(), last_heard_ms: T0, signature };
    assert!(Message::decode(&hostile_hello(&b, A, vec![claim(fits.clone())])).is_ok());
    let err = Message::decode(&hostile_hello(&b, A, vec![claim(long.clone())])).unwrap_err();
    assert!(matches!(&err, SyncError::Malformed(m) if m.contains("signature of 129 bytes")), "{err}");
    let record =
        |signature| Message::Records(1, true, vec![RecordWire(PHONE, 0, false, None, vec![], 0, 0, signature)]);
    assert!(Message::decode(&record(fits.clone()).encode().unwrap()).is_ok());
    assert!(Message::decode(&record(long.clone()).encode().unwrap()).is_err());
    let ack = |signature| Message::Ack(VersionVector::new(), Some(AckProof(T0, signature)));
    assert!(Message::decode(&ack(fits.clone()).encode().unwrap()).is_ok());
    assert!(Message::decode(&ack(long.clone()).encode().unwrap()).is_err());
    let hello = |signature| {
        Message::DeviceHello(lethe_engine::device::DeviceHello(
            PROTOCOL_VERSION,
            PHONE,
            VersionVector::new(),
            VersionVector::new(),
            None,
            true,
            false,
            T0,
            false,
            signature,
            None,
            Vec::new(),
        ))
    };
    assert!(Message::decode(&hello(fits).encode().unwrap()).is_ok());
    assert!(Message::decode(&hello(long).encode().unwrap()).is_err());
}

#[test]
fn a_genuine_ack_signed_at_a_time_in_the_future_is_not_counted_when_relayed() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (member(A, &clock), member(B, &clock), member(C, &clock));
    a.put("k", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut c, false).unwrap();
    a.delete("k").unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    let c_before = a.membership().get(C).cloned().unwrap();
    // c's own key, a vector covering the delete, and a time ten days ahead: it would count as
    // "heard now" wherever it went, and as c's latest, no honest later ack would replace it.
    let ten_days = 10 * 24 * 3600 * 1000;
    let future = MemberInfo::from(SignedAck::sign(&InsecureTestSigner::new(C), C, a.vector().clone(), T0 + ten_days));
    let unverified = a.acks_unverified();
    let mut s = Session::new(&mut a, Some(B)).unwrap();
    s.handle(&mut a, &hostile_hello(&b, A, vec![future])).unwrap();
    assert_eq!(a.membership().get(C), Some(&c_before), "the future-dated ack changed c's record");
    assert_eq!(a.acks_unverified(), unverified + 1);
    for _ in 0..3 {
        a.collect_garbage().unwrap();
    }
    assert_eq!(a.tombstone_count(), 1, "collected on c's word dated ten days ahead");
}
