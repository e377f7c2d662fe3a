//! Remote entries as a peer could send them: CBOR bytes decoded into (entries, optional sender
//! vector and clock), applied to a replica that already holds some writes.
//!
//! Holds: decoding never panics; applying never panics; a rejected batch leaves entries, vector
//! and clock exactly as they were; an accepted one never moves the vector backwards and leaves
//! every key holding the LWW winner of what was there and what arrived.

#![no_main]

use lethe_engine::{
    Config, Entry, Hlc, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Snapshot, Storage,
    VersionVector,
};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

const NOW_MS: u64 = 1_700_000_000_000;

fn entries(r: &Replica<MemoryStore>) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    r.store()
        .snapshot()
        .unwrap()
        .scan_keys(&KeyRange::all(), &mut |e| {
            out.insert(e.key.clone(), e);
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok((incoming, sender)) = ciborium::from_reader::<(Vec<Entry>, Option<(VersionVector, Hlc)>), _>(data) else {
        return;
    };
    let clock = ManualClock::new(NOW_MS);
    let mut r = Replica::open(MemoryStore::new(), ReplicaId(1), Config::default(), Arc::new(clock)).unwrap();
    r.put("a", "1", PutOptions::default()).unwrap();
    r.put("b", "2", PutOptions { ttl_ms: Some(5), metadata: Some(b"m".to_vec()) }).unwrap();
    r.delete("c").unwrap();

    let before = entries(&r);
    let (vector, clock) = (r.vector().clone(), r.clock());
    match r.apply_remote(incoming.clone(), sender.as_ref().map(|(v, c)| (v, *c))) {
        Err(_) => {
            assert_eq!(entries(&r), before, "a rejected batch changed entries");
            assert_eq!(r.vector(), &vector, "a rejected batch changed the vector");
            assert_eq!(r.clock(), clock, "a rejected batch moved the clock");
        }
        Ok(_) => {
            assert!(r.vector().dominates(&vector), "the vector went backwards");
            let after = entries(&r);
            for e in incoming {
                let stored = after.get(&e.key).expect("an accepted key has an entry");
                if let Some(old) = before.get(&e.key) {
                    assert!(!old.wins_over(stored), "a key lost its winner");
                }
                if !vector.covers(e.dot()) {
                    assert!(!e.clone().settled_at(NOW_MS).wins_over(stored), "a winning entry was not stored");
                }
            }
        }
    }
});
