//! A device write a member refuses on its own (a size over the member's limits) is answered
//! `Refused` and settled, without refusing the rest of the upload (docs/design.md §8).

use lethe_engine::device::sync_device_in_process;
use lethe_engine::{
    Config, InsecureTestSigner, Limits, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role,
};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn open(id: u64, config: Config, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone())).unwrap();
    r.set_signer(Arc::new(InsecureTestSigner::new(r.id())));
    r
}

#[test]
fn a_write_over_the_members_limits_is_refused_alone_and_the_rest_of_the_upload_is_admitted() {
    let clock = ManualClock::new(T0);
    let limits = Limits { value_bytes_max: 16, ..Limits::default() };
    let mut hub = open(1, Config { limits, ..Config::default() }, &clock);
    let mut phone = open(100, Config { role: Role::Device, ..Config::default() }, &clock);
    hub.enrol_device(phone.id()).unwrap();
    phone.put("small", "fits", PutOptions::default()).unwrap();
    phone.put("big", vec![b'x'; 100], PutOptions::default()).unwrap();
    phone.put("after", "fits too", PutOptions::default()).unwrap();

    let out = sync_device_in_process(&mut phone, &mut hub).expect("one write over the limits refuses only itself");
    assert_eq!((out.member.uploaded, out.member.admitted, out.member.refused), (3, 2, 1));
    assert_eq!(hub.get(b"small").unwrap().unwrap().value, b"fits");
    assert_eq!(hub.get(b"after").unwrap().unwrap().value, b"fits too");
    assert_eq!(hub.get(b"big").unwrap(), None);
    assert_eq!(phone.pending_uploads().unwrap(), 0, "settled: not uploaded again for ever");
    assert_eq!(phone.get(b"big").unwrap(), None, "dropped at the device: no member will ever hold it");
    assert_eq!(phone.device_ack().unwrap(), phone.members_vector(), "its acknowledgement is capped no more");
    sync_device_in_process(&mut phone, &mut hub).unwrap();
    assert_eq!(phone.digest(), hub.digest());
}
