//! `lethe demo`: the engine's replication on real redb files, in one process.
//!
//! A server replica writes keys, deletes most of them and writes keys with a short TTL; a client
//! that synced before keeps up by delta; the TTL keys expire on both without a message; two
//! acknowledgement rounds let GC collect the tombstones; then a fresh client bootstraps. Every
//! transfer is a real sync session whose frames are counted as they would travel (the CBOR
//! frames the transport will carry). The run fails if the replicas do not end with the same live
//! state.

use anyhow::{Context, Result, bail};
use lethe_engine::session::{SessionStats, sync_in_process};
use lethe_engine::{KeyRange, PutOptions, RedbStore, Replica, ReplicaId, SystemClock, VersionVector, WriteBatch};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the demo does.
#[derive(Clone, Copy, Debug)]
pub struct DemoParams {
    /// Keys the server writes.
    pub keys: usize,
    /// How many of them it then deletes.
    pub deleted: usize,
    /// Keys written with a short TTL.
    pub ttl_keys: usize,
    /// That TTL.
    pub ttl_ms: u64,
    /// Value size in bytes.
    pub value_bytes: usize,
}

impl Default for DemoParams {
    fn default() -> Self {
        DemoParams { keys: 20_000, deleted: 15_000, ttl_keys: 2_000, ttl_ms: 1_500, value_bytes: 100 }
    }
}

/// One sync session, as counted (both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCost {
    /// Live values sent.
    pub live: u64,
    /// Tombstones and expired records sent.
    pub tombstones: u64,
    /// Bytes of all frames, both ways.
    pub bytes: u64,
    /// Round trips.
    pub round_trips: u32,
}

/// What the demo measured.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// The client's catch-up after the deletes and TTL writes.
    pub incremental: TransferCost,
    /// What the server sent to the old client after the TTL passed.
    pub after_expiry: TransferCost,
    /// The fresh client's catch-up from nothing.
    pub fresh: TransferCost,
    /// Tombstones the server held before GC, and after two acknowledgement rounds.
    pub server_tombstones: (usize, usize),
    /// Live keys on every replica at the end.
    pub live_keys: usize,
    /// Sum of live key and value bytes.
    pub live_bytes: usize,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

fn open(dir: &Path, name: &str, id: u64) -> Result<Replica<RedbStore>> {
    let path = dir.join(format!("{name}.redb"));
    let store = RedbStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Replica::open(store, ReplicaId(id), lethe_engine::Config::default(), Arc::new(SystemClock))?)
}

/// Runs one sync session between two replicas and counts it.
fn sync(a: &mut Replica<RedbStore>, b: &mut Replica<RedbStore>) -> Result<TransferCost> {
    let out = sync_in_process(a, b, false).context("sync session")?;
    let sent = |s: &SessionStats| (s.live_sent, s.tombstones_sent, s.bytes_sent);
    let ((la, ta, ba), (lb, tb, bb)) = (sent(&out.a), sent(&out.b));
    Ok(TransferCost { live: la + lb, tombstones: ta + tb, bytes: ba + bb, round_trips: out.round_trips() })
}

fn write_all(
    replica: &mut Replica<RedbStore>,
    ops: impl Iterator<Item = (String, Option<Vec<u8>>, PutOptions)>,
) -> Result<()> {
    let mut batch = WriteBatch::new();
    for (key, value, options) in ops {
        match value {
            Some(v) => batch.put(key, v, options),
            None => batch.delete(key),
        };
        if batch.len() == 1_000 {
            replica.write(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        replica.write(batch)?;
    }
    Ok(())
}

fn live_state(r: &Replica<RedbStore>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(r.scan(&KeyRange::all(), usize::MAX)?.into_iter().map(|i| (i.key, i.value)).collect())
}

/// Runs the demonstration in `dir` (three redb files), printing each step to stdout.
pub fn run(dir: &Path, p: DemoParams) -> Result<DemoReport> {
    if p.deleted > p.keys {
        bail!("--deleted ({}) cannot exceed --keys ({})", p.deleted, p.keys);
    }
    let started = Instant::now();
    let mut server = open(dir, "server", 1)?;
    let mut client = open(dir, "client-a", 2)?;
    let mut report = DemoReport::default();

    let key = |i: usize| format!("user:{i:08}");
    let value = vec![b'v'; p.value_bytes];
    write_all(&mut server, (0..p.keys).map(|i| (key(i), Some(value.clone()), PutOptions::default())))?;
    let first = sync(&mut server, &mut client)?;
    println!("server wrote {} keys; client-a synced them: {} live, {} bytes", p.keys, first.live, first.bytes);

    write_all(&mut server, (0..p.deleted).map(|i| (key(i), None, PutOptions::default())))?;
    let ttl = PutOptions { ttl_ms: Some(p.ttl_ms), metadata: None };
    write_all(&mut server, (0..p.ttl_keys).map(|i| (format!("otp:{i:08}"), Some(value.clone()), ttl.clone())))?;
    report.incremental = sync(&mut server, &mut client)?;
    println!(
        "server deleted {} keys and wrote {} keys with a {} ms TTL; client-a caught up: {} tombstones, {} live, {} bytes",
        p.deleted,
        p.ttl_keys,
        p.ttl_ms,
        report.incremental.tombstones,
        report.incremental.live,
        report.incremental.bytes
    );

    std::thread::sleep(Duration::from_millis(p.ttl_ms));
    let vector_before: VersionVector = server.vector().clone();
    let purged = (server.purge_expired()?, client.purge_expired()?);
    report.after_expiry = sync(&mut server, &mut client)?;
    if server.vector() != &vector_before {
        bail!("expiry advanced the server's vector: it wrote something");
    }
    println!(
        "TTL passed: server purged {}, client-a purged {} locally; the next session carried {} entries",
        purged.0,
        purged.1,
        report.after_expiry.live + report.after_expiry.tombstones
    );

    // Two acknowledgement rounds: the deletes become stable, then collectable (DESIGN.md §2).
    let before_gc = server.tombstone_count();
    for _ in 0..2 {
        server.collect_garbage()?;
        client.collect_garbage()?;
        sync(&mut server, &mut client)?;
    }
    server.collect_garbage()?;
    client.collect_garbage()?;
    report.server_tombstones = (before_gc, server.tombstone_count());
    println!(
        "GC: every member acknowledged twice; server tombstones and expired records {} -> {}, client-a {}",
        before_gc,
        server.tombstone_count(),
        client.tombstone_count()
    );

    let mut fresh = open(dir, "client-b", 3)?;
    report.fresh = sync(&mut server, &mut fresh)?;
    println!(
        "fresh client-b bootstrapped: {} live, {} tombstones, {} bytes, {} round trips",
        report.fresh.live, report.fresh.tombstones, report.fresh.bytes, report.fresh.round_trips
    );

    let expected = live_state(&server)?;
    for (name, r) in [("client-a", &client), ("client-b", &fresh)] {
        if live_state(r)? != expected {
            bail!("{name} did not converge with the server");
        }
    }
    report.live_keys = expected.len();
    report.live_bytes = expected.iter().map(|(k, v)| k.len() + v.len()).sum();
    report.elapsed = started.elapsed();
    Ok(report)
}
