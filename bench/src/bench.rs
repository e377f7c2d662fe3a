//! `lethe bench bootstrap`: a fresh client's initial sync, measured side by side in one process
//! over real QUIC on 127.0.0.1, for lethe and for the models of atServer's sync
//! ([`crate::baseline`]) served from the same history.
//!
//! The server node (redb in a temp dir) writes `live + deleted` keys, deletes `deleted` of them,
//! writes `expired` keys whose TTL passes, and (unless `no_gc`) collects its tombstones as in
//! steady state. Then, one after the other:
//! - **lethe**: a fresh client node joins; measured until it holds every live key;
//! - **commit-log replay** (atServer 2024 model): a client asks the model server for the latest
//!   commit id, then for pages of 100 from id -1 until it reaches it, and stores each live entry
//!   in its own redb file;
//! - **skipDeletesUntil** (late-2024 model): the same, with deletes up to the latest id at the
//!   start left out.
//!
//! Wire bytes are application bytes both ways as they cross the stream: lethe's frames as its
//! transport sends them (length prefixes and CBOR, zstd-compressed from 512 bytes up), requests and
//! JSON pages for the models, Automerge's sync messages; raw bytes are the same before any
//! compression (for lethe the CBOR frames; for the others, which are served uncompressed as they
//! ship, the wire bytes). UDP bytes are quinn's count of datagram bytes both ways on the client's
//! connection, so they include QUIC and TLS.
//!
//! Every client runs in a process of its own (`lethe bench client`, spawned from the running
//! executable, see [`ClientJob`]), so its peak resident memory and its CPU time are its own; the
//! servers run in this process, on runtime threads named `lethe-server`.

use crate::baseline::CommitLogModel;
use crate::wait_for;
use anyhow::{Context, Result, anyhow, bail};
use lethe_engine::session::FRAME_BYTES_MAX;
use lethe_engine::{PutOptions, WriteBatch};
use lethe_node::{DataDir, NodeConfig, PeerAddr};
use lethe_transport::{Endpoint, FrameReader, FrameWriter, Identity, TrustList};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `lethe bench bootstrap` does.
#[derive(Clone, Copy, Debug)]
pub struct BootstrapParams {
    /// Keys live at the end.
    pub live: usize,
    /// Keys written and then deleted.
    pub deleted: usize,
    /// Keys written with a TTL that has passed.
    pub expired: usize,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Leave tombstones uncollected (they then travel to lethe's client as compact records).
    pub no_gc: bool,
    /// Also sync the same history as one Automerge document with Automerge's sync protocol.
    pub automerge: bool,
}

/// One system's figures.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct SystemResult {
    /// Application bytes, both directions, as sent (for lethe: compressed frames).
    pub wire_bytes: u64,
    /// Application bytes, both directions, before compression (lethe's CBOR frames; for the
    /// others, served uncompressed, the same as `wire_bytes`).
    #[serde(default)]
    pub raw_bytes: u64,
    /// UDP datagram bytes, both directions (quinn's count).
    pub udp_bytes: u64,
    /// Round trips.
    pub round_trips: u64,
    /// Wall seconds from the client's start until it holds every live key.
    pub seconds: f64,
    /// Live entries received.
    pub entries_received: u64,
    /// Tombstones (deletes) received.
    pub tombstones_received: u64,
    /// CPU seconds of the server's threads during the sync (Linux; 0 elsewhere).
    pub server_cpu_seconds: f64,
    /// CPU seconds of the client's process, start to exit (Linux; 0 elsewhere).
    pub client_cpu_seconds: f64,
    /// Peak resident memory of the client's process in bytes (Linux `VmHWM`; 0 elsewhere).
    #[serde(default)]
    pub client_peak_bytes: u64,
}

/// The report, as `--json` prints it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BootstrapReport {
    /// Live keys (N).
    #[serde(default)]
    pub live: usize,
    /// Deleted keys (D).
    #[serde(default)]
    pub deleted: usize,
    /// Sum of live key and value sizes.
    pub live_bytes: u64,
    /// lethe.
    pub lethe: SystemResult,
    /// The atServer 2024 commit-log replay model.
    pub commitlog_replay: SystemResult,
    /// The atServer skipDeletesUntil model.
    pub skip_deletes_until: SystemResult,
    /// Automerge's sync protocol on the same history (when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automerge: Option<SystemResult>,
    /// Seconds to insert the same live entries, sorted, into a fresh raw redb table (10,000 per
    /// durable transaction): the floor a bootstrap is held to.
    #[serde(default)]
    pub raw_redb_insert_seconds: f64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Key `i`: 24 bytes (as in the benchmark goals), `key:` and 20 hex digits of a hash, so keys
/// neither share long prefixes nor come in order.
fn key(i: usize) -> String {
    format!("key:{}", &blake3::hash(&(i as u64).to_le_bytes()).to_hex()[..20])
}

/// An expiring key.
fn ttl_key(i: usize) -> String {
    format!("ttl:{}", &blake3::hash(&(i as u64).to_be_bytes()).to_hex()[..20])
}

/// The value of write `i`: `bytes` characters of base64 alphabet drawn from a hash of `i`, like
/// the base64 ciphertext an atServer mostly holds (a run of one byte would flatter any system
/// that compresses, Automerge's columnar encoding first).
fn value(i: usize, bytes: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = vec![0u8; bytes];
    blake3::Hasher::new().update(&(i as u64).to_le_bytes()).finalize_xof().fill(&mut raw);
    raw.iter().map(|b| char::from(ALPHABET[usize::from(b & 63)])).collect()
}

/// A runtime whose threads carry `name`, so their CPU time can be told apart.
fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    // Threads live for the whole run: a thread that exits takes its CPU time with it.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?)
}

/// User + system CPU ticks in a `/proc/.../stat` line (fields 14 and 15).
fn stat_cpu_ticks(stat: &str) -> u64 {
    // Fields after the parenthesised name: state is field 3; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

const TICKS_PER_SECOND: f64 = 100.0; // USER_HZ on Linux

/// CPU seconds used so far by this process's threads named `name` (Linux `/proc`; 0 elsewhere).
/// Threads that already exited are not counted: measure over a short span.
fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            ticks += stat_cpu_ticks(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
        }
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// CPU seconds this process has used (Linux `/proc`; 0 elsewhere).
fn process_cpu_seconds() -> f64 {
    stat_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default()) as f64 / TICKS_PER_SECOND
}

/// This process's peak resident memory in bytes (Linux `VmHWM`; 0 elsewhere).
fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const SERVER_THREADS: &str = "lethe-server";

/// Which client a [`ClientJob`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum ClientSystem {
    /// A fresh lethe node.
    Lethe,
    /// The atServer 2024 commit-log replay model's client.
    CommitlogReplay,
    /// The atServer skipDeletesUntil model's client.
    SkipDeletesUntil,
    /// An empty Automerge document synced with Automerge's sync protocol.
    Automerge,
}

/// One client's initial sync, as `lethe bench client --job JSON` runs it in a process of its
/// own (so its peak memory is its own). It prints one [`SystemResult`] as JSON.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ClientJob {
    /// Which client.
    pub system: ClientSystem,
    /// The server's address.
    pub server: SocketAddr,
    /// The server's node id (pinned).
    pub server_id: String,
    /// lethe: the client's initialised data directory; the others: a directory holding the
    /// client's key (`client.key`, PKCS#8) and where it puts its store.
    pub dir: PathBuf,
    /// lethe: the server's digest, which the client holds once it has every live entry.
    pub target_digest: String,
    /// lethe: the server's version vector, which the client's covers once the session is done.
    #[serde(default)]
    pub target_vector: std::collections::BTreeMap<String, u64>,
    /// Live keys the client must end with.
    pub live: usize,
    /// Automerge: deletes and expiries in the history (every one of them travels).
    pub dead: usize,
}

/// The file a model or Automerge client's key is kept in, inside [`ClientJob::dir`].
const CLIENT_KEY_FILE: &str = "client.key";

/// A fresh identity for a non-lethe client, saved where its job will find it.
fn client_identity(dir: &Path) -> Result<Identity> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity = Identity::generate()?;
    std::fs::write(dir.join(CLIENT_KEY_FILE), identity.pkcs8())
        .with_context(|| format!("writing {}", dir.join(CLIENT_KEY_FILE).display()))?;
    Ok(identity)
}

/// Runs `job` in this process (the child side of `lethe bench bootstrap`) and returns its figures
/// with this process's CPU seconds and peak resident memory.
pub fn run_client(job: &ClientJob) -> Result<SystemResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let server_id: lethe_transport::NodeId = job.server_id.parse()?;
    let mut result = runtime.block_on(async {
        if job.system == ClientSystem::Lethe {
            return lethe_client(job, server_id).await;
        }
        let key = std::fs::read(job.dir.join(CLIENT_KEY_FILE))
            .with_context(|| format!("reading the client's key in {}", job.dir.display()))?;
        let identity = Identity::from_pkcs8(&key)?;
        match job.system {
            ClientSystem::CommitlogReplay | ClientSystem::SkipDeletesUntil => {
                let skip = job.system == ClientSystem::SkipDeletesUntil;
                let db =
                    redb::Database::create(job.dir.join("client.redb")).context("creating the model client's store")?;
                model_client(db, job.server, server_id, identity, skip, job.live).await
            }
            _ => automerge_client(job.server, server_id, identity, job.live, job.dead).await,
        }
    })?;
    drop(runtime);
    result.client_cpu_seconds = process_cpu_seconds();
    result.client_peak_bytes = peak_resident_bytes();
    Ok(result)
}

/// Runs `job` in a child process (`lethe bench client`, from this executable) while this
/// process serves, and returns its figures with the server threads' CPU seconds.
fn spawn_client(job: &ClientJob) -> Result<SystemResult> {
    let exe = std::env::current_exe().context("finding this executable to run the client")?;
    let s0 = thread_cpu_seconds(SERVER_THREADS);
    let out = std::process::Command::new(&exe)
        .args(["bench", "client", "--job", &serde_json::to_string(job)?])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bench client", exe.display()))?;
    if !out.status.success() {
        bail!("the {:?} client failed ({})", job.system, out.status);
    }
    let mut result: SystemResult =
        serde_json::from_slice(&out.stdout).with_context(|| format!("reading the {:?} client's report", job.system))?;
    result.server_cpu_seconds = thread_cpu_seconds(SERVER_THREADS) - s0;
    Ok(result)
}

/// A fresh lethe node on `job.dir`, measured until its digest is the server's.
async fn lethe_client(job: &ClientJob, server_id: lethe_transport::NodeId) -> Result<SystemResult> {
    let server = PeerAddr { id: server_id, addr: job.server };
    let started = Instant::now();
    let client = NodeConfig::new(DataDir::new(&job.dir), "127.0.0.1:0".parse()?).with_peer(server).start().await?;
    // Done when it holds every live entry and its session has ended (its vector merged).
    wait_for("the lethe client converges", WAIT_LIMIT, || {
        let s = client.status()?;
        Ok(s.digest == job.target_digest && s.vector == job.target_vector)
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let s = client.status()?;
    let result = SystemResult {
        wire_bytes: s.wire_bytes_received + s.wire_bytes_sent,
        raw_bytes: s.bytes_received + s.bytes_sent,
        udp_bytes: client.udp_bytes(server_id),
        round_trips: s.session_round_trips,
        seconds,
        entries_received: s.live_received,
        tombstones_received: s.tombstones_received,
        ..SystemResult::default()
    };
    client.shutdown().await;
    Ok(result)
}

/// Runs the benchmark in `root`. The servers run here, on a runtime of their own (so their CPU
/// time can be read from their threads); each client runs in a child process started from the
/// running executable as `bench client --job JSON`, so this is for the `lethe` binary (another
/// program calling it would have to answer that command the same way, with [`run_client`]).
pub fn bootstrap(root: &Path, p: BootstrapParams) -> Result<BootstrapReport> {
    let server_rt = runtime(SERVER_THREADS)?;
    let client_dir = DataDir::new(root.join("client"));
    let client_id = client_dir.init()?.id();
    let (server, log) = server_rt.block_on(load_server(root, p, client_id))?;
    let (live_bytes, target) = server_rt.block_on(async {
        let items = server.scan(&lethe_engine::KeyRange::all(), usize::MAX)?;
        let live_bytes = items.iter().map(|i| (i.key.len() + i.value.len()) as u64).sum::<u64>();
        let s = server.status()?;
        Ok::<_, anyhow::Error>((live_bytes, (s.digest, s.vector)))
    })?;
    let job = |system, server: SocketAddr, server_id: String, dir: PathBuf| ClientJob {
        system,
        server,
        server_id,
        dir,
        target_digest: target.0.clone(),
        target_vector: target.1.clone(),
        live: p.live,
        dead: p.deleted + p.expired,
    };

    let lethe =
        spawn_client(&job(ClientSystem::Lethe, server.local_addr(), server.id().to_string(), root.join("client")))?;
    server_rt.block_on(server.shutdown());

    let log = Arc::new(log);
    let mut models = Vec::new();
    for (system, name) in
        [(ClientSystem::CommitlogReplay, "model-replay"), (ClientSystem::SkipDeletesUntil, "model-skip")]
    {
        let dir = root.join(name);
        let client = client_identity(&dir)?;
        let (endpoint, addr, server_id) = server_rt.block_on(async {
            let server_identity = Identity::generate()?;
            let server_id = server_identity.id();
            let endpoint =
                Arc::new(Endpoint::bind("127.0.0.1:0".parse()?, server_identity, TrustList::new([client.id()]))?);
            tokio::spawn(serve_model(endpoint.clone(), log.clone()));
            let addr = endpoint.local_addr()?;
            Ok::<_, anyhow::Error>((endpoint, addr, server_id))
        })?;
        models.push(spawn_client(&job(system, addr, server_id.to_string(), dir))?);
        endpoint.close();
    }
    let (commitlog_replay, skip_deletes_until) = (models[0], models[1]);
    let automerge = if p.automerge {
        let dir = root.join("automerge");
        let client = client_identity(&dir)?;
        let (endpoint, addr, server_id) = automerge_server(&server_rt, p, client.id())?;
        let result = spawn_client(&job(ClientSystem::Automerge, addr, server_id.to_string(), dir));
        endpoint.close();
        Some(result?)
    } else {
        None
    };
    let raw_redb_insert_seconds = raw_insert_seconds(root, p)?;
    Ok(BootstrapReport {
        live: p.live,
        deleted: p.deleted,
        live_bytes,
        lethe,
        commitlog_replay,
        skip_deletes_until,
        automerge,
        raw_redb_insert_seconds,
    })
}

/// Inserts the live entries the client ends with, sorted by key, into a fresh raw redb table,
/// 10,000 per durable transaction; returns the seconds it took.
fn raw_insert_seconds(root: &Path, p: BootstrapParams) -> Result<f64> {
    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("raw");
    let mut entries: Vec<(String, String)> = (0..p.live).map(|i| (key(i), value(i, p.value_bytes))).collect();
    entries.sort();
    let db = redb::Database::create(root.join("raw-insert.redb"))?;
    let started = Instant::now();
    for chunk in entries.chunks(10_000) {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            for (k, v) in chunk {
                table.insert(k.as_bytes(), v.as_bytes())?;
            }
        }
        txn.commit()?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// How long a benchmark waits for a node to get somewhere before it gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// Frames without compression on a QUIC stream, for the models and Automerge: they are measured
/// as they ship (atServer's sync and Automerge's sync protocol compress nothing at this layer),
/// not with lethe's zstd.
fn raw_frames(
    send: lethe_transport::endpoint::SendStream,
    recv: lethe_transport::endpoint::RecvStream,
    max: usize,
) -> (FrameWriter<lethe_transport::endpoint::SendStream>, FrameReader<lethe_transport::endpoint::RecvStream>) {
    (FrameWriter::new(send, max), FrameReader::new(recv, max))
}

/// Automerge's sync messages carry every change the peer lacks at once.
const AUTOMERGE_FRAME_MAX: usize = 1 << 30;

/// The same history as one Automerge map document (a delete for every delete and every expiry:
/// Automerge has no TTL), served with Automerge's sync protocol over QUIC to one client: the
/// client sends its message (an empty frame when it has none), the server answers with its own,
/// until neither has anything to say.
fn automerge_server(
    server_rt: &tokio::runtime::Runtime,
    p: BootstrapParams,
    client: lethe_transport::NodeId,
) -> Result<(Arc<Endpoint>, SocketAddr, lethe_transport::NodeId)> {
    use automerge::sync::{Message as SyncMessage, State, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    let mut doc = AutoCommit::new();
    let total = p.live + p.deleted;
    for i in 0..total {
        doc.put(ROOT, key(i), value(i, p.value_bytes))?;
        if i % 10_000 == 9_999 {
            doc.commit();
        }
    }
    for i in 0..p.deleted {
        doc.delete(ROOT, key(total - 1 - i))?;
    }
    for i in 0..p.expired {
        doc.put(ROOT, ttl_key(i), value(i, p.value_bytes))?;
    }
    for i in 0..p.expired {
        doc.delete(ROOT, ttl_key(i))?;
    }
    doc.commit();
    let doc = Arc::new(std::sync::Mutex::new(doc));

    server_rt.block_on(async {
        let server_identity = Identity::generate()?;
        let server_id = server_identity.id();
        let endpoint = Arc::new(Endpoint::bind("127.0.0.1:0".parse()?, server_identity, TrustList::new([client]))?);
        let addr = endpoint.local_addr()?;
        let server = endpoint.clone();
        tokio::spawn(async move {
            let Some(Ok(conn)) = server.accept().await else { return };
            // Automerge puts every change a peer lacks into one message: no frame limit fits it.
            let Ok((send, recv)) = conn.conn.accept_bi().await else { return };
            let (mut w, mut r) = raw_frames(send, recv, AUTOMERGE_FRAME_MAX);
            let mut state = State::new();
            while let Ok(Some(frame)) = r.next().await {
                let reply = {
                    let mut doc = doc.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !frame.is_empty()
                        && let Ok(msg) = SyncMessage::decode(&frame)
                    {
                        let _ = doc.sync().receive_sync_message(&mut state, msg);
                    }
                    doc.sync().generate_sync_message(&mut state).map(SyncMessage::encode).unwrap_or_default()
                };
                if w.send(&reply).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
        });
        Ok((endpoint, addr, server_id))
    })
}

/// A fresh Automerge document synced from the server until neither side has anything to say.
async fn automerge_client(
    addr: SocketAddr,
    server_id: lethe_transport::NodeId,
    identity: Identity,
    live: usize,
    dead: usize,
) -> Result<SystemResult> {
    use automerge::sync::{Message as SyncMessage, State, SyncDoc};
    use automerge::{AutoCommit, ROOT, ReadDoc};

    let started = Instant::now();
    let client = Endpoint::bind("127.0.0.1:0".parse()?, identity, TrustList::default())?;
    let conn = client.connect(addr, server_id).await?;
    let (send, recv) = conn.conn.open_bi().await?;
    let (mut w, mut r) = raw_frames(send, recv, AUTOMERGE_FRAME_MAX);
    let mut doc = AutoCommit::new();
    let mut state = State::new();
    let mut result = SystemResult::default();
    loop {
        let mine = doc.sync().generate_sync_message(&mut state).map(SyncMessage::encode);
        let request = mine.clone().unwrap_or_default();
        w.send(&request).await?;
        w.flush().await?;
        let reply = r.next().await?.ok_or_else(|| anyhow!("the automerge server closed the stream"))?;
        result.wire_bytes += (request.len() + reply.len()) as u64;
        result.raw_bytes = result.wire_bytes;
        result.round_trips += 1;
        if reply.is_empty() && mine.is_none() {
            break;
        }
        if !reply.is_empty() {
            doc.sync().receive_sync_message(&mut state, SyncMessage::decode(&reply)?)?;
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.entries_received = doc.length(ROOT) as u64;
    // Automerge sends the whole history: every delete travels.
    result.tombstones_received = dead as u64;
    let stats = conn.conn.stats();
    result.udp_bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
    conn.close(lethe_transport::CloseCode::Done, "done");
    client.close();
    if result.entries_received != live as u64 {
        bail!("the automerge client holds {} keys, expected {live}", result.entries_received);
    }
    Ok(result)
}

/// The server node and the history, written to lethe and to the model log alike.
async fn load_server(
    root: &Path,
    p: BootstrapParams,
    client_id: lethe_transport::NodeId,
) -> Result<(lethe_node::Node, CommitLogModel)> {
    let server_dir = DataDir::new(root.join("server"));
    server_dir.init()?;
    let gc = if p.no_gc { Duration::from_secs(365 * 24 * 3600) } else { Duration::from_millis(100) };
    let server =
        NodeConfig::new(server_dir, "127.0.0.1:0".parse()?).with_trust(client_id).with_gc_interval(gc).start().await?;
    let mut log = CommitLogModel::new();
    let total = p.live + p.deleted;
    for chunk in (0..total).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = WriteBatch::new();
        for &i in chunk {
            let v = value(i, p.value_bytes);
            log.put(&key(i), &v, now_ms(), None);
            batch.put(key(i), v, PutOptions::default());
        }
        server.write_batch(batch)?;
    }
    for chunk in (0..p.deleted).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = WriteBatch::new();
        for &i in chunk {
            batch.delete(key(total - 1 - i));
            log.delete(&key(total - 1 - i), now_ms());
        }
        server.write_batch(batch)?;
    }
    let ttl = PutOptions { ttl_ms: Some(1), metadata: None };
    for chunk in (0..p.expired).collect::<Vec<_>>().chunks(10_000) {
        let mut batch = WriteBatch::new();
        for &i in chunk {
            let v = value(i, p.value_bytes);
            log.put(&ttl_key(i), &v, now_ms(), Some(1));
            batch.put(ttl_key(i), v, ttl.clone());
        }
        server.write_batch(batch)?;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    log.expire(now_ms());
    if !p.no_gc {
        wait_for("the server collects its tombstones", WAIT_LIMIT, || {
            let s = server.status()?;
            Ok(s.tombstones + s.expired == 0 && s.live == p.live as u64)
        })
        .await?;
    }
    Ok((server, log))
}

/// The model server answers `latest` with the latest commit id, and `sync:<from>[:<skip>]` with
/// one page.
async fn serve_model(endpoint: Arc<Endpoint>, log: Arc<CommitLogModel>) {
    while let Some(Ok(conn)) = endpoint.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.conn.accept_bi().await {
                let (mut w, mut r) = raw_frames(send, recv, FRAME_BYTES_MAX);
                let Ok(Some(request)) = r.next().await else { continue };
                let request = String::from_utf8_lossy(&request).into_owned();
                let answer = model_answer(&log, &request);
                if w.send(&answer).await.is_ok()
                    && let Ok(mut send) = w.into_inner().await
                {
                    let _ = send.finish();
                }
            }
        });
    }
}

fn model_answer(log: &CommitLogModel, request: &str) -> Vec<u8> {
    let parse = |s: &str| s.parse::<u64>().ok();
    match request.split(':').collect::<Vec<_>>().as_slice() {
        ["latest"] => log.latest().map_or_else(|| "-1".to_string(), |l| l.to_string()).into_bytes(),
        ["sync", from] => log.page(parse(from), None).json,
        ["sync", from, skip] => log.page(parse(from), parse(skip)).json,
        _ => b"error:unknown request".to_vec(),
    }
}

/// A fresh client of the model server: latest id, then pages until it reaches it, storing each
/// live entry in redb (one transaction per page).
async fn model_client(
    db: redb::Database,
    addr: std::net::SocketAddr,
    server_id: lethe_transport::NodeId,
    client_identity: Identity,
    skip: bool,
    live: usize,
) -> Result<SystemResult> {
    const TABLE: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("keystore");
    let started = Instant::now();
    let client = Endpoint::bind("127.0.0.1:0".parse()?, client_identity, TrustList::default())?;
    let conn = client.connect(addr, server_id).await?;
    let mut result = SystemResult::default();
    let ask = |request: String| {
        let conn = conn.clone();
        async move {
            let (send, recv) = conn.conn.open_bi().await?;
            let (mut w, mut r) = raw_frames(send, recv, FRAME_BYTES_MAX);
            w.send(request.as_bytes()).await?;
            let mut send = w.into_inner().await?;
            let _ = send.finish();
            let answer = r.next().await?.ok_or_else(|| anyhow!("no answer"))?;
            Ok::<(usize, Vec<u8>), anyhow::Error>((request.len(), answer))
        }
    };
    let (sent, answer) = ask("latest".to_string()).await?;
    result.wire_bytes += (sent + answer.len()) as u64;
    result.raw_bytes = result.wire_bytes;
    result.round_trips += 1;
    let latest: i64 = String::from_utf8_lossy(&answer).parse().context("latest id")?;
    let mut from: i64 = -1;
    while from < latest {
        let request = if skip { format!("sync:{from}:{latest}") } else { format!("sync:{from}") };
        let (sent, page) = ask(request).await?;
        result.wire_bytes += (sent + page.len()) as u64;
        result.raw_bytes = result.wire_bytes;
        result.round_trips += 1;
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&page).context("a page")?;
        if entries.is_empty() {
            break;
        }
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            for e in &entries {
                let at_key = e["atKey"].as_str().unwrap_or_default();
                from = from.max(e["commitId"].as_i64().unwrap_or(from));
                if e["operation"] == "-" {
                    result.tombstones_received += 1;
                    table.remove(at_key)?;
                } else {
                    result.entries_received += 1;
                    table.insert(at_key, e["value"].as_str().unwrap_or_default())?;
                }
            }
        }
        txn.commit()?;
    }
    result.seconds = started.elapsed().as_secs_f64();
    let held = {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        db.begin_read()?.open_table(TABLE)?.len()?
    };
    if held != live as u64 {
        bail!("the model client holds {held} keys, expected {live}");
    }
    result.udp_bytes = {
        let s = conn.conn.stats();
        s.udp_tx.bytes + s.udp_rx.bytes
    };
    conn.close(lethe_transport::CloseCode::Done, "done");
    client.close();
    Ok(result)
}

/// One sync path's figures (`lethe bench incremental`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PathResult {
    /// CBOR frame bytes, both directions.
    pub wire_bytes: u64,
    /// Round trips.
    pub round_trips: u64,
    /// Wall seconds of the session.
    pub seconds: f64,
    /// Entries sent (live and dead).
    pub entries_sent: u64,
}

/// `lethe bench incremental`: the two ways a replica that differs by `diffs` entries catches up.
#[derive(Clone, Debug, Serialize)]
pub struct IncrementalReport {
    /// Keys on each replica.
    pub keys: usize,
    /// Entries that differ.
    pub diffs: usize,
    /// A member catching up by delta (its vector says what it lacks).
    pub delta: PathResult,
    /// The same difference found by range reconciliation (anti-entropy).
    pub reconcile: PathResult,
}

fn open_replica(root: &Path, name: &str, id: u64) -> Result<lethe_engine::Replica<lethe_engine::RedbStore>> {
    let store = lethe_engine::RedbStore::open(root.join(format!("{name}.redb")))?;
    Ok(lethe_engine::Replica::open(
        store,
        lethe_engine::ReplicaId(id),
        lethe_engine::Config::default(),
        Arc::new(lethe_engine::SystemClock),
    )?)
}

fn write_range(
    r: &mut lethe_engine::Replica<lethe_engine::RedbStore>,
    keys: impl Iterator<Item = usize>,
    value: &[u8],
    delete: bool,
) -> Result<()> {
    let mut batch = WriteBatch::new();
    for i in keys {
        if delete {
            batch.delete(key(i));
        } else {
            batch.put(key(i), value.to_vec(), PutOptions::default());
        }
        if batch.len() == 10_000 {
            r.write(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        r.write(batch)?;
    }
    Ok(())
}

fn timed_sync(
    a: &mut lethe_engine::Replica<lethe_engine::RedbStore>,
    b: &mut lethe_engine::Replica<lethe_engine::RedbStore>,
    anti_entropy: bool,
) -> Result<PathResult> {
    let started = Instant::now();
    let out = lethe_engine::session::sync_in_process(a, b, anti_entropy)?;
    Ok(PathResult {
        wire_bytes: out.a.bytes_sent + out.b.bytes_sent,
        round_trips: u64::from(out.round_trips()),
        seconds: started.elapsed().as_secs_f64(),
        entries_sent: out.a.live_sent + out.a.tombstones_sent + out.b.live_sent + out.b.tombstones_sent,
    })
}

/// Runs `lethe bench incremental` in `root`: two redb replicas, engine sessions in process.
pub fn incremental(root: &Path, keys: usize, diffs: usize) -> Result<IncrementalReport> {
    if diffs == 0 || 2 * diffs > keys {
        bail!("--diffs must be at least 1 and at most half of --keys");
    }
    let (mut a, mut b) = (open_replica(root, "a", 1)?, open_replica(root, "b", 2)?);
    a.enrol_member(b.id())?;
    b.enrol_member(a.id())?;
    write_range(&mut a, 0..keys, &[b'v'; 100], false)?;
    lethe_engine::session::sync_in_process(&mut a, &mut b, false)?;
    // Delta: a changes d keys; b, a member, catches up by its vector.
    write_range(&mut a, 0..diffs, &[b'w'; 100], false)?;
    let delta = timed_sync(&mut a, &mut b, false)?;
    // Reconcile: a changes d other keys; an anti-entropy session finds them by fingerprints.
    write_range(&mut a, diffs..2 * diffs, &[b'x'; 100], false)?;
    let reconcile = timed_sync(&mut a, &mut b, true)?;
    if a.digest() != b.digest() {
        bail!("the replicas did not converge");
    }
    Ok(IncrementalReport { keys, diffs, delta, reconcile })
}

/// One replica's state (`lethe bench gc`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReplicaGc {
    /// Live keys.
    pub live: u64,
    /// Tombstones held.
    pub tombstones: u64,
    /// Size of its redb file in bytes (redb reuses freed pages; it does not shrink the file).
    pub store_bytes: u64,
}

/// `lethe bench gc`: tombstones on each replica before and after every member acknowledges.
#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    /// Each replica once the deletes reached everyone.
    pub before: Vec<ReplicaGc>,
    /// Each replica after two acknowledgement rounds and GC steps.
    pub after: Vec<ReplicaGc>,
}

/// Runs `lethe bench gc` in `root`: `replicas` redb replicas; the first writes and then deletes
/// `deleted` keys; sessions in a star around it carry the deletes and the acknowledgements.
pub fn gc(root: &Path, replicas: usize, deleted: usize) -> Result<GcReport> {
    if replicas < 2 {
        bail!("--replicas must be at least 2");
    }
    let mut rs =
        (0..replicas).map(|i| open_replica(root, &format!("r{i}"), i as u64 + 1)).collect::<Result<Vec<_>>>()?;
    for r in &mut rs {
        for i in 0..replicas {
            r.enrol_member(lethe_engine::ReplicaId(i as u64 + 1))?;
        }
    }
    let star = |rs: &mut Vec<lethe_engine::Replica<lethe_engine::RedbStore>>| -> Result<()> {
        let (hub, rest) = rs.split_first_mut().ok_or_else(|| anyhow!("no replicas"))?;
        for r in rest.iter_mut() {
            lethe_engine::session::sync_in_process(hub, r, false)?;
        }
        Ok(())
    };
    write_range(&mut rs[0], 0..deleted, &[b'v'; 100], false)?;
    star(&mut rs)?;
    write_range(&mut rs[0], 0..deleted, &[], true)?;
    star(&mut rs)?;
    star(&mut rs)?; // everyone's vector reaches the hub, and back
    let state = |rs: &Vec<lethe_engine::Replica<lethe_engine::RedbStore>>, i: usize| -> Result<ReplicaGc> {
        let counts = rs[i].counts();
        let store_bytes = std::fs::metadata(root.join(format!("r{i}.redb")))?.len();
        Ok(ReplicaGc { live: counts.live, tombstones: counts.tombstones, store_bytes })
    };
    let before = (0..replicas).map(|i| state(&rs, i)).collect::<Result<Vec<_>>>()?;
    for _ in 0..3 {
        for r in rs.iter_mut() {
            r.collect_garbage()?;
        }
        star(&mut rs)?;
    }
    let after = (0..replicas).map(|i| state(&rs, i)).collect::<Result<Vec<_>>>()?;
    Ok(GcReport { before, after })
}

/// `lethe bench write`: puts per second through the node API with durable acknowledgement, next
/// to raw redb inserts of the same data.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WriteReport {
    /// Writes.
    pub ops: usize,
    /// Concurrent writers through the node API.
    pub writers: usize,
    /// Node puts per second (each acknowledged once durable; concurrent ones share commits).
    pub node_puts_per_sec: f64,
    /// Raw redb, one durable transaction per insert.
    pub raw_redb_single_per_sec: f64,
    /// Raw redb, 1,000 inserts per durable transaction.
    pub raw_redb_batched_per_sec: f64,
}

/// Runs `lethe bench write` in `root`.
pub async fn write(root: &Path, ops: usize, writers: usize) -> Result<WriteReport> {
    if ops == 0 || writers == 0 {
        bail!("--ops and --writers must be at least 1");
    }
    let dir = DataDir::new(root.join("node"));
    dir.init()?;
    let node = NodeConfig::new(dir, "127.0.0.1:0".parse()?).start().await?;
    let value = vec![b'v'; 100];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (node, value) = (node.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..ops).step_by(writers) {
                node.put(key(i), value.clone(), PutOptions::default()).await?;
            }
            Ok::<(), lethe_node::NodeError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let node_secs = started.elapsed().as_secs_f64();
    node.shutdown().await;

    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("raw");
    let raw = |name: &str, per_txn: usize| -> Result<f64> {
        let db = redb::Database::create(root.join(name))?;
        let started = Instant::now();
        for chunk in (0..ops).collect::<Vec<_>>().chunks(per_txn) {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                for &i in chunk {
                    table.insert(key(i).as_bytes(), value.as_slice())?;
                }
            }
            txn.commit()?;
        }
        Ok(ops as f64 / started.elapsed().as_secs_f64())
    };
    Ok(WriteReport {
        ops,
        writers,
        node_puts_per_sec: ops as f64 / node_secs,
        raw_redb_single_per_sec: raw("raw-single.redb", 1)?,
        raw_redb_batched_per_sec: raw("raw-batched.redb", 1_000)?,
    })
}

/// Draws bytes and seconds against D for each system from `lethe bench bootstrap --json`
/// reports (one per D), as `bytes.svg` and `seconds.svg` in `out`. Returns the files written.
pub fn plot(reports: &[BootstrapReport], out: &Path) -> Result<Vec<std::path::PathBuf>> {
    use plotters::prelude::*;
    if reports.is_empty() {
        bail!("no reports to plot: pass the files `lethe bench bootstrap --json` wrote");
    }
    let mut reports = reports.to_vec();
    reports.sort_by_key(|r| r.deleted);
    type Pick = fn(&SystemResult) -> f64;
    type Get = fn(&BootstrapReport) -> Option<SystemResult>;
    let charts: [(&str, &str, Pick); 2] =
        [("bytes.svg", "wire bytes (MB)", |s| s.wire_bytes as f64 / 1e6), ("seconds.svg", "seconds", |s| s.seconds)];
    let systems: [(&str, Get, RGBColor); 4] = [
        ("lethe", |r| Some(r.lethe), RGBColor(0, 110, 180)),
        ("commit-log replay (model)", |r| Some(r.commitlog_replay), RGBColor(200, 60, 40)),
        ("skipDeletesUntil (model)", |r| Some(r.skip_deletes_until), RGBColor(230, 150, 20)),
        ("Automerge", |r| r.automerge, RGBColor(90, 160, 60)),
    ];
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for (file, label, pick) in charts {
        let path = out.join(file);
        let x_max = reports.iter().map(|r| r.deleted).max().unwrap_or(1).max(1) as f64;
        let y_max = reports
            .iter()
            .flat_map(|r| systems.iter().filter_map(|(_, get, _)| get(r)).map(|s| pick(&s)))
            .fold(0.0f64, f64::max)
            * 1.1;
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let title = format!("bootstrap of N = {} live keys: {label} against D (deleted keys)", reports[0].live);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max * 1.02, 0f64..y_max.max(1e-3))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("D (deleted keys)")
            .y_desc(label)
            .x_label_formatter(&|x| format!("{}", *x as u64))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (name, get, color) in systems {
            let points: Vec<(f64, f64)> =
                reports.iter().filter_map(|r| get(r).map(|s| (r.deleted as f64, pick(&s)))).collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
        drop(chart);
        drop(root);
        written.push(path);
    }
    Ok(written)
}
