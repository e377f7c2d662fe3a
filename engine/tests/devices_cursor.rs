//! Device cursors, epochs and answers a hostile review found wrong (docs/design.md §8, §9): a
//! member's own cursor claim, bounds on cursors and epochs from the wire, and what a device
//! holds for a key after an upload answered `Refused` or `Known`.

use lethe_engine::Hlc;
use lethe_engine::device::records::RecordWire;
use lethe_engine::device::{DeviceSession, MemberHello, sync_device_in_process};
use lethe_engine::session::{Message, PROTOCOL_VERSION, SyncError, sync_in_process};
use lethe_engine::sign::CursorClaim;
use lethe_engine::{Config, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role, Seq};
use std::sync::Arc;

mod common;
use common::{send_records_only, sync_losing_answers};

const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn signed(mut r: Replica<MemoryStore>) -> Replica<MemoryStore> {
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

fn open_member(id: u64, config: Config, clock: &ManualClock) -> Replica<MemoryStore> {
    signed(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn open_device(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    signed(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn put(r: &mut Replica<MemoryStore>, key: &str, value: &str, clock: &ManualClock) {
    clock.advance(1);
    r.put(key, value, PutOptions::default()).unwrap();
}

/// Two members that know each other and a phone enrolled at both.
fn two_members_and_a_phone(clock: &ManualClock) -> (Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>) {
    let mut hub = open_member(1, Config::default(), clock);
    let mut other = open_member(2, Config::default(), clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let phone = open_device(100, clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    (hub, other, phone)
}

/// Finding 2. The hub admits the phone's write at upload seq 1 and the answer is lost; only the
/// hub's cursor claim reaches the other member, which then admits the write itself on the "not
/// seen" path (under a fresh dot, its cursor not moving), the answer lost again. It deletes the
/// key and collects the delete alone (hub and phone past their leases). The re-uploaded write
/// is one it applied itself: it must not apply it a second time (I11), nor bring it back.
#[test]
fn a_write_a_member_admitted_on_the_not_seen_path_is_not_applied_again_after_its_delete_is_collected() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    put(&mut phone, "w", "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    assert!(hub.get(b"w").unwrap().is_some(), "the hub admitted it");
    send_records_only(&mut hub, &mut other);
    assert_eq!(other.devices().cursor(phone.id()).0, 1, "the other member has the hub's claim");
    assert!(other.get(b"w").unwrap().is_none(), "and not the hub's entries");

    sync_losing_answers(&mut phone, &mut other);
    assert!(other.get(b"w").unwrap().is_some(), "the other member admitted it on the not-seen path");
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
    clock.advance(10);
    other.delete("w").unwrap();
    clock.advance(31 * DAY_MS);
    for _ in 0..3 {
        other.collect_garbage().unwrap();
    }
    assert_eq!(other.tombstone_count(), 0, "the other member collected its delete");

    let issued = other.vector().get(other.id());
    sync_losing_answers(&mut phone, &mut other);
    assert_eq!(other.vector().get(other.id()), issued, "the write was applied a second time");
    assert!(other.get(b"w").unwrap().is_none(), "the write came back after its delete");
}

/// Finding 9. A member relays the phone's record at epoch `u64::MAX`: taken, the operator's
/// next removal and enrolment of the phone overflowed the epoch (a panic). An epoch that far
/// ahead is refused and counted; the removal and enrolment work.
#[test]
fn a_relayed_device_epoch_far_ahead_is_refused_and_re_enrolment_still_works() {
    let clock = ManualClock::new(T0);
    let (mut hub, other, phone) = two_members_and_a_phone(&clock);
    let unknown = ReplicaId(101);
    for device in [phone.id(), unknown] {
        let refused = hub.claims_implausible();
        common::hostile_records(
            &mut hub,
            &other,
            vec![RecordWire(device, u64::MAX, false, None, vec![], 0, 0, Vec::new())],
        );
        let taken = hub.devices().record(device).map_or(0, |r| r.epoch);
        hub.enrol_device(device).unwrap();
        assert!(hub.remove_device(device).unwrap());
        assert!(hub.enrol_device(device).unwrap(), "enrolled again, in a new epoch");
        assert_eq!(taken, 0, "the epoch of {device} was taken");
        assert_eq!(hub.claims_implausible(), refused + 1, "the epoch of {device} was not counted as implausible");
        assert_eq!(hub.devices().get(device).map(|r| r.epoch), Some(1));
    }
    // An epoch within the bound of what the hub holds is taken.
    let wire = RecordWire(unknown, 1 + (1 << 16), false, None, vec![], 0, 0, Vec::new());
    common::hostile_records(&mut hub, &other, vec![wire]);
    assert_eq!(hub.devices().record(unknown).map(|r| r.epoch), Some(1 + (1 << 16)));
}

/// Finding 5. A member's own cursor claim of `u64::MAX` for the phone, sent in its records:
/// taken, the hub showed the phone that cursor, and the phone's next sync failed (`Corrupt`,
/// re-numbering its queue past it). A claim that far beyond the cursor held is refused and
/// counted, and the phone syncs.
#[test]
fn a_members_own_cursor_claim_far_ahead_is_refused_and_the_device_still_syncs() {
    let clock = ManualClock::new(T0);
    let (mut hub, other, mut phone) = two_members_and_a_phone(&clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut phone, "w", "w", &clock);
    let refused = hub.claims_implausible();
    let claim = CursorClaim(other.id(), Seq(u64::MAX), Seq(0), Vec::new(), Hlc::UNKNOWN);
    common::hostile_records(
        &mut hub,
        &other,
        vec![RecordWire(phone.id(), 0, false, None, vec![claim], 0, 0, Vec::new())],
    );
    assert_eq!(hub.devices().cursor(phone.id()), Seq(0), "the hub took a cursor claim of u64::MAX");
    assert_eq!(hub.claims_implausible(), refused + 1, "the refused claim was not counted");
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.get(b"w").unwrap().unwrap().value, b"w");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
}

/// Finding 5, at the device: a member's handshake showing a cursor far beyond anything the
/// device's queue numbered is refused with a clear error, before anything changes there.
#[test]
fn a_device_refuses_a_member_handshake_with_an_implausible_cursor_before_changing_anything() {
    let clock = ManualClock::new(T0);
    let (mut hub, _other, mut phone) = two_members_and_a_phone(&clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut phone, "w", "w", &clock);
    let (digest, vector, ack) = (phone.digest(), phone.vector().clone(), phone.device_ack().unwrap());
    let mut ds = DeviceSession::new(&mut phone, Some(hub.id())).unwrap();
    while ds.poll_transmit(&phone).unwrap().is_some() {}
    let hello = MemberHello(
        PROTOCOL_VERSION,
        hub.id(),
        hub.vector().clone(),
        hub.membership().collected().clone(),
        Seq(u64::MAX),
        T0,
        None,
        Vec::new(),
        lethe_engine::Hlc::UNKNOWN,
        false,
    );
    let err = ds.handle(&mut phone, &Message::MemberHello(hello).encode().unwrap()).unwrap_err();
    assert!(matches!(err, SyncError::Malformed(ref m) if m.contains("cursor")), "not a clear refusal: {err}");
    assert_eq!(phone.digest(), digest);
    assert_eq!(phone.vector(), &vector);
    assert_eq!(phone.device_ack().unwrap(), ack, "the device changed its state before refusing");
    assert_eq!(phone.pending_uploads().unwrap(), 1);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(phone.pending_uploads().unwrap(), 0, "and syncs with an honest handshake");
}

/// A hub whose values are at most 16 bytes, holding `k` = `old`, and a phone synced with it
/// that then writes a value over the hub's limit to `k`.
fn hub_and_phone_writing_over_the_limit(clock: &ManualClock) -> (Replica<MemoryStore>, Replica<MemoryStore>) {
    let limits = lethe_engine::Limits { value_bytes_max: 16, ..lethe_engine::Limits::default() };
    let mut hub = open_member(1, Config { limits, ..Config::default() }, clock);
    let mut phone = open_device(100, clock);
    hub.enrol_device(phone.id()).unwrap();
    put(&mut hub, "k", "old", clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(phone.get(b"k").unwrap().unwrap().value, b"old");
    clock.advance(1);
    phone.put("k", vec![b'x'; 100], PutOptions::default()).unwrap();
    (hub, phone)
}

/// Finding 8. The hub refuses the phone's write to `k` (over its limits); the phone drops it,
/// and held nothing for `k` while the hub holds `old`, for good: a later download leaves `old`
/// out, since the phone's vector covers its dot. The phone takes the hub's value back.
#[test]
fn after_a_refused_answer_the_device_takes_the_members_value_for_the_key() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut phone) = hub_and_phone_writing_over_the_limit(&clock);
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.refused, 1);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(phone.get(b"k").unwrap().map(|e| e.value), Some(b"old".to_vec()), "the phone lost the hub's value");
    assert_eq!(phone.digest(), hub.digest());
}

/// Finding 8, within the session that refused the write: its download brings the hub's value.
#[test]
fn after_a_refused_answer_the_device_takes_the_members_value_for_the_key_in_the_same_session() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut phone) = hub_and_phone_writing_over_the_limit(&clock);
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.refused, 1);
    assert_eq!(phone.get(b"k").unwrap().map(|e| e.value), Some(b"old".to_vec()), "the phone lost the hub's value");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(phone.digest(), hub.digest());
}

/// Finding 8, in an anti-entropy session (a reconciliation, not a delta): the same.
#[test]
fn after_a_refused_answer_in_an_anti_entropy_session_the_device_takes_the_members_value() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut phone) = hub_and_phone_writing_over_the_limit(&clock);
    let out = lethe_engine::device::anti_entropy_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.refused, 1);
    assert_eq!(phone.get(b"k").unwrap().map(|e| e.value), Some(b"old".to_vec()), "the phone lost the hub's value");
    assert_eq!(phone.digest(), hub.digest());
}

/// R3-2, across sessions: a member's own claims never move the bound its next claims are
/// checked against (the other members' claims), so one compromised member sending claim after
/// claim, in session after session, leaves the cursor within `CURSOR_GAP_MAX` of the others'.
#[test]
fn one_members_claims_in_session_after_session_do_not_ratchet_the_cursor() {
    let clock = ManualClock::new(T0);
    let (mut hub, other, mut phone) = two_members_and_a_phone(&clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let gap = lethe_engine::limits::CURSOR_GAP_MAX;
    for k in 1..=3 {
        let claim = CursorClaim(other.id(), Seq(k * gap), Seq(0), Vec::new(), Hlc::UNKNOWN);
        common::hostile_records(
            &mut hub,
            &other,
            vec![RecordWire(phone.id(), 0, false, None, vec![claim], 0, 0, Vec::new())],
        );
    }
    assert_eq!(hub.devices().cursor(phone.id()), Seq(gap), "one member's claims ratcheted the cursor");
    assert_eq!(hub.claims_implausible(), 2);
    put(&mut phone, "w", "w", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(hub.get(b"w").unwrap().unwrap().value, b"w");
}

/// R3-2, at the device: two colluding members leapfrog each other's claims and bring the
/// honest hub's cursor more than `CURSOR_GAP_MAX` beyond anything the phone numbered. The
/// phone does not re-number past it, nor refuse the hub (it could never sync with it again:
/// the cursor only grows); its write, below that cursor and not seen admitted by the hub (the
/// forged claims name counters it does not cover), is admitted there.
#[test]
fn a_device_shown_a_cursor_beyond_the_gap_ignores_it_and_still_syncs() {
    let clock = ManualClock::new(T0);
    let (mut hub, other, mut phone) = two_members_and_a_phone(&clock);
    let fourth = open_member(4, Config::default(), &clock);
    hub.enrol_member(fourth.id()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let gap = lethe_engine::limits::CURSOR_GAP_MAX;
    let claim = |by: ReplicaId, seq| {
        RecordWire(
            phone.id(),
            0,
            false,
            None,
            vec![CursorClaim(by, Seq(seq), Seq(1), Vec::new(), Hlc::UNKNOWN)],
            0,
            0,
            Vec::new(),
        )
    };
    common::hostile_records(&mut hub, &other, vec![claim(other.id(), gap)]);
    common::hostile_records(&mut hub, &fourth, vec![claim(fourth.id(), 2 * gap)]);
    assert_eq!(hub.devices().cursor(phone.id()), Seq(2 * gap), "colluding members leapfrog (a documented limit)");
    put(&mut phone, "w", "w", &clock);
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert!(out.device.cursor_ignored && !out.device.renumbered);
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert_eq!(hub.get(b"w").unwrap().unwrap().value, b"w");
}
