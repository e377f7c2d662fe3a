//! Sync costs, measured and checked. Each test prints its figures (run with `--nocapture`, or
//! read them in the test output on failure). Keys are 24 bytes in hashed order, values 100 bytes.

use lethe_engine::session::{Mode, PairOutcome, sync_in_process};
use lethe_engine::{Config, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, WriteBatch};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    enrolled(Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap())
}

/// Enrols replicas 1 to 8 (all the tests use) as members of `r`.
fn enrolled<S: lethe_engine::Storage>(mut r: Replica<S>) -> Replica<S> {
    for id in 1..=8 {
        r.enrol_member(ReplicaId(id)).unwrap();
    }
    r
}

fn key(i: u64) -> Vec<u8> {
    let h = blake3::hash(&i.to_le_bytes());
    format!("user:{}", &h.to_hex()[..19]).into_bytes()
}

fn write_keys(r: &mut Replica<MemoryStore>, keys: impl Iterator<Item = u64>, value: &[u8]) {
    let mut batch = WriteBatch::new();
    for i in keys {
        batch.put(key(i), value.to_vec(), PutOptions::default());
        if batch.len() == 1000 {
            r.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    if !batch.is_empty() {
        r.write(batch).unwrap();
    }
}

fn delete_keys(r: &mut Replica<MemoryStore>, keys: impl Iterator<Item = u64>) {
    let mut batch = WriteBatch::new();
    for i in keys {
        batch.delete(key(i));
        if batch.len() == 1000 {
            r.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    if !batch.is_empty() {
        r.write(batch).unwrap();
    }
}

fn bytes(o: &PairOutcome) -> u64 {
    o.a.bytes_sent + o.b.bytes_sent
}

#[test]
fn bootstrap_sends_no_collected_tombstones_and_does_not_grow_with_deletion_history() {
    const LIVE: u64 = 10_000;
    const DELETED: u64 = 100_000;
    let clock = ManualClock::new(T0);
    let value = vec![b'v'; 100];

    // With history: 110,000 keys written in one interleaved stream, 100,000 of them deleted, and
    // the tombstones collected (a lone replica's frontier is its own vector).
    let mut history = replica(1, &clock);
    write_keys(&mut history, 0..LIVE + DELETED, &value);
    delete_keys(&mut history, (0..LIVE + DELETED).filter(|i| i % 11 != 0));
    history.collect_garbage().unwrap();
    history.collect_garbage().unwrap();
    assert_eq!(history.tombstone_count(), 0);

    // Without: the same live keys and values, never anything else.
    let mut plain = replica(1, &clock);
    write_keys(&mut plain, (0..LIVE + DELETED).filter(|i| i % 11 == 0), &value);

    let mut from_history = replica(2, &clock);
    let with = sync_in_process(&mut history, &mut from_history, false).unwrap();
    let mut from_plain = replica(2, &clock);
    let without = sync_in_process(&mut plain, &mut from_plain, false).unwrap();

    let live_bytes = LIVE * (24 + 100);
    let ratio = bytes(&with) as f64 / bytes(&without) as f64;
    println!(
        "bootstrap of {LIVE} live keys: {} bytes after {DELETED} collected deletes, {} bytes with no history \
         ({:+.2}%), {:.3} × live bytes; tombstones sent: {}; round trips: {}",
        bytes(&with),
        bytes(&without),
        (ratio - 1.0) * 100.0,
        bytes(&with) as f64 / live_bytes as f64,
        with.a.tombstones_sent,
        with.round_trips()
    );
    assert_eq!(with.a.mode, Some(Mode::Bootstrap));
    assert_eq!(with.a.tombstones_sent, 0);
    assert_eq!(with.a.live_sent, LIVE);
    assert!((ratio - 1.0).abs() <= 0.01, "bytes differ by {:.2}%", (ratio - 1.0) * 100.0);
    let live = |r: &Replica<MemoryStore>| {
        r.scan(&lethe_engine::KeyRange::all(), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.value))
            .collect::<Vec<_>>()
    };
    assert_eq!(live(&from_history), live(&from_plain));
}

#[test]
fn tombstones_are_gone_everywhere_once_every_member_acknowledged_twice() {
    let clock = ManualClock::new(T0);
    let mut replicas: Vec<_> = (1..=3).map(|i| replica(i, &clock)).collect();
    write_keys(&mut replicas[0], 0..1000, b"v");
    let sync_all = |rs: &mut Vec<Replica<MemoryStore>>| {
        for a in 0..rs.len() {
            for b in (a + 1)..rs.len() {
                let (left, right) = rs.split_at_mut(b);
                sync_in_process(&mut left[a], &mut right[0], false).unwrap();
            }
        }
    };
    sync_all(&mut replicas);
    delete_keys(&mut replicas[1], 0..900);
    sync_all(&mut replicas);
    let counts = |rs: &Vec<Replica<MemoryStore>>| rs.iter().map(|r| r.tombstone_count()).collect::<Vec<_>>();
    println!("tombstones after the deletes reached everyone: {:?}", counts(&replicas));
    // First acknowledgement round: the deletes become stable and a checkpoint is noted.
    for r in &mut replicas {
        r.collect_garbage().unwrap();
    }
    sync_all(&mut replicas);
    // Second: every member has acknowledged past the checkpoint's join; collect.
    for r in &mut replicas {
        r.collect_garbage().unwrap();
    }
    println!("tombstones after two acknowledgement rounds: {:?}", counts(&replicas));
    assert_eq!(counts(&replicas), vec![0, 0, 0]);
    assert!(replicas.iter().all(|r| r.scan(&lethe_engine::KeyRange::all(), usize::MAX).unwrap().len() == 100));
}

/// Two replicas in step on `n` keys of 100-byte values.
fn in_step(clock: &ManualClock, n: u64) -> (Replica<MemoryStore>, Replica<MemoryStore>) {
    let (mut a, mut b) = (replica(1, clock), replica(2, clock));
    write_keys(&mut a, 0..n, &[b'v'; 100]);
    sync_in_process(&mut a, &mut b, false).unwrap();
    (a, b)
}

#[test]
fn reconciliation_cost_follows_the_differences_not_the_keys() {
    const N: u64 = 100_000;
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = in_step(&clock, N);
    let rounds_max = 2 + (N as f64).log(16.0).ceil() as u32;
    let mut next = 0;
    for d in [1u64, 100, 10_000] {
        // b rejoins after an absence: a evicted it, changed d keys (d - 1 updates and one delete,
        // whose tombstone a collected without b). b has not seen what was collected, so it is not
        // taken back as a member and a reconciles; b has nothing new, so only a's flow runs.
        a.evict(ReplicaId(2));
        write_keys(&mut a, next..next + d - 1, &[b'w'; 100]);
        delete_keys(&mut a, next + d - 1..next + d);
        next += d;
        a.collect_garbage().unwrap();
        a.collect_garbage().unwrap();
        assert_eq!(a.tombstone_count(), 0);
        let out = sync_in_process(&mut a, &mut b, false).unwrap();
        assert_eq!(out.a.mode, Some(Mode::Reconcile));
        println!(
            "reconcile d = {d:>6} among n = {N}: {} round trips (limit {rounds_max}), {} bytes, {:.0} bytes per difference",
            out.round_trips(),
            bytes(&out),
            bytes(&out) as f64 / d as f64
        );
        assert!(out.round_trips() <= rounds_max, "{} round trips", out.round_trips());
        assert_eq!(out.a.live_sent, d - 1, "only the changed entries travel");
        // Updated keys are replaced by their newer versions; the deleted one is dropped.
        assert_eq!(out.b.dropped, 1, "b drops the version whose delete was collected");
        assert_eq!(a.digest(), b.digest());
    }
}

#[test]
fn anti_entropy_finds_one_difference_among_many_in_one_sketch() {
    const N: u64 = 100_000;
    let clock = ManualClock::new(T0);
    let (mut a, mut b) = in_step(&clock, N);
    for (d, limit) in [(1u64, 1500), (100, 40_000)] {
        write_keys(&mut a, N - d..N, &[b'x'; 100]);
        let out = sync_in_process(&mut a, &mut b, true).unwrap();
        println!(
            "anti-entropy d = {d:>3} among n = {N}: {} round trips, {} bytes, sketch decoded: {:?}",
            out.round_trips(),
            bytes(&out),
            out.b.sketch_decoded
        );
        assert_eq!(out.b.sketch_decoded, Some(true));
        assert!(out.round_trips() <= 3, "{} round trips", out.round_trips());
        assert!(bytes(&out) <= limit, "{} bytes", bytes(&out));
        assert_eq!(out.a.live_sent, d, "only the changed entries travel");
        assert_eq!(a.digest(), b.digest());
    }
}
