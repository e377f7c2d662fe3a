//! A fifth hostile review (commits 10fe753..518c730: unsettled keys, a device's clock resumed at
//! wall + `max_drift` on open, `run_clock`, the legacy-claim rule of `cursor_stamp`, the very
//! write as stamp and payload, protocol 6; docs/design.md §8–§10). Each test is one finding,
//! named for the behaviour that should hold, and failed for the reason its doc gives. Fixes:
//! R5-1, R5-2, R5-6, R5-7: the clock resume at open was reverted (R4-6 is a known limit
//! again); R5-3: named unsettled keys are sent at most once per anti-entropy interval; R5-9: a
//! member leaves out a device's components of replicas it knows no writes of; R5-10: the TTL
//! case of R4-4 (`Payload::is_copy_of`). R5-4, R5-5 and R5-8 are known limits (ignored).

mod common;
use common::{keys, open_device_in, open_member_in, signed};

use lethe_engine::device::sync_device_in_process;
use lethe_engine::session::sync_in_process;
use lethe_engine::{Config, Hlc, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

/// R5-1. The phone's wall clock runs 300 ms ahead of the hub's (well within `max_drift`, 1 s).
/// Since 161a621 a device reopening its store resumes its hybrid clock at wall + `max_drift`,
/// so every write it makes in the first moments of a run is stamped `max_drift` + 300 ms ahead
/// of the hub's wall clock; the hub's drift check (`admit_uploads` → `clock_check`, at
/// `max_drift` with no slack) rejects the whole upload and the session fails. It succeeds only
/// once 300 ms (the skew) have passed since the open. A device process that opens, writes and
/// syncs at once (a share extension, a CLI, an app woken for a background sync: here each run
/// lasts 100 ms) never uploads anything, though its clock is within `max_drift` of the hub's;
/// before 161a621 every one of these sessions succeeded.
#[test]
fn a_device_whose_clock_is_slightly_ahead_uploads_right_after_reopening_its_store() {
    let hub_clock = ManualClock::new(T0);
    let clock = ManualClock::new(T0 + 300);
    let mut hub = open_member_in(MemoryStore::new(), 1, &hub_clock);
    let mut phone = open_device_in(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    phone.put("first", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let mut store = phone.into_store();
    let mut failures = Vec::new();
    for run in 0..10 {
        hub_clock.advance(100);
        clock.advance(100);
        let mut phone = open_device_in(store, 100, &clock);
        phone.put(format!("run{run}"), "v", PutOptions::default()).unwrap();
        if let Err(e) = sync_device_in_process(&mut phone, &mut hub) {
            failures.push(format!("run {run}: {e}"));
        }
        store = phone.into_store();
    }
    eprintln!("{failures:#?}");
    assert!(failures.is_empty(), "{} of 10 sessions failed, first: {}", failures.len(), failures[0]);
    assert_eq!(keys(&hub).len(), 11, "the hub holds {:?}", keys(&hub));
}

/// R5-2. A member whose wall clock is 300 ms behind the hub's (within `max_drift`) and a phone
/// in step with the hub. The phone reopens its store (its clock resumes at wall +
/// `max_drift`, 161a621), writes and syncs with the hub: the hub admits it (the stamp is at
/// exactly its wall + `max_drift`, the edge of its check). The hub then syncs with the other
/// member: the hub holds nothing back (its `peer_limit_ms` allows `max_drift` +
/// `peer_clock_slack_ms`), and the other member rejects the whole batch for a stamp more than
/// `max_drift` ahead of its wall clock, so the member session fails, for every entry in it,
/// until the skew has passed. Before 161a621 the device's stamp was its wall time, and this
/// session succeeded: resuming at wall + `max_drift` turns every ordinary clock spread between
/// members into failed member sessions after each device restart.
#[test]
fn members_a_little_apart_still_sync_after_a_device_reopened_and_uploaded() {
    let hub_clock = ManualClock::new(T0);
    let other_clock = ManualClock::new(T0 - 300);
    let mut hub = open_member_in(MemoryStore::new(), 1, &hub_clock);
    let mut other = open_member_in(MemoryStore::new(), 2, &other_clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    let mut phone = open_device_in(MemoryStore::new(), 100, &hub_clock);
    hub.enrol_device(phone.id()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    phone.put("first", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    let store = phone.into_store();
    hub_clock.advance(10);
    other_clock.advance(10);
    let mut phone = open_device_in(store, 100, &hub_clock);
    phone.put("second", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    hub_clock.advance(10);
    other_clock.advance(10);
    let result = sync_in_process(&mut hub, &mut other, false);
    assert!(result.is_ok(), "the member session failed: {}", result.err().map(|e| e.to_string()).unwrap_or_default());
    assert_eq!(keys(&other), ["first", "second"]);
}

/// One device session of `phone` with `hub`, its handshake naming `unsettled` as its unsettled
/// keys when given; returns the bytes the hub sent.
fn session_naming(
    phone: &mut Replica<MemoryStore>,
    hub: &mut Replica<MemoryStore>,
    unsettled: Option<&[Vec<u8>]>,
) -> u64 {
    use lethe_engine::device::{DeviceService, DeviceSession};
    use lethe_engine::session::Message;
    let mut d = DeviceSession::new(phone, Some(hub.id())).unwrap();
    let mut m = DeviceService::new(hub, Some(phone.id())).unwrap();
    let mut sent = 0u64;
    let mut first = true;
    loop {
        let mut to_m = Vec::new();
        while let Some(mut f) = d.poll_transmit(phone).unwrap() {
            if first && let Some(keys) = unsettled {
                let Message::DeviceHello(mut hello) = Message::decode(&f).unwrap() else { panic!("not a hello") };
                hello.11 = keys.iter().cloned().map(serde_bytes::ByteBuf::from).collect();
                f = Message::DeviceHello(hello).encode().unwrap();
            }
            first = false;
            to_m.push(f);
        }
        let mut to_d = Vec::new();
        while let Some(f) = m.poll_transmit(hub).unwrap() {
            sent += f.len() as u64;
            to_d.push(f);
        }
        if to_m.is_empty() && to_d.is_empty() {
            break;
        }
        for f in &to_m {
            m.handle(hub, f).unwrap();
        }
        // A hostile device reads what it is sent and need not take it (the honest session
        // here refuses entries it did not expect): the hub's bytes are what counts.
        for f in &to_d {
            if d.handle(phone, f).is_err() {
                return sent;
            }
        }
    }
    sent
}

/// R5-3. The handshake's unsettled keys (1d8d668) are taken from a device on its word: the hub
/// checks only their number (256) and length, not that the device ever wrote them, nor that
/// it answered a write of it refused or known, and forces its entry for each into the download
/// (`DeviceService::on_hello` → `unheld`, `Session::to_device` → `with_forced`), every
/// session, whatever the device's vector covers, and an otherwise idle session is no longer
/// idle. A device whose vector covers the hub's and that names four keys of 1 MiB values it
/// never wrote gets 4 MiB from the hub in every session, from a handshake of a few hundred
/// bytes: the anti-entropy rate limit (`device_anti_entropy_min_ms`, 60 s) and I9 (an idle
/// device session costs O(members) bytes) are bypassed, with 256 keys up to 256 MiB a session.
/// The hub should force only keys it answered refused or known to this device (it can keep
/// them in the device's record, bounded), or count forced bytes against the anti-entropy grant.
/// Fixed the second way (`MemberHello`'s last field says whether the named keys are sent).
#[test]
fn a_device_cannot_make_a_member_resend_values_by_naming_keys_it_never_wrote_as_unsettled() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member_in(MemoryStore::new(), 1, &clock);
    let mut phone = open_device_in(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    let big = vec![7u8; 1 << 20];
    let names: Vec<Vec<u8>> = (0..4).map(|i| format!("big{i}").into_bytes()).collect();
    for k in &names {
        clock.advance(1);
        hub.put(k.clone(), big.clone(), PutOptions::default()).unwrap();
    }
    let first = session_naming(&mut phone, &mut hub, None);
    assert!(first > 4 << 20, "the first session brings the values");
    let idle = session_naming(&mut phone, &mut hub, None);
    eprintln!("first session {first} bytes, idle one {idle} bytes");
    let mut forced = Vec::new();
    for _ in 0..3 {
        clock.advance(1);
        forced.push(session_naming(&mut phone, &mut hub, Some(&names)));
    }
    eprintln!("sessions naming the keys as unsettled: {forced:?} bytes");
    // Fixed: the named keys' entries go at most once per `device_anti_entropy_min_ms`, as an
    // anti-entropy session would (a device claiming to be empty gets a whole bootstrap anyway).
    assert!(
        forced[1..].iter().all(|&b| b < 64 << 10),
        "a covered device made the hub send {forced:?} bytes per session by naming keys it never wrote"
    );
    clock.advance(lethe_engine::device::DEVICE_ANTI_ENTROPY_MIN_MS);
    let later = session_naming(&mut phone, &mut hub, Some(&names));
    eprintln!("after the anti-entropy interval: {later} bytes");
    assert!(later > 4 << 20, "granted again after the interval");
}

/// R5-4. A member's own legacy claim (stamp `Hlc::UNKNOWN`, from before claims carried one)
/// takes stamp max(handled, wall + `max_drift`) at its next admission (R4-3, admit.rs): its
/// wall clock plus `max_drift`, not anything the device stamped. With the hub's wall 900 ms
/// ahead of the phone's, the claim's stamp lands about 1.9 s past the phone's wall, above
/// stamps the phone has not issued yet. The phone is restored from a backup taken before `b`
/// (upload seq 2); the restored run writes `w` (seq 2 again, stamped at its wall + `max_drift`,
/// 161a621) and restarts before its first handshake, so the next run finds `w` in the store
/// and `renumber_uploads_past` keeps it at seq 2 unless it is stamped above the cursor stamp:
/// it is not (the inflated claim). The hub's own claim reaches (seq 2, `w`'s stamp), it holds
/// nothing for `w`, answers known, and the phone drops a write no member ever held: an
/// acknowledged write lost. With the claim stamped from what it handled (`b`'s stamp) `w` is
/// above it, re-numbered and admitted. Fix: stamp the upgraded legacy claim from what this
/// admission handled only, and keep it out of `seen_all` (treat it as `UNKNOWN`, never
/// answering known from it) for the seqs it handled before.
#[test]
#[ignore = "R5-4: known limit (docs/design.md §8): a restored device whose clock ran ahead of wall time, restarted before its first session, re-issues a lost write's stamp"]
fn a_restored_devices_write_is_not_lost_to_a_members_upgraded_legacy_claim() {
    let clock = ManualClock::new(T0);
    let hub_clock = ManualClock::new(T0 + 900);
    let mut hub = open_member_in(MemoryStore::new(), 1, &hub_clock);
    let mut phone = open_device_in(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    phone.put("a", "a", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();

    // The hub's record as a member of the previous version stored it.
    let store = common::store_with_legacy_own_claim(hub, phone.id());
    let mut hub = open_member_in(store, 1, &hub_clock);

    let backup = phone.store().clone();
    clock.advance(1);
    hub_clock.advance(1);
    phone.put("b", "b", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    eprintln!(
        "b stamped {}, the hub's cursor stamp now {}",
        hub.get(b"b").unwrap().unwrap().stamp.hlc,
        hub.devices().cursor_stamp(phone.id())
    );
    drop(phone);

    // Restored; writes w and restarts before its first handshake.
    clock.advance(10);
    hub_clock.advance(10);
    let mut phone = open_device_in(backup, 100, &clock);
    phone.put("w", "w", PutOptions::default()).unwrap();
    eprintln!("w stamped {}", phone.get(b"w").unwrap().unwrap().stamp.hlc);
    let store = phone.into_store();
    clock.advance(10);
    hub_clock.advance(10);
    let mut phone = open_device_in(store, 100, &clock);
    for _ in 0..2 {
        let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
        eprintln!("renumbered {}, known {}", out.device.renumbered, out.device.known);
    }
    assert_eq!(keys(&hub), ["a", "b", "w"], "the restored phone's write w was lost");
    assert_eq!(keys(&phone), ["a", "b", "w"]);
}

/// R5-5. The mitigation of the documented limit "a compromised member's own cursor claim is its
/// word" is that a device shown a cursor beyond what it numbered (within `CURSOR_GAP_MAX`)
/// re-numbers its queue past it; `run_clock` (R4-2) makes that hold for every write this
/// process made, whatever the claim's stamp. It does not hold for a write made by the previous
/// process after its handshake: a compromised member claims, at the honest hub, to have handled
/// the phone's uploads up to seq 13 (the phone numbered 4); the phone writes `w` (seq 4) and its
/// app is restarted before it syncs (an ordinary restart: no backup, no clock step). The new
/// process finds `w` in the store stamped below its `opened_clock` (no open point was kept: the
/// previous run had handshaked), so `renumber_uploads_past`'s `made_since` is false whatever
/// the cursor stamp (the same with the forged stamp `Hlc::UNKNOWN`, checked); `w` goes up at
/// seq 4, the forged claim reaches it with a counter the hub covers, the hub holds nothing for
/// `w` and answers known, and the phone drops it: a write no member ever held is lost by one
/// hostile member's word, as in R4-2, behind a restart. Fix: a write above the highest upload
/// seq this device ever sent (`uploads_sent_max` made durable, or `answered`) cannot have been
/// handled by anyone: re-number it past a cursor beyond it whatever its stamp or `opened_clock`.
#[test]
#[ignore = "R5-5: known limit (docs/design.md §9): a compromised member's forged cursor, with a device restarted before its next session"]
fn a_forged_cursor_does_not_lose_a_write_made_before_the_device_restarted() {
    use lethe_engine::Seq;
    use lethe_engine::device::records::RecordWire;
    use lethe_engine::sign::CursorClaim;
    let clock = ManualClock::new(T0);
    let mut hub = open_member_in(MemoryStore::new(), 1, &clock);
    let mut other = open_member_in(MemoryStore::new(), 2, &clock);
    let mut phone = open_device_in(MemoryStore::new(), 100, &clock);
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    hub.enrol_device(phone.id()).unwrap();
    clock.advance(1);
    other.put("o", "o", PutOptions::default()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    for i in 0..3 {
        clock.advance(1);
        phone.put(format!("a{i}"), "a", PutOptions::default()).unwrap();
    }
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(hub.devices().cursor(phone.id()), Seq(3));
    clock.advance(1);
    phone.put("w", "w", PutOptions::default()).unwrap();
    let day_ahead = Hlc::new(T0 + 24 * 60 * 60 * 1000, 0);
    let forged = CursorClaim(other.id(), Seq(13), Seq(1), Vec::new(), day_ahead);
    common::hostile_records(
        &mut hub,
        &other,
        vec![RecordWire(phone.id(), 0, false, None, vec![forged], 0, 0, Vec::new())],
    );
    assert_eq!(hub.devices().cursor(phone.id()), Seq(13));
    // The phone's app restarts before it syncs.
    let store = phone.into_store();
    clock.advance(1);
    let mut phone = open_device_in(store, 100, &clock);
    for _ in 0..2 {
        clock.advance(1);
        let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
        eprintln!("renumbered {}, known {}", out.device.renumbered, out.device.known);
    }
    assert!(hub.get(b"w").unwrap().is_some(), "the hub never held w");
    assert!(phone.get(b"w").unwrap().is_some(), "the phone dropped w: a write no member held was lost");
}

/// R5-6 (R5-2 seen from another device). A tablet whose wall clock is 300 ms behind the hub's
/// (within `max_drift`), and a phone in step with the hub. The phone reopens its store (its
/// clock resumes at wall + `max_drift`, 161a621), writes and syncs: the hub admits the write at
/// the edge of its drift check. The tablet's next session downloads it: the hub holds back
/// only what is beyond the tablet's measured wall + `max_drift` + `peer_clock_slack_ms`, so it
/// sends the write, and the tablet rejects the whole batch (its own check is at `max_drift`),
/// failing its session, everything else in the download with it, until the skew has passed.
/// Before 161a621 the phone's stamp was its wall time and the tablet took it.
#[test]
fn a_device_a_little_behind_downloads_a_write_another_device_made_right_after_reopening() {
    let hub_clock = ManualClock::new(T0);
    let tablet_clock = ManualClock::new(T0 - 300);
    let mut hub = open_member_in(MemoryStore::new(), 1, &hub_clock);
    let mut phone = open_device_in(MemoryStore::new(), 100, &hub_clock);
    let mut tablet = open_device_in(MemoryStore::new(), 101, &tablet_clock);
    hub.enrol_device(phone.id()).unwrap();
    hub.enrol_device(tablet.id()).unwrap();
    phone.put("first", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    let store = phone.into_store();
    hub_clock.advance(10);
    tablet_clock.advance(10);
    let mut phone = open_device_in(store, 100, &hub_clock);
    phone.put("second", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    hub_clock.advance(10);
    tablet_clock.advance(10);
    let result = sync_device_in_process(&mut tablet, &mut hub);
    assert!(result.is_ok(), "the tablet's session failed: {}", result.err().map(|e| e.to_string()).unwrap_or_default());
    assert_eq!(keys(&tablet), ["first", "second"]);
}

/// R5-7. Last writer wins "in real-time order" (design.md §8: a device stamps with its own HLC
/// "so LWW stays real-time order"). Since 161a621 a device reopening its store resumes at
/// wall + `max_drift`, so for `max_drift` after every open its writes beat every write made later
/// by anyone whose clock is right. With `max_drift` raised to 60 s (what the drift error tells
/// an operator to do), the phone restarts and writes `k = phone`; 10 s later, by every clock,
/// the tablet writes `k = tablet`; both sync; every replica keeps `phone`, the older write, and
/// a value with a TTL written then lives `max_drift` longer than asked (its expiry is its
/// stamp's time + TTL). The lead is not bounded by anything the clocks did: nobody's clock
/// was ahead. A resume that does not stamp the future (e.g. resume at the stored clock and
/// re-number, or keep the lost run's highest stamp durable before using it) keeps the order.
#[test]
fn a_write_made_after_a_device_restarted_does_not_beat_a_later_write_from_another_device() {
    let clock = ManualClock::new(T0);
    let config = |role| Config { role, max_drift_ms: 60_000, ..Config::default() };
    let open =
        |store, id, role| signed(Replica::open(store, ReplicaId(id), config(role), Arc::new(clock.clone())).unwrap());
    let mut hub = open(MemoryStore::new(), 1, Role::Member);
    let mut phone = open(MemoryStore::new(), 100, Role::Device);
    let mut tablet = open(MemoryStore::new(), 101, Role::Device);
    hub.enrol_device(phone.id()).unwrap();
    hub.enrol_device(tablet.id()).unwrap();
    phone.put("first", "v", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    let store = phone.into_store();
    clock.advance(1_000);
    let mut phone = open(store, 100, Role::Device);
    phone.put("k", "phone", PutOptions::default()).unwrap();
    let ttl = PutOptions { ttl_ms: Some(5_000), ..PutOptions::default() };
    phone.put("short-lived", "v", ttl).unwrap();
    clock.advance(10_000);
    tablet.put("k", "tablet", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    sync_device_in_process(&mut tablet, &mut hub).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    let held = hub.get(b"k").unwrap().map(|e| String::from_utf8(e.value).unwrap());
    let lingering = hub.get(b"short-lived").unwrap().is_some();
    eprintln!("the hub holds k = {held:?}; the 5 s value written 10 s ago is still readable: {lingering}");
    assert_eq!(held.as_deref(), Some("tablet"), "the older write, made right after the phone's restart, won");
    assert!(!lingering, "a value with a 5 s TTL is still read 10 s after it was written");
}

/// The hub (values of at most 16 bytes) and a member `lost` that the phone synced with last,
/// taking its write `z`, and which then dies before it syncs with anyone (removed by the
/// operator when `remove`). The phone then writes a long value for `k`, which the hub refuses,
/// syncs with the hub four times and once by anti-entropy. Returns what the phone holds for
/// `k` (the hub holds `old`) and the bytes the hub sent in the last session that had nothing
/// new, or the first session error.
fn refused_after_a_member_is_lost(remove: bool) -> Result<(Option<String>, u64), String> {
    let clock = ManualClock::new(T0);
    let limits = lethe_engine::Limits { value_bytes_max: 16, ..lethe_engine::Limits::default() };
    let config = Config { limits, ..Config::default() };
    let mut hub = signed(Replica::open(MemoryStore::new(), ReplicaId(1), config, Arc::new(clock.clone())).unwrap());
    let mut lost = open_member_in(MemoryStore::new(), 2, &clock);
    hub.enrol_member(lost.id()).unwrap();
    lost.enrol_member(hub.id()).unwrap();
    let mut phone = open_device_in(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    lost.enrol_device(phone.id()).unwrap();
    clock.advance(1);
    hub.put("k", "old", PutOptions::default()).unwrap();
    sync_in_process(&mut hub, &mut lost, false).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    clock.advance(1);
    lost.put("z", "z", PutOptions::default()).unwrap();
    sync_device_in_process(&mut phone, &mut lost).unwrap();
    drop(lost);
    if remove {
        hub.remove_member(ReplicaId(2)).unwrap();
    }
    clock.advance(1);
    phone.put("k", vec![b'x'; 100], PutOptions::default()).unwrap();
    let err = |e: lethe_engine::session::SyncError| e.to_string();
    let out = sync_device_in_process(&mut phone, &mut hub).map_err(err)?;
    assert_eq!(out.member.refused, 1);
    let mut last_bytes = 0;
    for _ in 0..3 {
        clock.advance(1_000);
        last_bytes = sync_device_in_process(&mut phone, &mut hub).map_err(err)?.member.bytes_sent;
    }
    clock.advance(120_000);
    lethe_engine::device::anti_entropy_device_in_process(&mut phone, &mut hub).map_err(err)?;
    clock.advance(1_000);
    sync_device_in_process(&mut phone, &mut hub).map_err(err)?;
    Ok((phone.get(b"k").unwrap().map(|e| String::from_utf8(e.value).unwrap()), last_bytes))
}

/// R5-8. Unsettled keys settle only at the end of a complete download from a member whose
/// vector covers the device's (`take_covered`), and only such a download takes an entry the
/// device's vector covers. A device's vector keeps every member's component for ever
/// (`members_vector`): once it took a write from a member that is then lost (its disk died
/// before it synced with anyone), no remaining member ever covers the device. The hub refuses
/// the phone's long value for `k`; the phone drops it and keeps `k` unsettled; every later
/// session forces the hub's `old` for `k`, which the phone does not take (covered, and the hub
/// is "behind" it), and never settles: the phone holds nothing for `k` while the hub holds
/// `old`, after any number of sessions and an anti-entropy session (which takes covered
/// entries under the same rule), and every session carries the forced entry again. Fix: settle an unsettled key by taking the forced entry for it
/// by LWW from any member (the device dropped its own write, so nothing it holds for the key
/// can be newer than what a member holds and it lacks), or let a device drop the components
/// of members lost for good.
#[test]
#[ignore = "R5-8: known limit (docs/design.md §8): no member covers a device that took a write of a member lost before it synced"]
fn a_device_gets_the_members_value_for_a_refused_key_after_a_member_it_synced_with_is_lost() {
    let (held, last_bytes) = refused_after_a_member_is_lost(false).unwrap();
    eprintln!("phone holds k = {held:?}; a session with nothing new sent {last_bytes} bytes from the hub");
    assert_eq!(held.as_deref(), Some("old"), "the phone holds nothing for k while the hub holds old");
}

/// R5-9 (found checking R5-8; older than this range). The same, the operator removing the lost
/// member from the hub (`remove_member`). From then on the hub refuses every handshake of the
/// phone: `check_device_names` (device/session.rs) finds the removed member's component in the
/// phone's vector, "neither a member here nor a writer this member holds writes of". The phone
/// can never sync again, upload included: its long write and every later one stay queued for
/// ever, an acknowledged write never reaching any member. Fix: accept (and ignore) components
/// of members this member removed (keep the removed ids), or have the member's handshake tell
/// the device which of its components to drop.
#[test]
fn a_device_still_syncs_after_the_operator_removes_a_member_whose_writes_only_it_holds() {
    let result = refused_after_a_member_is_lost(true);
    eprintln!("{result:?}");
    // Fixed: the member leaves such components out (`known_names`) and the sessions, uploads
    // included, go on. What the phone holds for `k` is R5-8's limit.
    result.expect("the phone's session with the hub failed");
}

/// R5-10. R4-4 made "the very write" below the cursor its stamp and its payload, but a copy of
/// one write changes payload as it expires (`settled_at`: a value past its TTL becomes an
/// `Expired` record, same stamp). The phone writes `t` with a 1 s TTL; the hub admits it and
/// the answer is lost. Past the TTL the phone's copy is expired (it purges before each
/// session) while the hub still stores the value (it purges when a session opens, after the
/// uploads): the re-upload is below the cursor, same stamp, other payload, so not the very
/// write; the value does not win over the expired record, so not superseded; the hub holds
/// the key, so not known: it is admitted again, under a second dot of the hub. One write,
/// applied twice at one member (I11), the hub's counter and every peer's vector carrying a
/// dot for it twice; before R4-4 the same stamp alone answered it with its dot. Fix: compare
/// the two copies settled at the same time (`settled_at(wall)` on both) before comparing
/// payloads, or treat an `Expired` copy of the same stamp and expiry as the very write.
#[test]
fn a_reuploaded_write_that_expired_meanwhile_is_not_admitted_twice() {
    let clock = ManualClock::new(T0);
    let mut hub = open_member_in(MemoryStore::new(), 1, &clock);
    let mut phone = open_device_in(MemoryStore::new(), 100, &clock);
    hub.enrol_device(phone.id()).unwrap();
    clock.advance(1);
    phone.put("t", "v", PutOptions { ttl_ms: Some(1_000), ..PutOptions::default() }).unwrap();
    common::sync_losing_answers(&mut phone, &mut hub);
    let counter = hub.vector().get(hub.id());
    assert_eq!(counter.0, 1, "the hub admitted t once");
    clock.advance(2_000);
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    eprintln!(
        "second session: admitted {}, superseded {}, known {}; hub counter {} -> {}",
        out.member.admitted,
        out.member.superseded,
        out.member.known,
        counter,
        hub.vector().get(hub.id())
    );
    assert_eq!(hub.vector().get(hub.id()), counter, "the hub numbered the same write a second time");
}
