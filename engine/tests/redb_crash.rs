//! A redb store survives SIGKILL mid-batch: every batch is all there or all absent, every batch
//! acknowledged (commit returned) before the kill is there, and the replica reopens with a vector
//! that matches its entries.
//!
//! The writer is this test binary re-run as a child process (the ignored `crash_child_writer`
//! test), so the kill hits a real process in the middle of real commits.

use lethe_engine::{
    Config, PutOptions, RedbStore, Replica, ReplicaId, Seq, Snapshot, Storage, SystemClock, WriteBatch,
    storage::KeyRange,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const CHILD_ENV: &str = "LETHE_CRASH_CHILD_DIR";
const RUN_ENV: &str = "LETHE_CRASH_CHILD_RUN";
const ENTRIES_PER_BATCH: usize = 300;
const VALUE_BYTES: usize = 2048;
const RUNS: u32 = 5;

fn open(dir: &std::path::Path) -> Replica<RedbStore> {
    let store = RedbStore::open(dir.join("crash.redb")).expect("open store");
    Replica::open(store, ReplicaId(1), Config::default(), Arc::new(SystemClock)).expect("open replica")
}

#[test]
#[ignore = "helper process for redb_batches_are_atomic_when_the_writer_is_killed"]
fn crash_child_writer() {
    let (Ok(dir), Ok(run)) = (std::env::var(CHILD_ENV), std::env::var(RUN_ENV)) else { return };
    let mut replica = open(std::path::Path::new(&dir));
    let mut out = std::io::stdout().lock();
    for batch_no in 0u64.. {
        let mut batch = WriteBatch::new();
        for j in 0..ENTRIES_PER_BATCH {
            let value = vec![(batch_no % 251) as u8; VALUE_BYTES];
            batch.put(format!("r{run}/b{batch_no:06}/{j:04}"), value, PutOptions::default());
        }
        replica.write(batch).expect("commit");
        writeln!(out, "acked {batch_no}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn redb_batches_are_atomic_when_the_writer_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    for run in 0..RUNS {
        let mut child = Command::new(&exe)
            .args(["crash_child_writer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(RUN_ENV, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it acknowledge a few batches, then kill it at a point that varies by run.
        let wanted = 2 + u64::from(run);
        let mut last = None;
        while last.is_none_or(|l| l < wanted) {
            let line = lines.next().expect("child ended early").unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                last = Some(n.parse::<u64>().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(u64::from(run) * 7 % 23));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Batches acknowledged between our last read and the kill are in the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ") {
                last = Some(n.parse::<u64>().unwrap());
            }
        }
        acked.insert(run, last.unwrap());
    }

    let replica = open(dir.path());
    let snap = replica.store().snapshot().unwrap();
    let mut per_batch: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    snap.scan_keys(&KeyRange::all(), &mut |e| {
        let key = String::from_utf8(e.key).unwrap();
        let mut parts = key.split('/');
        let run: u32 = parts.next().unwrap()[1..].parse().unwrap();
        let batch: u64 = parts.next().unwrap()[1..].parse().unwrap();
        *per_batch.entry((run, batch)).or_default() += 1;
        ControlFlow::Continue(())
    })
    .unwrap();

    for ((run, batch), count) in &per_batch {
        assert_eq!(*count, ENTRIES_PER_BATCH, "run {run} batch {batch} is torn");
    }
    let mut total = 0;
    for (run, last_acked) in &acked {
        let present: BTreeSet<u64> = per_batch.keys().filter(|(r, _)| r == run).map(|(_, b)| *b).collect();
        let expected_prefix: BTreeSet<u64> = (0..present.len() as u64).collect();
        assert_eq!(present, expected_prefix, "run {run}: batches present are not a prefix");
        assert!(present.len() as u64 > *last_acked, "run {run}: acknowledged batch {last_acked} lost");
        // At most the one batch in flight at the kill can be there without its acknowledgement.
        assert!(present.len() as u64 <= last_acked + 2, "run {run}: batches beyond the one in flight");
        total += present.len() * ENTRIES_PER_BATCH;
    }
    // The vector was committed in the same batches as the entries.
    assert_eq!(replica.vector().get(ReplicaId(1)), Seq(total as u64));
    assert_eq!(snap.entry_count().unwrap(), total as u64);
}
