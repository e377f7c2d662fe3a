//! Local `put` throughput on redb, next to raw redb inserts of the same data, in the same run.
//!
//! Both sides write the same 10,000 entries (24-byte keys in hashed order, 100-byte values) in
//! commits of 1,000 with the same durability (fsync per commit) into a fresh file. The engine
//! side goes through `Replica::write`, so it also stamps, numbers, encodes, maintains the dot
//! index and commits the vector and clock with each batch. After both run, the ratio of their mean
//! times is printed: the goal is that the engine keeps ≥ 70% of raw redb's speed.
//!
//! Run: `cargo bench -p lethe-engine --bench put`.

use criterion::{BatchSize, Criterion, Throughput};
use lethe_engine::{Config, PutOptions, RedbStore, Replica, ReplicaId, SystemClock, WriteBatch};
use redb::{Database, Durability, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ENTRIES: usize = 10_000;
const BATCH: usize = 1_000;
const VALUE_BYTES: usize = 100;
const GROUP: &str = "put_on_redb";
const RAW: &str = "raw_redb_insert";
const ENGINE: &str = "engine_put";

fn data() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..ENTRIES as u64)
        .map(|i| {
            let h = blake3::hash(&i.to_le_bytes());
            let key = format!("user:{}", &h.to_hex()[..19]).into_bytes();
            debug_assert_eq!(key.len(), 24);
            (key, vec![(i % 251) as u8; VALUE_BYTES])
        })
        .collect()
}

fn raw_insert(db: &Database, data: &[(Vec<u8>, Vec<u8>)]) {
    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raw");
    for chunk in data.chunks(BATCH) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            for (k, v) in chunk {
                table.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
}

fn engine_put(replica: &mut Replica<RedbStore>, data: &[(Vec<u8>, Vec<u8>)]) {
    for chunk in data.chunks(BATCH) {
        let mut batch = WriteBatch::new();
        for (k, v) in chunk {
            batch.put(k.clone(), v.clone(), PutOptions::default());
        }
        replica.write(batch).unwrap();
    }
}

fn mean_ns(out: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(out.join(GROUP).join(id).join("new/estimates.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/criterion");
    let mut c = Criterion::default().output_directory(&out).sample_size(10).configure_from_args();
    let data = data();
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.bench_function(RAW, |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let db = Database::create(dir.path().join("raw.redb")).unwrap();
                (dir, db)
            },
            |(dir, db)| {
                raw_insert(&db, &data);
                (dir, db)
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function(ENGINE, |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = RedbStore::open(dir.path().join("engine.redb")).unwrap();
                let replica = Replica::open(store, ReplicaId(1), Config::default(), Arc::new(SystemClock)).unwrap();
                (dir, replica)
            },
            |(dir, mut replica)| {
                engine_put(&mut replica, &data);
                (dir, replica)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
    c.final_summary();

    match (mean_ns(&out, RAW), mean_ns(&out, ENGINE)) {
        (Some(raw), Some(engine)) => {
            let per_sec = |ns: f64| ENTRIES as f64 / (ns / 1e9);
            println!(
                "put on redb: raw {:.0} entries/s, engine {:.0} entries/s, engine keeps {:.1}% of raw (goal ≥ 70%)",
                per_sec(raw),
                per_sec(engine),
                100.0 * raw / engine
            );
        }
        _ => println!("put on redb: no estimates under {} (ran with a filter?)", out.display()),
    }
}
