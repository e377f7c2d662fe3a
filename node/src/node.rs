//! The embeddable node: one replica on redb, its QUIC endpoint, and the tasks that keep it in
//! step with its peers.
//!
//! Per peer connection (dialed from `--peer`, or accepted from a trusted node):
//! - **sessions** (`Session`, engine): one at connect time from the dialer, one whenever a live
//!   stream reports a gap or a peer is not eligible for pushes, and an anti-entropy session every
//!   `anti_entropy_interval`. Each runs on its own QUIC stream;
//! - **live pushes** (`LiveSender`/`LiveReceiver`, engine): once the peer is a member, every
//!   commit wakes a pusher that sends what the peer lacks on one long-lived stream; the peer
//!   answers with its vector, which feeds the stable frontier;
//! - a malformed, oversized or refused frame closes that connection with a [`CloseCode`] and a
//!   reason; nothing of it is applied and every other connection goes on.
//!
//! Writes go through one writer task that commits whatever writes are waiting as one batch (one
//! fsync for many concurrent writers) and answers each only once its batch is durable. A GC step
//! runs every `gc_interval`. The engine is synchronous: each call takes the replica's lock
//! inside `block_in_place`, so the node needs tokio's multi-thread runtime.

use crate::control::{self, Listed, Request, Response};
use crate::data_dir::{DataDir, DataDirError};
use lethe_engine::live::{LivePoll, LiveReceiver, LiveSender, handle_ack};
use lethe_engine::session::{Session, SessionStats, SyncError};
use lethe_engine::{
    Change, Config, Item, KeyRange, PutOptions, RedbStore, Replica, ReplicaId, Seq, SystemClock, VersionVector,
    WriteBatch, WriteReceipt,
};
use lethe_transport::endpoint::{Connection, FrameStream, SendStream};
use lethe_transport::{CloseCode, Endpoint, NodeId, PeerConnection, TrustList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

/// The first frame of every stream between peers says what the stream is for.
const STREAM_SESSION: u8 = 0;
const STREAM_LIVE: u8 = 1;
/// Writes committed together at most.
const GROUP_COMMIT_MAX: usize = 1024;
/// How long a pusher waits after a commit for more before it sends (Kafka's `linger.ms`): a
/// burst of commits becomes one push, one receiving commit, one fsync at the peer.
const PUSH_LINGER: Duration = Duration::from_millis(5);
/// A connection to a peer: the node that dialed it, and when it was registered.
type OpenConnection = (Connection, NodeId, std::time::Instant);

/// Two connections to the same peer opened this close together are a simultaneous open.
const SIMULTANEOUS_OPEN: Duration = Duration::from_secs(5);
/// How many changes a slow subscriber may fall behind before it is told it lagged.
const SUBSCRIBER_BUFFER: usize = 4096;

/// A peer to dial: `NODEID@ADDR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its node id (pinned: the connection fails unless the peer holds this key).
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<PeerAddr, String> {
        let (id, addr) = s.split_once('@').ok_or_else(|| format!("`{s}` is not NODEID@ADDR"))?;
        let id = id.parse().map_err(|e: lethe_transport::Error| e.to_string())?;
        let addr = addr.parse().map_err(|_| format!("`{addr}` is not an address like 127.0.0.1:7000"))?;
        Ok(PeerAddr { id, addr })
    }
}

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The data directory (made by `lethe init` or [`DataDir::init`]).
    pub data: DataDir,
    /// Where to listen for peers and the owner's commands.
    pub listen: SocketAddr,
    /// Peers to dial and keep connected; they are trusted.
    pub peers: Vec<PeerAddr>,
    /// Further node ids allowed to connect (client devices, say).
    pub trust: Vec<NodeId>,
    /// The engine's limits, drift bound and membership lease.
    pub engine: Config,
    /// How often a GC step runs (purge expired values, evict silent members, collect).
    pub gc_interval: Duration,
    /// How often the dialer of a connection runs an anti-entropy session.
    pub anti_entropy_interval: Duration,
    /// The longest wait between reconnection attempts (backoff doubles up to this).
    pub reconnect_max: Duration,
}

impl NodeConfig {
    /// Dials and trusts `peer` (builder style).
    #[must_use]
    pub fn with_peer(mut self, peer: PeerAddr) -> NodeConfig {
        self.peers.push(peer);
        self
    }

    /// Lets `id` connect (builder style).
    #[must_use]
    pub fn with_trust(mut self, id: NodeId) -> NodeConfig {
        self.trust.push(id);
        self
    }

    /// Runs a GC step this often (builder style).
    #[must_use]
    pub fn with_gc_interval(mut self, every: Duration) -> NodeConfig {
        self.gc_interval = every;
        self
    }

    /// Starts the node (see [`Node::start`]).
    pub async fn start(self) -> Result<Node, NodeError> {
        Node::start(self).await
    }

    /// Defaults for the node of `data` listening on `listen`.
    pub fn new(data: DataDir, listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            data,
            listen,
            peers: Vec::new(),
            trust: Vec::new(),
            engine: Config::default(),
            gc_interval: Duration::from_secs(2),
            anti_entropy_interval: Duration::from_secs(60),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Why a node could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened.
    #[error("could not open the store {path}: {source} (is another `lethe serve` using this data directory?)")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: lethe_engine::StorageError,
    },
    /// The engine refused an operation or its store failed.
    #[error(transparent)]
    Engine(#[from] lethe_engine::Error),
    /// The transport.
    #[error(transparent)]
    Transport(#[from] lethe_transport::Error),
    /// The node is not running on tokio's multi-thread runtime.
    #[error("the node needs tokio's multi-thread runtime (#[tokio::main] or Builder::new_multi_thread)")]
    Runtime,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A subscriber fell behind or the node stopped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// Changes were missed; rescan the prefix to catch up.
    #[error("missed {0} changes; rescan the prefix to catch up")]
    Lagged(u64),
    /// The node stopped.
    #[error("the node stopped")]
    Closed,
}

/// Changes to keys under a prefix, local and replicated, in commit order.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Change>,
    prefix: Vec<u8>,
}

impl Subscription {
    /// The next change under the prefix.
    pub async fn next(&mut self) -> Result<Change, SubscriptionError> {
        loop {
            match self.rx.recv().await {
                Ok(change) if change.key().starts_with(&self.prefix) => return Ok(change),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(SubscriptionError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(SubscriptionError::Closed),
            }
        }
    }
}

/// One member as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its replica id (the first 16 hex digits of its node id).
    pub replica: String,
    /// Its node id, if this node knows it.
    pub node_id: Option<String>,
    /// What it has acknowledged.
    pub acked: BTreeMap<String, u64>,
    /// When it was last heard from, in Unix ms.
    pub last_heard_ms: u64,
}

/// What `lethe status` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node id.
    pub node_id: String,
    /// Its replica id.
    pub replica: String,
    /// Where it listens.
    pub listen: String,
    /// Live keys.
    pub live: u64,
    /// Tombstones not yet collected.
    pub tombstones: u64,
    /// Expired records not yet collected.
    pub expired: u64,
    /// The version vector.
    pub vector: BTreeMap<String, u64>,
    /// The stable frontier.
    pub frontier: BTreeMap<String, u64>,
    /// Members and what they acknowledged.
    pub members: Vec<MemberStatus>,
    /// Node ids of the peers connected now.
    pub connected: Vec<String>,
    /// Open connections to peers (one per peer once duplicates are closed).
    pub connections: usize,
    /// The fingerprint of every live entry (equal on converged nodes): sum prefix and count.
    pub digest: String,
    /// Live values received from peers since the node started (sessions and pushes).
    pub live_received: u64,
    /// Tombstones and expired records received from peers since the node started.
    pub tombstones_received: u64,
    /// Bytes of sync frames received from peers since the node started (CBOR, sessions and
    /// pushes).
    pub bytes_received: u64,
    /// Bytes of sync frames sent to peers since the node started.
    pub bytes_sent: u64,
    /// Round trips of the sessions this node took part in since it started.
    pub session_round_trips: u64,
}

fn vector_map(v: &VersionVector) -> BTreeMap<String, u64> {
    v.iter().map(|(r, s)| (r.to_string(), s.0)).collect()
}

enum WriteOp {
    Put { key: Vec<u8>, value: Vec<u8>, options: PutOptions },
    Delete { key: Vec<u8> },
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteReceipt, lethe_engine::Error>>,
}

/// Why a stream or connection ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Transport(#[from] lethe_transport::Error),
    #[error("the peer closed the stream mid-session")]
    ClosedEarly,
    #[error("unknown stream kind {0:?}")]
    StreamKind(Vec<u8>),
}

impl Failure {
    /// Whether the peer broke the protocol (the connection is closed) rather than went away.
    fn close_code(&self) -> Option<CloseCode> {
        match self {
            Failure::Sync(SyncError::Engine(_)) => Some(CloseCode::Refused),
            Failure::Sync(SyncError::FrameTooLarge { .. }) => Some(CloseCode::TooLarge),
            Failure::Sync(_) | Failure::StreamKind(_) => Some(CloseCode::Malformed),
            Failure::Transport(e @ lethe_transport::Error::FrameTooLarge { .. }) => Some(CloseCode::for_error(e)),
            Failure::Transport(_) | Failure::ClosedEarly => None,
        }
    }
}

struct Inner {
    id: NodeId,
    listen: SocketAddr,
    config: NodeConfig,
    replica: Mutex<Replica<RedbStore>>,
    endpoint: Endpoint,
    changes: broadcast::Sender<Change>,
    /// Bumped after every commit that changed the store or the vector: wakes the pushers.
    committed: watch::Sender<u64>,
    writes: mpsc::Sender<WriteRequest>,
    shutdown: watch::Sender<bool>,
    /// Connected peers and their connections.
    connected: Mutex<BTreeMap<NodeId, Vec<OpenConnection>>>,
    /// Node ids this node knows, by replica id, for `status`.
    known: Mutex<BTreeMap<ReplicaId, NodeId>>,
    /// Live values received since start.
    live_received: AtomicU64,
    /// Tombstones and expired records received since start.
    tombstones_received: AtomicU64,
    /// Sync frame bytes received since start.
    bytes_received: AtomicU64,
    /// Session round trips since start.
    round_trips: AtomicU64,
    /// Sync frame bytes sent since start.
    bytes_sent: AtomicU64,
    /// The writer task, awaited at shutdown so that queued writes are committed.
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Runs `f` on the replica under its lock, then publishes what it committed.
    fn with_replica<T>(&self, f: impl FnOnce(&mut Replica<RedbStore>) -> T) -> T {
        tokio::task::block_in_place(|| {
            let mut replica = lock(&self.replica);
            let before = replica.vector().clone();
            let out = f(&mut replica);
            let changes = replica.take_changes();
            let moved = replica.vector() != &before;
            drop(replica);
            let wake = moved || !changes.is_empty();
            for change in changes {
                // No subscriber is fine: changes are only for those listening.
                let _ = self.changes.send(change);
            }
            if wake {
                self.committed.send_modify(|n| *n = n.wrapping_add(1));
            }
            out
        })
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn count_sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_received(&self, live: u64, tombstones: u64, bytes: u64) {
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        self.live_received.fetch_add(live, Ordering::Relaxed);
        self.tombstones_received.fetch_add(tombstones, Ordering::Relaxed);
    }
}

/// A running lethe node. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.id).field("listen", &self.inner.listen).finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the data directory's store, listens, dials the configured peers and starts the
    /// background work. Needs tokio's multi-thread runtime.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(NodeError::Runtime);
        }
        let identity = config.data.identity()?;
        let id = identity.id();
        let store = RedbStore::open(config.data.store_path())
            .map_err(|e| NodeError::Store { path: config.data.store_path().display().to_string(), source: e })?;
        let replica = Replica::open(store, id.replica_id(), config.engine, Arc::new(SystemClock))?;
        // The owner (this node's own key) may connect too: that is how the CLI reaches it.
        let trust = TrustList::new(config.trust.iter().copied().chain(config.peers.iter().map(|p| p.id)).chain([id]));
        let endpoint = Endpoint::bind(config.listen, identity, trust.clone())?;
        let listen = endpoint.local_addr()?;
        let (writes, write_rx) = mpsc::channel(GROUP_COMMIT_MAX * 4);
        let known = trust.ids().into_iter().map(|n| (n.replica_id(), n)).collect();
        let inner = Arc::new(Inner {
            id,
            listen,
            config,
            replica: Mutex::new(replica),
            endpoint,
            changes: broadcast::channel(SUBSCRIBER_BUFFER).0,
            committed: watch::channel(0).0,
            writes,
            shutdown: watch::channel(false).0,
            connected: Mutex::new(BTreeMap::new()),
            known: Mutex::new(known),
            writer: Mutex::new(None),
            live_received: AtomicU64::new(0),
            tombstones_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        });
        info!(node = %id, %listen, "node started");
        *lock(&inner.writer) = Some(tokio::spawn(write_loop(inner.clone(), write_rx)));
        tokio::spawn(accept_loop(inner.clone()));
        tokio::spawn(gc_loop(inner.clone()));
        for peer in inner.config.peers.clone() {
            tokio::spawn(dial_loop(inner.clone(), peer));
        }
        Ok(Node { inner })
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReceipt, NodeError> {
        if self.inner.shutting_down() {
            return Err(NodeError::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        self.inner.writes.send(WriteRequest { op, reply }).await.map_err(|_| NodeError::ShuttingDown)?;
        Ok(rx.await.map_err(|_| NodeError::ShuttingDown)??)
    }

    /// Writes `value` under `key`; returns once the write is durable. Concurrent writes share
    /// one commit.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<WriteReceipt, NodeError> {
        self.write(WriteOp::Put { key: key.into(), value: value.into(), options }).await
    }

    /// Deletes `key` (a tombstone, collected once every member has seen it); returns once
    /// durable.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<WriteReceipt, NodeError> {
        self.write(WriteOp::Delete { key: key.into() }).await
    }

    /// The live value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Item>, NodeError> {
        Ok(self.inner.with_replica(|r| r.get(key))?)
    }

    /// Live entries in `range`, in key order, at most `limit`.
    pub fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<Item>, NodeError> {
        Ok(self.inner.with_replica(|r| r.scan(range, limit))?)
    }

    /// A stream of changes to keys starting with `prefix`, from now on.
    pub fn subscribe(&self, prefix: impl Into<Vec<u8>>) -> Subscription {
        let rx = self.inner.changes.subscribe();
        self.inner.with_replica(|r| r.record_changes(true));
        Subscription { rx, prefix: prefix.into() }
    }

    /// For this node's write `seq`: which members have it (or something newer), by what they
    /// acknowledged.
    pub fn acknowledged_by(&self, seq: Seq) -> Vec<(ReplicaId, bool)> {
        self.inner.with_replica(|r| {
            r.membership().iter().map(|(member, m)| (member, r.is_acknowledged(seq, &m.acked))).collect()
        })
    }

    /// UDP bytes sent and received on this node's connections to `peer` so far, as quinn counts
    /// them (datagrams including QUIC and TLS overhead).
    #[must_use]
    pub fn udp_bytes(&self, peer: NodeId) -> u64 {
        lock(&self.inner.connected).get(&peer).map_or(0, |conns| {
            conns
                .iter()
                .map(|(c, ..)| {
                    let s = c.stats();
                    s.udp_tx.bytes + s.udp_rx.bytes
                })
                .sum()
        })
    }

    /// Commits `batch` at once, as one durable transaction, bypassing the group-commit queue:
    /// for bulk loads.
    pub fn write_batch(&self, batch: WriteBatch) -> Result<Vec<WriteReceipt>, NodeError> {
        if self.inner.shutting_down() {
            return Err(NodeError::ShuttingDown);
        }
        Ok(self.inner.with_replica(|r| r.write(batch))?)
    }

    /// Asks every connected peer for a session now (normally they happen on their own).
    pub fn sync_now(&self) {
        self.inner.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What `lethe status` shows.
    pub fn status(&self) -> Result<Status, NodeError> {
        let known = lock(&self.inner.known).clone();
        let (connected, connections) = {
            let map = lock(&self.inner.connected);
            (map.keys().map(ToString::to_string).collect(), map.values().map(Vec::len).sum())
        };
        let status = self.inner.with_replica(|r| -> Result<Status, lethe_engine::Error> {
            let counts = r.counts()?;
            let digest = r.digest();
            let members = r
                .membership()
                .iter()
                .map(|(replica, m)| MemberStatus {
                    replica: replica.to_string(),
                    node_id: known.get(&replica).map(ToString::to_string),
                    acked: vector_map(&m.acked),
                    last_heard_ms: m.last_heard_ms,
                })
                .collect();
            Ok(Status {
                node_id: self.inner.id.to_string(),
                replica: r.id().to_string(),
                listen: self.inner.listen.to_string(),
                live: counts.live,
                tombstones: counts.tombstones,
                expired: counts.expired,
                vector: vector_map(r.vector()),
                frontier: vector_map(&r.frontier()),
                members,
                connected,
                connections,
                digest: format!("{}/{}", hex(&digest.wire()), digest.count),
                live_received: self.inner.live_received.load(Ordering::Relaxed),
                tombstones_received: self.inner.tombstones_received.load(Ordering::Relaxed),
                bytes_received: self.inner.bytes_received.load(Ordering::Relaxed),
                session_round_trips: self.inner.round_trips.load(Ordering::Relaxed),
                bytes_sent: self.inner.bytes_sent.load(Ordering::Relaxed),
            })
        })?;
        Ok(status)
    }

    /// Stops: no new writes are taken, those already taken are committed, peers are told the
    /// node is going away, and the call returns once connections have closed (or after two
    /// seconds). Every write acknowledged before was already durable.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        // The writer commits what is queued, then stops.
        let writer = lock(&self.inner.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        self.inner.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        info!(node = %self.inner.id, "node stopped");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Group commit: takes every write waiting, commits them as one batch, answers each.
async fn write_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<WriteRequest>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            // Take no more writes; the ones already queued are still committed below.
            _ = stop.changed() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { return };
        let mut requests = vec![first];
        while requests.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        commit_group(&inner, requests);
    }
}

fn commit_group(inner: &Inner, requests: Vec<WriteRequest>) {
    let mut batch = WriteBatch::new();
    for r in &requests {
        match &r.op {
            WriteOp::Put { key, value, options } => batch.put(key.clone(), value.clone(), options.clone()),
            WriteOp::Delete { key } => batch.delete(key.clone()),
        };
    }
    match inner.with_replica(|r| r.write(batch)) {
        Ok(receipts) => {
            for (request, receipt) in requests.into_iter().zip(receipts) {
                // The caller may have given up waiting; the write stands either way.
                let _ = request.reply.send(Ok(receipt));
            }
        }
        // One invalid write rejects a batch whole: commit the rest one by one, so each caller
        // gets its own answer.
        Err(_) if requests.len() > 1 => {
            for request in requests {
                commit_group(inner, vec![request]);
            }
        }
        Err(e) => {
            if let Some(request) = requests.into_iter().next() {
                let _ = request.reply.send(Err(e));
            }
        }
    }
}

async fn gc_loop(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.gc_interval) => {}
            _ = stop.changed() => return,
        }
        match inner.with_replica(|r| r.collect_garbage()) {
            Ok(report) if report.collected > 0 || !report.evicted.is_empty() => {
                info!(collected = report.collected, evicted = ?report.evicted, purged = report.purged, "GC step");
            }
            Ok(_) => {}
            Err(e) => warn!("GC step failed: {e}"),
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        match incoming {
            Ok(conn) if conn.peer == inner.id => {
                tokio::spawn(serve_owner(inner.clone(), conn));
            }
            Ok(conn) => {
                let span = info_span!("peer", peer = %short(&conn.peer), dir = "in");
                tokio::spawn(run_connection(inner.clone(), conn, false).instrument(span));
            }
            Err(e) => warn!("refused a connection: {e}"),
        }
    }
}

fn short(id: &NodeId) -> String {
    id.to_string()[..16].to_string()
}

async fn dial_loop(inner: Arc<Inner>, peer: PeerAddr) {
    let mut stop = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(100);
    let span = info_span!("peer", peer = %short(&peer.id), dir = "out");
    loop {
        if inner.shutting_down() {
            return;
        }
        // The peer dialed us and that connection stands: one is enough.
        if lock(&inner.connected).contains_key(&peer.id) {
            tokio::select! {
                _ = tokio::time::sleep(inner.config.reconnect_max) => continue,
                _ = stop.changed() => return,
            }
        }
        match inner.endpoint.connect(peer.addr, peer.id).instrument(span.clone()).await {
            Ok(conn) => {
                backoff = Duration::from_millis(100);
                run_connection(inner.clone(), conn, true).instrument(span.clone()).await;
            }
            Err(e) => debug!(parent: &span, "could not connect to {}: {e}", peer.addr),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(inner.config.reconnect_max);
    }
}

/// Records a connection. When two nodes name each other with `--peer` and dial at the same time,
/// two connections open; both nodes keep the one dialed by the smaller node id and close the
/// other (the same rule on both sides, so they close the same one), and a dial loop does not
/// redial while a connection to its peer stands. Only connections opened within
/// [`SIMULTANEOUS_OPEN`] of each other count: an older one may be dead without knowing it yet (a
/// peer killed and restarted), and must not win over the fresh one.
fn register(inner: &Inner, conn: &PeerConnection, dialer: NodeId) {
    let now = std::time::Instant::now();
    let mut connected = lock(&inner.connected);
    let conns = connected.entry(conn.peer).or_default();
    conns.push((conn.conn.clone(), dialer, now));
    let recent: Vec<_> = conns.iter().filter(|(.., since)| now.duration_since(*since) < SIMULTANEOUS_OPEN).collect();
    if recent.len() > 1 {
        let keep = recent.iter().map(|(_, d, _)| *d).min();
        for (c, d, _) in recent {
            if Some(*d) != keep {
                c.close(lethe_transport::endpoint::VarInt::from_u32(CloseCode::Done as u32), b"duplicate connection");
            }
        }
    }
}

/// Serves one peer connection until it closes.
async fn run_connection(inner: Arc<Inner>, conn: PeerConnection, dialer: bool) {
    info!("connected to {} at {}", conn.peer, conn.conn.remote_address());
    register(&inner, &conn, if dialer { inner.id } else { conn.peer });
    lock(&inner.known).insert(conn.peer.replica_id(), conn.peer);
    let link = Arc::new(Link::default());
    if dialer {
        link.ask_session();
    }
    let tasks = [
        tokio::spawn(accept_streams(inner.clone(), conn.clone(), link.clone()).in_current_span()),
        tokio::spawn(initiate_sessions(inner.clone(), conn.clone(), link.clone(), dialer).in_current_span()),
        tokio::spawn(push_loop(inner.clone(), conn.clone(), link).in_current_span()),
    ];
    let mut stop = inner.shutdown.subscribe();
    tokio::select! {
        reason = conn.conn.closed() => info!("disconnected: {reason}"),
        _ = stop.changed() => conn.close(CloseCode::Done, "node shutting down"),
    }
    for task in tasks {
        task.abort();
    }
    let mut connected = lock(&inner.connected);
    if let Some(conns) = connected.get_mut(&conn.peer) {
        conns.retain(|(c, ..)| c.stable_id() != conn.conn.stable_id());
        if conns.is_empty() {
            connected.remove(&conn.peer);
        }
    }
}

/// What the tasks of one connection share.
#[derive(Debug, Default)]
struct Link {
    want_session: Notify,
    /// Sessions running on this connection, started by either side.
    running: AtomicUsize,
    /// Sessions finished on this connection.
    finished: AtomicU64,
    /// This replica's vector when the last session on this connection finished.
    synced: Mutex<Option<VersionVector>>,
}

/// Counts a session as running until dropped.
struct Running<'a>(&'a Link);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

impl Link {
    fn ask_session(&self) {
        self.want_session.notify_one();
    }

    /// Asks for a session for a peer that is not (yet) a member, unless one is running or none
    /// has run yet: the dialer starts one at connect time, and a second would send the same
    /// bootstrap twice.
    fn ask_session_if_idle(&self) {
        if self.quiet() {
            self.ask_session();
        }
    }

    /// Whether a session has finished on this connection and none is running.
    fn quiet(&self) -> bool {
        self.finished.load(Ordering::Relaxed) > 0 && self.running.load(Ordering::Relaxed) == 0
    }

    fn session_started(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self)
    }
}

/// Ends the connection if `failure` means the peer broke the protocol.
fn close_on(conn: &PeerConnection, what: &str, failure: &Failure) {
    match failure.close_code() {
        Some(code) => {
            warn!("{what} failed, closing the connection ({code:?}): {failure}");
            conn.close(code, &failure.to_string());
        }
        None => debug!("{what} ended: {failure}"),
    }
}

async fn accept_streams(inner: Arc<Inner>, conn: PeerConnection, link: Arc<Link>) {
    while let Ok((w, mut r)) = conn.accept().await {
        let kind = match r.next().await {
            Ok(Some(kind)) => kind,
            Ok(None) => continue,
            Err(e) => {
                close_on(&conn, "reading a stream", &Failure::Transport(e));
                continue;
            }
        };
        let (inner, conn, link) = (inner.clone(), conn.clone(), link.clone());
        tokio::spawn(
            async move {
                let result = match kind.as_slice() {
                    [STREAM_SESSION] => run_session(&inner, &link, conn.peer, (w, r), false).await.map(|_| ()),
                    [STREAM_LIVE] => receive_pushes(&inner, conn.peer, (w, r), &link).await,
                    _ => Err(Failure::StreamKind(kind)),
                };
                if let Err(failure) = result {
                    close_on(&conn, "stream", &failure);
                }
            }
            .in_current_span(),
        );
    }
}

async fn initiate_sessions(inner: Arc<Inner>, conn: PeerConnection, link: Arc<Link>, dialer: bool) {
    loop {
        let anti_entropy = tokio::select! {
            _ = link.want_session.notified() => false,
            _ = tokio::time::sleep(inner.config.anti_entropy_interval), if dialer => true,
        };
        let result = async {
            let (mut w, r) = conn.open().await?;
            w.send(&[STREAM_SESSION]).await?;
            run_session(&inner, &link, conn.peer, (w, r), anti_entropy).await
        }
        .await;
        if let Err(failure) = result {
            if !survive(&conn, "session", &failure) {
                return;
            }
            // The session did not finish: try again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
            link.ask_session();
        }
    }
}

/// Logs `failure` of one stream; closes the connection if the peer broke the protocol. Whether
/// the connection is still usable.
fn survive(conn: &PeerConnection, what: &str, failure: &Failure) -> bool {
    close_on(conn, what, failure);
    failure.close_code().is_none() && conn.conn.close_reason().is_none()
}

/// Runs one engine session over a stream, both roles at once.
async fn run_session(
    inner: &Inner,
    link: &Link,
    peer: NodeId,
    (mut w, mut r): FrameStream,
    anti_entropy: bool,
) -> Result<SessionStats, Failure> {
    let _running = link.session_started();
    let expected = Some(peer.replica_id());
    let mut session = inner.with_replica(|rep| {
        if anti_entropy { Session::anti_entropy(rep, expected) } else { Session::new(rep, expected) }
    })?;
    let started = std::time::Instant::now();
    // A round trip: frames went out, then this side waited for the peer's answer.
    let mut sent = false;
    loop {
        // Frames are read from the replica one at a time, so a bootstrap streams chunk by chunk.
        while let Some(frame) = inner.with_replica(|rep| {
            let frame = session.poll_transmit(rep);
            if let Ok(Some(f)) = &frame {
                inner.count_sent(f.len());
            }
            frame
        })? {
            w.send(&frame).await?;
            sent = true;
        }
        w.flush().await?;
        if session.is_finished() {
            break;
        }
        let frame = r.next().await?.ok_or(Failure::ClosedEarly)?;
        let round_trip = u64::from(std::mem::take(&mut sent));
        inner.with_replica(|rep| {
            inner.round_trips.fetch_add(round_trip, Ordering::Relaxed);
            let before = session.stats().clone();
            let handled = session.handle(rep, &frame);
            // Counted under the replica's lock, as `status` reads them: a status that shows the
            // data also counts it.
            let now = session.stats();
            inner.count_received(
                now.live_received - before.live_received,
                now.tombstones_received - before.tombstones_received,
                now.bytes_received - before.bytes_received,
            );
            handled
        })?;
    }
    *lock(&link.synced) = Some(inner.with_replica(|rep| rep.vector().clone()));
    let mut send = w.into_inner().await?;
    // The stream may already be reset by a peer that finished first; its data is delivered.
    let _ = send.finish();
    let stats = session.stats().clone();
    let level_info = stats.live_received + stats.tombstones_received + stats.live_sent + stats.tombstones_sent > 0;
    if level_info {
        info!(
            mode = ?stats.mode,
            sent_bytes = stats.bytes_sent,
            received_bytes = stats.bytes_received,
            live_received = stats.live_received,
            tombstones_received = stats.tombstones_received,
            secs = started.elapsed().as_secs_f64(),
            "session finished"
        );
    } else {
        debug!(mode = ?stats.mode, "session finished with nothing to exchange");
    }
    Ok(stats)
}

async fn receive_pushes(inner: &Inner, peer: NodeId, (mut w, mut r): FrameStream, link: &Link) -> Result<(), Failure> {
    let mut rx = LiveReceiver::new(peer.replica_id());
    while let Some(frame) = r.next().await? {
        let got = inner.with_replica(|rep| {
            let got = rx.handle(rep, &frame);
            if let Ok(got) = &got {
                inner.count_received(got.live, got.tombstones, frame.len() as u64);
            }
            got
        })?;
        if let Some(reply) = got.reply {
            inner.count_sent(reply.len());
            w.send(&reply).await?;
            w.flush().await?;
        }
        if got.gap {
            debug!("live stream has a gap; asking for a session");
            link.ask_session();
        }
    }
    Ok(())
}

/// Pushes every commit to the peer while it is a member; asks for a session while it is not (a
/// session's acknowledgement is what admits it).
async fn push_loop(inner: Arc<Inner>, conn: PeerConnection, link: Arc<Link>) {
    let mut committed = inner.committed.subscribe();
    let mut live: Option<LiveStream> = None;
    loop {
        match push_once(&inner, &conn, &link, &mut live).await {
            Ok(false) => {}
            Ok(true) => {
                debug!("peer not eligible for pushes; asking for a session");
                link.ask_session_if_idle();
                live = None;
            }
            Err(failure) => {
                if !survive(&conn, "live push", &failure) {
                    return;
                }
                live = None;
            }
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    return;
                }
                // Linger a moment so a burst of commits goes out as one push.
                tokio::time::sleep(PUSH_LINGER).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

type LiveStream = (lethe_transport::FrameWriter<SendStream>, LiveSender);

/// Sends what the peer lacks on the live stream (opened once the peer is a member). Whether a
/// session is needed instead: the peer is not a member and this replica has news since the last
/// session, or the sender found the peer behind the stable frontier.
async fn push_once(
    inner: &Arc<Inner>,
    conn: &PeerConnection,
    link: &Link,
    live: &mut Option<LiveStream>,
) -> Result<bool, Failure> {
    let peer = conn.peer.replica_id();
    let (w, sender) = match live {
        Some(stream) => stream,
        None => {
            // A session running (or about to run, at connect) brings the peer up to date; a live
            // stream opened meanwhile would send the same entries again from an older base.
            if !link.quiet() {
                return Ok(false);
            }
            let (member, vector) =
                inner.with_replica(|r| (r.membership().get(peer).map(|m| m.acked.clone()), r.vector().clone()));
            let Some(acked) = member else { return Ok(lock(&link.synced).as_ref() != Some(&vector)) };
            live.insert((open_live(inner, conn).await?, LiveSender::new(peer, acked)))
        }
    };
    match inner.with_replica(|r| sender.poll(r))? {
        LivePoll::Idle => Ok(false),
        LivePoll::Frames(frames) => {
            for f in &frames {
                inner.count_sent(f.len());
                w.send(f).await?;
            }
            w.flush().await?;
            Ok(false)
        }
        LivePoll::NeedSession => Ok(true),
    }
}

async fn open_live(
    inner: &Arc<Inner>,
    conn: &PeerConnection,
) -> Result<lethe_transport::FrameWriter<SendStream>, Failure> {
    let (mut w, mut r) = conn.open().await?;
    w.send(&[STREAM_LIVE]).await?;
    w.flush().await?;
    // Acknowledgements come back on the same stream; read them on their own task.
    let (inner, conn) = (inner.clone(), conn.clone());
    tokio::spawn(
        async move {
            let peer = conn.peer.replica_id();
            loop {
                match r.next().await {
                    Ok(Some(frame)) => {
                        if let Err(e) = inner.with_replica(|rep| handle_ack(rep, peer, &frame)) {
                            return close_on(&conn, "live acknowledgement", &Failure::Sync(e));
                        }
                    }
                    Ok(None) => return,
                    Err(e) => return close_on(&conn, "live acknowledgement", &Failure::Transport(e)),
                }
            }
        }
        .in_current_span(),
    );
    Ok(w)
}

/// The owner's commands (`lethe --data DIR put ...`), one request per stream.
async fn serve_owner(inner: Arc<Inner>, conn: PeerConnection) {
    while let Ok((mut w, mut r)) = conn.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let response = match r.next().await {
                Ok(Some(frame)) => match control::decode::<Request>(&frame) {
                    Ok(request) => answer(&inner, request).await,
                    Err(e) => Response::Error(e),
                },
                Ok(None) => return,
                Err(e) => Response::Error(e.to_string()),
            };
            let frame = control::encode(&response).unwrap_or_default();
            if w.send(&frame).await.is_ok()
                && let Ok(mut send) = w.into_inner().await
            {
                let _ = send.finish();
            }
        });
    }
}

async fn answer(inner: &Arc<Inner>, request: Request) -> Response {
    let node = Node { inner: inner.clone() };
    let result: Result<Response, NodeError> = async {
        Ok(match request {
            Request::Put { key, value, ttl_ms } => {
                let receipt = node.put(key, value, PutOptions { ttl_ms, metadata: None }).await?;
                Response::Written { seq: receipt.dot.seq.0 }
            }
            Request::Get { key } => Response::Value(node.get(&key)?.map(|item| item.value)),
            Request::Delete { key } => Response::Written { seq: node.delete(key).await?.dot.seq.0 },
            Request::List { prefix, limit } => {
                let items = node.scan(&KeyRange::prefix(prefix), limit.min(control::LIST_LIMIT_MAX))?;
                Response::Listed(items.into_iter().map(|i| Listed { key: i.key, value: i.value }).collect())
            }
            Request::Status => Response::Status(Box::new(node.status()?)),
        })
    }
    .await;
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
