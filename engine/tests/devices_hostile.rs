//! A hostile or mistaken *member* and the device records it relays (docs/design.md §8, §9):
//! cursors, last-seen times, evictions, lapses and removals. A compromised member must not make
//! the others drop a device's writes, keep a silent replica alive for ever, or undo what an
//! operator did. Signatures come from the deterministic stand-in (`InsecureTestSigner`); a
//! forgery here never uses the forged replica's key, as a compromised member could not.

use lethe_engine::Hlc;
use lethe_engine::device::records::RecordWire;
use lethe_engine::device::{DEVICE_LEASE_MS_DEFAULT, sync_device_in_process};
use lethe_engine::membership::MemberInfo;
use lethe_engine::session::{Hello, Message, PROTOCOL_VERSION, Session, sync_in_process};
use lethe_engine::sign::{CursorClaim, cursor_message};
use lethe_engine::{
    AckSigner, Config, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role, Seq,
    VersionVector,
};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 3600 * 1000;
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

/// A hostile `b` opens a session with `a` and sends `records` as its device records.
fn hostile_records(a: &mut Replica<MemoryStore>, b: &Replica<MemoryStore>, records: Vec<RecordWire>) {
    let mut s = Session::new(a, Some(b.id())).unwrap();
    s.handle(a, &hostile_hello(b, a.id(), vec![])).unwrap();
    s.handle(a, &Message::Records(b.devices().clock() + 1, true, records).encode().unwrap()).unwrap();
}

#[test]
fn a_relayed_cursor_no_member_reached_does_not_make_a_device_write_known() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    let mut phone = device(PHONE, &clock);
    a.enrol_device(PHONE).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    phone.put("k", "only on the phone", PutOptions::default()).unwrap();
    // b, compromised, relays the phone's record with a cursor far past anything any member
    // admitted: claimed for a itself, for c unsigned, for c under b's own key, for c with c's
    // genuine signature over a lower cursor, and for a replica that is no member. (Far, but
    // within `CURSOR_GAP_MAX`: further is refused before any signature is checked,
    // `devices_cursor.rs`.)
    const FAR: u64 = 1 << 39;
    let c_signed = |seq: u64, counter: u64| {
        let message = cursor_message(C, PHONE, Seq(seq), Seq(counter), Hlc::UNKNOWN);
        CursorClaim(C, Seq(seq), Seq(counter), InsecureTestSigner::new(C).sign(&message), Hlc::UNKNOWN)
    };
    let mut altered = c_signed(1, 0);
    altered.1 = Seq(FAR);
    let b_key = CursorClaim(
        C,
        Seq(FAR),
        Seq(0),
        InsecureTestSigner::new(B).sign(&cursor_message(C, PHONE, Seq(FAR), Seq(0), Hlc::UNKNOWN)),
        Hlc::UNKNOWN,
    );
    let forged = [
        CursorClaim(A, Seq(FAR), Seq(0), Vec::new(), Hlc::UNKNOWN),
        CursorClaim(C, Seq(FAR), Seq(0), Vec::new(), Hlc::UNKNOWN),
        b_key,
        altered,
        CursorClaim(ReplicaId(99), Seq(FAR), Seq(0), Vec::new(), Hlc::UNKNOWN),
    ];
    for claim in forged {
        let unverified = a.acks_unverified();
        let wire = RecordWire(PHONE, 0, false, None, vec![claim.clone()], 0, 0, Vec::new());
        hostile_records(&mut a, &b, vec![wire]);
        assert_eq!(a.devices().cursor(PHONE), Seq(0), "a took a cursor no member accounts for: {claim:?}");
        let counted = u64::from(claim.0 != A);
        assert_eq!(a.acks_unverified(), unverified + counted, "{claim:?} was not counted");
    }
    let _ = sync_device_in_process(&mut phone, &mut a);
    let _ = sync_device_in_process(&mut phone, &mut a);
    let at_a = a.get(b"k").unwrap().map(|e| e.value);
    let queued = phone.pending_uploads().unwrap();
    assert_eq!(at_a.as_deref(), Some(&b"only on the phone"[..]), "the write was answered known and lost");
    assert_eq!(queued, 0);
    // A claim c signed does count when b relays it (a line where a and c never meet).
    hostile_records(&mut a, &b, vec![RecordWire(PHONE, 0, false, None, vec![c_signed(5, 0)], 0, 0, Vec::new())]);
    assert_eq!(a.devices().cursor(PHONE), Seq(5));
}

#[test]
fn a_device_whose_clock_lags_past_the_lease_counts_alike_at_every_member() {
    let clock = ManualClock::new(T0);
    let lagging = ManualClock::new(T0 - DEVICE_LEASE_MS_DEFAULT - DAY_MS);
    let (mut a, mut b) = (member(A, &clock), member(B, &clock));
    let mut phone = device(PHONE, &lagging);
    a.enrol_device(PHONE).unwrap();
    a.put("k", "v", PutOptions::default()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    // The phone syncs with a only; what b knows of it comes from a's records.
    let _ = sync_device_in_process(&mut phone, &mut a).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    a.collect_garbage().unwrap();
    b.collect_garbage().unwrap();
    let counts = |r: &Replica<MemoryStore>| r.devices().get(PHONE).map(|d| d.counts());
    assert_eq!(counts(&a), Some(true), "a heard the phone just now");
    assert_eq!(counts(&b), counts(&a), "the phone's lagging clock lapsed it at b and not at a");
}

#[test]
fn a_relayed_last_seen_is_never_later_than_the_relaying_members_own_observation() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (member(A, &clock), member(B, &clock));
    let ahead = ManualClock::new(T0 + 5_000);
    let mut phone = device(PHONE, &ahead);
    a.enrol_device(PHONE).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    let _ = sync_device_in_process(&mut phone, &mut a).unwrap();
    let seen_at_a = a.devices().get(PHONE).unwrap().last_seen_ms;
    // Much later, a relays the phone's record (its cursor or epoch changed, say) while the
    // phone has been silent since: b must not take the phone's clock as "seen then".
    clock.advance(3_000);
    sync_in_process(&mut a, &mut b, false).unwrap();
    let seen_at_b = b.devices().get(PHONE).unwrap().last_seen_ms;
    assert!(seen_at_b <= seen_at_a, "b saw the phone at {seen_at_b}, after a last did at {seen_at_a}");
}

#[test]
fn an_evicted_member_is_not_readmitted_by_a_replayed_signed_ack() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b, mut c) = (member(A, &clock), member(B, &clock), member(C, &clock));
    sync_in_process(&mut b, &mut c, false).unwrap();
    sync_in_process(&mut a, &mut c, false).unwrap();
    assert!(a.membership().contains(C));
    clock.advance(1_000);
    assert!(a.evict(C));
    // b relays c's genuine acknowledgement, signed before the eviction.
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(!a.membership().contains(C), "an acknowledgement signed before the eviction undid it");
    a.collect_garbage().unwrap();
    assert!(!a.membership().contains(C));
    // c signs anew, after the eviction, and that reaches a through b: c rejoins.
    clock.advance(1_000);
    sync_in_process(&mut b, &mut c, false).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    assert!(a.membership().contains(C), "a later acknowledgement lets c rejoin");
}

#[test]
fn a_lapsed_device_record_relays_no_signed_ack() {
    let clock = ManualClock::new(T0);
    let mut a = member(A, &clock);
    let mut phone = device(PHONE, &clock);
    a.enrol_device(PHONE).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    assert!(a.devices().get(PHONE).unwrap().signed.is_some());
    clock.advance(DEVICE_LEASE_MS_DEFAULT + 1);
    assert_eq!(a.collect_garbage().unwrap().lapsed, vec![PHONE]);
    let (wire, _) = a.devices().changed_since(0, 100, None);
    let record = wire.iter().find(|w| w.0 == PHONE).unwrap();
    assert_eq!(record.claim(), None, "a lapsed record still relays the phone's old signed ack");
}

#[test]
fn a_relayed_epoch_does_not_undo_a_removal_nor_count_an_ack_signed_before_it() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    let mut phone = device(PHONE, &clock);
    a.enrol_device(PHONE).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    let genuine = a.devices().get(PHONE).unwrap().signed.clone().unwrap();
    clock.advance(1_000);
    a.remove_device(PHONE).unwrap();
    // b, compromised, relays the phone as enrolled again (a higher epoch) with its genuine
    // acknowledgement from before the removal.
    let undo = RecordWire(PHONE, 1, false, Some(genuine.vector.clone()), vec![], genuine.time_ms, T0, {
        genuine.signature.clone()
    });
    hostile_records(&mut a, &b, vec![undo]);
    assert!(a.devices().is_revoked(PHONE), "a member's relayed epoch undid the operator's removal");
    // Enrolled again here by the operator, the old acknowledgement still does not count.
    a.enrol_device(PHONE).unwrap();
    let again = RecordWire(PHONE, 1, false, Some(genuine.vector.clone()), vec![], genuine.time_ms, T0, {
        genuine.signature.clone()
    });
    hostile_records(&mut a, &b, vec![again]);
    let record = a.devices().get(PHONE).unwrap();
    assert!(!record.counts() && record.signed.is_none(), "an ack signed before the removal counted again");
}

#[test]
fn a_member_session_past_the_records_and_signed_claims_bounds_is_closed_and_changes_nothing() {
    use lethe_engine::limits::{RECORDS_MESSAGES_PER_SESSION_MAX, SIGNED_CLAIMS_PER_SESSION_MAX};
    use lethe_engine::membership::MEMBERS_MAX;
    use lethe_engine::session::message::RECORDS_PER_MESSAGE_MAX;
    let clock = ManualClock::new(T0);
    let (mut a, b) = (member(A, &clock), member(B, &clock));
    a.enrol_device(PHONE).unwrap();
    // Records frames that never end.
    let mut s = Session::new(&mut a, Some(B)).unwrap();
    s.handle(&mut a, &hostile_hello(&b, A, vec![])).unwrap();
    let empty = Message::Records(0, false, vec![]).encode().unwrap();
    let mut refused = None;
    for i in 0..RECORDS_MESSAGES_PER_SESSION_MAX + 5 {
        if let Err(e) = s.handle(&mut a, &empty) {
            refused = Some((i, e.to_string()));
            break;
        }
    }
    let (at, why) = refused.expect("a session took Records frames without end");
    assert_eq!(at, RECORDS_MESSAGES_PER_SESSION_MAX);
    assert!(why.contains("RECORDS_MESSAGES_PER_SESSION_MAX"), "{why}");
    // Frames full of cursor claims, each of which could be a signature to check.
    let forged: Vec<CursorClaim> =
        (0..MEMBERS_MAX as u64).map(|i| CursorClaim(C, Seq(i + 1), Seq(0), Vec::new(), Hlc::UNKNOWN)).collect();
    let frame = Message::Records(
        0,
        false,
        (0..RECORDS_PER_MESSAGE_MAX as u64)
            .map(|i| RecordWire(ReplicaId(1000 + i), 0, false, None, forged.clone(), 0, 0, Vec::new()))
            .collect(),
    )
    .encode()
    .unwrap();
    let mut s = Session::new(&mut a, Some(B)).unwrap();
    s.handle(&mut a, &hostile_hello(&b, A, vec![])).unwrap();
    let per_frame = RECORDS_PER_MESSAGE_MAX * MEMBERS_MAX;
    let mut refused = None;
    for i in 0..SIGNED_CLAIMS_PER_SESSION_MAX / per_frame + 2 {
        let before = (a.devices().clock(), a.acks_unverified(), a.devices().len());
        if let Err(e) = s.handle(&mut a, &frame) {
            assert_eq!(
                (a.devices().clock(), a.acks_unverified(), a.devices().len()),
                before,
                "the refused frame changed a"
            );
            refused = Some((i, e.to_string()));
            break;
        }
    }
    let (at, why) = refused.expect("a session offered signed claims without bound");
    // The handshake offered one claim (b's own record), each frame `per_frame`: refused at the
    // first frame that would pass the bound, and not before.
    assert!(at * per_frame < SIGNED_CLAIMS_PER_SESSION_MAX, "refused early, at frame {at}");
    assert!(1 + (at + 1) * per_frame > SIGNED_CLAIMS_PER_SESSION_MAX, "refused late, at frame {at}");
    assert!(why.contains("SIGNED_CLAIMS_PER_SESSION_MAX"), "{why}");
}

/// The stand-in signer, counting the signatures it checks.
#[derive(Debug)]
struct CountingSigner(InsecureTestSigner, std::sync::atomic::AtomicU64);

impl AckSigner for CountingSigner {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message)
    }

    fn verify(&self, signer: ReplicaId, message: &[u8], signature: &[u8]) -> bool {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.verify(signer, message, signature)
    }
}

#[test]
fn relayed_claims_that_cannot_change_anything_are_not_verified() {
    let clock = ManualClock::new(T0);
    let b = member(B, &clock);
    let mut a = member(A, &clock);
    let counting = Arc::new(CountingSigner(InsecureTestSigner::new(A), std::sync::atomic::AtomicU64::new(0)));
    a.set_signer(counting.clone());
    let mut phone = device(PHONE, &clock);
    let tablet = ReplicaId(101);
    a.enrol_device(PHONE).unwrap();
    a.enrol_device(tablet).unwrap();
    sync_device_in_process(&mut phone, &mut a).unwrap();
    let genuine = a.devices().get(PHONE).unwrap().signed.clone().unwrap();
    a.remove_device(PHONE).unwrap();
    let ack = |device, epoch, time_ms, signature| {
        RecordWire(device, epoch, false, Some(VersionVector::new()), vec![], time_ms, time_ms, signature)
    };
    let tablet_ack = |time_ms| {
        let signed =
            lethe_engine::SignedAck::sign(&InsecureTestSigner::new(tablet), tablet, VersionVector::new(), time_ms);
        ack(tablet, 0, time_ms, signed.signature)
    };
    let verified = || counting.1.load(std::sync::atomic::Ordering::Relaxed);
    let cost = |a: &mut Replica<MemoryStore>, run: &dyn Fn(&mut Replica<MemoryStore>)| {
        let start = verified();
        run(a);
        verified() - start
    };
    // What b's handshake alone costs (its own record: for the restore check and for gossip).
    let hello = cost(&mut a, &|a| {
        let mut s = Session::new(a, Some(B)).unwrap();
        s.handle(a, &hostile_hello(&b, A, vec![])).unwrap();
    });
    // The tablet's genuine acknowledgement, relayed: verified once, kept.
    let first = cost(&mut a, &|a| hostile_records(a, &b, vec![tablet_ack(T0)]));
    assert_eq!(first, hello + 1);
    assert!(a.devices().get(tablet).unwrap().signed.is_some());
    // Then claims no signature could make count: the removed phone's (any epoch), the same
    // tablet acknowledgement again, an older one, a cursor claim for a itself, and gossip
    // about a replica not enrolled here.
    let records = vec![
        ack(PHONE, 0, genuine.time_ms, genuine.signature.clone()),
        ack(PHONE, 1, T0 + 1, vec![1; 32]),
        tablet_ack(T0),
        tablet_ack(T0 - 1),
        RecordWire(
            tablet,
            0,
            false,
            None,
            vec![CursorClaim(A, Seq(9), Seq(1), vec![1; 32], Hlc::UNKNOWN)],
            0,
            0,
            vec![],
        ),
    ];
    let spared = cost(&mut a, &|a| hostile_records(a, &b, records.clone()));
    assert_eq!(spared, hello, "signatures checked for records that could change nothing");
    let stranger =
        MemberInfo { replica: ReplicaId(77), acked: VersionVector::new(), last_heard_ms: T0, signature: vec![1; 32] };
    let gossip = cost(&mut a, &|a| {
        let mut s = Session::new(a, Some(B)).unwrap();
        s.handle(a, &hostile_hello(&b, A, vec![stranger.clone()])).unwrap();
    });
    assert!(gossip <= hello + 1, "gossip about a replica not enrolled here checked twice");
}
