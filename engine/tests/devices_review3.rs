//! A third hostile review of the device cursor and restore fixes (docs/design.md §8–§10): each
//! test is one finding, written to fail before it is fixed.

use lethe_engine::Hlc;
use lethe_engine::device::records::{RECORDS_CLOCK_GAP_MAX, RecordWire};
use lethe_engine::device::{DeviceService, DeviceSession, sync_device_in_process};
use lethe_engine::session::{Message, PROTOCOL_VERSION, Session, sync_in_process};
use lethe_engine::sign::CursorClaim;
use lethe_engine::{
    Config, InsecureTestSigner, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role, Seq,
};
use std::sync::Arc;

mod common;
use common::{send_records_only, sync_losing_answers};

const T0: u64 = 1_700_000_000_000;

fn signed(mut r: Replica<MemoryStore>) -> Replica<MemoryStore> {
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

fn open_member_in(store: MemoryStore, id: u64, config: Config, clock: &ManualClock) -> Replica<MemoryStore> {
    signed(Replica::open(store, ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn open_member(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    open_member_in(MemoryStore::new(), id, Config::default(), clock)
}

fn open_device_in(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let config = Config { role: Role::Device, ..Config::default() };
    signed(Replica::open(store, ReplicaId(id), config, Arc::new(clock.clone())).unwrap())
}

fn open_device(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    open_device_in(MemoryStore::new(), id, clock)
}

fn put(r: &mut Replica<MemoryStore>, key: &str, value: &str, clock: &ManualClock) {
    clock.advance(1);
    r.put(key, value, PutOptions::default()).unwrap();
}

fn keys(r: &Replica<MemoryStore>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

/// Two members that know each other, the hub (id 1) and the other (id 2), and a phone enrolled
/// at both.
fn two_members_and_a_phone(clock: &ManualClock) -> (Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>) {
    let mut hub = open_member(1, clock);
    let mut other = open_member(2, clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let phone = open_device(100, clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    (hub, other, phone)
}

/// A device session cut right after the member's handshake reached the device: nothing the
/// device uploads reaches the member (a dropped connection, or an upload the member refused
/// whole: in recovery, a stamp past the drift bound).
fn session_cut_after_member_hello(d: &mut Replica<MemoryStore>, m: &mut Replica<MemoryStore>) {
    let mut ds = DeviceSession::new(d, Some(m.id())).unwrap();
    let mut ms = DeviceService::new(m, Some(d.id())).unwrap();
    while let Some(f) = ds.poll_transmit(d).unwrap() {
        ms.handle(m, &f).unwrap();
    }
    let f = ms.poll_transmit(m).unwrap().expect("the member's handshake");
    assert!(matches!(Message::decode(&f).unwrap(), Message::MemberHello(_)));
    ds.handle(d, &f).unwrap();
    // The device's first upload may now be read from its queue; it never arrives.
    let _ = ds.poll_transmit(d).unwrap();
}

/// R3-1's setting: the phone wrote `a` (seq 1, the backup taken then) and `b` (seq 2), both
/// admitted by the hub; restored from the backup, it writes `new` (reusing seq 2), and its
/// first session, with the other member (which has not heard of `b`), is cut after the
/// member's handshake. Returns the hub, the other member and the restored phone.
fn restored_phone_cut_at_the_other_member(
    clock: &ManualClock,
) -> (Replica<MemoryStore>, Replica<MemoryStore>, Replica<MemoryStore>) {
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(clock);
    put(&mut phone, "a", "a", clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let backup = phone.store().clone();
    put(&mut phone, "b", "b", clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.devices().cursor(phone.id()), Seq(2));
    assert!(other.devices().cursor(phone.id()) < Seq(2), "the other member has not heard of b");
    drop(phone);

    let mut phone = open_device_in(backup, 100, clock);
    put(&mut phone, "new", "new", clock);
    session_cut_after_member_hello(&mut phone, &mut other);
    (hub, other, phone)
}

/// R3-1. The phone is restored from a backup made after its write `a`; the hub admitted `a`
/// and `b` since (the hub's own claim: 2), and the other member has not heard of `b` (its
/// cursor: 0 or 1). The restored phone writes `new`, reusing upload seq 2. Its first session
/// goes to the other member, whose cursor is no evidence of the reuse, and is cut once the
/// member's handshake arrived (nothing uploaded): from then on the phone counts seq 2 as one
/// it "may have sent" (`uploads_sent_max`), and its open point is cleared. Its next session,
/// with the hub, shows cursor 2: no re-numbering, `new` goes up at seq 2, the hub's own claim
/// reaches it, it holds nothing for `new`, and answers "known". The phone drops `new`: a write
/// no member ever held is lost (design.md §10: "Its writes, admitted or queued, are thus never
/// lost"). Fixed by the claim's stamp: `new` is stamped after `b`, the highest write the hub's
/// claim handled, so the claim does not reach it, and the hub admits it.
#[test]
fn a_restored_devices_write_is_not_lost_when_its_first_session_is_cut_at_a_member_behind_the_cursor() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = restored_phone_cut_at_the_other_member(&clock);
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    eprintln!("hub session: {:?}", out.member);
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut phone, &mut other).unwrap();
    }
    assert_eq!(keys(&phone), ["a", "b", "new"], "the restored phone's write `new` was lost at the phone");
    assert_eq!(keys(&hub), ["a", "b", "new"], "the restored phone's write `new` never reached a member");
}

/// R3-1 at a third member's claim: as above, but the restored phone's next session goes to the
/// other member once it has the hub's writes and claim (seq 2, whose counter it covers). Its own
/// claim is below seq 2, and it holds nothing for `new`; the hub's claim reaches seq 2, so
/// without the claim's stamp it "has seen every admission" and answers known, and `new` is
/// lost. The hub's claim is stamped up to `b`'s stamp, below `new`'s: no claim reaches `new`,
/// no member handled it, and the other member admits it.
#[test]
fn a_restored_devices_write_is_not_lost_at_a_member_that_has_the_claim_of_the_seq_it_reused() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = restored_phone_cut_at_the_other_member(&clock);
    sync_in_process(&mut hub, &mut other, false).unwrap();
    assert_eq!(other.devices().cursor(phone.id()), Seq(2), "the other member has the hub's claim");
    assert!(other.devices().claim_of(phone.id(), other.id()) < Seq(2));
    let out = sync_device_in_process(&mut phone, &mut other).unwrap();
    eprintln!("the other member's session: {:?}", out.member);
    assert!(!out.device.renumbered, "the phone counts seq 2 as one it may have sent");
    assert_eq!(out.device.known, 0, "the other member answered known for a write no member held");
    assert_eq!(keys(&other), ["a", "b", "new"]);
    assert_eq!(keys(&phone), ["a", "b", "new"]);
}

/// R3-2. A compromised member's own cursor claim is bounded only against the cursor the
/// receiver holds (`CURSOR_GAP_MAX` = 2^40), so claims that each stay within the bound ratchet
/// it: two records for the phone in one `Records` message, claiming 2^40 and then 2^41, are
/// both taken. The honest hub then shows the phone a cursor more than 2^40 beyond anything the
/// phone numbered, and the phone refuses every handshake of the hub from then on (the cursor
/// only grows): the device is cut off from an honest member for good. design.md §9 bounds a
/// compromised member's claim at `CURSOR_GAP_MAX` beyond the cursor, and records.rs says "no
/// peer's word brings a cursor … near u64::MAX"; a few thousand records per message do.
#[test]
fn cursor_claims_within_the_gap_bound_do_not_ratchet_the_cursor_and_cut_the_device_off() {
    let clock = ManualClock::new(T0);
    let (mut hub, other, mut phone) = two_members_and_a_phone(&clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut phone, "w", "w", &clock);
    let gap = lethe_engine::limits::CURSOR_GAP_MAX;
    let record = |seq| {
        RecordWire(
            phone.id(),
            0,
            false,
            None,
            vec![CursorClaim(other.id(), Seq(seq), Seq(0), Vec::new(), Hlc::UNKNOWN)],
            0,
            0,
            Vec::new(),
        )
    };
    common::hostile_records(&mut hub, &other, vec![record(gap), record(2 * gap)]);
    let cursor = hub.devices().cursor(phone.id());
    eprintln!("hub cursor for the phone: {cursor}, claims refused as implausible: {}", hub.claims_implausible());
    let synced = sync_device_in_process(&mut phone, &mut hub);
    eprintln!("the phone's next sync with the honest hub: {:?}", synced.as_ref().map(|_| ()));
    assert!(synced.is_ok(), "the phone can no longer sync with the honest hub");
    assert_eq!(phone.pending_uploads().unwrap(), 0);
    assert!(cursor.0 <= gap, "claims within the bound ratcheted the cursor past it");
}

/// R3-3. The hub is restored from its backup twice (the operator's one backup: the store is
/// lost again later). After the first restore its records clock jumped by
/// `RECORDS_CLOCK_GAP_MAX` and the other member merged its records up to there. Restored again
/// from the same copy, the hub's clock is back at the copy's, more than `RECORDS_CLOCK_GAP_MAX`
/// below what the other member says it merged: the claim is refused as implausible, the clock
/// does not jump, and a removal made at the hub now (numbered below the claim) never reaches
/// the other member, which goes on admitting the removed device.
#[test]
fn a_removal_reaches_the_peer_after_a_second_restore_from_the_same_backup() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let backup = hub.store().clone();
    for _ in 0..3 {
        clock.advance(1);
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    sync_in_process(&mut hub, &mut other, false).unwrap();
    drop(hub);

    // First restore: the clock jumps, the other member merges past the jump.
    let mut hub = open_member_in(backup.clone(), 1, Config::default(), &clock);
    let copy_clock = hub.devices().clock();
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
    }
    assert!(hub.devices().clock() > copy_clock + RECORDS_CLOCK_GAP_MAX, "the first restore jumped the clock");
    clock.advance(1);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    eprintln!("copy clock {copy_clock}, other merged the hub's records up to {}", other.records_seen(hub.id()));
    drop(hub);

    // Second restore, from the same copy.
    let mut hub = open_member_in(backup, 1, Config::default(), &clock);
    assert!(hub.remove_device(phone.id()).unwrap());
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
    }
    eprintln!(
        "after the second restore: hub clock {}, refused claims {}",
        hub.devices().clock(),
        hub.records_clock_claims_refused()
    );
    assert!(other.devices().is_revoked(phone.id()), "the removal at the twice-restored hub never reached its peer");
}

/// R3-4. Finding 8's fix carries the member's entry for a key it answered "refused", but the
/// device takes it only under the covered-entries rule (`take_covered`: the member's vector
/// covers the device's). Fixed: the key stays unsettled at the device, named in each handshake,
/// until a download from a member covering it completes. The phone synced with the other member, which holds a write `z` the
/// hub has not seen; the hub (values of at most 16 bytes) refuses the phone's long value for
/// `k`, the phone drops it and takes the hub's `old` as stale (covered, and the hub is behind
/// it). Once the members have synced, no delta sends `old` again (the phone covers its dot):
/// the phone holds nothing for `k` while both members hold `old`, until an anti-entropy session.
#[test]
fn after_a_refused_answer_from_a_member_behind_the_device_it_still_gets_the_members_value() {
    let clock = ManualClock::new(T0);
    let limits = lethe_engine::Limits { value_bytes_max: 16, ..lethe_engine::Limits::default() };
    let mut hub = open_member_in(MemoryStore::new(), 1, Config { limits, ..Config::default() }, &clock);
    let mut other = open_member(2, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let mut phone = open_device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    put(&mut hub, "k", "old", &clock);
    sync_in_process(&mut hub, &mut other, false).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut other, "z", "z", &clock);
    sync_device_in_process(&mut phone, &mut other).unwrap();
    assert_eq!(keys(&phone), ["k", "z"]);
    clock.advance(1);
    phone.put("k", vec![b'x'; 100], PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.refused, 1);
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
        sync_device_in_process(&mut phone, &mut hub).unwrap();
        sync_device_in_process(&mut phone, &mut other).unwrap();
    }
    assert_eq!(hub.get(b"k").unwrap().map(|e| e.value), Some(b"old".to_vec()));
    let after_deltas = phone.get(b"k").unwrap().map(|e| e.value);
    let mut probe = open_device_in(phone.store().clone(), 100, &clock);
    lethe_engine::device::anti_entropy_device_in_process(&mut probe, &mut hub).unwrap();
    eprintln!(
        "after the syncs the phone holds {after_deltas:?}; after an anti-entropy session {:?}",
        probe.get(b"k").unwrap().map(|e| e.value)
    );
    assert_eq!(after_deltas, Some(b"old".to_vec()), "the phone lost the members' value");
    assert_eq!(phone.digest(), hub.digest());
}

/// A member session from `a` to `b` in which only `b`'s handshake reaches `a`: `a`'s device
/// records reach `b` from `a`'s memory, and nothing `b` sends makes `a` persist them.
fn sync_cut_after_records_went(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>) {
    let mut sa = Session::new(a, Some(b.id())).unwrap();
    let mut sb = Session::new(b, Some(a.id())).unwrap();
    let mut hello_delivered = false;
    for _ in 0..10 {
        while let Some(f) = sa.poll_transmit(a).unwrap() {
            sb.handle(b, &f).unwrap();
        }
        while let Some(f) = sb.poll_transmit(b).unwrap() {
            if !hello_delivered {
                sa.handle(a, &f).unwrap();
                hello_delivered = true;
            }
        }
    }
}

/// R3-3, with one restore: a crash of the hub after device sessions whose record changes
/// (acknowledgements, last-seen times) went to the other member from memory, unpersisted
/// (design.md §8 names this case), moves the records clock back, and the other member's next
/// handshake makes it jump by `RECORDS_CLOCK_GAP_MAX`. A restore later from a backup taken
/// before that crash then meets the refusal of R3-3: the removal never reaches the peer.
#[test]
fn a_removal_reaches_the_peer_after_a_crash_then_a_restore_from_an_older_backup() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let backup = hub.store().clone();
    for _ in 0..3 {
        clock.advance(1);
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    sync_cut_after_records_went(&mut hub, &mut other);
    let before = hub.devices().clock();
    let store = hub.store().clone();
    drop(hub);

    // A crash and restart, no restore.
    let mut hub = open_member_in(store, 1, Config::default(), &clock);
    let reopened = hub.devices().clock();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    // The phone syncs once more with the hub, and the change goes to the other member.
    clock.advance(1);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    eprintln!(
        "records clock {before} before the crash, {reopened} after it, {} after a session; the peer merged up to {}",
        hub.devices().clock(),
        other.records_seen(hub.id())
    );
    drop(hub);

    let mut hub = open_member_in(backup, 1, Config::default(), &clock);
    assert!(hub.remove_device(phone.id()).unwrap());
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut other, false).unwrap();
    }
    eprintln!("after the restore: refused claims {}", hub.records_clock_claims_refused());
    assert!(other.devices().is_revoked(phone.id()), "the removal at the restored hub never reached its peer");
}

/// A device session cut once the member's answers to the uploads arrived: the download (its
/// entries and `Done`) never reaches the device.
fn sync_cut_after_answers(d: &mut Replica<MemoryStore>, m: &mut Replica<MemoryStore>) {
    let mut ds = DeviceSession::new(d, Some(m.id())).unwrap();
    let mut ms = DeviceService::new(m, Some(d.id())).unwrap();
    let mut answered = false;
    for _ in 0..10 {
        while let Some(f) = ds.poll_transmit(d).unwrap() {
            ms.handle(m, &f).unwrap();
        }
        while let Some(f) = ms.poll_transmit(m).unwrap() {
            if answered {
                continue;
            }
            let admitted = matches!(Message::decode(&f).unwrap(), Message::Admitted(_));
            ds.handle(d, &f).unwrap();
            answered |= admitted;
        }
    }
    assert!(answered, "the answers arrived");
}

/// R3-5 (fixed as R3-4: the key stays unsettled until a complete download from a covering
/// member). Finding 8's fix sends the member's entry for a refused key in the same session's
/// download, but the device drops its refused (or known) write as soon as the answer arrives
/// (`settle_uploads`), not at the end of a complete download as it does for a superseded one.
/// A session cut between the answers and the download leaves the phone with nothing for `k`
/// while the hub holds `old`, whose dot the phone's vector covers: no later session has the
/// key to force (the write is gone from the queue), no delta sends `old` again.
#[test]
fn after_a_refused_answer_and_a_cut_download_the_device_still_gets_the_members_value() {
    let clock = ManualClock::new(T0);
    let limits = lethe_engine::Limits { value_bytes_max: 16, ..lethe_engine::Limits::default() };
    let mut hub = open_member_in(MemoryStore::new(), 1, Config { limits, ..Config::default() }, &clock);
    let mut phone = open_device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    put(&mut hub, "k", "old", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    clock.advance(1);
    phone.put("k", vec![b'x'; 100], PutOptions::default()).unwrap();
    sync_cut_after_answers(&mut phone, &mut hub);
    eprintln!(
        "after the cut session: phone holds {:?} for k, {} queued",
        phone.get(b"k").unwrap().map(|e| e.value),
        phone.pending_uploads().unwrap()
    );
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    let after_deltas = phone.get(b"k").unwrap().map(|e| e.value);
    let mut healed = phone.store().clone();
    let mut probe = open_device_in(std::mem::take(&mut healed), 100, &clock);
    lethe_engine::device::anti_entropy_device_in_process(&mut probe, &mut hub).unwrap();
    eprintln!(
        "after two more syncs the phone holds {after_deltas:?}; after an anti-entropy session {:?}",
        probe.get(b"k").unwrap().map(|e| e.value)
    );
    assert_eq!(after_deltas, Some(b"old".to_vec()), "the phone lost the hub's value");
    assert_eq!(phone.digest(), hub.digest());
}

/// The unsettled keys of R3-4/R3-5 come from the device: a handshake naming more than
/// `UNSETTLED_KEYS_MAX` is refused as it is decoded, one naming a key longer than any key is
/// refused by the member before anything changes (no acknowledgement, no last-seen time), and
/// one naming keys the member holds only makes it send those entries.
#[test]
fn a_devices_unsettled_keys_are_bounded_and_only_make_the_member_send_its_entries() {
    use lethe_engine::device::{DeviceHello, UNSETTLED_KEYS_MAX};
    let clock = ManualClock::new(T0);
    let mut hub = open_member(1, &clock);
    let mut phone = open_device(100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    put(&mut hub, "k", "v", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let vector = phone.members_vector();
    let hello = |keys: Vec<serde_bytes::ByteBuf>| {
        Message::DeviceHello(DeviceHello(
            PROTOCOL_VERSION,
            ReplicaId(100),
            vector.clone(),
            vector.clone(),
            None,
            false,
            false,
            T0,
            false,
            Vec::new(),
            None,
            keys,
        ))
        .encode()
        .unwrap()
    };
    let key = |k: &[u8]| serde_bytes::ByteBuf::from(k.to_vec());
    let too_many = hello((0..=UNSETTLED_KEYS_MAX).map(|i| key(format!("k{i}").as_bytes())).collect());
    assert!(Message::decode(&too_many).is_err(), "more unsettled keys than the bound decoded");
    let records_before = hub.devices().record(phone.id()).cloned();
    let mut ms = DeviceService::new(&mut hub, Some(phone.id())).unwrap();
    let err = ms.handle(&mut hub, &hello(vec![key(&[b'x'; lethe_engine::limits::KEY_BYTES_MAX + 1])])).unwrap_err();
    eprintln!("an over-long unsettled key: {err}");
    assert!(err.to_string().contains("unsettled key"), "{err}");
    assert_eq!(hub.devices().record(phone.id()).cloned(), records_before, "a refused handshake changed the record");

    // Idle otherwise, the member sends its entry for each named key it holds, and only those.
    let mut ms = DeviceService::new(&mut hub, Some(phone.id())).unwrap();
    ms.handle(&mut hub, &hello(vec![key(b"k"), key(b"absent")])).unwrap();
    let mut sent = Vec::new();
    while let Some(f) = ms.poll_transmit(&hub).unwrap() {
        if let Message::Entries(entries) = Message::decode(&f).unwrap() {
            sent.extend(entries.into_iter().map(|e| String::from_utf8(e.key).unwrap()));
        }
    }
    assert_eq!(sent, ["k"]);
}

/// R3-6. One forged claim within the bound is enough to cut a device off from an honest member
/// that is behind. The hub holds the phone's cursor at 5, the third member (honest, not yet
/// told) at 0. The compromised member claims 5 + 2^40 at the hub: within `CURSOR_GAP_MAX` of
/// the hub's cursor, taken. The phone, shown that cursor by the hub, re-numbers its new
/// writes above it. Its uploads to the third member are then refused whole (an upload seq more
/// than `RESTORE_SEQ_GAP_MAX` beyond the third member's cursor), and the third member refuses
/// as implausible every relayed claim that would move its cursor there (the forged one and the
/// hub's honest own claim alike, each more than 2^40 beyond 0): the phone can never upload to
/// the third member again.
#[test]
fn one_forged_cursor_claim_within_the_bound_does_not_cut_the_device_off_from_a_member_behind() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member(1, &clock);
    let other = open_member(2, &clock);
    let mut third = open_member(3, &clock);
    let mut phone = open_device(100, &clock);
    for m in [&mut hub, &mut third] {
        m.enrol_member(ReplicaId(1)).unwrap();
        m.enrol_member(ReplicaId(2)).unwrap();
        m.enrol_member(ReplicaId(3)).unwrap();
        m.enrol_device(phone.id()).unwrap();
    }
    sync_in_process(&mut hub, &mut third, false).unwrap();
    for i in 0..5 {
        put(&mut phone, &format!("a{i}"), "a", &clock);
    }
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.devices().cursor(phone.id()), Seq(5));
    assert_eq!(third.devices().cursor(phone.id()), Seq(0));

    let gap = lethe_engine::limits::CURSOR_GAP_MAX;
    let forged = CursorClaim(other.id(), Seq(5 + gap), Seq(0), Vec::new(), Hlc::UNKNOWN);
    common::hostile_records(
        &mut hub,
        &other,
        vec![RecordWire(phone.id(), 0, false, None, vec![forged], 0, 0, Vec::new())],
    );
    assert_eq!(hub.devices().cursor(phone.id()), Seq(5 + gap), "within the bound: taken (a documented limit)");
    put(&mut phone, "w", "w", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut phone, "w2", "w2", &clock);
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut third, false).unwrap();
    }
    eprintln!(
        "third member: cursor {}, claims refused as implausible {}",
        third.devices().cursor(phone.id()),
        third.claims_implausible()
    );
    let synced = sync_device_in_process(&mut phone, &mut third);
    eprintln!("the phone's sync with the third member: {:?}", synced.as_ref().map(|_| ()));
    assert!(synced.is_ok(), "the phone can no longer upload to the honest third member");
    assert!(third.get(b"w2").unwrap().is_some());
}

/// R3-7. A member keeps the lost ranges of other members in memory only. The hub admitted the
/// phone's `w` (hub:2) and the answer was lost; the other member has the hub's cursor claim for
/// it and the hub's signed acknowledgement, not the write. The hub is restored from an older
/// copy and learns from the other member it lost (1, 3]; the other member, told so, would admit
/// `w` afresh (its `cursor_at` component for the hub is a lost dot). It restarts, and the phone
/// uploads `w` before any member session tells it the lost range again: its vector covers the
/// hub's claim, so it answers "known", and the phone drops `w`, which no member holds (I11).
#[test]
fn a_member_restarted_after_learning_a_peers_lost_range_does_not_answer_known_for_a_lost_write() {
    lost_range_then_upload(true);
}

/// R3-7's control: without the restart the other member admits `w` afresh (passes).
#[test]
fn a_member_that_knows_a_peers_lost_range_admits_the_lost_write_afresh() {
    lost_range_then_upload(false);
}

fn lost_range_then_upload(restart: bool) {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    put(&mut phone, "h", "h", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let backup = hub.store().clone();
    put(&mut phone, "w", "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    assert!(hub.get(b"w").unwrap().is_some(), "the hub admitted w");
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
    put(&mut hub, "y", "y", &clock);
    send_records_only(&mut hub, &mut other);
    assert!(other.get(b"w").unwrap().is_none());
    drop(hub);

    let mut hub = open_member_in(backup, 1, Config::default(), &clock);
    // Written before the restored hub heard from any peer (the node's start-up fence is only
    // 3 s): it reuses hub:2, and the other member's vector comes to cover the hub's claim.
    put(&mut hub, "x", "x", &clock);
    for _ in 0..3 {
        let r = sync_in_process(&mut hub, &mut other, false);
        eprintln!(
            "member session after the restore: {:?}; hub lost {:?}, vector {:?}",
            r.map(|_| ()),
            hub.lost_own(),
            hub.vector()
        );
    }
    eprintln!(
        "hub lost {:?}; the other member knows it lost {:?}; other's vector {:?}; cursor {}",
        hub.lost_own(),
        other.lost_of(hub.id()),
        other.vector(),
        other.devices().cursor(phone.id())
    );
    assert!(!other.lost_of(hub.id()).is_empty(), "the other member was told of the hub's lost range");

    if restart {
        let store = other.store().clone();
        drop(other);
        other = open_member_in(store, 2, Config::default(), &clock);
    }
    let out = sync_device_in_process(&mut phone, &mut other).unwrap();
    eprintln!("the phone's upload of w to the restarted other member: {:?}", out.member);
    for _ in 0..2 {
        let _ = sync_in_process(&mut hub, &mut other, false);
        let _ = sync_device_in_process(&mut phone, &mut other);
        let _ = sync_device_in_process(&mut phone, &mut hub);
    }
    assert!(other.get(b"w").unwrap().is_some() || phone.get(b"w").unwrap().is_some(), "w is lost everywhere");
}

/// R3-8. The hub admitted the phone's `h` (hub:1, in its backup) and, after the backup, `w`
/// (hub:2, the answer lost) and wrote `y` (hub:3); the other member holds `h` and has the hub's
/// signed acknowledgement of hub:3, not the later entries. Restored, the hub learns from the
/// other member's gossip that it lost dots. The range it records and gossips is (0, 3], not (1, 3]:
/// it names hub:1, which the copy holds. The phone re-queues `h` with `w`, and the other member,
/// which holds the very write `h` under hub:1, takes it for one under a lost dot and applies it
/// a second time under a fresh dot of its own (I11: a member applies a given device write no
/// more than once).
#[test]
fn a_restored_member_records_no_lost_range_below_its_copy() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    put(&mut phone, "h", "h", &clock);
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let backup = hub.store().clone();
    let copy_counter = hub.vector().get(hub.id());
    put(&mut phone, "w", "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    put(&mut hub, "y", "y", &clock);
    send_records_only(&mut hub, &mut other);
    drop(hub);

    let mut hub = open_member_in(backup, 1, Config::default(), &clock);
    for _ in 0..3 {
        let _ = sync_in_process(&mut hub, &mut other, false);
    }
    eprintln!("the copy's counter {copy_counter}; the hub records it lost {:?}", hub.lost_own());
    let h_at_other = other.get(b"h").unwrap().unwrap().dot;
    let out = sync_device_in_process(&mut phone, &mut other).unwrap();
    eprintln!(
        "the phone re-queued {} writes; the other member admitted {}; h was under {h_at_other}, is under {}",
        out.device.requeued,
        out.member.admitted,
        other.get(b"h").unwrap().unwrap().dot
    );
    assert!(hub.lost_own().iter().all(|&(from, _)| from >= copy_counter), "the lost range names dots the copy holds");
    assert_eq!(other.get(b"h").unwrap().unwrap().dot, h_at_other, "the other member applied h a second time");
}

/// R3-9 (a regression of e8bb7d7, finding 2's fix). A member's own claim now rises to every
/// upload seq it handles, also one it only answers "superseded" below the cursor, and carries
/// its counter then. The hub admitted the phone's `w` (seq 1; the answer lost) and every member
/// holds it; the other member deletes it, all members take the delete, and the other member
/// writes `z`. The phone uploads `w` to the other member, which answers "superseded" (lost
/// again) and so claims seq 1 with its counter 2 (other:2 is `z`). The third member gets that
/// claim (records, not `z`), and collects the delete alone (the others past their leases). The
/// phone uploads `w` to it: the other member's claim reaches seq 1 and the third member does
/// not cover other:2, so it has not "seen every admission" and admits `w` afresh: the write
/// comes back after its delete was collected. Before e8bb7d7 the other member's "superseded"
/// below the cursor claimed nothing, and the third member answered "known".
#[test]
fn a_superseded_answer_below_the_cursor_does_not_make_a_third_member_apply_the_write_after_its_delete_is_collected() {
    let clock = ManualClock::new(T0);
    let day_ms = 24 * 60 * 60 * 1000;
    let mut hub = open_member(1, &clock);
    let mut other = open_member(2, &clock);
    let mut third = open_member(3, &clock);
    let mut phone = open_device(100, &clock);
    for m in [&mut hub, &mut other, &mut third] {
        for id in 1..=3 {
            m.enrol_member(ReplicaId(id)).unwrap();
        }
        m.enrol_device(phone.id()).unwrap();
    }
    let all_sync =
        |hub: &mut Replica<MemoryStore>, other: &mut Replica<MemoryStore>, third: &mut Replica<MemoryStore>| {
            sync_in_process(hub, other, false).unwrap();
            sync_in_process(hub, third, false).unwrap();
            sync_in_process(other, third, false).unwrap();
        };
    all_sync(&mut hub, &mut other, &mut third);

    put(&mut phone, "w", "w", &clock);
    sync_losing_answers(&mut phone, &mut hub);
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
    all_sync(&mut hub, &mut other, &mut third);
    assert!(third.get(b"w").unwrap().is_some());
    clock.advance(10);
    other.delete("w").unwrap();
    all_sync(&mut hub, &mut other, &mut third);
    put(&mut other, "z", "z", &clock);

    sync_losing_answers(&mut phone, &mut other);
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost again");
    let other_claim = other.devices().get(phone.id()).unwrap().cursors.get(&other.id()).cloned();
    eprintln!("the other member's own claim for the phone: {other_claim:?}");
    send_records_only(&mut other, &mut third);
    assert!(third.get(b"z").unwrap().is_none(), "the third member has the claim, not z");

    clock.advance(31 * day_ms);
    for _ in 0..3 {
        third.collect_garbage().unwrap();
    }
    assert_eq!(third.tombstone_count(), 0, "the third member collected the delete");
    let issued = third.vector().get(third.id());
    let out = sync_device_in_process(&mut phone, &mut third).unwrap();
    eprintln!("the phone's upload of w to the third member: {:?}", out.member);
    assert_eq!(third.vector().get(third.id()), issued, "the third member applied w again");
    assert!(third.get(b"w").unwrap().is_none(), "w came back after its delete was collected");
}

/// Seed 11865 of the simulation, met by the first fix for R3-9 (a claim's counter kept for an
/// upload that applied nothing). The phone deletes `k` (seq 1) while the other member writes a
/// newer `k`; the phone uploads its delete to the other member, which answers "superseded"
/// (lost), and its claim (seq 1, no admission) reaches the hub before its write does. The hub,
/// holding the older `k`, has "seen every admission" of seq 1 (there was none): answered known,
/// the phone dropped its delete and took the hub's older value, a key it deleted back at an
/// older write. A member that holds an older entry than the upload never saw it applied.
#[test]
fn a_member_holding_an_older_value_does_not_answer_known_for_a_write_no_member_applied() {
    let clock = ManualClock::new(T0);
    let (mut hub, mut other, mut phone) = two_members_and_a_phone(&clock);
    put(&mut hub, "k", "old", &clock);
    sync_in_process(&mut hub, &mut other, false).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    clock.advance(1);
    phone.delete("k").unwrap();
    put(&mut other, "k", "new", &clock);

    sync_losing_answers(&mut phone, &mut other);
    assert_eq!(phone.pending_uploads().unwrap(), 1, "the answer was lost");
    assert!(other.devices().claim_of(phone.id(), other.id()) >= Seq(1), "the other member handled seq 1");
    send_records_only(&mut other, &mut hub);
    assert_eq!(hub.get(b"k").unwrap().unwrap().value, b"old", "the hub has the claim, not the newer write");

    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    eprintln!("the phone's upload of its delete to the hub: {:?}", out.member);
    assert!(phone.get(b"k").unwrap().is_none(), "the phone took back the older value of a key it deleted");
}
