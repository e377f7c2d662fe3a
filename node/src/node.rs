//! The embeddable node: one replica on redb, its QUIC endpoint, and the work that keeps it
//! going: the writer (group commit), the GC loop, and the peer tasks (`peer.rs`).
//!
//! Writes go through one writer task that commits whatever writes are waiting as one batch (one
//! fsync for many concurrent writers) and answers each only once its batch is durable. A GC step
//! runs every `gc_interval`. The engine is synchronous: each call takes the replica's lock
//! inside `block_in_place`, so the node needs tokio's multi-thread runtime.

use crate::data_dir::{DataDir, DataDirError};
use crate::health::RecoveryStatus;
use crate::watch::Watchers;
pub use crate::watch::{Subscription, SubscriptionError};
use lethe_engine::replica::StoreFailure;
use lethe_engine::session::SyncError;
use lethe_engine::{
    Config, Hlc, Item, KeyRange, PutOptions, RedbStore, Replica, ReplicaId, Seq, SystemClock, VersionVector, WallClock,
    WriteBatch, WriteReceipt,
};
use lethe_transport::{CloseCode, Endpoint, NodeId, TrustList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// Writes committed together at most.
const GROUP_COMMIT_MAX: usize = 1024;

/// How long a node with `--peer`s holds its first local writes back after it starts, waiting
/// for a first session with one of them: a store restored from an older copy learns from it what
/// its peers hold of its writes before it issues a seq they hold (`engine/src/replica/restore.rs`).
pub const STARTUP_WRITE_FENCE: Duration = Duration::from_secs(3);

/// How long after a failed store is reopened the node first checks that it takes commits again;
/// the wait doubles after every check that fails, up to [`STORE_RETRY_MAX`]. Each reopen
/// reloads the key index from the store, so a disk that stays full costs one scan per wait.
const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to bring a failed store back.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

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

/// The default [`NodeConfig::device_anti_entropy_interval`]: one hour.
pub const DEVICE_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(3600);

/// The default [`NodeConfig::device_news_interval`]: 1 s.
pub const DEVICE_NEWS_INTERVAL: Duration = Duration::from_secs(1);

/// The default [`NodeConfig::device_sessions_max`]: 64.
pub const DEVICE_SESSIONS_MAX: usize = 64;

/// The default [`NodeConfig::device_session_timeout`]: 15 minutes (a bootstrap of 1 GB at
/// 10 Mbit/s fits; a device's session holding its turn longer is ended).
pub const DEVICE_SESSION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The default [`NodeConfig::session_stall_timeout`]: 60 s.
pub const SESSION_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one call may hold the replica (a commit waiting on its fsync, say) before
/// [`Node::status_snapshot`] reports the store stalled ([`Status::store_stalled_ms`]), so a
/// health probe says 503 instead of waiting for the disk.
pub const STORE_STALL_MS: u64 = 5_000;

/// How often the status snapshot is refreshed besides after each commit (the clock-ahead
/// reason changes with time alone). A refresh that finds the replica held is skipped.
pub const STATUS_REFRESH_INTERVAL: Duration = Duration::from_millis(200);

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
    /// On a device: how often it asks its member for an anti-entropy session (a reconciliation
    /// by fingerprints that settles what deltas cannot; each walks the member's index, so with
    /// many devices keep it long). Default [`DEVICE_ANTI_ENTROPY_INTERVAL`].
    pub device_anti_entropy_interval: Duration,
    /// On a member: the shortest time between two news frames to one device connection (each
    /// makes the device run a session). Commits meanwhile are coalesced into the one news sent
    /// when it ends, so a burst of commits costs each connected device about one session per
    /// interval, not one per commit. Default [`DEVICE_NEWS_INTERVAL`].
    pub device_news_interval: Duration,
    /// On a member: how many device sessions run at once, at most (each holds a store snapshot
    /// and a share of the CPU). Sessions beyond it wait for one to end; none is refused. 0 is
    /// taken as 1. Default [`DEVICE_SESSIONS_MAX`].
    pub device_sessions_max: usize,
    /// On a member: how long one device session may run once it has its turn (of
    /// `device_sessions_max`), whatever it does. A device that keeps a session alive without
    /// finishing it (a trickle of frames, each inside the stall timeout) would otherwise hold
    /// its turn for ever and, with `device_sessions_max` such devices, starve every other; its
    /// session is ended (counted failed) and its device starts another later, behind the ones
    /// waiting. Default [`DEVICE_SESSION_TIMEOUT`].
    pub device_session_timeout: Duration,
    /// The longest wait between reconnection attempts (backoff doubles up to this).
    pub reconnect_max: Duration,
    /// How long a session may wait on its peer (a frame to arrive, or the peer to take one)
    /// before it is ended: a peer that stops reading or answering must not hold a session, and
    /// the store snapshot it reads, for ever. A bootstrap of any size makes progress well within
    /// it. Default [`SESSION_STALL_TIMEOUT`].
    pub session_stall_timeout: Duration,
    /// The wall clock the replica reads (the system clock by default; a test injects one to step
    /// it).
    pub clock: NodeClock,
    /// The members this node syncs with as a device ([`NodeConfig::with_server`]): with any,
    /// the node is a device (`Role::Device`), keeps a connection to one of them (the next
    /// after a failure, with backoff) and serves no peers.
    pub servers: Vec<PeerAddr>,
    /// Whether this node offers and accepts zstd-compressed frames (default: yes). Off, every
    /// connection it makes or takes sends frames raw both ways, whatever the peer's setting:
    /// less CPU, more bytes (about 1.4 × on a bootstrap of base64 values).
    pub compression: bool,
}

/// The wall clock a node reads: [`SystemClock`] unless one is injected
/// ([`NodeConfig::with_clock`]).
#[derive(Clone)]
pub struct NodeClock(pub Arc<dyn WallClock>);

impl std::fmt::Debug for NodeClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeClock({} ms)", self.0.now_ms())
    }
}

impl Default for NodeClock {
    fn default() -> Self {
        NodeClock(Arc::new(SystemClock))
    }
}

impl NodeConfig {
    /// Dials and trusts `peer` (builder style).
    #[must_use]
    pub fn with_peer(mut self, peer: PeerAddr) -> NodeConfig {
        self.peers.push(peer);
        self
    }

    /// Makes this node a device of `server` (builder style; call once per server): the
    /// engine's role becomes `Role::Device`, and the node keeps a connection to one of its
    /// servers, running device sessions (docs/design.md §8). A device has no peers.
    #[must_use]
    pub fn with_server(mut self, server: PeerAddr) -> NodeConfig {
        self.servers.push(server);
        self.engine.role = lethe_engine::Role::Device;
        self
    }

    /// On a member: a device silent this long stops holding collection back (builder style;
    /// the engine's `Config::device_lease_ms`, default 30 days).
    #[must_use]
    pub fn with_device_lease(mut self, lease: Duration) -> NodeConfig {
        self.engine.device_lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The device lease ([`NodeConfig::with_device_lease`]).
    #[must_use]
    pub fn device_lease(&self) -> Duration {
        Duration::from_millis(self.engine.device_lease_ms)
    }

    /// Lets `id` connect (builder style).
    #[must_use]
    pub fn with_trust(mut self, id: NodeId) -> NodeConfig {
        self.trust.push(id);
        self
    }

    /// Reads time from `clock` instead of the system clock (builder style): tests step it.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> NodeConfig {
        self.clock = NodeClock(clock);
        self
    }

    /// Offers and accepts compressed frames, or not (builder style; see
    /// [`NodeConfig::compression`]).
    #[must_use]
    pub fn with_compression(mut self, compression: bool) -> NodeConfig {
        self.compression = compression;
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
            device_anti_entropy_interval: DEVICE_ANTI_ENTROPY_INTERVAL,
            device_news_interval: DEVICE_NEWS_INTERVAL,
            device_sessions_max: DEVICE_SESSIONS_MAX,
            device_session_timeout: DEVICE_SESSION_TIMEOUT,
            reconnect_max: Duration::from_secs(5),
            session_stall_timeout: SESSION_STALL_TIMEOUT,
            clock: NodeClock::default(),
            servers: Vec::new(),
            compression: true,
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
    /// An import was refused (one entry named) or could not be applied.
    #[error(transparent)]
    Import(#[from] lethe_engine::replica::ImportError),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A member's operation (enrolling or removing devices) asked of a device.
    #[error("this node is a device (it has --server); devices are enrolled and removed at a member")]
    NotAMember,
    /// The node id to enrol is not a device's: this node's own, or a peer or trusted member's.
    #[error("{0} is this node or one of its peers (--peer/--trust), not a device")]
    NotADevice(NodeId),
    /// The device directory could not be read, written or grown.
    #[error(transparent)]
    Directory(#[from] crate::device_directory::DirectoryError),
    /// A device node was given peers or trusted nodes (`--peer`, `--trust`): devices sync
    /// with their servers only.
    #[error("a device (with --server) has no peers and trusts no one; name members with --server only")]
    DeviceWithPeers,
    /// The data directory's store was first opened in the other role, and keeps it.
    #[error(
        "this data directory holds a {stored}'s store: run it as a {stored} ({}), or use a new data directory",
        if *stored == lethe_engine::Role::Device { "with --server NODEID@ADDR" } else { "without --server" }
    )]
    WrongRole {
        /// The role the store keeps.
        stored: lethe_engine::Role,
    },
}

/// What a node is (docs/design.md §8), as `status` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// A server or a peer of a mesh.
    #[default]
    Member,
    /// A client device of its servers.
    Device,
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

/// What `lethe status` prints. [`Status::write_refusals`] says whether the node takes local
/// writes, and why not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// pushes), as decoded: before compression.
    pub bytes_received: u64,
    /// Bytes of sync frames sent to peers since the node started, before compression.
    pub bytes_sent: u64,
    /// The same frames as [`Status::bytes_received`] as they crossed the stream: length
    /// prefixes and bodies, compressed or not.
    #[serde(default)]
    pub wire_bytes_received: u64,
    /// The same frames as [`Status::bytes_sent`] as they crossed the stream.
    #[serde(default)]
    pub wire_bytes_sent: u64,
    /// Round trips of the sessions this node took part in since it started.
    pub session_round_trips: u64,
    /// Sessions that ran to the end since the node started.
    #[serde(default)]
    pub sessions_finished: u64,
    /// Of those, anti-entropy sessions (either side asked for one).
    #[serde(default)]
    pub anti_entropy_sessions: u64,
    /// Sessions that ended early since the node started (the peer went away or broke the
    /// protocol; the log says which).
    #[serde(default)]
    pub sessions_failed: u64,
    /// When local writes are refused because this node's clock is ahead of its peers': by how
    /// many ms (fix the system clock).
    #[serde(default)]
    pub clock_ahead_ms: Option<u64>,
    /// Why the store failed (a full disk, an I/O error), from a failed commit until a commit
    /// goes through again: meanwhile writes are refused and nothing is acknowledged. `None`
    /// while the store works.
    #[serde(default)]
    pub store_error: Option<String>,
    /// When that failure began, in Unix ms.
    #[serde(default)]
    pub store_failed_since_ms: Option<u64>,
    /// Times the store was reopened after a failure since the node started.
    #[serde(default)]
    pub store_reopens: u64,
    /// While this node recovers from a restore from an older copy of its store
    /// (`engine/src/replica/restore.rs`): what it waits for. Local writes are refused until a
    /// peer holding its writes up to `target_seq` has synced with it. `None` otherwise.
    #[serde(default)]
    pub recovering: Option<RecoveryStatus>,
    /// While one call has held the store longer than [`STORE_STALL_MS`] (a commit waiting on a
    /// stalled disk, say): for how many ms. Only [`Node::status_snapshot`] fills it in (a
    /// status read under the replica's lock finds the store free).
    #[serde(default)]
    pub store_stalled_ms: Option<u64>,
    /// Whether dot-index rows a bootstrap left out are still to be written (deltas for peers
    /// below the bootstrap are read from memory until then).
    #[serde(default)]
    pub deferred_rows: bool,
    /// Member or device.
    #[serde(default)]
    pub role: NodeRole,
    /// On a device: writes waiting in the upload queue (0 on a member).
    #[serde(default)]
    pub pending_uploads: u64,
    /// On a device: nothing is queued, a session with a member has finished (so this device
    /// held what that member held when it ended) and that member is still connected; false
    /// once the device lost it (disconnected, refused). A member's writes since then are not seen
    /// here until the member tells the device and the next session runs.
    #[serde(default)]
    pub in_sync: bool,
    /// On a device: the last session that finished.
    #[serde(default)]
    pub last_sync: Option<crate::sync_events::LastSync>,
    /// On a device: the node id of the member it is connected to now.
    #[serde(default)]
    pub server: Option<String>,
    /// On a member: device sessions running now (at most [`NodeConfig::device_sessions_max`];
    /// those waiting for their turn are not counted).
    #[serde(default)]
    pub device_sessions: u64,
    /// On a member: the most device sessions that ran at once since the node started.
    #[serde(default)]
    pub device_sessions_peak: u64,
    /// On a member: news frames sent to connected devices since the node started (each asks
    /// the device for a session; at most one per device connection per
    /// [`NodeConfig::device_news_interval`]).
    #[serde(default)]
    pub device_news_sent: u64,
    /// On a member: devices connected to it now (each counted once, however many
    /// connections it has open).
    #[serde(default)]
    pub devices_connected: usize,
}

pub(crate) fn vector_map(v: &VersionVector) -> BTreeMap<String, u64> {
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
pub(crate) enum Failure {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Transport(#[from] lethe_transport::Error),
    #[error("the peer closed the stream mid-session")]
    ClosedEarly,
    #[error("unknown stream kind {0:?}")]
    StreamKind(Vec<u8>),
    #[error("the peer neither answered nor read for {0:?} (the session stall timeout)")]
    Stalled(Duration),
    #[error("the device session ran past {0:?} (the device session timeout) and was ended to let others run")]
    Overran(Duration),
}

impl Failure {
    /// Whether this node's own store failed (a full disk, an I/O error): nothing the peer did.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Failure::Sync(SyncError::Engine(e)) if e.is_storage())
    }

    /// Whether a peer's stamp was refused for lying too far ahead of this node's clock.
    pub(crate) fn is_drift(&self) -> bool {
        matches!(self, Failure::Sync(SyncError::Engine(lethe_engine::Error::ClockDrift { .. })))
    }

    /// Whether the peer broke the protocol (the connection is closed) rather than went away.
    /// A failure of this node's own store blames no peer: the stream ends, the connection
    /// stays, and syncing resumes once the store is back.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        match self {
            failure if failure.is_local() => None,
            Failure::Sync(SyncError::Engine(_)) => Some(CloseCode::Refused),
            Failure::Sync(SyncError::FrameTooLarge { .. }) => Some(CloseCode::TooLarge),
            Failure::Sync(_) | Failure::StreamKind(_) => Some(CloseCode::Malformed),
            Failure::Transport(e) if e.is_peer_frame_error() => Some(CloseCode::for_error(e)),
            Failure::Transport(_) | Failure::ClosedEarly | Failure::Stalled(_) | Failure::Overran(_) => None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) listen: SocketAddr,
    pub(crate) config: NodeConfig,
    pub(crate) replica: Mutex<Replica<RedbStore>>,
    pub(crate) endpoint: Endpoint,
    /// Who watches the changes, each with its queue; the replica records changes only while
    /// someone does.
    pub(crate) watchers: Arc<Watchers>,
    /// Bumped after every commit that changed the store or the vector: wakes the pushers.
    pub(crate) committed: watch::Sender<u64>,
    /// The replica's vector, set whenever it moved: what news to a device is compared with
    /// (`device_news.rs`) without taking the replica's lock.
    pub(crate) vector_now: watch::Sender<VersionVector>,
    writes: mpsc::Sender<WriteRequest>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Connected peers and their connections.
    pub(crate) connected: Mutex<BTreeMap<NodeId, Vec<crate::peer::OpenConnection>>>,
    /// Node ids this node knows, by replica id, for `status`.
    pub(crate) known: Mutex<BTreeMap<ReplicaId, NodeId>>,
    /// Live values received since start.
    pub(crate) live_received: AtomicU64,
    /// Tombstones and expired records received since start.
    pub(crate) tombstones_received: AtomicU64,
    /// Sync frame bytes received since start.
    pub(crate) bytes_received: AtomicU64,
    /// Session round trips since start.
    pub(crate) round_trips: AtomicU64,
    pub(crate) sessions_finished: AtomicU64,
    pub(crate) anti_entropy_sessions: AtomicU64,
    pub(crate) sessions_failed: AtomicU64,
    /// Sync frame bytes sent since start.
    pub(crate) bytes_sent: AtomicU64,
    /// Those frames' bytes on the stream (prefixes, compressed bodies), received and sent.
    pub(crate) wire_bytes_received: AtomicU64,
    pub(crate) wire_bytes_sent: AtomicU64,
    /// Set once a session with a peer has finished (lifts the [`STARTUP_WRITE_FENCE`]).
    pub(crate) synced: watch::Sender<bool>,
    /// Times the store was reopened after a failure since start.
    store_reopens: AtomicU64,
    /// Woken when a commit fails: the store loop brings the store back.
    store_failed: Notify,
    /// The writer task, awaited at shutdown so that queued writes are committed.
    pub(crate) writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The status as of the last commit or refresh (its replica part: counts, vectors,
    /// failure, recovery, clock), read by [`Node::status_snapshot`] without the replica's lock.
    /// This mutex is held only to clone or swap the `Arc`.
    status_cache: Mutex<Arc<Status>>,
    /// When the call holding the replica took it, in ms since `started`, plus one; 0 while
    /// nobody holds it.
    busy_since: AtomicU64,
    /// The instant `busy_since` counts from.
    started: std::time::Instant,
    /// A member's devices: directory, trust, connections (`device_service.rs`).
    pub(crate) devices: crate::device_service::DeviceTable,
    /// What a device tells its app about syncing ([`Node::sync_events`]).
    pub(crate) events: tokio::sync::broadcast::Sender<crate::sync_events::SyncEvent>,
    /// On a device: the last session that finished.
    pub(crate) last_sync: Mutex<Option<crate::sync_events::LastSync>>,
    /// On a device: the member connected now.
    pub(crate) server: Mutex<Option<NodeId>>,
}

/// Says when a recovery from a restore begins and ends (`engine/src/replica/restore.rs`).
fn log_restore(before: Option<lethe_engine::replica::Recovery>, after: Option<lethe_engine::replica::Recovery>) {
    match (before, after) {
        (None, Some(r)) => warn!(
            target_seq = r.target.0,
            reissued = r.reissued,
            "this node's store was restored from an older copy (a peer holds its writes up to seq {}): \
             re-issued its writes made since under fresh seqs; local writes are refused until it has caught up",
            r.target
        ),
        (Some(_), None) => info!("recovered from the restore: every write peers held is back, local writes resume"),
        _ => {}
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Runs `f` on the replica under its lock, then publishes what it committed.
    pub(crate) fn with_replica<T>(&self, f: impl FnOnce(&mut Replica<RedbStore>) -> T) -> T {
        tokio::task::block_in_place(|| {
            let mut replica = lock(&self.replica);
            self.busy_since.store(self.elapsed_ms() + 1, Ordering::Relaxed);
            // Record changes exactly while someone watches: one who stopped costs nothing from
            // here on.
            let watching = self.watchers.any();
            if replica.records_changes() != watching {
                replica.record_changes(watching);
            }
            let before = replica.vector().clone();
            let failed_before = replica.store_failure().map(|f| f.failed_commits);
            let recovering_before = replica.recovery();
            let out = f(&mut replica);
            let recovering = replica.recovery();
            let failed = replica.store_failure().map(|f| f.failed_commits) != failed_before;
            if failed {
                self.store_failure_changed(replica.store_failure());
            }
            let changes = replica.take_changes();
            let moved = replica.vector() != &before;
            if moved {
                self.vector_now.send_replace(replica.vector().clone());
            }
            if moved || failed || !changes.is_empty() || recovering != recovering_before {
                self.cache_status(&replica);
            }
            self.busy_since.store(0, Ordering::Relaxed);
            drop(replica);
            log_restore(recovering_before, recovering);
            let wake = moved || !changes.is_empty();
            self.watchers.publish(&changes);
            if wake {
                self.committed.send_modify(|n| *n = n.wrapping_add(1));
            }
            out
        })
    }

    /// Logs a commit that failed (and wakes the store loop), or the first that went through
    /// after failures.
    fn store_failure_changed(&self, failure: Option<&StoreFailure>) {
        match failure {
            Some(f) => {
                error!(
                    failed_commits = f.failed_commits,
                    "the store failed: {}. Nothing of that commit is acknowledged; writes are refused \
                     until the node has reopened the store, which it does by itself (if the disk is \
                     full, free space or grow it)",
                    f.error
                );
                self.store_failed.notify_one();
            }
            None => info!("the store takes commits again; writes are accepted"),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The replica's part of the status (see [`Inner::fill_status`] for the rest).
    fn replica_status(&self, r: &Replica<RedbStore>) -> Status {
        let counts = r.counts();
        let digest = r.digest();
        let members = r
            .membership()
            .iter()
            .map(|(replica, m)| MemberStatus {
                replica: replica.to_string(),
                node_id: None,
                acked: vector_map(&m.acked),
                last_heard_ms: m.last_heard_ms,
            })
            .collect();
        Status {
            node_id: self.id.to_string(),
            replica: r.id().to_string(),
            listen: self.listen.to_string(),
            live: counts.live,
            tombstones: counts.tombstones,
            expired: counts.expired,
            vector: vector_map(r.vector()),
            frontier: vector_map(&r.frontier()),
            members,
            digest: format!("{}/{}", hex(&digest.wire()), digest.count),
            deferred_rows: r.deferred_rows_pending(),
            role: if r.is_device() { NodeRole::Device } else { NodeRole::Member },
            pending_uploads: r.pending_uploads().unwrap_or(0),
            clock_ahead_ms: r.clock_ahead_ms(),
            store_error: r.store_failure().map(|f| f.error.clone()),
            store_failed_since_ms: r.store_failure().map(|f| f.since_ms),
            recovering: r.recovery().map(|recovery| RecoveryStatus {
                target_seq: recovery.target.0,
                own_seq: r.vector().get(r.id()).0,
                reissued: recovery.reissued,
            }),
            ..Status::default()
        }
    }

    /// Stores the replica's part of the status for [`Node::status_snapshot`].
    fn cache_status(&self, r: &Replica<RedbStore>) {
        let status = Arc::new(self.replica_status(r));
        *lock(&self.status_cache) = status;
    }

    /// Refreshes the cached status if nobody holds the replica (never waits for it).
    fn refresh_status(&self) {
        if let Ok(replica) = self.replica.try_lock() {
            self.cache_status(&replica);
        }
    }

    /// Fills in what the node counts outside the replica: peers, node ids, counters.
    fn fill_status(&self, status: &mut Status) {
        {
            let known: BTreeMap<String, String> =
                lock(&self.known).iter().map(|(r, n)| (r.to_string(), n.to_string())).collect();
            for m in &mut status.members {
                m.node_id = known.get(&m.replica).cloned();
            }
        }
        {
            let map = lock(&self.connected);
            status.connected = map.keys().map(ToString::to_string).collect();
            status.connections = map.values().map(Vec::len).sum();
        }
        status.live_received = self.live_received.load(Ordering::Relaxed);
        status.tombstones_received = self.tombstones_received.load(Ordering::Relaxed);
        status.bytes_received = self.bytes_received.load(Ordering::Relaxed);
        status.session_round_trips = self.round_trips.load(Ordering::Relaxed);
        status.sessions_finished = self.sessions_finished.load(Ordering::Relaxed);
        status.anti_entropy_sessions = self.anti_entropy_sessions.load(Ordering::Relaxed);
        status.sessions_failed = self.sessions_failed.load(Ordering::Relaxed);
        status.bytes_sent = self.bytes_sent.load(Ordering::Relaxed);
        status.wire_bytes_received = self.wire_bytes_received.load(Ordering::Relaxed);
        status.wire_bytes_sent = self.wire_bytes_sent.load(Ordering::Relaxed);
        status.store_reopens = self.store_reopens.load(Ordering::Relaxed);
        status.last_sync = lock(&self.last_sync).clone();
        status.server = lock(&self.server).map(|s| s.to_string());
        (status.device_sessions, status.device_sessions_peak) = self.devices.sessions.counts();
        status.device_news_sent = self.devices.sessions.news_sent.load(Ordering::Relaxed);
        status.devices_connected = self.devices.connected_count();
        // A finished session merged the member's vector (`Done`) after its uploads were all
        // admitted: the device then holds what the member held. Not once it lost the member
        // (disconnected, refused): it cannot know.
        status.in_sync = status.role == NodeRole::Device
            && status.pending_uploads == 0
            && status.last_sync.is_some()
            && status.server.is_some();
    }

    pub(crate) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Counts `bytes` of frames sent (a device session's, counted once it ended).
    pub(crate) fn count_sent_total(&self, bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        crate::metrics::bytes_sent(bytes);
    }

    pub(crate) fn count_sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        crate::metrics::bytes_sent(bytes as u64);
    }

    /// Bytes that sync frames took on the stream (`wire_bytes()` deltas of the frame writer
    /// and reader), beside the decoded bytes [`Inner::count_sent`] and
    /// [`Inner::count_received`] count.
    pub(crate) fn count_wire(&self, sent: u64, received: u64) {
        crate::metrics::wire_bytes(sent, received);
        self.wire_bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.wire_bytes_received.fetch_add(received, Ordering::Relaxed);
    }

    pub(crate) fn count_received(&self, live: u64, tombstones: u64, bytes: u64) {
        crate::metrics::received(live, tombstones, bytes);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        self.live_received.fetch_add(live, Ordering::Relaxed);
        self.tombstones_received.fetch_add(tombstones, Ordering::Relaxed);
    }
}

/// A running lethe node. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
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
        // An uninitialised directory is told so before a store file is created in it.
        config.data.identity()?;
        config.data.secure()?;
        let store = RedbStore::open(config.data.store_path())
            .map_err(|e| NodeError::Store { path: config.data.store_path().display().to_string(), source: e })?;
        Node::start_with_store(config, store).await
    }

    /// [`Node::start`] on a store the caller opened (on a redb backend of its own, say:
    /// [`RedbStore::open_on_backend`]) instead of the data directory's `store.redb`.
    pub async fn start_with_store(config: NodeConfig, store: RedbStore) -> Result<Node, NodeError> {
        if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(NodeError::Runtime);
        }
        let identity = config.data.identity()?;
        let id = identity.id();
        let mut config = config;
        if !config.servers.is_empty() {
            config.engine.role = lethe_engine::Role::Device;
        }
        let device = config.engine.role == lethe_engine::Role::Device;
        if device && !(config.peers.is_empty() && config.trust.is_empty()) {
            return Err(NodeError::DeviceWithPeers);
        }
        let mut replica =
            Replica::open(store, id.replica_id(), config.engine, config.clock.0.clone()).map_err(|e| match e {
                lethe_engine::Error::WrongRole { stored, .. } => NodeError::WrongRole { stored },
                e => e.into(),
            })?;
        // Peers and trusted nodes are this node's members (docs/design.md §2.4): enrolled, so their
        // acknowledgements count; gossip about anyone else is ignored. Peers first (the mesh);
        // trusted nodes past the member limit still sync, as non-members (by reconciliation).
        let mut not_enrolled = 0;
        // A device enrols no one: it syncs with its servers, which serve it as a device.
        for (member, dialed) in config
            .peers
            .iter()
            .map(|p| (p.id, true))
            .chain(config.trust.iter().map(|t| (*t, false)))
            .filter(|_| !device)
        {
            match replica.enrol_member(member.replica_id()) {
                Ok(_) => {}
                Err(lethe_engine::Error::TooManyMembers(_)) if !dialed => not_enrolled += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if not_enrolled > 0 {
            warn!(
                not_enrolled,
                max = lethe_engine::membership::MEMBERS_MAX,
                "trusted nodes beyond the member limit are not enrolled: they sync by reconciliation and do not hold \
                 collection back"
            );
        }
        // The owner (this node's own key) may connect too: that is how the CLI reaches it.
        let fixed: std::collections::BTreeSet<NodeId> =
            config.trust.iter().copied().chain(config.peers.iter().map(|p| p.id)).chain([id]).collect();
        let devices =
            crate::device_service::DeviceTable::load(config.data.path(), fixed.clone(), config.device_sessions_max)?;
        // On a device, its servers' keys verify the acknowledgements they relay (none yet).
        let trust = TrustList::new(fixed.iter().copied().chain(config.servers.iter().map(|s| s.id)));
        // Acknowledgements are signed with this node's key, and one a peer relays about a third
        // replica counts only if that replica, one this node trusts, signed it (docs/design.md §9).
        replica.set_signer(Arc::new(lethe_transport::Ed25519AckSigner::new(&identity, trust.clone())?));
        let endpoint = Endpoint::bind_with_compression(config.listen, identity, trust.clone(), config.compression)?;
        let listen = endpoint.local_addr()?;
        let (writes, write_rx) = mpsc::channel(GROUP_COMMIT_MAX * 4);
        let known = trust.ids().into_iter().map(|n| (n.replica_id(), n)).collect();
        let vector_now = watch::channel(replica.vector().clone()).0;
        let inner = Arc::new(Inner {
            id,
            listen,
            config,
            replica: Mutex::new(replica),
            endpoint,
            watchers: Arc::default(),
            committed: watch::channel(0).0,
            vector_now,
            writes,
            shutdown: watch::channel(false).0,
            connected: Mutex::new(BTreeMap::new()),
            known: Mutex::new(known),
            writer: Mutex::new(None),
            live_received: AtomicU64::new(0),
            tombstones_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            sessions_finished: AtomicU64::new(0),
            anti_entropy_sessions: AtomicU64::new(0),
            sessions_failed: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            wire_bytes_received: AtomicU64::new(0),
            wire_bytes_sent: AtomicU64::new(0),
            synced: watch::channel(false).0,
            store_reopens: AtomicU64::new(0),
            store_failed: Notify::new(),
            status_cache: Mutex::new(Arc::new(Status::default())),
            busy_since: AtomicU64::new(0),
            started: std::time::Instant::now(),
            devices,
            events: tokio::sync::broadcast::channel(crate::sync_events::SYNC_EVENTS_QUEUED_MAX).0,
            last_sync: Mutex::new(None),
            server: Mutex::new(None),
        });
        // Devices enrolled here or learned from members, as the engine has them enrolled.
        crate::device_service::refresh_trust(&inner);
        inner.refresh_status();
        info!(node = %id, %listen, "node started");
        *lock(&inner.writer) = Some(tokio::spawn(write_loop(inner.clone(), write_rx)));
        tokio::spawn(crate::peer::accept_loop(inner.clone()));
        tokio::spawn(gc_loop(inner.clone()));
        tokio::spawn(store_loop(inner.clone()));
        tokio::spawn(status_loop(inner.clone()));
        for peer in inner.config.peers.clone() {
            tokio::spawn(crate::peer::dial_loop(inner.clone(), peer));
        }
        if device {
            tokio::spawn(crate::device_link::run(inner.clone(), inner.config.servers.clone()));
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
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.inner.writes.send(WriteRequest { op, reply }).await.map_err(|_| NodeError::ShuttingDown)?;
        let written = rx.await.map_err(|_| NodeError::ShuttingDown)?;
        match &written {
            Ok(_) => crate::metrics::write_durable(started.elapsed()),
            Err(lethe_engine::Error::ClockAheadOfPeers { .. }) => crate::metrics::local_write_drift_rejected(),
            Err(_) => {}
        }
        Ok(written?)
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

    /// The dead records (tombstones, expired values) in `range`, in key order, at most `limit`
    /// ([`Replica::dead_entries`]): what an export lists besides the live entries.
    pub fn dead_entries(&self, range: &KeyRange, limit: usize) -> Result<Vec<lethe_engine::Entry>, NodeError> {
        Ok(self.inner.with_replica(|r| r.dead_entries(range, limit))?)
    }

    /// A stream of changes to keys starting with `prefix`, from now on. Its queue holds at most
    /// [`crate::watch::WATCH_QUEUE_CHANGES_MAX`] changes and
    /// [`crate::watch::WATCH_QUEUE_BYTES_MAX`] bytes of them: a subscriber that falls further
    /// behind is told how many it lost ([`SubscriptionError::Lagged`]). While no subscription is
    /// alive, commits record no changes.
    pub fn subscribe(&self, prefix: impl Into<Vec<u8>>) -> Subscription {
        let subscription = self.inner.watchers.register(prefix.into());
        // Turns recording on: `with_replica` follows the watchers.
        self.inner.with_replica(|r| debug_assert!(r.records_changes()));
        subscription
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

    /// Writes `entries` from an export as this node's own writes that keep each entry's key,
    /// value, metadata, expiry and HLC time, in one durable commit ([`Replica::import`]); they
    /// reach peers as any write does. One invalid entry refuses them all.
    pub fn import(&self, entries: Vec<lethe_engine::Entry>) -> Result<lethe_engine::ApplyReport, NodeError> {
        if self.inner.shutting_down() {
            return Err(NodeError::ShuttingDown);
        }
        Ok(self.inner.with_replica(|r| r.import(entries))?)
    }

    /// Stores one batch of a full export into this blank node under the entries' own dots and
    /// stamps, as a bootstrap chunk ([`Replica::import_as_bootstrap`]); `first` needs the node
    /// blank, a later batch its vector still empty. One invalid entry refuses them all.
    pub fn import_as_bootstrap(
        &self,
        entries: Vec<lethe_engine::Entry>,
        first: bool,
    ) -> Result<lethe_engine::ApplyReport, NodeError> {
        if self.inner.shutting_down() {
            return Err(NodeError::ShuttingDown);
        }
        Ok(self.inner.with_replica(|r| r.import_as_bootstrap(entries, first))?)
    }

    /// Ends a bootstrap import: merges the export's source vector and observes its clock
    /// ([`Replica::finish_import_as_bootstrap`]). Peers then get deltas against that vector, as
    /// from a node that was bootstrapped.
    pub fn finish_import(&self, vector: &VersionVector, clock: Hlc) -> Result<(), NodeError> {
        if self.inner.shutting_down() {
            return Err(NodeError::ShuttingDown);
        }
        self.inner.with_replica(|r| r.finish_import_as_bootstrap(vector, clock))?;
        Ok(())
    }

    /// This node's replica id, vector and clock, and whether it is blank ([`Replica::is_blank`]),
    /// read at one instant.
    pub fn position(&self) -> (ReplicaId, VersionVector, Hlc, bool) {
        self.inner.with_replica(|r| (r.id(), r.vector().clone(), r.clock(), r.is_blank()))
    }

    /// What `lethe status` shows, read under the replica's lock (so it waits for a commit in
    /// progress; a health probe uses [`Node::status_snapshot`], which never does).
    pub fn status(&self) -> Result<Status, NodeError> {
        let mut status = self.inner.with_replica(|r| {
            self.inner.cache_status(r);
            self.inner.replica_status(r)
        });
        self.inner.fill_status(&mut status);
        Ok(status)
    }

    /// The status as of the last commit or refresh (at most [`STATUS_REFRESH_INTERVAL`] old
    /// while the replica is free), with the counters and peers as they are now, and
    /// [`Status::store_stalled_ms`] set while one call has held the replica longer than
    /// [`STORE_STALL_MS`]. Never takes the replica's lock: what `/health` and `/metrics` answer
    /// from, so a stalled disk makes them say so instead of hanging.
    pub fn status_snapshot(&self) -> Status {
        let mut status = Status::clone(&lock(&self.inner.status_cache));
        self.inner.fill_status(&mut status);
        let since = self.inner.busy_since.load(Ordering::Relaxed);
        if since > 0 {
            let held_ms = self.inner.elapsed_ms().saturating_sub(since - 1);
            status.store_stalled_ms = (held_ms > STORE_STALL_MS).then_some(held_ms);
        }
        status
    }

    /// Enrols the device `device` at this member while it runs (docs/design.md §8), with an
    /// optional `name` (at most [`crate::DEVICE_NAME_BYTES_MAX`] bytes): its node id and name
    /// persist in the data directory (`devices.redb`, one durable transaction), the engine enrols its replica id (durable;
    /// the enrolment reaches the other members with the device records, and this member's
    /// directory with its node id), and it may connect at once. Returns whether anything
    /// changed (enrolling again only renames). Refused on a device, for this node's own id and
    /// for a `--peer`/`--trust` id.
    pub fn enrol_device(&self, device: NodeId, name: Option<String>) -> Result<bool, NodeError> {
        self.inner.enrol_device(device, name)
    }

    /// Removes the device `device` at once: the engine drops it (durable; it stops holding
    /// collection back, and every member refuses it once the removal reaches it), its open
    /// connections here close, and it is refused from then on. Returns whether it was enrolled
    /// (or its directory entry was still to be removed: the retry of a removal whose write to
    /// `devices.redb` failed).
    pub fn remove_device(&self, device: NodeId) -> Result<bool, NodeError> {
        self.inner.remove_device(device)
    }

    /// Every device enrolled at this member (here or at another member), in replica id order,
    /// with what the engine's record says and whether it is connected here. Empty on a device.
    #[must_use]
    pub fn devices(&self) -> Vec<crate::device_service::DeviceInfo> {
        self.inner.device_infos(None, usize::MAX)
    }

    /// A stream of what happens to this device's sync ([`crate::SyncEvent`]): connected,
    /// disconnected, download progress, uploaded, in sync, refused. Starts now; a receiver that
    /// falls more than [`crate::sync_events::SYNC_EVENTS_QUEUED_MAX`] behind loses the oldest.
    #[must_use]
    pub fn sync_events(&self) -> tokio::sync::broadcast::Receiver<crate::sync_events::SyncEvent> {
        self.inner.events.subscribe()
    }

    /// Whether this node is a member or a device.
    #[must_use]
    pub fn role(&self) -> NodeRole {
        if self.inner.config.engine.role == lethe_engine::Role::Device { NodeRole::Device } else { NodeRole::Member }
    }

    /// Stops: no new writes are taken, those already taken are committed, peers are told the
    /// node is going away, and the call returns once connections have closed (or after two
    /// seconds). Every write acknowledged before was already durable.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        // Subscribers read what is queued, then learn the node stopped.
        self.inner.watchers.close();
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

/// Refreshes the status snapshot every [`STATUS_REFRESH_INTERVAL`] until shutdown.
async fn status_loop(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(STATUS_REFRESH_INTERVAL) => inner.refresh_status(),
            _ = stop.changed() => return,
        }
    }
}

/// Group commit: takes every write waiting, commits them as one batch, answers each.
async fn write_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<WriteRequest>) {
    let mut stop = inner.shutdown.subscribe();
    if !inner.config.peers.is_empty() {
        let mut synced = inner.synced.subscribe();
        let _ = tokio::time::timeout(STARTUP_WRITE_FENCE, synced.wait_for(|s| *s)).await;
    }
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

/// Dot-index rows a bootstrap left out that the GC loop writes per turn of the replica's lock.
const DEFERRED_ROWS_PER_COMMIT: usize = 50_000;

/// One GC step every `gc_interval` until shutdown; and, from the second step after a bootstrap
/// ended, the dot-index rows it left out, a commit at a time, letting other work take the
/// replica between commits.
async fn gc_loop(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    let mut rows_waited = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.gc_interval) => {}
            _ = stop.changed() => return,
        }
        // A failed store is the store loop's until it takes commits again.
        if inner.with_replica(|r| r.store_failure().is_some()) {
            continue;
        }
        match inner.with_replica(|r| r.collect_garbage()) {
            Ok(report) if report.collected > 0 || !report.evicted.is_empty() => {
                info!(collected = report.collected, evicted = ?report.evicted, purged = report.purged, "GC step");
            }
            Ok(_) => {}
            Err(e) => warn!("GC step failed: {e}"),
        }
        // Rows wait one GC interval after the bootstrap ends: a node that just caught up is
        // busiest then (its first reads, its peers' live pushes).
        let writable = inner.with_replica(|r| r.deferred_rows_writable());
        if !std::mem::replace(&mut rows_waited, writable) || !writable {
            continue;
        }
        loop {
            match inner.with_replica(|r| r.write_deferred_rows(DEFERRED_ROWS_PER_COMMIT)) {
                // More left, and the bootstrap is done (otherwise nothing was written): go on,
                // after a pause in which reads, writes and sessions can take the replica.
                Ok(true) if inner.with_replica(|r| r.deferred_rows_writable()) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(_) => break,
                Err(e) => {
                    warn!("writing deferred dot-index rows failed: {e}");
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

/// Brings a failed store back without a restart: once a commit fails, reopens the store (which
/// reloads the replica from what is durable), then checks with a commit that changes nothing
/// whether it takes commits again; a check that fails poisons the store again, so it is reopened
/// at once and checked again after a wait that doubles up to [`STORE_RETRY_MAX`]. Meanwhile
/// writes are refused, so nothing is acknowledged that is not durable.
async fn store_loop(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            () = inner.store_failed.notified() => {}
            _ = stop.changed() => return,
        }
        let mut wait = STORE_RETRY_FIRST;
        loop {
            match inner.with_replica(|r| r.store_failure().map(|f| f.needs_reopen)) {
                None => break,
                Some(true) => match inner.with_replica(|r| r.reopen_store()) {
                    Ok(()) => {
                        inner.store_reopens.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::store_reopened();
                        info!("reopened the store after its failure; checking in {wait:?} that it takes commits");
                    }
                    Err(e) => warn!("reopening the store failed: {e}; trying again in {wait:?}"),
                },
                Some(false) => {
                    if let Err(e) = inner.with_replica(|r| r.check_store()) {
                        debug!("the store does not take commits yet: {e}");
                    }
                    // Taken: the failure is cleared. Refused: the store awaits a reopen again.
                    continue;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            wait = (wait * 2).min(STORE_RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_replica_records_changes_only_while_a_watcher_is_registered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("a"));
        dir.init().unwrap();
        let node = NodeConfig::new(dir, "127.0.0.1:0".parse().unwrap()).start().await.unwrap();
        let recording = || node.inner.with_replica(|r| r.records_changes());
        assert!(!recording(), "recording before anyone watches");
        let first = node.subscribe("a");
        let second = node.subscribe("b");
        assert!(recording());
        drop(first);
        node.put("a1", "v", PutOptions::default()).await.unwrap();
        assert!(recording(), "one watcher is left");
        drop(second);
        // From the first call after the last watcher left, nothing is recorded.
        node.put("a2", "v", PutOptions::default()).await.unwrap();
        assert!(!recording(), "still recording after the last watcher left");
        node.shutdown().await;
    }
}
