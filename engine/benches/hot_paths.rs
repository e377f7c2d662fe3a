//! Micro-benchmarks of the hot paths: LWW merge, the fingerprint index's update and range query,
//! and a frame of 1,000 entries encoded and decoded.
//!
//! Run: `cargo bench -p lethe-engine --bench hot_paths`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lethe_engine::fingerprint::{LiveIndex, LiveItem};
use lethe_engine::session::Message;
use lethe_engine::{Dot, Entry, Hlc, Payload, ReplicaId, Seq, Stamp, Value, entry::merge};
use std::hint::black_box;
use std::ops::Bound;

fn entry(i: u64, replica: u64) -> Entry {
    Entry {
        key: format!("key:{i:020}").into_bytes(),
        stamp: Stamp { hlc: Hlc((1_700_000_000_000 << 16) + i), replica: ReplicaId(replica) },
        dot: Dot { replica: ReplicaId(replica), seq: Seq(i + 1) },
        payload: Payload::Value(Value { bytes: vec![b'v'; 100], expires_at_ms: None, metadata: None }),
    }
}

fn benches(c: &mut Criterion) {
    let (a, b) = (entry(7, 1), entry(7, 2));
    c.bench_function("merge two versions of a key", |bench| {
        bench.iter_batched(|| (a.clone(), b.clone()), |(a, b)| black_box(merge(a, b)), BatchSize::SmallInput)
    });

    let mut index = LiveIndex::new();
    for i in 0..100_000u64 {
        let e = entry(i, 1);
        index.insert(&e.key, LiveItem { stamp: e.stamp, dot: e.dot, expires_at_ms: None });
    }
    let mut next = 0u64;
    c.bench_function("fingerprint index: replace one of 100,000 items", |bench| {
        bench.iter(|| {
            next = (next + 7_919) % 100_000;
            let e = entry(next, 2);
            black_box(index.insert(&e.key, LiveItem { stamp: e.stamp, dot: e.dot, expires_at_ms: None }))
        })
    });
    let (lo, hi) = (b"key:00000000000000020000".to_vec(), b"key:00000000000000070000".to_vec());
    c.bench_function("fingerprint index: one range of 100,000 items", |bench| {
        bench.iter(|| black_box(index.fingerprint(Bound::Included(&lo), Bound::Excluded(&hi))))
    });

    let frame = Message::Entries((0..1_000).map(|i| entry(i, 1)).collect());
    let bytes = frame.encode().expect("encodes");
    let mut group = c.benchmark_group("frame of 1,000 entries");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("encode", |bench| bench.iter(|| black_box(frame.encode())));
    group.bench_function("decode", |bench| bench.iter(|| black_box(Message::decode(&bytes))));
    group.finish();
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
