//! Sixth hostile review (b615040, 2bd37ed): each test failed for the reason its doc gives.
//! Fixes: R6-1, R6-4: a recovery waits for every enrolled replica, admitted or not; R6-2: one
//! grant per session for anti-entropy and the named unsettled keys together. R6-3 and R6-5 are
//! known limits (ignored).

mod common;
use common::keys;

use lethe_engine::session::{Message, Session, sync_in_process};
use lethe_engine::{Config, InsecureTestSigner, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn open(store: MemoryStore, id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(store, ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

fn put(r: &mut Replica<MemoryStore>, key: &str, clock: &ManualClock) {
    clock.advance(1);
    r.put(key, key, PutOptions::default()).unwrap();
}

/// Delivers `from`'s handshake to `to` and nothing else (the connection drops after it).
fn hello_only(from: &mut Replica<MemoryStore>, to: &mut Replica<MemoryStore>) {
    let mut s_from = Session::new(from, Some(to.id())).unwrap();
    let hello = s_from.poll_transmit(from).unwrap().unwrap();
    assert!(matches!(Message::decode(&hello).unwrap(), Message::Hello(_)));
    let mut s_to = Session::new(to, Some(from.id())).unwrap();
    s_to.handle(to, &hello).unwrap();
}

/// R6-1 (2bd37ed, `replica/restore.rs` `note_recovery_transfer`): a recovery ends "once every
/// member has transferred", but "every member" is `Membership::iter`, the members *admitted*
/// in the restored copy. Member `c` of three was enrolled at `a` but not yet admitted when
/// `a`'s copy was taken; afterwards `a` wrote x1..x3 and synced them to `c` only. Restored, `a`
/// learns from `b`'s handshake (gossiping `c`'s signed acknowledgement) that its writes go to
/// seq 3. `b` holds none of them, so its vector is covered: that counts as `b`'s transfer, `b`
/// is the only admitted member, and the recovery ends at once. `a`'s own component jumps over
/// 1..3 while it holds none of x1..x3: `c` then sends it nothing of them ("covered and
/// absent"), and `a` never gets its own acknowledged writes back; worse, `a`'s next complete
/// transfer to `b` merges that vector into `b`'s, so `b` loses them too: only `c` holds them.
/// The cause is the order in `Session::on_hello`: the covered-vector shortcut
/// (`note_recovery_transfer`) runs before `merge_gossip`, which would have admitted `c` from
/// the very gossip that began the recovery; and "every member" ignores enrolled replicas not
/// yet admitted. (With that shortcut disabled, the test passes.)
#[test]
fn a_recovery_does_not_end_while_an_enrolled_member_not_admitted_in_the_copy_holds_the_lost_writes() {
    let clock = ManualClock::new(T0);
    let mut a = open(MemoryStore::new(), 1, &clock);
    let mut b = open(MemoryStore::new(), 2, &clock);
    let mut c = open(MemoryStore::new(), 3, &clock);
    for (x, ys) in [(&mut a, [2u64, 3]), (&mut b, [1, 3]), (&mut c, [1, 2])] {
        for y in ys {
            x.enrol_member(ReplicaId(y)).unwrap();
        }
    }
    sync_in_process(&mut a, &mut b, false).unwrap();
    sync_in_process(&mut b, &mut c, false).unwrap();
    assert!(a.membership().contains(b.id()));
    assert!(!a.membership().contains(c.id()), "c not yet admitted at a");
    a.collect_garbage().unwrap(); // a's membership ({b}) durable, as a GC step makes it
    let a_copy = a.store().clone();

    for k in ["x1", "x2", "x3"] {
        put(&mut a, k, &clock);
    }
    sync_in_process(&mut a, &mut c, false).unwrap();
    assert_eq!(c.vector().get(a.id()).0, 3);
    drop(a);

    // c's handshake (not its data) reaches b: b keeps c's signed acknowledgement.
    hello_only(&mut c, &mut b);
    assert_eq!(b.vector().get(ReplicaId(1)).0, 0, "b holds none of a's writes");

    eprintln!(
        "b's gossip: {:?}",
        b.gossip().iter().map(|g| (g.replica, g.acked.clone(), g.signature.len())).collect::<Vec<_>>()
    );
    let mut a = open(a_copy, 1, &clock);
    eprintln!(
        "a restored: vector {:?}, members {:?}",
        a.vector(),
        a.membership().iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
    hello_only(&mut b, &mut a);
    eprintln!("after b's handshake: a's recovery {:?}, vector {:?}", a.recovery(), a.vector());

    // Whatever order the sessions take, x1..x3 must come back to a.
    for _ in 0..3 {
        sync_in_process(&mut a, &mut b, false).unwrap();
        sync_in_process(&mut a, &mut c, false).unwrap();
        sync_in_process(&mut b, &mut c, false).unwrap();
    }
    eprintln!("a: recovery {:?}, vector {:?}, keys {:?}", a.recovery(), a.vector(), keys(&a));
    eprintln!("b keys {:?}; c keys {:?}", keys(&b), keys(&c));
    assert_eq!(keys(&c), ["x1", "x2", "x3"]);
    assert_eq!(keys(&a), keys(&c), "a lost its own acknowledged writes x1..x3");
}

/// R6-2 (b615040, `DeviceService::on_hello`): the named unsettled keys and an anti-entropy
/// session draw on one grant (`grant_device_anti_entropy`, once per 60 s), and the named keys
/// draw first, in the handshake, so `Session::to_device` then finds the grant taken and answers
/// the device's anti-entropy request with a delta. A device whose unsettled keys cannot settle
/// with this member (`settle_download` forgets them only from a member whose vector covers the
/// device's: here the device holds a write of member 2, which the hub has not enrolled yet and
/// holds nothing of, the enrolment race that b615040's `known_names` now lets through) names
/// them in every handshake, so every anti-entropy request it makes is downgraded, window after
/// window, for as long as the hub does not cover it. Anti-entropy is what the design leaves to
/// repair what a delta cannot (keys past `UNSETTLED_KEYS_MAX`, "wait for an anti-entropy").
/// (With the named keys sent without drawing on the grant, the test passes: Reconcile.)
#[test]
fn a_device_with_an_unsettled_key_still_gets_the_anti_entropy_it_asks_for() {
    use lethe_engine::device::{anti_entropy_device_in_process, sync_device_in_process};
    use lethe_engine::session::Mode;
    use lethe_engine::{Limits, Role};
    let clock = ManualClock::new(T0);
    let limits = Limits { value_bytes_max: 16, ..Limits::default() };
    let mut hub = Replica::open(
        MemoryStore::new(),
        ReplicaId(1),
        Config { limits, ..Config::default() },
        Arc::new(clock.clone()),
    )
    .unwrap();
    hub.set_signer(Arc::new(InsecureTestSigner::new(hub.id())));
    let mut other = open(MemoryStore::new(), 2, &clock);
    let config = Config { role: Role::Device, ..Config::default() };
    let mut phone = Replica::open(MemoryStore::new(), ReplicaId(100), config, Arc::new(clock.clone())).unwrap();
    phone.set_signer(Arc::new(InsecureTestSigner::new(phone.id())));
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    put(&mut hub, "w1", &clock);
    sync_in_process(&mut hub, &mut other, false).unwrap(); // other holds w1; the hub nothing of 2
    sync_device_in_process(&mut phone, &mut hub).unwrap(); // its first download, its horizon
    put(&mut other, "w2", &clock);
    sync_device_in_process(&mut phone, &mut other).unwrap();
    assert_eq!(keys(&phone), ["w1", "w2"]);

    // A write over the hub's limits: refused, dropped at the phone, its key unsettled.
    clock.advance(1);
    phone.put("big", vec![b'x'; 100], PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.refused, 1);

    let mut modes = Vec::new();
    for _ in 0..3 {
        clock.advance(61_000);
        let out = anti_entropy_device_in_process(&mut phone, &mut hub).unwrap();
        modes.push(out.member.download.mode);
    }
    eprintln!("the hub's answers to three anti-entropy requests, 61 s apart: {modes:?}");
    assert!(modes.contains(&Some(Mode::Reconcile)), "never granted: {modes:?}");
}

/// R6-3 (b615040, `DeviceService::on_hello` and the device `Ack` in `session/mod.rs`): a
/// device's signed acknowledgement is relayed only if `known_names` left nothing out, all or
/// nothing. In an enrolment race (member 3 enrolled at `n` and writing there, not yet at the
/// hub) or after the hub's `remove_member` of a member whose writes the device still holds,
/// every acknowledgement the device sends the hub names that member: none is ever relayed
/// again, and `n` never learns that the device took the hub's newer writes. A device's
/// acknowledgement holds back every member's frontier (`Replica::frontier` meets the devices'
/// records), so `n` collects none of the hub's tombstones the device saw, for as long as the
/// device syncs with the hub only (up to the device lease): its acknowledgement for the real
/// members (the hub's component) is lost with the one component left out. The hub could relay
/// the signature only where it is whole, but keep and gossip the stripped record (unsigned,
/// as its own word for its own component), or the device could sign per-member claims.
/// (With member 3 enrolled at the hub too, the test passes: `n` records the hub's seq 3.)
#[test]
#[ignore = "R6-3: known limit (docs/design.md §8): an acknowledgement the hub trimmed is not relayed; other members wait up to the device lease"]
fn a_device_acknowledgement_naming_a_member_not_enrolled_at_the_hub_still_reaches_the_other_members() {
    use lethe_engine::Role;
    use lethe_engine::device::sync_device_in_process;
    let clock = ManualClock::new(T0);
    let mut hub = open(MemoryStore::new(), 1, &clock);
    let mut n = open(MemoryStore::new(), 2, &clock);
    let mut c = open(MemoryStore::new(), 3, &clock);
    hub.enrol_member(n.id()).unwrap();
    n.enrol_member(hub.id()).unwrap();
    n.enrol_member(c.id()).unwrap();
    c.enrol_member(n.id()).unwrap();
    let config = Config { role: Role::Device, ..Config::default() };
    let mut phone = Replica::open(MemoryStore::new(), ReplicaId(100), config, Arc::new(clock.clone())).unwrap();
    phone.set_signer(Arc::new(InsecureTestSigner::new(phone.id())));
    hub.enrol_device(phone.id()).unwrap();
    n.enrol_device(phone.id()).unwrap();

    put(&mut hub, "h1", &clock);
    sync_in_process(&mut hub, &mut n, false).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut c, "c1", &clock);
    sync_in_process(&mut n, &mut c, false).unwrap();
    sync_device_in_process(&mut phone, &mut n).unwrap();
    assert_eq!(keys(&phone), ["c1", "h1"]);
    assert!(!hub.membership().is_enrolled(c.id()) && hub.vector().get(c.id()).0 == 0);

    // The hub writes (and deletes); the phone takes it from the hub, and the hub meets n.
    put(&mut hub, "h2", &clock);
    clock.advance(1);
    hub.delete("h1").unwrap();
    for _ in 0..2 {
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    let hub_seq = hub.vector().get(hub.id());
    assert!(phone.members_vector().get(hub.id()) >= hub_seq);
    eprintln!("the hub's record of the phone: {:?}", hub.devices().get(phone.id()).and_then(|r| r.acked.clone()));
    for _ in 0..2 {
        sync_in_process(&mut hub, &mut n, false).unwrap();
    }
    let at_n = n.devices().get(phone.id()).and_then(|r| r.acked.clone()).unwrap_or_default();
    eprintln!("n's record of the phone: {at_n:?}, the hub's seq {hub_seq:?}");
    assert!(at_n.get(hub.id()) >= hub_seq, "n never learns the phone took the hub's writes: {at_n:?}");
}

/// R6-4 (2bd37ed, `replica/restore.rs` `note_recovery_transfer`): the members a recovery waits
/// for are those admitted in memory now, and admissions are durable only at a GC step, while
/// the recovery is durable at once. `a`, restored, learns from `c`'s handshake (the session
/// cut after it) that its writes go to seq 3: `c` holds x1..x3, and is admitted then, in
/// memory. `a` restarts before `c` completes a transfer: the recovery is still on, but `c` is
/// no member any more (the copy's membership, `{b}`, a GC step's), so `b`'s handshake, whose
/// vector `a` covers, ends it at once. `a`'s own component jumps over 1..3, `c` sends nothing of
/// x1..x3 and `a` never holds its own acknowledged writes again ("covered and absent"). Not
/// the order of `on_hello` (R6-1): `b` tells nothing of `c` here. The recovery should wait for
/// every enrolled replica (`Membership::enrolled`), or persist whom it waits for. (With
/// `note_recovery_transfer` a no-op, the test passes.)
#[test]
fn a_recovery_does_not_end_after_a_restart_forgot_that_the_member_holding_the_target_was_admitted() {
    let clock = ManualClock::new(T0);
    let mut a = open(MemoryStore::new(), 1, &clock);
    let mut b = open(MemoryStore::new(), 2, &clock);
    let mut c = open(MemoryStore::new(), 3, &clock);
    a.enrol_member(b.id()).unwrap();
    a.enrol_member(c.id()).unwrap();
    b.enrol_member(a.id()).unwrap();
    c.enrol_member(a.id()).unwrap();
    sync_in_process(&mut a, &mut b, false).unwrap();
    a.collect_garbage().unwrap();
    let a_copy = a.store().clone();
    for k in ["x1", "x2", "x3"] {
        put(&mut a, k, &clock);
    }
    sync_in_process(&mut a, &mut c, false).unwrap();
    assert_eq!(c.vector().get(a.id()).0, 3);
    drop(a);

    let mut a = open(a_copy, 1, &clock);
    hello_only(&mut c, &mut a);
    assert_eq!(a.recovery().map(|r| r.target.0), Some(3), "c's handshake began the recovery");
    assert!(a.membership().contains(c.id()));
    // a restarts (same store) before any transfer completes.
    let store = a.store().clone();
    drop(a);
    let mut a = open(store, 1, &clock);
    eprintln!("after the restart: recovery {:?}, c a member: {}", a.recovery(), a.membership().contains(c.id()));

    for _ in 0..3 {
        sync_in_process(&mut a, &mut b, false).unwrap();
        sync_in_process(&mut a, &mut c, false).unwrap();
    }
    eprintln!("a: recovery {:?}, vector {:?}, keys {:?}", a.recovery(), a.vector(), keys(&a));
    assert_eq!(keys(&a), ["x1", "x2", "x3"], "a lost its own acknowledged writes x1..x3");
}

/// R6-5 (b615040, `settle_download` with `known_names`): since b615040 a device whose vector
/// names a member the hub removed (and holds no writes of: R5-9) syncs with the hub again, but
/// the hub's vector never covers the device's, so `settle_download` never settles a key and
/// never takes the hub's covered entry for it. The phone overwrites `k` (the hub's `v0`) with
/// a value over the hub's limits: refused, the phone drops its write, and then needs the hub's
/// `v0` back, whose dot its vector covers. The hub names it in every granted download, the
/// phone refuses it as covered, and `k` stays unsettled and absent on the phone for ever,
/// while the hub (the phone's only member) holds `v0`: the two never converge. The hub could
/// cover the left-out components for settling (they are writes it cannot hold), or the device
/// take the named keys' entries from a member that covers its vector for the components the
/// member knows. (With the phone holding no write of 2, the hub covers it and the test passes.)
#[test]
#[ignore = "R6-5: known limit (docs/design.md §8, as R5-8): no member covers a device holding writes of a member removed"]
fn a_refused_write_settles_with_a_hub_that_removed_a_member_whose_writes_the_device_holds() {
    use lethe_engine::Limits;
    use lethe_engine::Role;
    use lethe_engine::device::sync_device_in_process;
    let clock = ManualClock::new(T0);
    let limits = Limits { value_bytes_max: 16, ..Limits::default() };
    let mut hub = Replica::open(
        MemoryStore::new(),
        ReplicaId(1),
        Config { limits, ..Config::default() },
        Arc::new(clock.clone()),
    )
    .unwrap();
    hub.set_signer(Arc::new(InsecureTestSigner::new(hub.id())));
    let mut other = open(MemoryStore::new(), 2, &clock);
    let config = Config { role: Role::Device, ..Config::default() };
    let mut phone = Replica::open(MemoryStore::new(), ReplicaId(100), config, Arc::new(clock.clone())).unwrap();
    phone.set_signer(Arc::new(InsecureTestSigner::new(phone.id())));
    hub.enrol_member(other.id()).unwrap();
    other.enrol_member(hub.id()).unwrap();
    hub.enrol_device(phone.id()).unwrap();
    other.enrol_device(phone.id()).unwrap();
    clock.advance(1);
    hub.put("k", "v0", PutOptions::default()).unwrap();
    sync_in_process(&mut hub, &mut other, false).unwrap();
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    put(&mut other, "w2", &clock);
    sync_device_in_process(&mut phone, &mut other).unwrap();
    assert_eq!(keys(&phone), ["k", "w2"]);
    hub.remove_member(other.id()).unwrap();
    assert_eq!(hub.vector().get(other.id()).0, 0, "the hub holds no write of 2");

    clock.advance(1);
    phone.put("k", vec![b'x'; 100], PutOptions::default()).unwrap();
    let out = sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(out.member.refused, 1);
    for _ in 0..3 {
        clock.advance(61_000);
        sync_device_in_process(&mut phone, &mut hub).unwrap();
    }
    let at_phone = phone.get(b"k").unwrap().map(|v| v.value);
    eprintln!("k at the phone: {at_phone:?}; at the hub: {:?}", hub.get(b"k").unwrap().map(|v| v.value));
    assert_eq!(at_phone, Some(b"v0".to_vec()), "the phone never gets the hub's v0 back");
}
