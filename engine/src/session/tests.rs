use super::*;
use crate::hlc::ManualClock;
use crate::ids::Seq;
use crate::replica::{Config, PutOptions};
use crate::storage::{MemoryStore, Meta, Snapshot, encode_vector};
use crate::vector::VersionVector;
use std::ops::ControlFlow;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    let mut r = Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap();
    for other in 1..=8 {
        r.enrol_member(ReplicaId(other)).unwrap();
    }
    r
}

fn run(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>) -> PairOutcome {
    sync_in_process(a, b, false).unwrap()
}

fn live(r: &Replica<MemoryStore>) -> Vec<(Vec<u8>, Vec<u8>)> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| (i.key, i.value)).collect()
}

#[test]
fn equal_vectors_finish_in_one_round_trip() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    let out = run(&mut a, &mut b);
    assert_eq!(out.trips, 1);
    assert_eq!((out.a.mode, out.b.mode), (Some(Mode::Nothing), Some(Mode::Nothing)));
}

#[test]
fn a_fresh_replica_bootstraps_and_becomes_a_member() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    for i in 0..100 {
        a.put(format!("k{i:03}"), "v", PutOptions::default()).unwrap();
    }
    a.delete("k000").unwrap();
    // a alone: its frontier is its own vector, so two GC steps collect the tombstone.
    a.collect_garbage().unwrap();
    a.collect_garbage().unwrap();
    assert_eq!(a.tombstone_count(), 0);
    let out = run(&mut a, &mut b);
    assert_eq!(out.a.mode, Some(Mode::Bootstrap));
    assert_eq!((out.a.live_sent, out.a.tombstones_sent), (99, 0));
    assert_eq!(live(&a), live(&b));
    assert_eq!(b.vector(), a.vector());
    assert!(a.membership().contains(ReplicaId(2)), "b's ack covers a's frontier");
}

#[test]
fn members_then_sync_by_delta() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    a.put("x", "1", PutOptions::default()).unwrap();
    run(&mut a, &mut b);
    a.put("y", "2", PutOptions::default()).unwrap();
    a.delete("x").unwrap();
    b.put("z", "3", PutOptions::default()).unwrap();
    let out = run(&mut a, &mut b);
    assert_eq!((out.a.mode, out.b.mode), (Some(Mode::Delta), Some(Mode::Delta)));
    assert_eq!((out.a.live_sent, out.a.tombstones_sent), (1, 1));
    assert_eq!(live(&a), live(&b));
    assert_eq!(a.vector(), b.vector());
}

#[test]
fn an_evicted_replica_rejoins_by_reconciliation_and_drops_what_was_deleted_meanwhile() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    for i in 0..500 {
        a.put(format!("k{i:03}"), "v", PutOptions::default()).unwrap();
    }
    run(&mut a, &mut b);
    // b goes away; a evicts it, deletes and collects.
    assert!(a.evict(ReplicaId(2)));
    for i in 0..100 {
        a.delete(format!("k{i:03}")).unwrap();
    }
    a.collect_garbage().unwrap();
    a.collect_garbage().unwrap();
    assert_eq!(a.tombstone_count(), 0);
    // b wrote offline.
    b.put("offline", "mine", PutOptions::default()).unwrap();
    let out = run(&mut a, &mut b);
    assert_eq!(out.a.mode, Some(Mode::Reconcile), "b is no member and does not cover a's frontier");
    assert_eq!(out.b.dropped, 100, "b drops what a's vector covers and a lacks");
    assert_eq!(b.get(b"k000").unwrap(), None);
    assert_eq!(a.get(b"offline").unwrap().unwrap().value, b"mine".to_vec());
    assert_eq!(live(&a), live(&b));
    assert!(out.round_trips() <= 7, "{} round trips", out.round_trips());
}

#[test]
fn a_garbage_frame_ends_the_session_and_changes_nothing() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    a.put("k", "v", PutOptions::default()).unwrap();
    let before = (live(&a), a.vector().clone());
    let mut s = Session::new(&mut a, None).unwrap();
    assert!(matches!(s.handle(&mut a, &[0xff, 0x00]), Err(SyncError::Malformed(_))));
    let early_done = Message::Done(a.vector().clone(), a.clock()).encode().unwrap();
    assert!(matches!(s.handle(&mut a, &early_done), Err(SyncError::Unexpected { got: "Done", .. })));
    let hello_from_self = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        replica: ReplicaId(1),
        vector: VersionVector::new(),
        members: Vec::new(),
        values: 0,
        anti_entropy: false,
        wall_ms: T0,
        records_seen: 0,
        lost: Vec::new(),
    });
    assert!(matches!(s.handle(&mut a, &hello_from_self.encode().unwrap()), Err(SyncError::WrongPeer { .. })));
    let future = Message::Hello(Hello {
        version: 99,
        replica: ReplicaId(2),
        ..match hello_from_self {
            Message::Hello(h) => h,
            _ => unreachable!(),
        }
    });
    assert!(matches!(s.handle(&mut a, &future.encode().unwrap()), Err(SyncError::Version { theirs: 99, .. })));
    assert_eq!((live(&a), a.vector().clone()), before);
}

#[test]
fn a_bootstrap_streams_one_snapshot_while_the_source_keeps_writing() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    let value = vec![7u8; 1000];
    for i in 0..3000 {
        a.put(format!("k{i:04}"), value.clone(), PutOptions::default()).unwrap();
    }
    let v0 = a.vector().clone();
    let mut sa = Session::new(&mut a, Some(ReplicaId(2))).unwrap();
    let mut sb = Session::new(&mut b, Some(ReplicaId(1))).unwrap();
    let mut wrote = false;
    let mut chunks = 0;
    // One frame at a time each way, so the source reads each chunk only when it is sent.
    loop {
        let to_b = sa.poll_transmit(&a).unwrap();
        let to_a = sb.poll_transmit(&b).unwrap();
        if to_a.is_none() && to_b.is_none() {
            break;
        }
        if let Some(f) = to_b {
            chunks += usize::from(matches!(Message::decode(&f).unwrap(), Message::Entries(_)));
            sb.handle(&mut b, &f).unwrap();
            // After the first chunk, the source overwrites and deletes keys the stream has not
            // reached yet.
            if chunks == 1 && !wrote {
                a.put("k2999", "new", PutOptions::default()).unwrap();
                a.delete("k2998").unwrap();
                wrote = true;
            }
        }
        if let Some(f) = to_a {
            sa.handle(&mut a, &f).unwrap();
        }
    }
    assert!(wrote && chunks >= 3, "the stream took {chunks} chunks");
    assert_eq!(sa.stats().mode, Some(Mode::Bootstrap));
    // b holds exactly the snapshot: the old k2999 and the k2998 deleted after it was taken.
    assert_eq!(b.get(b"k2999").unwrap().unwrap().value, value);
    assert_eq!(b.get(b"k2998").unwrap().unwrap().value, value);
    assert_eq!(b.vector(), &v0);
    // The next session brings the two later writes, by delta.
    let out = run(&mut a, &mut b);
    assert_eq!(out.a.mode, Some(Mode::Delta));
    assert_eq!((out.a.live_sent, out.a.tombstones_sent), (1, 1));
    assert_eq!(live(&a), live(&b));
}

#[test]
fn a_bootstrapped_replica_serves_every_delta_though_its_bootstrap_has_no_dot_rows() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    let mut early = VersionVector::new();
    for i in 0..3000 {
        a.put(format!("k{i:04}"), vec![7u8; 1000], PutOptions::default()).unwrap();
        if i == 999 {
            early = a.vector().clone();
        }
    }
    a.delete("k0007").unwrap();
    let out = run(&mut a, &mut b);
    assert_eq!(out.a.mode, Some(Mode::Bootstrap));
    assert!(out.b.messages_received >= 4, "several chunks");
    let snap = b.store().snapshot().unwrap();
    let mut rows = 0;
    snap.scan_dots(
        Dot { replica: ReplicaId(0), seq: Seq(0) },
        Dot { replica: ReplicaId(u64::MAX), seq: Seq(u64::MAX) },
        &mut |_, _| {
            rows += 1;
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(rows, 0, "bootstrap entries go in without dot-index rows");
    assert!(snap.meta(Meta::Unindexed).unwrap().is_some());
    b.put("later", "x", PutOptions::default()).unwrap();
    // Deltas from b hold what the same deltas from a hold (plus b's own writes), in dot order:
    // first read from memory, then, once the rows are written in the background, from them.
    let check = |b: &Replica<MemoryStore>| {
        for v in [VersionVector::new(), early.clone(), a.vector().clone()] {
            let (from_a, from_b) = (a.delta_for(&v).unwrap().entries, b.delta_for(&v).unwrap().entries);
            let keys = |es: &[Entry]| {
                es.iter().filter(|e| e.stamp.replica == ReplicaId(1)).map(|e| e.key.clone()).collect::<Vec<_>>()
            };
            assert!(keys(&from_b) == keys(&from_a), "for {v:?}");
            assert_eq!(from_b.last().map(|e| e.stamp.replica), Some(ReplicaId(2)), "b's own writes come last");
        }
    };
    check(&b);
    let mut calls = 0;
    while b.write_deferred_rows(1000).unwrap() {
        calls += 1;
        b.put(format!("during-{calls}"), "x", PutOptions::default()).unwrap();
    }
    assert_eq!(calls, 2, "3,000 rows, 1,000 per call: the third writes the last");
    assert!(dot_rows_complete(&b));
    assert_eq!(
        b.store().snapshot().unwrap().meta(Meta::Unindexed).unwrap(),
        Some(encode_vector(&VersionVector::new()))
    );
    check(&b);
    assert!(!b.write_deferred_rows(1000).unwrap(), "nothing left");
}

#[test]
fn deferred_rows_wait_until_the_bootstrap_is_done() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    for i in 0..3000 {
        a.put(format!("k{i:04}"), vec![7u8; 1000], PutOptions::default()).unwrap();
    }
    let mut sa = Session::new(&mut a, Some(ReplicaId(2))).unwrap();
    let mut sb = Session::new(&mut b, Some(ReplicaId(1))).unwrap();
    sa.handle(&mut a, &sb.poll_transmit(&b).unwrap().unwrap()).unwrap();
    // The first chunk is in; its rows must wait for the rest (their dots would interleave).
    while let Some(f) = sa.poll_transmit(&a).unwrap() {
        let entries = matches!(Message::decode(&f).unwrap(), Message::Entries(_));
        sb.handle(&mut b, &f).unwrap();
        if entries {
            break;
        }
    }
    assert!(b.write_deferred_rows(1000).unwrap(), "rows are left");
    assert!(!dot_rows_complete(&b) && rows(&b) == 0, "but none written mid-bootstrap");
}

fn rows(r: &Replica<MemoryStore>) -> usize {
    let mut n = 0;
    let (first, last) =
        (Dot { replica: ReplicaId(0), seq: Seq(0) }, Dot { replica: ReplicaId(u64::MAX), seq: Seq(u64::MAX) });
    r.store()
        .snapshot()
        .unwrap()
        .scan_dots(first, last, &mut |_, _| {
            n += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    n
}

/// Whether every stored entry has exactly its dot-index row (the storage invariant).
fn dot_rows_complete(r: &Replica<MemoryStore>) -> bool {
    let snap = r.store().snapshot().unwrap();
    let mut entries = Vec::new();
    snap.scan_keys(&KeyRange::all(), &mut |e| {
        entries.push((e.dot(), e.key));
        ControlFlow::Continue(())
    })
    .unwrap();
    entries.sort();
    let mut rows = Vec::new();
    let (first, last) =
        (Dot { replica: ReplicaId(0), seq: Seq(0) }, Dot { replica: ReplicaId(u64::MAX), seq: Seq(u64::MAX) });
    snap.scan_dots(first, last, &mut |d, k| {
        rows.push((d, k.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    entries == rows
}

/// Two replicas in step on `keys` keys.
fn in_step(clock: &ManualClock, keys: usize) -> (Replica<MemoryStore>, Replica<MemoryStore>) {
    let (mut a, mut b) = (replica(1, clock), replica(2, clock));
    for i in 0..keys {
        a.put(format!("k{i:05}"), "v", PutOptions::default()).unwrap();
    }
    run(&mut a, &mut b);
    (a, b)
}

#[test]
fn anti_entropy_finds_a_few_differences_with_one_sketch_in_three_round_trips() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = in_step(&clock, 5000);
    a.put("k00042", "changed", PutOptions::default()).unwrap();
    b.put("new-at-b", "x", PutOptions::default()).unwrap();
    let out = sync_in_process(&mut a, &mut b, true).unwrap();
    assert_eq!((out.a.mode, out.b.mode), (Some(Mode::Reconcile), Some(Mode::Reconcile)));
    assert_eq!(out.b.sketch_decoded, Some(true), "the lower replica id sends the one sketch");
    assert_eq!(out.a.sketch_decoded, None);
    assert!(out.round_trips() <= 3, "{} round trips", out.round_trips());
    assert_eq!((out.a.live_sent, out.b.live_sent), (1, 1), "each difference travels once");
    assert!(out.a.bytes_sent + out.b.bytes_sent < 1500, "{:?}", out);
    assert_eq!(live(&a), live(&b));
    assert_eq!(a.vector(), b.vector());
}

#[test]
fn a_sketch_that_does_not_decode_falls_back_to_ranges_and_still_converges() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = in_step(&clock, 3000);
    a.put("k00007", "changed", PutOptions::default()).unwrap();
    // A stand-in sketch from a replica far from b: too many differences for 3 x 4 cells.
    let mut far = replica(9, &clock);
    for i in 0..100 {
        far.put(format!("far{i}"), "v", PutOptions::default()).unwrap();
    }
    let mut sa = Session::anti_entropy(&mut a, Some(ReplicaId(2))).unwrap();
    let mut sb = Session::anti_entropy(&mut b, Some(ReplicaId(1))).unwrap();
    let mut decoded = None;
    loop {
        let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
        while let Some(f) = sa.poll_transmit(&a).unwrap() {
            to_b.push(f);
        }
        while let Some(f) = sb.poll_transmit(&b).unwrap() {
            to_a.push(f);
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for f in to_b {
            let f = match Message::decode(&f).unwrap() {
                Message::Sketch(s) => {
                    Message::Sketch(reconcile::sketch_of(&far.index.live, s.0 as usize)).encode().unwrap()
                }
                _ => f,
            };
            sb.handle(&mut b, &f).unwrap();
            decoded = decoded.or(sb.stats().sketch_decoded);
        }
        for f in to_a {
            sa.handle(&mut a, &f).unwrap();
        }
    }
    assert_eq!(decoded, Some(false));
    assert!(sa.is_finished() && sb.is_finished());
    assert_eq!(live(&a), live(&b), "the range reconciliation that follows repairs everything");
    assert_eq!(b.get(b"k00007").unwrap().unwrap().value, b"changed".to_vec());
}

#[test]
fn a_vector_merge_moves_the_clock_past_writes_the_receiver_never_sees() {
    let clock = ManualClock::new(T0);
    let (mut a, b) = (replica(1, &clock), replica(2, &clock));
    // a alone writes a value that expires, and collects its expired record at once.
    a.put("k", "short", PutOptions { ttl_ms: Some(5), metadata: None }).unwrap();
    clock.advance(10);
    a.collect_garbage().unwrap();
    a.collect_garbage().unwrap();
    assert_eq!(a.counts(), crate::replica::Counts::default());
    // b's wall clock is far behind; a session makes b's vector cover a's write, which b never
    // receives. b's next write to the key must still be stamped after it.
    let late = ManualClock::new(T0 - 500);
    let mut b2 = Replica::open(b.into_store(), ReplicaId(2), Config::default(), Arc::new(late)).unwrap();
    sync_in_process(&mut a, &mut b2, false).unwrap();
    assert!(b2.vector().covers(Dot { replica: ReplicaId(1), seq: Seq(1) }));
    let receipt = b2.put("k", "later", PutOptions::default()).unwrap();
    assert!(receipt.stamp.hlc > crate::hlc::Hlc::new(T0, 0), "stamped {}", receipt.stamp);
}

#[test]
fn a_hello_carries_no_frontier_which_no_peer_reads() {
    let clock = ManualClock::new(T0);
    let mut a = replica(1, &clock);
    a.put("k", "v", PutOptions::default()).unwrap();
    let mut s = Session::new(&mut a, None).unwrap();
    let frame = s.poll_transmit(&a).unwrap().unwrap();
    let value: ciborium::Value = ciborium::from_reader(frame.as_slice()).unwrap();
    let ciborium::Value::Map(variant) = value else { panic!("a message is a one-entry map: {value:?}") };
    let ciborium::Value::Array(fields) = &variant[0].1 else { panic!("a hello is a flat array") };
    // version, replica, vector, members, values, anti_entropy, wall_ms, records_seen, lost.
    assert_eq!(fields.len(), 9, "{fields:?}");
}

#[test]
fn a_reconciling_source_reads_what_a_reply_asks_for_chunk_by_chunk() {
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = (replica(1, &clock), replica(2, &clock));
    // Many more entries than one chunk holds, all in ranges b holds nothing of.
    let value = vec![b'v'; 1024];
    for i in 0..6_000 {
        a.put(format!("a{i:05}"), value.clone(), PutOptions::default()).unwrap();
    }
    b.put("zzz", "b's own", PutOptions::default()).unwrap();
    let (mut sa, mut sb) = (
        Session::anti_entropy(&mut a, Some(ReplicaId(2))).unwrap(),
        Session::anti_entropy(&mut b, Some(ReplicaId(1))).unwrap(),
    );
    let mut most_queued = 0;
    loop {
        let mut to_b = Vec::new();
        while let Some(f) = sa.poll_transmit(&a).unwrap() {
            to_b.push(f);
        }
        let mut to_a = Vec::new();
        while let Some(f) = sb.poll_transmit(&b).unwrap() {
            to_a.push(f);
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for f in &to_b {
            sb.handle(&mut b, f).unwrap();
        }
        for f in &to_a {
            sa.handle(&mut a, f).unwrap();
            most_queued = most_queued.max(sa.outbox.len());
        }
    }
    assert!(sa.is_finished() && sb.is_finished());
    assert_eq!(sa.stats().mode, Some(Mode::Reconcile));
    assert_eq!(b.counts().live, 6_001);
    // About 6 MB went: read and queued one chunk at a time, not all at once.
    assert!(most_queued <= 2, "the source queued {most_queued} messages at once");
}
