//! `lethe demo`: the main job on the embedded default. A server node and client nodes run in
//! this process, each on its own redb file in a temporary directory, connected over QUIC on
//! 127.0.0.1 with pinned keys, exactly as `lethe serve` processes would be.
//!
//! The server writes keys; client-a, connected from the start, follows by live pushes; the
//! server deletes most keys and writes keys with a short TTL; the TTL passes on every node
//! without a message; GC collects the tombstones once every member has acknowledged twice; then
//! a fresh client-b joins. Beside lethe's cost for client-b, the same history is replayed through
//! the model of atServer's commit-log sync ([`lethe_bench::baseline`]). The run fails if the nodes do
//! not converge.

use crate::output::outln;
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use lethe_bench::baseline::{CommitLogModel, ReplayCost};
use lethe_bench::wait_for;
use lethe_engine::PutOptions;
use lethe_node::{DataDir, Node, NodeConfig, PeerAddr, Status};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One narrative line: on stdout, or on stderr when `--json` keeps stdout for the figures.
macro_rules! say {
    ($p:expr, $($arg:tt)*) => {
        if $p.narrate_to_stderr {
            eprintln!($($arg)*);
            Ok::<(), std::io::Error>(())
        } else {
            outln!($($arg)*)
        }
    };
}

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
    /// Show progress bars.
    pub progress: bool,
    /// Write the narrative lines to stderr instead of stdout (for `demo --json`).
    pub narrate_to_stderr: bool,
}

impl Default for DemoParams {
    fn default() -> Self {
        DemoParams {
            keys: 20_000,
            deleted: 15_000,
            ttl_keys: 2_000,
            ttl_ms: 1_500,
            value_bytes: 100,
            progress: true,
            narrate_to_stderr: false,
        }
    }
}

/// What one node received in one step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Received {
    /// Live values.
    pub live: u64,
    /// Tombstones and expired records.
    pub tombstones: u64,
    /// Bytes of sync frames (CBOR).
    pub bytes: u64,
    /// Round trips of its sessions.
    pub round_trips: u64,
    /// Seconds until it had converged.
    pub seconds: f64,
}

/// What the demo measured.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// client-a's catch-up after the deletes and TTL writes.
    pub incremental: Received,
    /// What client-a received while the TTL passed and GC ran.
    pub after_expiry: Received,
    /// The fresh client-b's catch-up from nothing.
    pub fresh: Received,
    /// The commit-log replay model for a fresh client, same history.
    pub commit_log: ReplayCost,
    /// Tombstones and expired records the server made (deletes written, TTL keys expired), and
    /// how many it held at the end.
    pub server_tombstones: (u64, u64),
    /// Live keys on every node at the end.
    pub live_keys: u64,
    /// Sum of live key and value bytes.
    pub live_bytes: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn bar(len: usize, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64).with_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template("{msg:<34} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Writes (or, with `None`, deletes) through the node, many at a time so they share commits.
async fn write_all(node: &Node, ops: Vec<(String, Option<PutOptions>)>, value: &[u8], bar: &ProgressBar) -> Result<()> {
    for chunk in ops.chunks(1_000) {
        let mut tasks = Vec::with_capacity(chunk.len());
        for (key, options) in chunk.iter().cloned() {
            let (node, value) = (node.clone(), value.to_vec());
            tasks.push(tokio::spawn(async move {
                match options {
                    Some(options) => node.put(key, value, options).await,
                    None => node.delete(key).await,
                }
            }));
        }
        for t in tasks {
            t.await.context("write task")??;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(())
}

/// Waits until every node in `nodes` has `server`'s digest; returns their statuses.
async fn converge(server: &Node, nodes: &[&Node], what: &str, show: bool) -> Result<Vec<Status>> {
    let spinner = bar(0, what, show);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let target = server.status()?;
        let statuses = nodes.iter().map(|n| n.status()).collect::<Result<Vec<_>, _>>()?;
        if statuses.iter().all(|s| s.digest == target.digest) {
            spinner.finish_and_clear();
            return Ok(statuses);
        }
        if Instant::now() > deadline {
            bail!("{what}: no convergence within 120 s");
        }
        spinner.tick();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn received_since(before: &Status, after: &Status, started: Instant) -> Received {
    Received {
        live: after.live_received - before.live_received,
        tombstones: after.tombstones_received - before.tombstones_received,
        bytes: after.bytes_received - before.bytes_received,
        round_trips: after.session_round_trips - before.session_round_trips,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Starts a node in `root/name` that trusts `trust` and dials `peers`.
async fn start(root: &Path, name: &str, peers: Vec<PeerAddr>, trust: Vec<lethe_transport::NodeId>) -> Result<Node> {
    let dir = DataDir::new(root.join(name));
    if dir.identity().is_err() {
        dir.init()?;
    }
    let mut config = NodeConfig::new(dir, "127.0.0.1:0".parse()?);
    config.peers = peers;
    config.trust = trust;
    config.gc_interval = Duration::from_millis(100);
    Ok(Node::start(config).await?)
}

/// Runs the demonstration in `root`, printing each step to stdout.
pub async fn run(root: &Path, p: DemoParams) -> Result<DemoReport> {
    if p.deleted > p.keys {
        bail!("--deleted ({}) cannot exceed --keys ({})", p.deleted, p.keys);
    }
    let started = Instant::now();
    let mut report = DemoReport::default();
    let a_id = DataDir::new(root.join("client-a")).init()?.id();
    let b_id = DataDir::new(root.join("client-b")).init()?.id();
    let server = start(root, "server", vec![], vec![a_id, b_id]).await?;
    let server_peer = PeerAddr { id: server.id(), addr: server.local_addr() };
    let client_a = start(root, "client-a", vec![server_peer], vec![]).await?;
    say!(p, "server {} and client-a on {} (QUIC, 127.0.0.1)", &server.id().to_string()[..16], root.display())?;

    let mut log = CommitLogModel::new();
    let key = |i: usize| format!("user:{i:08}");
    let value = vec![b'v'; p.value_bytes];
    let value_text = String::from_utf8_lossy(&value).into_owned();
    let a0 = client_a.status()?;
    let t = Instant::now();
    let puts: Vec<_> = (0..p.keys).map(|i| (key(i), Some(PutOptions::default()))).collect();
    write_all(&server, puts, &value, &bar(p.keys, "server writes keys", p.progress)).await?;
    (0..p.keys).for_each(|i| log.put(&key(i), &value_text, now_ms(), None));
    converge(&server, &[&client_a], "client-a follows", p.progress).await?;
    let first = received_since(&a0, &client_a.status()?, t);
    say!(p, "server wrote {} keys; client-a received {} live, {} bytes", p.keys, first.live, first.bytes)?;

    let a1 = client_a.status()?;
    let t = Instant::now();
    let deletes: Vec<_> = (0..p.deleted).map(|i| (key(i), None)).collect();
    write_all(&server, deletes, &value, &bar(p.deleted, "server deletes keys", p.progress)).await?;
    (0..p.deleted).for_each(|i| log.delete(&key(i), now_ms()));
    let ttl = PutOptions { ttl_ms: Some(p.ttl_ms), metadata: None };
    let ttl_writes: Vec<_> = (0..p.ttl_keys).map(|i| (format!("otp:{i:08}"), Some(ttl.clone()))).collect();
    write_all(&server, ttl_writes, &value, &bar(p.ttl_keys, "server writes TTL keys", p.progress)).await?;
    (0..p.ttl_keys).for_each(|i| log.put(&format!("otp:{i:08}"), &value_text, now_ms(), Some(p.ttl_ms)));
    converge(&server, &[&client_a], "client-a follows", p.progress).await?;
    report.incremental = received_since(&a1, &client_a.status()?, t);
    report.server_tombstones.0 = (p.deleted + p.ttl_keys) as u64;
    say!(
        p,
        "server deleted {} keys and wrote {} keys with a {} ms TTL; client-a received {} tombstones, {} live, {} bytes",
        p.deleted,
        p.ttl_keys,
        p.ttl_ms,
        report.incremental.tombstones,
        report.incremental.live,
        report.incremental.bytes
    )?;

    // The TTL passes. Each node's GC purges expired values locally; the atServer model's expiry
    // job deletes them and logs the deletes.
    let a2 = client_a.status()?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(p.ttl_ms)).await;
    log.expire(now_ms());
    let expected_live = (p.keys - p.deleted) as u64;
    wait_for("GC collects every tombstone and expired record", Duration::from_secs(120), || {
        let (s, a) = (server.status()?, client_a.status()?);
        Ok(s.live == expected_live && s.tombstones + s.expired == 0 && a.tombstones + a.expired == 0)
    })
    .await?;
    report.after_expiry = received_since(&a2, &client_a.status()?, t);
    let end = server.status()?;
    report.server_tombstones.1 = end.tombstones + end.expired;
    say!(
        p,
        "TTL passed and GC ran: tombstones and expired records {} -> {} on every node; client-a received {} entries meanwhile",
        report.server_tombstones.0,
        report.server_tombstones.1,
        report.after_expiry.live + report.after_expiry.tombstones
    )?;

    let t = Instant::now();
    let client_b = start(root, "client-b", vec![server_peer], vec![]).await?;
    let b0 = Status {
        live_received: 0,
        tombstones_received: 0,
        bytes_received: 0,
        session_round_trips: 0,
        ..client_b.status()?
    };
    let statuses = converge(&server, &[&client_a, &client_b], "client-b joins", p.progress).await?;
    report.fresh = received_since(&b0, &statuses[1], t);
    report.commit_log = log.replay(false);
    say!(
        p,
        "fresh client-b joined: {} live, {} tombstones, {} bytes in {:.2} s",
        report.fresh.live,
        report.fresh.tombstones,
        report.fresh.bytes,
        report.fresh.seconds
    )?;

    let items = server.scan(&lethe_engine::KeyRange::all(), usize::MAX)?;
    report.live_keys = items.len() as u64;
    report.live_bytes = items.iter().map(|i| (i.key.len() + i.value.len()) as u64).sum();
    for node in [&client_b, &client_a, &server] {
        node.shutdown().await;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
