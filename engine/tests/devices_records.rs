//! Device records between members (docs/design.md §8): `Records` frames are cut by bytes as
//! well as by count, so a frame always fits the frame limit.

use lethe_engine::device::{DeviceHello, DeviceService};
use lethe_engine::session::{FRAME_BYTES_MAX, Message, PROTOCOL_VERSION, Session};
use lethe_engine::sign::SignedAck;
use lethe_engine::{Config, InsecureTestSigner, ManualClock, MemoryStore, Replica, ReplicaId, Seq, VersionVector};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn member(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

/// 4,096 devices (one `Records` message by count), each with a signed acknowledgement naming
/// 63 members (ids and seqs of 9 bytes each in CBOR): about 1.2 KB a record, about 5 MB in all,
/// more than a frame holds.
#[test]
fn records_frames_are_cut_by_bytes_so_each_fits_the_frame_limit() {
    let clock = ManualClock::new(T0);
    let mut hub = member(1, &clock);
    let id = |m: u64| ReplicaId((1 << 40) + m);
    let mut other = member(id(2).0, &clock);
    other.enrol_member(hub.id()).unwrap();
    for m in 2..=64 {
        hub.enrol_member(id(m)).unwrap();
    }
    let vector: VersionVector = (2..=64).map(|m| (id(m), Seq((1 << 40) + m))).collect::<Vec<_>>().into();
    let devices = 4096u64;
    for d in 0..devices {
        let device = ReplicaId(1_000 + d);
        hub.enrol_device(device).unwrap();
        let signed = SignedAck::sign(&InsecureTestSigner::new(device), device, vector.clone(), T0);
        let hello = DeviceHello(
            PROTOCOL_VERSION,
            device,
            vector.clone(),
            vector.clone(),
            None,
            false,
            false,
            T0,
            false,
            signed.signature,
            None,
            Vec::new(),
        );
        let mut service = DeviceService::new(&mut hub, Some(device)).unwrap();
        service.handle(&mut hub, &Message::DeviceHello(hello).encode().unwrap()).unwrap();
    }

    // A member session from the hub to the other member, frame by frame.
    let mut a = Session::new(&mut hub, Some(other.id())).unwrap();
    let mut b = Session::new(&mut other, Some(hub.id())).unwrap();
    let (mut records_frames, mut largest) = (0, 0);
    for _ in 0..20 {
        let mut moved = false;
        while let Some(f) = a.poll_transmit(&hub).expect("every frame fits the frame limit") {
            if matches!(Message::decode(&f), Ok(Message::Records(..))) {
                records_frames += 1;
                largest = largest.max(f.len());
            }
            b.handle(&mut other, &f).unwrap();
            moved = true;
        }
        while let Some(f) = b.poll_transmit(&other).unwrap() {
            a.handle(&mut hub, &f).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(a.is_finished() && b.is_finished());
    println!("{records_frames} Records frames, the largest {largest} bytes");
    assert!(largest <= FRAME_BYTES_MAX);
    assert!(records_frames >= 3, "cut by bytes: {records_frames} frames");
    assert_eq!(other.devices().iter().count() as u64, devices, "every record arrived");
}
